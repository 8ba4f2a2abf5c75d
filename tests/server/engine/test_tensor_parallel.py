"""Adapter sets on a tensor-parallel engine: TP=2 equals TP=1 and the PyTorch reference, in fp32.

The model has 4 attention heads and 2 KV heads (head_dim 64), so vLLM can split it over 2 ranks.
Sets adapt column-parallel layers (qkv, gate_up: output rows split) and row-parallel ones (o, down:
input columns split, partial products summed over ranks) in one mixed batch with base rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.badit.config import BaditConfig
from adapters.base_model import describe_base_model
from adapters.initialise import init_adapter_set
from adapters.lora.config import LoraConfig
from adapters.reference import reference_greedy
from router.errors import AdapterEngineLoadFailed
from router.target import BASE_TARGET, RouteTarget
from server.engine.capacity import AdapterCapacity
from server.tools.offline import OfflineEngine, OfflineRequest
from tiny_model import build_tiny_llama

MAX_TOKENS = 6
# name → (kind, tasks, target modules, config)
SETS = {
    "moore": ("moore", ["arc-e", "boolq"], None, None),
    "badit": ("badit", ["default"], ["gate_proj", "down_proj"], None),
    "badit-task": ("badit", ["summarise", "classify"], None, BaditConfig(routing="task")),
    "lora": ("lora", ["chat"], ["q_proj", "v_proj", "o_proj", "down_proj"], None),
}
PROMPTS = [[5, 17, 33, 40, 2, 9], [100, 7, 64, 3], [11, 12, 13, 14, 15, 16, 17, 18, 19]]
MIXED = [
    (PROMPTS[0], None, None),
    (PROMPTS[1], "moore", "boolq"),
    (PROMPTS[2], "moore", "arc-e"),
    (PROMPTS[0], "badit", None),
    (PROMPTS[1], "badit-task", "classify"),
    (PROMPTS[2], "lora", None),
    (PROMPTS[1], None, None),
]


@pytest.fixture(scope="module")
def tp_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tp-llama"), hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512)


@pytest.fixture(scope="module")
def svd_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("svd")


@pytest.fixture(scope="module")
def set_dirs(tmp_path_factory: pytest.TempPathFactory, tp_model_dir: Path, svd_cache_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    base = describe_base_model(tp_model_dir)
    for seed, (name, (kind, tasks, targets, config)) in enumerate(SETS.items()):
        init_adapter_set(
            root / name, kind=kind, base=base, tasks=tasks, mode="random", config=config,
            target_modules=targets, cache_dir=svd_cache_dir, seed=seed + 1,
        )  # fmt: skip
    init_adapter_set(
        root / "lora-rank-16", kind="lora", base=base, tasks=["chat"], mode="random", config=LoraConfig(rank=16),
        target_modules=["q_proj", "o_proj"], cache_dir=svd_cache_dir,
    )  # fmt: skip
    return {name: root / name for name in [*SETS, "lora-rank-16"]}


def requests() -> list[OfflineRequest]:
    out = []
    for prompt, name, task in MIXED:
        if name is None:
            out.append(OfflineRequest(prompt, BASE_TARGET, MAX_TOKENS))
            continue
        kind, tasks, _, _ = SETS[name]
        task = task or tasks[0]
        slot = list(SETS).index(name) + 1
        out.append(OfflineRequest(prompt, RouteTarget(name, 1, kind, task, tasks.index(task), slot), MAX_TOKENS))
    return out


def run(model_dir: Path, svd_cache_dir: Path, set_dirs: dict[str, Path], tensor_parallel_size: int):
    capacity = AdapterCapacity.build({"moore": {}, "badit": {}, "lora": {"max_rank": 8}})
    engine = OfflineEngine(
        model_dir, svd_cache_dir, dtype="float32", max_model_len=256, tensor_parallel_size=tensor_parallel_size, capacity=capacity
    )
    try:
        loaded = [engine.load(slot, set_dirs[name]) for slot, name in enumerate(SETS, start=1)]
        resident = engine.resident_bytes()
        # A set the workers cannot hold (rank 16 > 8) fails inside them and leaves nothing behind on any rank.
        with pytest.raises(AdapterEngineLoadFailed, match="size of tensor"):
            engine.load(99, set_dirs["lora-rank-16"])
        assert engine.resident_bytes() == resident
        return engine.generate(requests()), loaded, resident
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def tp1(tp_model_dir: Path, svd_cache_dir: Path, set_dirs: dict[str, Path]):
    return run(tp_model_dir, svd_cache_dir, set_dirs, 1)


@pytest.fixture(scope="module")
def tp2(tp_model_dir: Path, svd_cache_dir: Path, set_dirs: dict[str, Path]):
    return run(tp_model_dir, svd_cache_dir, set_dirs, 2)


def test_tp2_equals_tp1_and_the_reference(tp1, tp2, tp_model_dir: Path, set_dirs, svd_cache_dir: Path) -> None:
    reference = reference_greedy(
        tp_model_dir,
        set_dirs,
        [(prompt, name, task or (SETS[name][1][0] if name else None)) for prompt, name, task in MIXED],
        MAX_TOKENS,
        cache_dir=svd_cache_dir,
    )
    for row, one, two, (ref_tokens, _) in zip(MIXED, tp1[0], tp2[0], reference):
        assert two.token_ids == one.token_ids == ref_tokens, row
        assert max(abs(a - b) for a, b in zip(two.logprobs, one.logprobs)) <= 1e-4, row


def test_adapters_change_tp2_output(tp2) -> None:
    results = tp2[0]
    base_tokens = results[0].token_ids
    assert results[3].token_ids != base_tokens, "BADIT on the base prompt"


def test_each_rank_holds_its_share(tp1, tp2) -> None:
    """Sets and shared MoORE factors take less memory per rank at TP=2."""
    _, loaded1, resident1 = tp1
    _, loaded2, resident2 = tp2
    assert all(two < one for one, two in zip(loaded1, loaded2))
    assert resident2["base_factors"] < resident1["base_factors"]
