"""`orthoserve bench`: engine-level throughput of every adapter kind, as ratios to the base model.

Every scenario is one batch of N requests (random prompts, fixed output length, greedy, EOS ignored)
sent to the offline engine at once, timed end to end; repeats are interleaved and the best counts.
Ratios compare scenarios of the same run. Engines, one after another:
- orthoserve with adapter capacity (eager): base, MoORE (1 set, 8 sets, 8 tasks, 1,000 tasks), BADIT,
  LoRA (1, 8 and 64 distinct adapters per batch; 8 distinct again once 256 are resident), a mix;
- the same model without adapter capacity (the stock engine): base;
- vLLM's own LoRA path (`enable_lora`) on the same LoRA weights: base, 4 and 64 adapters;
- optionally orthoserve compiled by vLLM (torch.compile): base, MoORE, 64 LoRA adapters.
"""

from __future__ import annotations

import gc
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import save_file

from adapters.base_model import BaseModelInfo, describe_base_model, hf_weight_name
from adapters.errors import AdapterError
from adapters.format import load_adapter_set, read_manifest
from adapters.initialise import init_adapter_set
from adapters.lora.config import LoraConfig
from adapters.serving.bank import cpu_capability
from router.target import BASE_TARGET, RouteTarget
from server.engine.capacity import AdapterCapacity
from server.engine.vllm import engine as vllm_engine
from server.tools.offline import OfflineEngine, OfflineRequest

Make = Callable[[int, list[int]], OfflineRequest]


@dataclass(frozen=True)
class BenchConfig:
    model_dir: Path
    work_dir: Path
    svd_cache_dir: Path
    num_requests: int = 64
    prompt_len: int = 32
    output_len: int = 64
    repeats: int = 2
    lora_rank: int = 8
    moore_sets: int = 8
    moore_tasks: int = 8  # tasks of each of those sets
    many_tasks: int = 1000  # tasks of one more MoORE set, spread over a batch
    lora_adapters: int = 64  # distinct LoRA adapters in the widest batch
    lora_resident: int = 256
    compiled: bool = False
    dtype: str = "auto"
    tensor_parallel_size: int = 1
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


@dataclass
class BenchReport:
    rows: list[BenchRow] = field(default_factory=list)
    ratios: list[BenchRatio] = field(default_factory=list)
    resident_bytes: dict[str, int] = field(default_factory=dict)  # per set, shared factors, preallocated capacity
    hardware: dict[str, str] = field(default_factory=dict)  # CPU capability; the banks' device, dtype and kernel

    def add(self, engine: str, times: dict[str, float], tokens: int) -> dict[str, float]:
        self.rows += [BenchRow(engine, name, tokens / seconds, seconds) for name, seconds in times.items()]
        return {name: tokens / seconds for name, seconds in times.items()}


@dataclass(frozen=True)
class _Sets:
    moore: list[Path]
    many_tasks: Path
    badit: Path
    loras: list[Path]


def _make_sets(config: BenchConfig, base: BaseModelInfo, log: Callable[[str], None]) -> _Sets:
    root = config.work_dir / "sets"
    log(f"writing {config.moore_sets + 1} MoORE, 1 BADIT and {config.lora_resident} LoRA sets under {root}")

    def made(name: str, kind: str, tasks: list[str], seed: int, **options: object) -> Path:
        """The set under `root/name`, written unless a previous run left the same one there."""
        path = root / name
        try:
            manifest = read_manifest(path)
            if (manifest.kind, list(manifest.tasks), manifest.base_fingerprint) == (kind, tasks, base.fingerprint):
                return path
        except AdapterError:
            pass
        common = dict(base=base, cache_dir=config.svd_cache_dir, mode="random", overwrite=True)
        return init_adapter_set(path, kind=kind, tasks=tasks, seed=seed, **common, **options).path

    moore = [made(f"moore-{i}", "moore", [f"t{t}" for t in range(config.moore_tasks)], 1 + i) for i in range(config.moore_sets)]
    many = made("moore-many", "moore", [f"t{t}" for t in range(config.many_tasks)], 99)
    badit = made("badit", "badit", ["default"], 100)
    lora_config = LoraConfig(rank=config.lora_rank)
    loras = [made(f"lora-{i}", "lora", ["chat"], 1000 + i, config=lora_config) for i in range(config.lora_resident)]
    return _Sets(moore, many, badit, loras)


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

    def time_once(self, engine: OfflineEngine, make: Make) -> float:
        requests = [make(i, prompt) for i, prompt in enumerate(self.prompts())]
        started = time.perf_counter()
        engine.generate(requests)
        return time.perf_counter() - started

    def best_times(self, engine: OfflineEngine, scenarios: dict[str, Make], log: Callable[[str], None]) -> dict[str, float]:
        """Best time of each scenario; repeats are interleaved so drift on a shared machine hits all alike."""
        self.time_once(engine, next(iter(scenarios.values())))  # warm-up
        best = {name: float("inf") for name in scenarios}
        for repeat in range(self.config.repeats):
            for name, make in scenarios.items():
                best[name] = min(best[name], self.time_once(engine, make))
                log(f"  [{repeat + 1}/{self.config.repeats}] {name}: {self.config.num_requests * self.config.output_len / best[name]:.1f} tok/s")
        return best


class _Slots:
    """Slot ids of the sets loaded into one engine, and requests that target them."""

    def __init__(self, engine: OfflineEngine, output_len: int) -> None:
        self._engine = engine
        self._out = output_len
        self._next = 1
        self.bytes: dict[str, int] = {}

    def load(self, name: str, path: Path) -> int:
        slot = self._next
        self._next += 1
        self.bytes[name] = self._engine.load(slot, path)
        return slot

    def request(self, slot: int, kind: str, task_index: int = 0) -> Callable[[list[int]], OfflineRequest]:
        target = RouteTarget(f"set-{slot}", 1, kind, f"t{task_index}", task_index, slot)
        return lambda prompt: OfflineRequest(prompt, target, self._out)


def _base(out: int) -> Make:
    return lambda i, prompt: OfflineRequest(prompt, BASE_TARGET, out)


def _orthoserve_capacity(config: BenchConfig) -> AdapterCapacity:
    return AdapterCapacity.build(
        {
            "moore": {"max_sets": config.moore_sets + 1, "max_tasks": config.moore_sets * config.moore_tasks + config.many_tasks},
            "badit": {"max_sets": 1},
            "lora": {"max_sets": config.lora_resident, "max_rank": config.lora_rank},
        }
    )


def _orthoserve_engine(config: BenchConfig, sets: _Sets, *, compiled: bool) -> tuple[OfflineEngine, _Slots, dict[str, Make]]:
    engine = OfflineEngine(
        config.model_dir,
        config.svd_cache_dir,
        dtype=config.dtype,
        capacity=_orthoserve_capacity(config),
        enforce_eager=not compiled,
        tensor_parallel_size=config.tensor_parallel_size,
    )
    slots = _Slots(engine, config.output_len)
    moore = [slots.load(f"moore-{i}", path) for i, path in enumerate(sets.moore)]
    many = slots.load("moore (many tasks)", sets.many_tasks)
    badit = slots.load("badit", sets.badit)
    loras = [slots.load(f"lora-{i}", path) for i, path in enumerate(sets.loras[: config.lora_adapters])]
    mt, k = config.moore_tasks, len(moore)

    def lora(distinct: int) -> Make:
        return lambda i, p: slots.request(loras[i % distinct], "lora")(p)

    kinds: list[Make] = [
        _base(config.output_len),
        lambda i, p: slots.request(moore[0], "moore", i % mt)(p),
        lambda i, p: slots.request(badit, "badit")(p),
        lora(config.lora_adapters),
    ]
    scenarios: dict[str, Make] = {
        "base": _base(config.output_len),
        "moore, 1 set": lambda i, p: slots.request(moore[0], "moore")(p),
        f"moore, {k} sets": lambda i, p: slots.request(moore[i % k], "moore")(p),
        f"moore, 1 set x {mt} tasks": lambda i, p: slots.request(moore[0], "moore", i % mt)(p),
        f"moore, {config.many_tasks} tasks": lambda i, p: slots.request(many, "moore", (i * 7919) % config.many_tasks)(p),
        "badit": lambda i, p: slots.request(badit, "badit")(p),
        "lora, 1 adapter": lora(1),
        "lora, 4 adapters": lora(4),
        "lora, 8 adapters": lora(8),
        f"lora, {config.lora_adapters} adapters": lora(config.lora_adapters),
        "mixed (base+moore+badit+lora)": lambda i, p: kinds[i % len(kinds)](i // len(kinds), p),
    }
    return engine, slots, scenarios


def run_bench(config: BenchConfig, log: Callable[[str], None] = print) -> BenchReport:
    config.work_dir.mkdir(parents=True, exist_ok=True)
    base = describe_base_model(config.model_dir)
    sets = _make_sets(config, base, log)
    runner = _Runner(config, base.vocab_size)
    tokens = config.num_requests * config.output_len
    report = BenchReport()
    stopping: list[threading.Thread] = []  # engines that exit while the next one starts

    log("orthoserve engine with adapter capacity (eager)")
    engine, slots, scenarios = _orthoserve_engine(config, sets, compiled=False)
    report.hardware = {"cpu": cpu_capability(), **engine.placement()}
    log(f"  {report.hardware}")
    ours = report.add("orthoserve", runner.best_times(engine, scenarios, log), tokens)
    for i, path in enumerate(sets.loras[config.lora_adapters :], start=config.lora_adapters):
        slots.load(f"lora-{i}", path)
    resident_note = f"lora, 8 adapters, {config.lora_resident} resident"
    ours |= report.add("orthoserve", runner.best_times(engine, {resident_note: scenarios["lora, 8 adapters"]}, log), tokens)
    report.resident_bytes = {name: n for name, n in slots.bytes.items() if not name.startswith("lora-") or name == "lora-0"}
    report.resident_bytes |= {f"engine: {name}": n for name, n in engine.resident_bytes().items()}
    stopping.append(engine.shutdown_in_background())
    del engine
    gc.collect()

    log("the same model without adapter capacity (stock engine)")
    stock_engine = OfflineEngine(
        config.model_dir, config.svd_cache_dir, dtype=config.dtype, capacity=AdapterCapacity({}),
        tensor_parallel_size=config.tensor_parallel_size,
    )  # fmt: skip
    plain = report.add("no adapter capacity", runner.best_times(stock_engine, {"base": _base(config.output_len)}, log), tokens)
    stopping.append(stock_engine.shutdown_in_background())
    del stock_engine
    gc.collect()

    log("vLLM engine with its stock LoRA path")
    n_stock = config.lora_adapters
    peft_dirs = [_write_peft_copy(path, config.work_dir / "peft" / path.name) for path in sets.loras[:n_stock]]
    stock_adapters = [vllm_engine.LoRARequest(f"lora-{i}", i + 1, str(path)) for i, path in enumerate(peft_dirs)]
    stock = OfflineEngine(
        config.model_dir, config.svd_cache_dir, dtype=config.dtype, capacity=AdapterCapacity({}),
        stock_lora_rank=config.lora_rank, max_stock_loras=n_stock, tensor_parallel_size=config.tensor_parallel_size,
    )  # fmt: skip

    def stock_lora(distinct: int) -> Make:
        return lambda i, p: OfflineRequest(p, BASE_TARGET, config.output_len, stock_adapters[i % distinct])

    stock_scenarios = {"base": _base(config.output_len), "lora, 4 adapters": stock_lora(4), f"lora, {n_stock} adapters": stock_lora(n_stock)}
    theirs = report.add("vllm (enable_lora)", runner.best_times(stock, stock_scenarios, log), tokens)
    stopping.append(stock.shutdown_in_background())
    del stock
    gc.collect()

    k, mt, wide = config.moore_sets, config.moore_tasks, f"lora, {config.lora_adapters} adapters"
    report.ratios = [
        BenchRatio(f"{wide} / base", ours[wide] / ours["base"], 0.85),
        BenchRatio(f"{wide} / lora, 1 adapter", ours[wide] / ours["lora, 1 adapter"], 0.90),
        BenchRatio(f"moore, {k} sets / moore, 1 set", ours[f"moore, {k} sets"] / ours["moore, 1 set"], 0.85),
        BenchRatio("moore, 1 set / base", ours["moore, 1 set"] / ours["base"], 0.95 * 0.611),
        BenchRatio(f"moore, {mt} tasks / 1 task", ours[f"moore, 1 set x {mt} tasks"] / ours["moore, 1 set"], 0.95),
        BenchRatio(f"moore, {config.many_tasks} tasks / 1 task", ours[f"moore, {config.many_tasks} tasks"] / ours["moore, 1 set"], 0.95),
        BenchRatio("badit / base", ours["badit"] / ours["base"], 0.90),
        BenchRatio("lora, 1 adapter / base", ours["lora, 1 adapter"] / ours["base"], 0.90),
        BenchRatio(f"lora 8: {config.lora_resident} resident / {config.lora_adapters}", ours[resident_note] / ours["lora, 8 adapters"], 0.95),
        BenchRatio("lora 4: orthoserve / vLLM stock", ours["lora, 4 adapters"] / theirs["lora, 4 adapters"], 1.5),
        BenchRatio(f"lora {n_stock}: orthoserve / vLLM stock", ours[wide] / theirs[f"lora, {n_stock} adapters"], 1.5),
        BenchRatio("base: with adapter capacity / without", ours["base"] / plain["base"], 0.97),
        BenchRatio("vLLM stock: lora 4 / its base", theirs["lora, 4 adapters"] / theirs["base"], None),
    ]

    if config.compiled:
        log("orthoserve engine with adapter capacity, compiled by vLLM")
        engine, _, scenarios = _orthoserve_engine(config, sets, compiled=True)
        chosen = {name: scenarios[name] for name in ("base", "moore, 1 set", wide)}
        compiled = report.add("orthoserve compiled", runner.best_times(engine, chosen, log), tokens)
        engine.shutdown()
        report.ratios += [BenchRatio(f"compiled / eager: {name}", compiled[name] / ours[name], None) for name in chosen]
    for engine_stopping in stopping:
        engine_stopping.join()
    return report


def render_table(report: BenchReport) -> str:
    lines = [f"{name}: {value}" for name, value in report.hardware.items()] + [""]
    lines += [f"{'engine':22} {'scenario':36} {'tok/s':>9}", "-" * 69]
    lines += [f"{r.engine:22} {r.scenario:36} {r.tokens_per_s:9.1f}" for r in report.rows]
    lines += ["", f"{'ratio':50} {'value':>7} {'target':>7}", "-" * 69]
    for ratio in report.ratios:
        verdict = {None: "", True: "met", False: "MISSED"}[ratio.met]
        target = "" if ratio.target is None else f"{ratio.target:.2f}"
        lines.append(f"{ratio.name:50} {ratio.value:7.3f} {target:>7}  {verdict}")
    lines += ["", f"{'resident in the engine':50} {'MiB':>7}", "-" * 69]
    lines += [f"{name:50} {size / 2**20:7.1f}" for name, size in report.resident_bytes.items()]
    return "\n".join(lines)


def write_json(report: BenchReport, config: BenchConfig, path: Path) -> None:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    payload = {
        "config": settings,
        "rows": [asdict(r) for r in report.rows],
        "ratios": [asdict(r) | {"met": r.met} for r in report.ratios],
        "resident_bytes": report.resident_bytes,
        "hardware": report.hardware,
    }
    path.write_text(json.dumps(payload, indent=2))
