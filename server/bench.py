"""`orthoserve bench`: engine-level throughput of every adapter kind, as ratios to the base model.

Every scenario is one batch of N requests (random prompts, fixed output length, greedy, EOS ignored)
sent to the offline engine at once, timed end to end. Ratios compare scenarios of the same run on the
same engine. vLLM's stock LoRA path runs the same LoRA adapters on a second engine built with
`enable_lora`, and is compared with that engine's own base run and with orthoserve's LoRA path.
"""

from __future__ import annotations

import gc
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import save_file

from adapters.base_model import BaseModelInfo, describe_base_model, hf_weight_name
from adapters.format import load_adapter_set
from adapters.initialise import init_adapter_set
from adapters.lora.config import LoraConfig
from router.target import BASE_TARGET, RouteTarget
from server.engine import vllm_compat as vc
from server.engine.offline import OfflineEngine, OfflineRequest

MOORE_TASK_NAMES = ("arc-e", "arc-c", "boolq", "obqa", "piqa", "siqa", "hellaswag", "winogrande")


@dataclass(frozen=True)
class BenchConfig:
    model_dir: Path
    work_dir: Path
    svd_cache_dir: Path
    num_requests: int = 64
    prompt_len: int = 32
    output_len: int = 64
    repeats: int = 2
    num_lora: int = 4
    lora_rank: int = 8
    dtype: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class BenchRow:
    engine: str
    scenario: str
    tokens_per_s: float
    seconds: float


@dataclass(frozen=True)
class BenchRatio:
    name: str
    value: float
    target: float | None  # None: reported for context, no target

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.value >= self.target


@dataclass(frozen=True)
class BenchReport:
    rows: list[BenchRow]
    ratios: list[BenchRatio]
    resident_bytes: dict[str, int]  # engine bytes per loaded set, and of the shared base factors


@dataclass(frozen=True)
class _Sets:
    moore: Path
    badit: Path
    loras: list[Path]


def _make_sets(config: BenchConfig, base: BaseModelInfo) -> _Sets:
    root = config.work_dir / "sets"
    common = dict(base=base, cache_dir=config.svd_cache_dir, mode="random", overwrite=True)
    moore = init_adapter_set(root / "moore", kind="moore", tasks=list(MOORE_TASK_NAMES), seed=1, **common)
    badit = init_adapter_set(root / "badit", kind="badit", tasks=["default"], seed=2, **common)
    loras = [
        init_adapter_set(
            root / f"lora-{i}", kind="lora", tasks=["chat"], seed=10 + i, config=LoraConfig(rank=config.lora_rank), **common
        )
        for i in range(config.num_lora)
    ]
    return _Sets(moore.path, badit.path, [lora.path for lora in loras])


def _write_peft_copy(set_dir: Path, out_dir: Path) -> Path:
    """The same LoRA weights as a PEFT folder, for vLLM's stock LoRA path."""
    adapter_set = load_adapter_set(set_dir, base=None)
    config: LoraConfig = adapter_set.config  # type: ignore[assignment]
    tensors = {}
    for layer, proj, module in adapter_set.modules():
        prefix = "base_model.model." + hf_weight_name(layer, proj).removesuffix(".weight")
        tensors[f"{prefix}.lora_A.weight"] = module.A.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = module.B.contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    peft_config = {
        "peft_type": "LORA",
        "r": config.rank,
        "lora_alpha": config.alpha,
        "use_rslora": config.use_rslora,
        "target_modules": list(adapter_set.target_modules),
        "bias": "none",
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(peft_config))
    return out_dir


class _Runner:
    def __init__(self, config: BenchConfig, vocab_size: int) -> None:
        self.config = config
        self._vocab_size = vocab_size
        self._run = 0

    def prompts(self) -> list[list[int]]:
        """Fresh random prompts on every run, so no run is served from the prefix cache of another."""
        self._run += 1
        rng = random.Random(self.config.seed * 1000 + self._run)
        return [
            [rng.randrange(10, self._vocab_size - 10) for _ in range(self.config.prompt_len)]
            for _ in range(self.config.num_requests)
        ]

    def time_once(self, engine: OfflineEngine, make: Callable[[int, list[int]], OfflineRequest]) -> float:
        """Seconds for one batch of N requests."""
        requests = [make(i, prompt) for i, prompt in enumerate(self.prompts())]
        started = time.perf_counter()
        engine.generate(requests)
        return time.perf_counter() - started

    def best_times(self, engine: OfflineEngine, scenarios: dict[str, Callable[[int, list[int]], OfflineRequest]]) -> dict[str, float]:
        """Best time of each scenario; repeats are interleaved so drift on a shared machine hits all alike."""
        self.time_once(engine, next(iter(scenarios.values())))  # warm-up
        best = {name: float("inf") for name in scenarios}
        for _ in range(self.config.repeats):
            for name, make in scenarios.items():
                best[name] = min(best[name], self.time_once(engine, make))
        return best


BASE = "base"
MOORE_ONE = "moore (1 task)"
MOORE_MIXED = f"moore ({len(MOORE_TASK_NAMES)} tasks mixed)"
BADIT = "badit"
LORA = "lora"
STOCK_LORA = "lora (vLLM stock path)"


def _scenarios(config: BenchConfig, slots: dict[str, int]) -> dict[str, Callable[[int, list[int]], OfflineRequest]]:
    out = config.output_len

    def moore(task_index: Callable[[int], int]) -> Callable[[int, list[int]], OfflineRequest]:
        def make(i: int, prompt: list[int]) -> OfflineRequest:
            t = task_index(i)
            return OfflineRequest(prompt, RouteTarget("moore", 1, "moore", MOORE_TASK_NAMES[t], t, slots["moore"]), out)

        return make

    def lora(i: int, prompt: list[int]) -> OfflineRequest:
        k = i % config.num_lora
        return OfflineRequest(prompt, RouteTarget(f"lora-{k}", 1, "lora", "chat", 0, slots[f"lora-{k}"]), out)

    def badit(i: int, prompt: list[int]) -> OfflineRequest:
        return OfflineRequest(prompt, RouteTarget("badit", 1, "badit", "default", 0, slots["badit"]), out)

    def base(i: int, prompt: list[int]) -> OfflineRequest:
        return OfflineRequest(prompt, BASE_TARGET, out)

    moore_mixed = moore(lambda i: i % len(MOORE_TASK_NAMES))
    kinds = (base, moore_mixed, badit, lora)
    return {
        BASE: base,
        MOORE_ONE: moore(lambda i: 0),
        MOORE_MIXED: moore_mixed,
        BADIT: badit,
        LORA: lora,
        "mixed (base+moore+badit+lora)": lambda i, p: kinds[i % len(kinds)](i // len(kinds), p),
    }


def run_bench(config: BenchConfig, log: Callable[[str], None] = print) -> BenchReport:
    config.work_dir.mkdir(parents=True, exist_ok=True)
    base = describe_base_model(config.model_dir)
    sets = _make_sets(config, base)
    runner = _Runner(config, base.vocab_size)
    tokens = config.num_requests * config.output_len

    log("orthoserve engine")
    engine = OfflineEngine(config.model_dir, config.svd_cache_dir, dtype=config.dtype)
    slots = {"moore": 1, "badit": 2} | {f"lora-{i}": 3 + i for i in range(config.num_lora)}
    resident = {name: engine.load(slot, path) for (name, slot), path in zip(slots.items(), [sets.moore, sets.badit, *sets.loras])}
    resident["shared base factors (MoORE)"] = engine.resident_bytes()["base_factors"]
    ours = runner.best_times(engine, _scenarios(config, slots))
    engine.shutdown()
    del engine
    gc.collect()

    log("vLLM engine with its stock LoRA path")
    peft_dirs = [_write_peft_copy(path, config.work_dir / "peft" / path.name) for path in sets.loras]
    stock_adapters = [vc.LoRARequest(f"lora-{i}", i + 1, str(path)) for i, path in enumerate(peft_dirs)]
    stock = OfflineEngine(
        config.model_dir,
        config.svd_cache_dir,
        dtype=config.dtype,
        stock_lora_rank=config.lora_rank,
        max_stock_loras=config.num_lora,
    )

    def stock_lora(i: int, prompt: list[int]) -> OfflineRequest:
        return OfflineRequest(prompt, BASE_TARGET, config.output_len, stock_adapters[i % config.num_lora])

    theirs = runner.best_times(stock, {STOCK_LORA: stock_lora, BASE: _scenarios(config, slots)[BASE]})
    stock.shutdown()

    rows = [BenchRow("orthoserve", name, tokens / seconds, seconds) for name, seconds in ours.items()]
    rows += [BenchRow("vllm (enable_lora)", name, tokens / seconds, seconds) for name, seconds in theirs.items()]
    ratios = [
        BenchRatio(f"{MOORE_MIXED} / {MOORE_ONE}", ours[MOORE_ONE] / ours[MOORE_MIXED], 0.95),
        BenchRatio(f"{MOORE_ONE} / base", ours[BASE] / ours[MOORE_ONE], 0.65),
        BenchRatio("badit / base", ours[BASE] / ours[BADIT], 0.90),
        BenchRatio("lora / base", ours[BASE] / ours[LORA], 0.90),
        BenchRatio("lora: orthoserve / vLLM stock", theirs[STOCK_LORA] / ours[LORA], 1.5),
        BenchRatio("vLLM stock lora / its base", theirs[BASE] / theirs[STOCK_LORA], None),
    ]
    return BenchReport(rows, ratios, resident)


def render_table(report: BenchReport) -> str:
    lines = [f"{'engine':20} {'scenario':32} {'tok/s':>9}", "-" * 63]
    lines += [f"{r.engine:20} {r.scenario:32} {r.tokens_per_s:9.1f}" for r in report.rows]
    lines += ["", f"{'ratio':44} {'value':>7} {'target':>7}", "-" * 63]
    for ratio in report.ratios:
        verdict = {None: "", True: "met", False: "MISSED"}[ratio.met]
        target = "" if ratio.target is None else f"{ratio.target:.2f}"
        lines.append(f"{ratio.name:44} {ratio.value:7.3f} {target:>7}  {verdict}")
    lines += ["", f"{'resident in the engine':44} {'MiB':>7}", "-" * 63]
    lines += [f"{name:44} {size / 2**20:7.1f}" for name, size in report.resident_bytes.items()]
    return "\n".join(lines)


def write_json(report: BenchReport, config: BenchConfig, path: Path) -> None:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    payload = {
        "config": settings,
        "rows": [asdict(r) for r in report.rows],
        "ratios": [asdict(r) | {"met": r.met} for r in report.ratios],
        "resident_bytes": report.resident_bytes,
    }
    path.write_text(json.dumps(payload, indent=2))
