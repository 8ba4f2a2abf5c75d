"""Served adapters are exact: a mixed batch inside vLLM equals the PyTorch reference, row by row.

Each engine (eager, and compiled by vLLM, which the compilation counters confirm) serves base, two
tasks of one MoORE set, a second MoORE set, a MoORE set at paper init, an input-routed and a
task-routed BADIT set, a LoRA set and two tasks of a set of a fourth method, all in one batch. That
method is the toy of `tests/adapters/toy_method.py`, installed as a third-party distribution: a method
is one folder, served by the engine without any other file knowing of it. Engines run in fp32, where
served greedy tokens and logprobs equal the fp32 reference's; `ORTHOSERVE_EXACTNESS_DTYPES=bfloat16,
float16` adds half-precision engines (scripts/gpu-check.sh), whose generated tokens the fp32 reference
scores within a half-precision tolerance.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import stop_in_background

from adapters.badit.config import BaditConfig
from adapters.base_model import describe_base_model
from adapters.initialise import init_adapter_set
from adapters.reference import ReferenceModel, RowRoute, reference_greedy
from router.target import BASE_TARGET, RouteTarget
from server.engine.capacity import AdapterCapacity
from server.engine.worker.adapted_linear import ADAPTED_LINEAR_OP
from server.tools.offline import OfflineEngine, OfflineRequest
from tests.adapters.toy_method import TOY_KIND, toy_method_installed

pytestmark = pytest.mark.first

MAX_TOKENS = 8
LOGPROB_TOLERANCE = 1e-4
ENGINE_DTYPES = os.environ.get("ORTHOSERVE_EXACTNESS_DTYPES", "float32").split(",")
HALF_LOGPROB_TOLERANCE = {"bfloat16": 0.15, "float16": 0.03}  # served half precision against the fp32 reference

# name → (kind, tasks, init mode, config)
SETS = {
    "moore-a": ("moore", ["arc-e", "boolq"], "random", None),
    "moore-b": ("moore", ["piqa"], "random", None),
    "moore-paper": ("moore", ["arc-e"], "paper", None),
    "badit-input": ("badit", ["default"], "random", None),
    "badit-task": ("badit", ["summarise", "classify"], "random", BaditConfig(routing="task")),
    "lora": ("lora", ["chat"], "random", None),
    "toy": (TOY_KIND, ["plus", "minus"], "random", None),
}
PROMPTS = [[5, 17, 33, 40, 2, 9], [100, 7, 64, 3], [11, 12, 13, 14, 15, 16, 17, 18, 19], [250, 1, 300]]


@pytest.fixture(scope="module")
def toy_method(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with toy_method_installed(tmp_path_factory.mktemp("site")):
        yield


@pytest.fixture(scope="module")
def set_dirs(
    toy_method: None, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, svd_cache_dir: Path
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    base = describe_base_model(tiny_model_dir)
    for seed, (name, (kind, tasks, mode, config)) in enumerate(SETS.items()):
        init_adapter_set(
            root / name, kind=kind, base=base, tasks=tasks, mode=mode, config=config, cache_dir=svd_cache_dir, seed=seed + 1
        )
    return {name: root / name for name in SETS}


@pytest.fixture(
    scope="module",
    params=[(mode, dtype) for dtype in ENGINE_DTYPES for mode in ("eager", "compiled")],
    ids=lambda param: "-".join(param),
)
def engine(request: pytest.FixtureRequest, tiny_model_dir: Path, svd_cache_dir: Path, set_dirs: dict[str, Path]):
    """The same checks run on an eager engine and on one vLLM compiles (torch.compile)."""
    mode, dtype = request.param
    capacity = AdapterCapacity.build({"moore": {"max_sets": 3}, "badit": {}, "lora": {}, TOY_KIND: {"max_tasks": 4}})
    engine = OfflineEngine(
        tiny_model_dir,
        svd_cache_dir,
        dtype=dtype,
        max_model_len=256,
        capacity=capacity,
        enforce_eager=mode == "eager",
    )
    for slot, name in enumerate(SETS, start=1):
        engine.load(slot, set_dirs[name])
    yield engine
    stop_in_background(engine)


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
    (PROMPTS[0], "toy", "plus"),
    (PROMPTS[0], "toy", "minus"),
    (PROMPTS[1], "toy", "minus"),
]


def requests_of(rows) -> list[OfflineRequest]:
    return [OfflineRequest(prompt, target(name, task), MAX_TOKENS) for prompt, name, task in rows]


@pytest.fixture(scope="module")
def mixed_results(engine: OfflineEngine):
    return engine.generate(requests_of(MIXED))


def with_task(rows):
    return [(prompt, name, task or (SETS[name][1][0] if name else None)) for prompt, name, task in rows]


def assert_matches_reference(engine: OfflineEngine, rows, results, tiny_model_dir: Path, set_dirs, svd_cache_dir: Path) -> None:
    """fp32: the reference's greedy tokens and logprobs. Half precision: the reference scores the
    served tokens (teacher-forced) like the served engine did, within the dtype's tolerance."""
    sets = {name: set_dirs[name] for _, name, _ in rows if name}
    if engine.dtype == "float32":
        reference = reference_greedy(tiny_model_dir, sets, with_task(rows), MAX_TOKENS, cache_dir=svd_cache_dir)
        for row, served, (ref_tokens, ref_logprobs) in zip(rows, results, reference):
            assert served.token_ids == ref_tokens, row
            worst = max(abs(a - b) for a, b in zip(served.logprobs, ref_logprobs))
            assert worst <= LOGPROB_TOLERANCE, (row, worst)
        return
    model = ReferenceModel.from_pretrained(tiny_model_dir, sets, svd_cache_dir)
    for (prompt, name, task), served in zip(with_task(rows), results):
        scored = model.continuation_logprobs(prompt, served.token_ids, RowRoute(name, task))
        worst = max(abs(a - b) for a, b in zip(served.logprobs, scored))
        assert worst <= HALF_LOGPROB_TOLERANCE[engine.dtype], (name, task, worst)


def test_mixed_batch_matches_reference(engine: OfflineEngine, mixed_results, tiny_model_dir: Path, set_dirs, svd_cache_dir: Path) -> None:
    assert_matches_reference(engine, MIXED, mixed_results, tiny_model_dir, set_dirs, svd_cache_dir)


def test_adapters_change_the_output(mixed_results) -> None:
    base_tokens = mixed_results[0].token_ids
    adapted_same_prompt = {
        (name, task): r.token_ids for (prompt, name, task), r in zip(MIXED, mixed_results) if prompt == PROMPTS[0] and name
    }
    assert adapted_same_prompt and all(tokens != base_tokens for tokens in adapted_same_prompt.values())
    assert adapted_same_prompt["toy", "plus"] != adapted_same_prompt["toy", "minus"]  # each task's bias matters


def test_each_request_alone_equals_mixed_batch(engine: OfflineEngine, mixed_results, tiny_model_dir: Path, set_dirs, svd_cache_dir: Path) -> None:
    alone = [engine.generate(requests_of([row]))[0] for row in MIXED]
    if engine.dtype != "float32":  # half-precision kernels may round differently per batch size
        assert_matches_reference(engine, MIXED, alone, tiny_model_dir, set_dirs, svd_cache_dir)
        return
    for row, mixed, by_itself in zip(MIXED, mixed_results, alone):
        assert by_itself.token_ids == mixed.token_ids, row
        assert max(abs(a - b) for a, b in zip(by_itself.logprobs, mixed.logprobs)) <= 1e-5, row


def test_paper_init_moore_reproduces_base(engine: OfflineEngine) -> None:
    base, paper = engine.generate(requests_of([(PROMPTS[2], None, None), (PROMPTS[2], "moore-paper", None)]))
    tolerance = HALF_LOGPROB_TOLERANCE.get(engine.dtype, LOGPROB_TOLERANCE)
    if engine.dtype == "float32":
        assert paper.token_ids == base.token_ids
    assert max(abs(a - b) for a, b in zip(paper.logprobs, base.logprobs)) <= tolerance


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
    rows = [(longer, "badit-input", None)]
    assert_matches_reference(engine, rows, engine.generate(requests_of(rows)), tiny_model_dir, set_dirs, svd_cache_dir)


def test_compiled_engine_really_compiled(engine: OfflineEngine, request: pytest.FixtureRequest) -> None:
    """The compiled engine went through vLLM's compiler and the eager one did not; both keep the
    adapter op among the ops that are never captured in a graph."""
    compilation = engine.compilation()
    counters = compilation["counters"]
    compiled = counters["num_aot_compiles"] + counters["num_aot_artifacts_loaded"] + counters["num_inductor_compiles"]
    mode, _ = request.node.callspec.params["engine"]
    if mode == "compiled":
        assert compilation["mode"] != "NONE"
        assert counters["num_models_seen"] >= 1 and compiled >= 1, counters
    else:
        assert compilation["mode"] == "NONE"
        assert counters["num_models_seen"] == 0 and compiled == 0, counters
    assert ADAPTED_LINEAR_OP in compilation["splitting_ops"]
    assert compilation["cudagraph_mode"] in ("NONE", "PIECEWISE")  # never a full graph around the adapter op
    if compilation["cudagraph_mode"] == "PIECEWISE":  # GPUs: the pieces between adapter ops are real graphs
        assert counters["num_cudagraph_captured"] >= 1, counters
