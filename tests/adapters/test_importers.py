"""Synthetic checkpoints in the official layouts convert to sets equal to their source and to its reference."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapters.base_model import PROJECTIONS
from adapters.errors import ImportFailed
from adapters.format import AdapterSet, load_adapter_set
from adapters.importers.badit_loramoe import import_badit_checkpoint
from adapters.importers.moore_peft import TASK_TABLE, import_moore_checkpoint
from adapters.importers.peft_lora import import_peft_lora
from adapters.reference import ReferenceModel, RowRoute

PARENT = {proj: "self_attn" if proj in PROJECTIONS[:4] else "mlp" for proj in PROJECTIONS}
PROMPT = [list(range(5, 19))]


def _key(layer: int, proj: str, suffix: str) -> str:
    return f"base_model.model.model.layers.{layer}.{PARENT[proj]}.{proj}.{suffix}"


def _write(folder: Path, config: dict, state: dict, file_name: str) -> Path:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if file_name.endswith(".bin"):
        torch.save(state, folder / file_name)
    else:
        save_file(state, str(folder / file_name))
    return folder


def _moore_checkpoint(
    source: AdapterSet,
    folder: Path,
    drop: str | None = None,
    reshape: str | None = None,
    config_extra: dict | None = None,
    classifier: bool = False,
) -> Path:
    """`source` as the MoE-PEFT fork saves it: `torch.save` of a dict of `nn.Parameter`, its task rows placed
    at their fixed ids in an 18-row table (the other rows random, as untrained rows are)."""
    state = {}
    for layer, proj, m in source.modules():
        table = torch.randn(len(TASK_TABLE), m.Emb.shape[1])
        for row, task in enumerate(source.tasks):
            table[TASK_TABLE.index(task)] = m.Emb[row]
        values = {
            "moe_gate.weight": m.G,
            "moe_gate.up.weight": m.G_up,
            "moe_gate.task_embedding": table,
            "moe_gate.task_linear": m.T,
        } | {f"hra_u_in.{k}": m.Y[k].unsqueeze(1) for k in range(m.Y.shape[0])}
        state |= {f"base_model.model.model.layers.{layer}.{PARENT[proj]}.{proj}.{s}": v for s, v in values.items()}
    if drop:
        del state[drop]
    if reshape:
        state[reshape] = torch.zeros(3, 3)
    if classifier:
        state["base_model.model.classifier.weight"] = torch.randn(2, 128)
    state = {key: torch.nn.Parameter(value.clone()) for key, value in state.items()}
    config = {"peft_type": "MOORE", "target_modules": {p: True for p in source.target_modules}, "num_experts": 128}
    return _write(folder, config | (config_extra or {}), state, "adapter_model.bin")


def _assert_same_reference(model_dir, cache_dir, original: Path, imported: Path, route_task: str | None) -> None:
    reference = ReferenceModel.from_pretrained(model_dir, {"original": original, "imported": imported}, cache_dir)
    expected = reference.prefill_logits(PROMPT, [RowRoute("original", route_task)])[0]
    got = reference.prefill_logits(PROMPT, [RowRoute("imported", route_task)])[0]
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    base = reference.prefill_logits(PROMPT, [RowRoute()])[0]
    assert (got - base).abs().max() > 0.1


def test_moore_checkpoint(tiny_model_dir, base, set_dirs, svd_cache_dir, tmp_path) -> None:
    source = load_adapter_set(set_dirs["moore-random"], base)
    checkpoint = _moore_checkpoint(source, tmp_path / "ckpt")
    imported = import_moore_checkpoint(checkpoint, base, tmp_path / "set", tasks=["arc-e", "boolq"])
    assert imported.tasks == ("arc-e", "boolq") and imported.config == source.config
    for name, tensor in source.tensors.items():
        assert torch.equal(imported.tensors[name], tensor), name
    _assert_same_reference(tiny_model_dir, svd_cache_dir, set_dirs["moore-random"], tmp_path / "set", "boolq")
    with pytest.raises(ImportFailed, match="--tasks a,b .*--all-task-rows"):
        import_moore_checkpoint(checkpoint, base, tmp_path / "unchosen")
    warnings: list[str] = []
    everything = import_moore_checkpoint(checkpoint, base, tmp_path / "all", all_task_rows=True, warn=warnings.append)
    assert everything.tasks == TASK_TABLE and everything.config.task_embedding_width == 64
    assert len(warnings) == 1 and "arc-c" in warnings[0] and "glue-wnli" in warnings[0] and "not known to be trained" in warnings[0]
    with pytest.raises(ImportFailed, match="glue-xyz"):
        import_moore_checkpoint(checkpoint, base, tmp_path / "bad", tasks=["glue-xyz"])
    assert not (tmp_path / "unchosen").exists() and not (tmp_path / "bad").exists()


def test_moore_checkpoint_with_official_glue_names_and_classifier(base, set_dirs, tmp_path) -> None:
    source = load_adapter_set(set_dirs["moore-random"], base)
    config = {"task_name": "arc-e;boolq;glue:cola"}  # the tasks this checkpoint was trained on
    checkpoint = _moore_checkpoint(source, tmp_path / "ckpt", config_extra=config, classifier=True)
    warnings: list[str] = []
    imported = import_moore_checkpoint(checkpoint, base, tmp_path / "set", tasks=["boolq", "glue:cola"], warn=warnings.append)
    assert imported.tasks == ("boolq", "glue-cola")
    assert warnings == [
        "Ignoring the classification head base_model.model.classifier.weight: orthoserve serves generation, not the GLUE classifier."
    ]
    first = imported.module(0, "q_proj")
    assert torch.equal(first.Emb[0], source.module(0, "q_proj").Emb[1])  # boolq's row
    warnings.clear()
    import_moore_checkpoint(checkpoint, base, tmp_path / "all", all_task_rows=True, warn=warnings.append)
    untrained = warnings[-1]
    assert "not listed as trained" in untrained and "arc-c" in untrained and "glue-mnli" in untrained
    assert "boolq" not in untrained and "glue-cola" not in untrained and "arc-e," not in untrained


def test_moore_checkpoint_layout_errors_are_listed(base, set_dirs, tmp_path) -> None:
    source = load_adapter_set(set_dirs["moore-random"], base)
    missing = _key(1, "up_proj", "moe_gate.task_linear")
    with pytest.raises(ImportFailed, match=r"missing: layers\.1\.up_proj\.moe_gate\.task_linear"):
        import_moore_checkpoint(_moore_checkpoint(source, tmp_path / "a", drop=missing), base, tmp_path / "x", tasks=["boolq"])
    misshapen = _key(0, "o_proj", "moe_gate.up.weight")
    with pytest.raises(ImportFailed, match=r"wrong shape: layers\.0\.o_proj\.moe_gate\.up\.weight \[3, 3\]"):
        import_moore_checkpoint(_moore_checkpoint(source, tmp_path / "b", reshape=misshapen), base, tmp_path / "x", tasks=["boolq"])
    extra = _key(0, "q_proj", "moe_gate.bias")
    with pytest.raises(ImportFailed, match=r"extra: layers\.0\.q_proj\.moe_gate\.bias"):
        import_moore_checkpoint(_moore_checkpoint(source, tmp_path / "c", reshape=extra), base, tmp_path / "x", tasks=["boolq"])
    assert not (tmp_path / "x").exists()


LORAMOE_CONFIG = {"peft_type": "LORAMOE", "init_lora_weights": "pissa_moe", "target_modules": ["gate_proj"]}


def _badit_checkpoint(
    source: AdapterSet, folder: Path, *, gate: str | None, suffix: str = "", config_extra: dict | None = None
) -> Path:
    """`source` as PEFT's LoRAMoE saves it: per expert `lora_A.{e}` / `lora_B.{e}` (a ParameterList inside a
    ParameterDict, adapter name stripped: no `.weight`), and the gate only if `gate` names it."""
    K, r = source.config.num_experts, source.config.expert_rank
    state = {}
    for layer, proj, m in source.modules():
        for e in range(K):
            state[_key(layer, proj, f"lora_A.{e}{suffix}")] = m.A[e * r : (e + 1) * r].clone()
            state[_key(layer, proj, f"lora_B.{e}{suffix}")] = m.B[:, e * r : (e + 1) * r].clone()
        if gate:
            state[_key(layer, proj, gate)] = m.G
    config = LORAMOE_CONFIG | {"r": r, "lora_alpha": source.config.alpha, "top_k": K} | (config_extra or {})
    return _write(folder, config, state, "adapter_model.safetensors")


def test_badit_loramoe_checkpoint(tiny_model_dir, base, set_dirs, svd_cache_dir, tmp_path) -> None:
    source = load_adapter_set(set_dirs["badit-random"], base)
    imported = import_badit_checkpoint(_badit_checkpoint(source, tmp_path / "ckpt", gate="gate.weight"), base, tmp_path / "set")
    assert imported.config == source.config and imported.manifest.provenance["gate"] == "from checkpoint (gate.weight)"
    for name, tensor in source.tensors.items():
        assert torch.equal(imported.tensors[name], tensor), name
    _assert_same_reference(tiny_model_dir, svd_cache_dir, set_dirs["badit-random"], tmp_path / "set", None)
    with_weight = _badit_checkpoint(source, tmp_path / "ckpt-weight", gate="lora_gate.weight", suffix=".weight")
    assert import_badit_checkpoint(with_weight, base, tmp_path / "set-weight").config == source.config

    no_gate = _badit_checkpoint(source, tmp_path / "no-gate", gate=None)
    with pytest.raises(ImportFailed, match="--uniform-gate"):
        import_badit_checkpoint(no_gate, base, tmp_path / "refused")
    uniform = import_badit_checkpoint(no_gate, base, tmp_path / "uniform", uniform_gate=True)
    assert "uniform" in uniform.manifest.provenance["gate"]
    assert all(torch.equal(m.G, torch.zeros_like(m.G)) for _, _, m in uniform.modules())


def test_badit_top_k_below_k_is_honoured(tiny_model_dir, base, set_dirs, svd_cache_dir, tmp_path) -> None:
    source = load_adapter_set(set_dirs["badit-random"], base)
    checkpoint = _badit_checkpoint(source, tmp_path / "ckpt", gate="gate.weight", config_extra={"top_k": 2})
    imported = import_badit_checkpoint(checkpoint, base, tmp_path / "set")
    assert imported.config.route_top_k == 2
    reference = ReferenceModel.from_pretrained(tiny_model_dir, {"all": set_dirs["badit-random"], "top2": tmp_path / "set"}, svd_cache_dir)
    all_k = reference.prefill_logits(PROMPT, [RowRoute("all")])[0]
    top_2 = reference.prefill_logits(PROMPT, [RowRoute("top2")])[0]
    assert (all_k - top_2).abs().max() > 1e-3  # only two experts contribute
    no_gate = _badit_checkpoint(source, tmp_path / "no-gate", gate=None, config_extra={"top_k": 2})
    with pytest.raises(ImportFailed, match="top_k = 2 < K = 6 needs a trained gate"):
        import_badit_checkpoint(no_gate, base, tmp_path / "uniform", uniform_gate=True)


@pytest.mark.parametrize(
    ("config_extra", "message"),
    [
        ({"peft_type": "LORA"}, "peft_type 'LORA'.*'LORAMOE'"),
        ({"init_lora_weights": True}, "init_lora_weights True, not 'pissa_moe'.*no residual"),
        ({"top_k": 7}, "top_k 7.*from 1 to K = 6"),
    ],
)
def test_badit_loramoe_config_is_checked(base, set_dirs, tmp_path, config_extra, message) -> None:
    source = load_adapter_set(set_dirs["badit-random"], base)
    checkpoint = _badit_checkpoint(source, tmp_path / "ckpt", gate="gate.weight", config_extra=config_extra)
    with pytest.raises(ImportFailed, match=message):
        import_badit_checkpoint(checkpoint, base, tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_badit_checkpoint_in_another_layout_is_named(base, tmp_path) -> None:
    folder = tmp_path / "plain-lora"
    state = {_key(layer, "gate_proj", f"lora_{p}.weight"): torch.zeros(4, 4) for layer in range(2) for p in "AB"}
    _write(folder, LORAMOE_CONFIG | {"r": 4, "lora_alpha": 32}, state, "adapter_model.safetensors")
    with pytest.raises(ImportFailed, match=r"no lora_A\.\{e\} experts"):
        import_badit_checkpoint(folder, base, tmp_path / "set")


def test_peft_lora_folder(tiny_model_dir, base, set_dirs, svd_cache_dir, tmp_path) -> None:
    source = load_adapter_set(set_dirs["lora-random"], base)
    state = {}
    for layer, proj, m in source.modules():
        state[_key(layer, proj, "lora_A.weight")] = m.A
        state[_key(layer, proj, "lora_B.weight")] = m.B
    config = {
        "peft_type": "LORA",
        "r": source.config.rank,
        "lora_alpha": source.config.alpha,
        "target_modules": ["v_proj", "q_proj"],
        "bias": "none",
        "modules_to_save": None,
    }
    folder = _write(tmp_path / "peft", config, state, "adapter_model.safetensors")
    imported = import_peft_lora(folder, base, tmp_path / "set", task="chat")
    assert imported.config == source.config and imported.tasks == ("chat",)
    _assert_same_reference(tiny_model_dir, svd_cache_dir, set_dirs["lora-random"], tmp_path / "set", None)

    (folder / "adapter_config.json").write_text(json.dumps(config | {"use_dora": True}))
    with pytest.raises(ImportFailed, match="use_dora"):
        import_peft_lora(folder, base, tmp_path / "dora")
    (folder / "adapter_config.json").write_text(json.dumps(config | {"target_modules": ["q_proj"]}))
    with pytest.raises(ImportFailed, match="targets"):
        import_peft_lora(folder, base, tmp_path / "targets")
