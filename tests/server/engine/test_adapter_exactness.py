"""Served adapters are exact: a mixed batch inside vLLM equals the PyTorch reference, row by row.

Each fp32 engine (eager, and compiled by vLLM, which the compilation counters confirm) serves base, two tasks of one MoORE set, a second MoORE set, a MoORE set at paper init,
an input-routed and a task-routed BADIT set and a LoRA set, all in one batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.badit.config import BaditConfig
from adapters.base_model import describe_base_model
from adapters.initialise import init_adapter_set
from adapters.reference import reference_greedy
from router.target import BASE_TARGET, RouteTarget
from server.engine.adapted_linear import ADAPTED_LINEAR_OP
from server.engine.capacity import AdapterCapacity
from server.engine.offline import OfflineEngine, OfflineRequest

MAX_TOKENS = 8
LOGPROB_TOLERANCE = 1e-4

# name → (kind, tasks, init mode, config)
SETS = {
    "moore-a": ("moore", ["arc-e", "boolq"], "random", None),
    "moore-b": ("moore", ["piqa"], "random", None),
    "moore-paper": ("moore", ["arc-e"], "paper", None),
    "badit-input": ("badit", ["default"], "random", None),
    "badit-task": ("badit", ["summarise", "classify"], "random", BaditConfig(routing="task")),
    "lora": ("lora", ["chat"], "random", None),
}
PROMPTS = [[5, 17, 33, 40, 2, 9], [100, 7, 64, 3], [11, 12, 13, 14, 15, 16, 17, 18, 19], [250, 1, 300]]


@pytest.fixture(scope="module")
def svd_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("svd")


@pytest.fixture(scope="module")
def set_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, svd_cache_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    base = describe_base_model(tiny_model_dir)
    for seed, (name, (kind, tasks, mode, config)) in enumerate(SETS.items()):
        init_adapter_set(
            root / name, kind=kind, base=base, tasks=tasks, mode=mode, config=config, cache_dir=svd_cache_dir, seed=seed + 1
        )
    return {name: root / name for name in SETS}


@pytest.fixture(scope="module", params=["eager", "compiled"])
def engine(request: pytest.FixtureRequest, tiny_model_dir: Path, svd_cache_dir: Path, set_dirs: dict[str, Path]):
    """The same checks run on an eager engine and on one vLLM compiles (torch.compile)."""
    capacity = AdapterCapacity.build({"moore": {"max_sets": 3}, "badit": {}, "lora": {}})
    engine = OfflineEngine(
        tiny_model_dir,
        svd_cache_dir,
        dtype="float32",
        max_model_len=256,
        capacity=capacity,
        enforce_eager=request.param == "eager",
    )
    for slot, name in enumerate(SETS, start=1):
        engine.load(slot, set_dirs[name])
    yield engine
    engine.shutdown()


def target(name: str | None, task: str | None = None) -> RouteTarget:
    if name is None:
        return BASE_TARGET
    kind, tasks, _, _ = SETS[name]
    task = task or tasks[0]
    return RouteTarget(name, 1, kind, task, tasks.index(task), list(SETS).index(name) + 1)


MIXED = [
    (PROMPTS[0], None, None),
    (PROMPTS[1], "moore-a", "arc-e"),
    (PROMPTS[0], "moore-a", "boolq"),
    (PROMPTS[2], "moore-b", None),
    (PROMPTS[3], "badit-input", None),
    (PROMPTS[2], "badit-input", None),
    (PROMPTS[1], "badit-task", "classify"),
    (PROMPTS[0], "lora", None),
    (PROMPTS[3], None, None),
    (PROMPTS[2], "moore-paper", None),
]


def requests_of(rows) -> list[OfflineRequest]:
    return [OfflineRequest(prompt, target(name, task), MAX_TOKENS) for prompt, name, task in rows]


@pytest.fixture(scope="module")
def mixed_results(engine: OfflineEngine):
    return engine.generate(requests_of(MIXED))


def test_mixed_batch_matches_reference(mixed_results, tiny_model_dir: Path, set_dirs, svd_cache_dir: Path) -> None:
    reference = reference_greedy(
        tiny_model_dir,
        set_dirs,
        [(prompt, name, task or (SETS[name][1][0] if name else None)) for prompt, name, task in MIXED],
        MAX_TOKENS,
        cache_dir=svd_cache_dir,
    )
    for row, served, (ref_tokens, ref_logprobs) in zip(MIXED, mixed_results, reference):
        assert served.token_ids == ref_tokens, row
        worst = max(abs(a - b) for a, b in zip(served.logprobs, ref_logprobs))
        assert worst <= LOGPROB_TOLERANCE, (row, worst)


def test_adapters_change_the_output(mixed_results) -> None:
    base_tokens = mixed_results[0].token_ids
    adapted_same_prompt = [r.token_ids for (prompt, name, _), r in zip(MIXED, mixed_results) if prompt == PROMPTS[0] and name]
    assert adapted_same_prompt and all(tokens != base_tokens for tokens in adapted_same_prompt)


def test_each_request_alone_equals_mixed_batch(engine: OfflineEngine, mixed_results) -> None:
    for row, mixed in zip(MIXED, mixed_results):
        [alone] = engine.generate(requests_of([row]))
        assert alone.token_ids == mixed.token_ids, row
        assert max(abs(a - b) for a, b in zip(alone.logprobs, mixed.logprobs)) <= 1e-5, row


def test_paper_init_moore_reproduces_base(engine: OfflineEngine) -> None:
    base, paper = engine.generate(requests_of([(PROMPTS[2], None, None), (PROMPTS[2], "moore-paper", None)]))
    assert paper.token_ids == base.token_ids
    assert max(abs(a - b) for a, b in zip(paper.logprobs, base.logprobs)) <= LOGPROB_TOLERANCE


def test_unload_frees_factors_and_slot(engine: OfflineEngine, set_dirs) -> None:
    slot = 99
    loaded = engine.load(slot, set_dirs["lora"])
    assert loaded > 0
    assert engine.unload(slot) == loaded


def test_badit_never_reuses_cached_prefix_kv(engine: OfflineEngine, tiny_model_dir: Path, set_dirs, svd_cache_dir: Path) -> None:
    """KV of a prompt's prefix, cached for another BADIT prompt, was routed on that prompt's mean."""
    shorter = [(7 * i + 3) % 500 + 5 for i in range(150)]
    longer = shorter + [11, 22, 33, 44, 55, 66, 77, 88]
    engine.generate(requests_of([(shorter, "badit-input", None)]))
    [served] = engine.generate(requests_of([(longer, "badit-input", None)]))
    [(ref_tokens, ref_logprobs)] = reference_greedy(
        tiny_model_dir, {"badit-input": set_dirs["badit-input"]}, [(longer, "badit-input", "default")], MAX_TOKENS,
        cache_dir=svd_cache_dir,
    )
    assert served.token_ids == ref_tokens
    assert max(abs(a - b) for a, b in zip(served.logprobs, ref_logprobs)) <= LOGPROB_TOLERANCE


def test_compiled_engine_really_compiled(engine: OfflineEngine, request: pytest.FixtureRequest) -> None:
    """The compiled engine went through vLLM's compiler and the eager one did not; both keep the
    adapter op among the ops that are never captured in a graph."""
    compilation = engine.compilation()
    counters = compilation["counters"]
    compiled = counters["num_aot_compiles"] + counters["num_aot_artifacts_loaded"] + counters["num_inductor_compiles"]
    if request.node.callspec.params["engine"] == "compiled":
        assert compilation["mode"] != "NONE"
        assert counters["num_models_seen"] >= 1 and compiled >= 1, counters
    else:
        assert compilation["mode"] == "NONE"
        assert counters["num_models_seen"] == 0 and compiled == 0, counters
    assert ADAPTED_LINEAR_OP in compilation["splitting_ops"]
    assert compilation["cudagraph_mode"] in ("NONE", "PIECEWISE")  # never a full graph around the adapter op
