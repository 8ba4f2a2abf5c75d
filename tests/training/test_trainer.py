"""`orthoserve train` on the tiny model: it learns, writes a valid set equal to what it trained, and resumes exactly."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from adapters.badit.dog import balanced_assignment, regroup_permutation
from adapters.base_model import describe_base_model
from adapters.format import load_adapter_set
from adapters.reference import ReferenceModel, RowRoute
from adapters.svd_cache import base_factors
from adapters.training.batches import collate, encode
from adapters.training.examples import Example, TrainingInputError
from adapters.training.model import build_trainable_model
from tests.training.conftest import WORDS, train_toy

PROMPTS = ["Is stone listed?\nAnswer:", "The capital of France is"]


@pytest.mark.parametrize("kind", ["moore", "badit", "lora"])
def test_training_lowers_the_loss_and_writes_the_set_it_trained(kind, tiny_model_dir, svd_cache_dir, tmp_path):
    result = train_toy(kind, tiny_model_dir, tmp_path / kind, svd_cache_dir, epochs=6, loss="completion")
    assert result.steps == 24 and len(result.losses) == 24
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < 0.8 * first, result.losses

    trained = load_adapter_set(tmp_path / kind, describe_base_model(tiny_model_dir))  # full validation
    assert trained.kind == kind and trained.manifest.provenance["trained_by"] == "orthoserve train"
    assert trained.tasks == (("same", "flip") if kind == "moore" else ("default",))

    # The saved set, run by the reference, answers as the model that was trained: same tokens for the
    # task the training examples were tagged with, and an adapted model visibly different from the base.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reference = ReferenceModel.from_pretrained(tiny_model_dir, {"trained": trained}, svd_cache_dir)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    tasks = ["same", "flip"] if kind == "moore" else [None, None]
    for prompt, task in zip(ids, tasks):
        adapted = reference.prefill_logits([prompt], [RowRoute("trained", task)])[0]
        base = reference.prefill_logits([prompt], [RowRoute()])[0]
        assert (adapted - base).abs().max() > 0.1
    if kind == "moore":  # the same prompts, two tasks with opposite answers: the task embedding tells them apart
        yes, no = (tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (" yes", " no"))
        right = 0
        for index, word in enumerate(WORDS):
            prompt = tokenizer(f"Is {word} listed?\nAnswer:")["input_ids"]
            wanted = 1.0 if index % 2 else -1.0  # " yes" for odd words in task `same`
            for task, sign in (("same", wanted), ("flip", -wanted)):
                logits = reference.prefill_logits([prompt], [RowRoute("trained", task)])[0][-1]
                right += int(torch.sign(logits[yes] - logits[no]) == sign)
        assert right >= 12, f"{right}/16 answers follow their task"


@pytest.mark.parametrize("kind", ["moore", "badit", "lora"])
def test_trainer_layers_compute_what_the_reference_computes(kind, tiny_model_dir, svd_cache_dir, tmp_path):
    """The trainer's batched layers (a batch mixing tasks, right padding) equal the per-row reference on the exported set."""
    trained = train_toy(kind, tiny_model_dir, tmp_path / kind, svd_cache_dir, epochs=1).adapter_set
    base = describe_base_model(tiny_model_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    factors = base_factors(base, svd_cache_dir) if kind != "lora" else None
    trainable = build_trainable_model(model, base, kind, trained.config, list(trained.target_modules), list(trained.tasks), factors, seed=0)
    with torch.no_grad():
        for name, value in trained.tensors.items():
            layer, _, param = name.rpartition(".")
            trainable.layers[layer].adapter[param].copy_(value)
    examples = [Example("flip", "Is water listed?\nAnswer:", " no"), Example("same", "Hi", " yes")]
    task_index = {"same": 0, "flip": 1} if kind == "moore" else {"same": 0, "flip": 0}
    batch = collate(encode(examples, AutoTokenizer.from_pretrained(tiny_model_dir), task_index, 64), "all", 0)
    trainable.context.task_ids, trainable.context.token_mask = batch.task_ids, batch.attention_mask.bool()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (2, T, vocab)
    reference = ReferenceModel.from_pretrained(tiny_model_dir, {"s": trained}, svd_cache_dir)
    for row, example in enumerate(examples):
        length = int(batch.attention_mask[row].sum())
        route = RowRoute("s", example.task if kind == "moore" else None)
        expected = reference.prefill_logits([batch.input_ids[row, :length].tolist()], [route])[0]
        torch.testing.assert_close(logits[row, :length], expected, atol=1e-4, rtol=1e-4)


def test_resume_continues_to_the_same_set(tiny_model_dir, svd_cache_dir, tmp_path):
    whole = train_toy("moore", tiny_model_dir, tmp_path / "whole", svd_cache_dir)
    checkpointed = train_toy("moore", tiny_model_dir, tmp_path / "ckpt", svd_cache_dir, run_options=dict(checkpoint_every=5, keep_checkpoints=2))
    checkpoints = sorted(p.name for p in (tmp_path / "ckpt.checkpoints").iterdir())
    assert checkpoints == ["step-10.pt", "step-5.pt"]
    (tmp_path / "ckpt.checkpoints" / "step-10.pt").unlink()  # interrupted after step 5 … 9
    shutil.rmtree(tmp_path / "ckpt")
    resumed = train_toy("moore", tiny_model_dir, tmp_path / "ckpt", svd_cache_dir, resume=True, run_options=dict(checkpoint_every=5))
    assert resumed.resumed_from == 5 and resumed.steps == 12
    assert resumed.losses == whole.losses == checkpointed.losses
    for name, tensor in whole.adapter_set.tensors.items():
        assert torch.equal(resumed.adapter_set.tensors[name], tensor), name


def test_resume_refuses_a_checkpoint_of_another_run(tiny_model_dir, svd_cache_dir, tmp_path):
    train_toy("lora", tiny_model_dir, tmp_path / "run", svd_cache_dir, epochs=1, run_options=dict(checkpoint_every=2))
    with pytest.raises(TrainingInputError, match="different run.*settings"):
        train_toy("lora", tiny_model_dir, tmp_path / "run", svd_cache_dir, epochs=1, learning_rate=1e-3, resume=True)


def test_dog_groups_components_by_gradient_direction():
    torch.manual_seed(0)
    K, r, width = 3, 2, 16
    directions = torch.randn(K, width)
    owner = torch.tensor([2, 0, 1, 1, 0, 2])  # component i's gradient points along directions[owner[i]]
    grads = directions[owner] + 0.01 * torch.randn(K * r, width)
    perm = regroup_permutation(grads[:, :10], grads[:, 10:].T, K, r)
    assert sorted(perm.tolist()) == list(range(K * r))
    groups = owner[perm].view(K, r)
    assert all(len(set(group.tolist())) == 1 for group in groups)
    assert balanced_assignment(torch.ones(4, 2), 2).bincount().tolist() == [2, 2]


def test_badit_with_dog_and_top_k_routing_trains(tiny_model_dir, svd_cache_dir, tmp_path):
    result = train_toy(
        "badit", tiny_model_dir, tmp_path / "dog", svd_cache_dir, epochs=4, dog=True, run_options=dict(method_params={"route_top_k": 2})
    )
    assert result.adapter_set.config.route_top_k == 2
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    initial = train_toy("badit", tiny_model_dir, tmp_path / "no-dog", svd_cache_dir, epochs=4, dog=False,
                        run_options=dict(method_params={"route_top_k": 2}))  # fmt: skip
    assert result.losses[:3] == initial.losses[:3] and result.losses != initial.losses  # regrouped after epoch 1 and 2
