"""A method is one folder: a toy fourth method, found without editing any repository file, is served by
the real engine exactly as its own PyTorch reference computes it.

The toy (`toy_bias/` beside this file: a per-task additive bias with its own config, math, reference,
initialiser and serving bank) is copied into a temporary package, and a temporary distribution announces
it in the `orthoserve.methods` entry-point group. The registry finds it there, in this process and in
the engine's worker process alike (both read the same `sys.path`).
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import registry
from adapters.base_model import describe_base_model
from adapters.initialise import init_adapter_set
from adapters.reference import reference_greedy
from adapters.registry import ENTRY_POINT_GROUP, MethodSpec, get_method, registered_methods
from router.target import BASE_TARGET, RouteTarget
from server.engine.capacity import AdapterCapacity
from server.tools.offline import OfflineEngine, OfflineRequest

TOY_SOURCE = Path(__file__).parent / "toy_bias"
MAX_TOKENS = 8
LOGPROB_TOLERANCE = 1e-4
# name → (kind, tasks, slot)
SETS = {"toy": ("toy_bias", ["plus", "minus"], 1), "lora": ("lora", ["chat"], 2)}
PROMPTS = [[5, 17, 33, 40, 2, 9], [100, 7, 64, 3], [11, 12, 13, 14, 15, 16, 17, 18, 19]]
# (prompt, set, task): one mixed batch
ROWS = [
    (PROMPTS[0], None, None),
    (PROMPTS[0], "toy", "plus"),
    (PROMPTS[0], "toy", "minus"),
    (PROMPTS[1], "toy", "minus"),
    (PROMPTS[2], "lora", "chat"),
    (PROMPTS[2], "toy", "plus"),
    (PROMPTS[1], None, None),
]


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary package holding the toy, and a distribution announcing it, first on `sys.path`."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(TOY_SOURCE, site / "toy_bias", ignore=shutil.ignore_patterns("__pycache__"))
    dist_info = site / "orthoserve_toy_bias-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: orthoserve-toy-bias\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntoy_bias = toy_bias.method:METHOD\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        patch.setattr(registry, "_METHODS", dict(registry._METHODS))  # later tests see the built-in methods only
        yield site


@pytest.fixture(scope="module")
def toy_method(toy_site: Path) -> MethodSpec:
    return get_method("toy_bias")


def test_the_toy_method_is_found_through_its_entry_point(toy_method: MethodSpec, toy_site: Path) -> None:
    assert registered_methods()["toy_bias"] is toy_method
    assert Path(inspect.getfile(toy_method.config_cls)).is_relative_to(toy_site)
    assert {"badit", "lora", "moore"} < set(registered_methods())


def target(name: str | None, task: str | None) -> RouteTarget:
    if name is None:
        return BASE_TARGET
    kind, tasks, slot = SETS[name]
    return RouteTarget(name, 1, kind, task, tasks.index(task), slot)


def test_a_toy_set_is_served_exactly_as_its_reference(
    toy_method: MethodSpec, tiny_model_dir: Path, svd_cache_dir: Path, tmp_path: Path
) -> None:
    base = describe_base_model(tiny_model_dir)
    set_dirs = {name: tmp_path / "sets" / name for name in SETS}
    for seed, (name, (kind, tasks, _)) in enumerate(SETS.items(), start=1):
        init_adapter_set(set_dirs[name], kind=kind, base=base, tasks=tasks, mode="random", cache_dir=svd_cache_dir, seed=seed)
    capacity = AdapterCapacity.build({"toy_bias": {"max_sets": 2, "max_tasks": 4}, "lora": {}})
    engine = OfflineEngine(tiny_model_dir, svd_cache_dir, dtype="float32", max_model_len=256, capacity=capacity)
    try:
        for name, (_, _, slot) in SETS.items():
            assert engine.load(slot, set_dirs[name]) > 0
        served = engine.generate([OfflineRequest(prompt, target(name, task), MAX_TOKENS) for prompt, name, task in ROWS])
    finally:
        engine.shutdown()

    reference = reference_greedy(tiny_model_dir, set_dirs, ROWS, MAX_TOKENS, cache_dir=svd_cache_dir)
    for row, result, (tokens, logprobs) in zip(ROWS, served, reference):
        assert result.token_ids == tokens, row
        assert max(abs(a - b) for a, b in zip(result.logprobs, logprobs)) <= LOGPROB_TOLERANCE, row
    base_tokens, plus, minus = (result.token_ids for result in served[:3])
    assert plus != base_tokens and minus != base_tokens and plus != minus  # each task's bias matters
