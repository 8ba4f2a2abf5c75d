"""`orthoserve` command line: serve a model, prepare the default model, manage adapter sets."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.exceptions import TyperException
from pydantic import ValidationError

from adapters.cli import app as adapters_app
from adapters.evaluation.cli import eval_command
from adapters.training.cli import train_command
from server.capacity_settings import capacity_flags
from server.settings import Settings

app = typer.Typer(
    help="Multi-adapter LLM inference server on vLLM.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(adapters_app, name="adapters")
app.command("train")(train_command)
app.command("eval")(eval_command)


def _help(name: str) -> str:
    return Settings.model_fields[name].description or ""


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with every flag that was given taking precedence."""
    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as exc:
        _fail("; ".join(_setting_problem(error) for error in exc.errors()))


def _setting_problem(error: Any) -> str:
    name = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"--{name.replace('_', '-')}: {message}" if name else message


def _fail(message: str) -> NoReturn:
    """End a command with one line on stderr and exit status 2 (bad usage or configuration)."""
    typer.echo(f"orthoserve: error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
@capacity_flags(after="max_adapter_sets")
def serve(
    model: Annotated[Path | None, typer.Option(help=_help("model"))] = None,
    served_model_name: Annotated[str | None, typer.Option(help=_help("served_model_name"))] = None,
    host: Annotated[str | None, typer.Option(help=_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("port"))] = None,
    dtype: Annotated[str | None, typer.Option(help=_help("dtype"))] = None,
    max_model_len: Annotated[int | None, typer.Option(help=_help("max_model_len"))] = None,
    kv_cache_gib: Annotated[float | None, typer.Option(help=_help("kv_cache_gib"))] = None,
    tensor_parallel_size: Annotated[int | None, typer.Option(help=_help("tensor_parallel_size"))] = None,
    pipeline_parallel_size: Annotated[int | None, typer.Option(help=_help("pipeline_parallel_size"))] = None,
    cpu_threads: Annotated[int | None, typer.Option(help=_help("cpu_threads"))] = None,
    cpu_threads_bind: Annotated[str | None, typer.Option(help=_help("cpu_threads_bind"))] = None,
    admin_token: Annotated[str | None, typer.Option(help=_help("admin_token"))] = None,
    admin_token_file: Annotated[Path | None, typer.Option(help=_help("admin_token_file"))] = None,
    admin_port: Annotated[int | None, typer.Option(help=_help("admin_port"))] = None,
    max_queued_requests: Annotated[int | None, typer.Option(help=_help("max_queued_requests"))] = None,
    max_queued_requests_per_set: Annotated[int | None, typer.Option(help=_help("max_queued_requests_per_set"))] = None,
    request_timeout: Annotated[float | None, typer.Option(help=_help("request_timeout"))] = None,
    max_request_bytes: Annotated[int | None, typer.Option(help=_help("max_request_bytes"))] = None,
    engine_death_exit_seconds: Annotated[float | None, typer.Option(help=_help("engine_death_exit_seconds"))] = None,
    adapter_sets: Annotated[Path | None, typer.Option(help=_help("adapter_sets"))] = None,
    adapter_roots: Annotated[list[Path] | None, typer.Option("--adapter-root", help=_help("adapter_roots"))] = None,
    adapter_memory_budget: Annotated[int | None, typer.Option(help=_help("adapter_memory_budget"))] = None,
    max_host_sets: Annotated[int | None, typer.Option(help=_help("max_host_sets"))] = None,
    host_memory_budget: Annotated[int | None, typer.Option(help=_help("host_memory_budget"))] = None,
    pinned_sets: Annotated[list[str] | None, typer.Option("--pin", help=_help("pinned_sets"))] = None,
    adapter_resolver_root: Annotated[Path | None, typer.Option(help=_help("adapter_resolver_root"))] = None,
    enforce_eager: Annotated[bool | None, typer.Option("--enforce-eager/--no-enforce-eager", help=_help("enforce_eager"))] = None,
    adapter_dtype: Annotated[str | None, typer.Option(help=_help("adapter_dtype"))] = None,
    adapter_kinds: Annotated[list[str] | None, typer.Option("--adapter-kind", help=_help("adapter_kinds"))] = None,
    max_adapter_sets: Annotated[int | None, typer.Option(help=_help("max_adapter_sets"))] = None,
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
    tool_call_parser: Annotated[str | None, typer.Option(help=_help("tool_call_parser"))] = None,
    enable_auto_tool_choice: Annotated[bool | None, typer.Option(help=_help("enable_auto_tool_choice"))] = None,
    log_level: Annotated[str | None, typer.Option(help=_help("log_level"))] = None,
    metrics_max_tasks: Annotated[int | None, typer.Option(help=_help("metrics_max_tasks"))] = None,
    metrics_buckets: Annotated[str | None, typer.Option(help=_help("metrics_buckets"))] = None,
    **capacity: int | None,
) -> None:
    """Serve a model behind the OpenAI-compatible API."""
    settings = _settings(**{name: value for name, value in locals().items() if name != "capacity"}, **capacity)
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    from server.default_model import ensure_default_model
    from server.startup import StartupError, resolve_serving_settings

    try:
        model_dir = (settings.model or ensure_default_model(settings)).resolve()
        settings = resolve_serving_settings(settings, model_dir)
    except (StartupError, OSError) as exc:
        _fail(str(exc))

    # vLLM is imported only once the configuration is known to be good: a bad one fails in seconds.
    from server.app import create_app
    from server.engine.service import EngineService
    from server.engine_watch import ENGINE_DEAD_EXIT_CODE
    from server.listeners import serve as serve_app

    try:
        server_app = create_app(settings, EngineService(settings, model_dir))
        started = serve_app(server_app, settings)
    except (StartupError, OSError) as exc:
        _fail(str(exc))
    if not started:
        _fail("the engine failed to start (its log is above).")
    watch = server_app.state.engine_watch
    if watch is not None and watch.dead:
        # Exit now: after an engine death, vLLM's leftover threads can hold up the interpreter's exit.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ENGINE_DEAD_EXIT_CODE)


@app.command("bench-http")
def bench_http(
    model: Annotated[Path | None, typer.Option(help="Model folder (default: SmolLM2-135M-Instruct).")] = None,
    num_requests: Annotated[int, typer.Option(help="Streamed completions per batch.")] = 128,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 32,
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens per request.")] = 32,
    output_len: Annotated[int, typer.Option(help="Generated tokens per request.")] = 64,
    repeats: Annotated[int, typer.Option(help="Runs per server, interleaved (the best counts).")] = 2,
    dtype: Annotated[str, typer.Option(help="Engine dtype of both servers.")] = "auto",
    json_out: Annotated[Path, typer.Option(help="JSON report path.")] = Path("bench-results/bench-http.json"),
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
) -> None:
    """Streaming throughput and time to first token over HTTP: orthoserve against vLLM's own OpenAI server."""
    from server.default_model import ensure_default_model
    from server.startup import model_context_length
    from server.tools.http_bench import HttpBenchConfig, render_table, run_http_bench, write_json

    model_dir = (model or ensure_default_model(_settings(cache_dir=cache_dir))).resolve()
    config = HttpBenchConfig(
        model_dir, num_requests, concurrency, prompt_len, output_len, repeats,
        max_model_len=min(2048, model_context_length(model_dir)), dtype=dtype, log_dir=json_out.parent,
    )
    report = run_http_bench(config, log=typer.echo)
    typer.echo(render_table(report))
    write_json(report, json_out)
    typer.echo(f"wrote {json_out}")


@app.command("bench-many-sets")
def bench_many_sets(
    model: Annotated[Path | None, typer.Option(help="Model folder (default: SmolLM2-135M-Instruct).")] = None,
    kind: Annotated[str, typer.Option(help="Adapter kind of the registered sets.")] = "lora",
    sets: Annotated[int, typer.Option(help="Sets registered at start.")] = 1000,
    slots: Annotated[int, typer.Option(help="Engine slots for that kind.")] = 64,
    zipf_alpha: Annotated[float, typer.Option(help="Exponent of the Zipf workload.")] = 1.0,
    num_requests: Annotated[int, typer.Option(help="Streamed completions per workload.")] = 256,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 64,
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens per request.")] = 32,
    output_len: Annotated[int, typer.Option(help="Generated tokens per request.")] = 64,
    dtype: Annotated[str, typer.Option(help="Engine dtype.")] = "float32",
    work_dir: Annotated[Path, typer.Option(help="Where the sets are written (kept between runs).")] = Path("bench-results/many-sets"),
    json_out: Annotated[Path, typer.Option(help="JSON report path.")] = Path("bench-results/bench-many-sets.json"),
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
) -> None:
    """More registered sets than engine slots: base, uniform and Zipf workloads over HTTP, with swap-ins."""
    from server.default_model import ensure_default_model
    from server.startup import model_context_length
    from server.tools.http_bench import HttpBenchConfig
    from server.tools.many_sets_bench import ManySetsConfig, render_table, run_many_sets_bench, write_json

    settings = _settings(cache_dir=cache_dir)
    model_dir = (model or ensure_default_model(settings)).resolve()
    load = HttpBenchConfig(
        model_dir, num_requests, concurrency, prompt_len, output_len, repeats=1,
        max_model_len=min(2048, model_context_length(model_dir)), dtype=dtype, log_dir=json_out.parent,
    )  # fmt: skip
    config = ManySetsConfig(
        load, kind, sets, slots, zipf_alpha, work_dir.resolve(), cache_dir=settings.cache_dir, svd_cache_dir=settings.svd_cache_dir
    )
    report = run_many_sets_bench(config, log=typer.echo)
    typer.echo(render_table(report))
    write_json(report, json_out)
    typer.echo(f"wrote {json_out}")


def settings_table() -> str:
    """The Markdown table of `orthoserve serve`'s flags, from the command and `Settings` (docs/settings.md
    holds it; a test keeps the two equal)."""
    serve_command = typer.main.get_command(app).commands["serve"]
    rows = ["| Flag | Environment variable | Default | Meaning |", "| --- | --- | --- | --- |"]
    for param in serve_command.params:
        field = Settings.model_fields[param.name]
        env = field.validation_alias or f"ORTHOSERVE_{param.name.upper()}"
        rows.append(f"| `{param.opts[0]}` | `{env}` | {_shown_default(field.get_default(call_default_factory=True))} | {field.description} |")
    return "\n".join(rows) + "\n"


def _shown_default(value: Any) -> str:
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        return f"`{str(value).replace(str(Path.home()), '~', 1)}`"
    if isinstance(value, tuple):
        return f"`{','.join(f'{item:g}' for item in value)}`"
    return f"`{value}`"


@app.command("prepare-model")
def prepare_model(
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
) -> None:
    """Convert the default model (SmolLM2-135M-Instruct) to a safetensors folder once, and print its path."""
    from server.default_model import ensure_default_model

    typer.echo(ensure_default_model(_settings(cache_dir=cache_dir)))


@app.command()
def bench(
    model: Annotated[Path | None, typer.Option(help="Base model folder (default: SmolLM2-135M-Instruct).")] = None,
    num_requests: Annotated[int, typer.Option(help="Requests per batch.")] = 64,
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens per request.")] = 32,
    output_len: Annotated[int, typer.Option(help="Generated tokens per request.")] = 64,
    repeats: Annotated[int, typer.Option(help="Timed runs per scenario (the best counts).")] = 2,
    lora_rank: Annotated[int, typer.Option(help="Rank of the LoRA adapters.")] = 8,
    moore_sets: Annotated[int, typer.Option(help="Distinct MoORE sets in the widest MoORE batch.")] = 8,
    many_tasks: Annotated[int, typer.Option(help="Tasks of the MoORE set whose tasks spread over a batch.")] = 1000,
    lora_adapters: Annotated[int, typer.Option(help="Distinct LoRA adapters in the widest LoRA batch.")] = 64,
    lora_resident: Annotated[int, typer.Option(help="LoRA adapters resident for the residency scenario.")] = 256,
    compiled: Annotated[bool, typer.Option(help="Also run an engine vLLM compiles (slow start).")] = False,
    tensor_parallel_size: Annotated[int, typer.Option(help="Tensor-parallel degree of every engine.")] = 1,
    dtype: Annotated[str, typer.Option(help="Engine dtype.")] = "auto",
    work_dir: Annotated[Path, typer.Option(help="Where the benchmark's adapter sets are written.")] = Path("bench-results/work"),
    json_out: Annotated[Path, typer.Option(help="JSON report path.")] = Path("bench-results/bench.json"),
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
) -> None:
    """Throughput of every adapter kind and of many distinct sets per batch, as ratios to the base model."""
    from server.tools.bench import BenchConfig, render_table, run_bench, write_json
    from server.default_model import ensure_default_model

    settings = _settings(cache_dir=cache_dir)
    config = BenchConfig(
        model_dir=(model or ensure_default_model(settings)).resolve(),
        work_dir=work_dir.resolve(),
        svd_cache_dir=settings.svd_cache_dir,
        num_requests=num_requests,
        prompt_len=prompt_len,
        output_len=output_len,
        repeats=repeats,
        lora_rank=lora_rank,
        moore_sets=moore_sets,
        many_tasks=many_tasks,
        lora_adapters=lora_adapters,
        lora_resident=lora_resident,
        compiled=compiled,
        tensor_parallel_size=tensor_parallel_size,
        dtype=dtype,
    )
    report = run_bench(config, log=typer.echo)
    typer.echo(render_table(report))
    json_out.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, config, json_out)
    typer.echo(f"wrote {json_out}")


@app.command()
def soak(
    model: Annotated[Path | None, typer.Option(help="Base model folder (default: SmolLM2-135M-Instruct).")] = None,
    requests: Annotated[int, typer.Option(help="Requests to send.")] = 2000,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 32,
    replace_every: Annotated[float, typer.Option(help="Seconds between replacements of the MoORE set.")] = 1.0,
    cycle_every: Annotated[float, typer.Option(help="Seconds between unload/reloads of the BADIT set.")] = 3.0,
    work_dir: Annotated[Path, typer.Option(help="Where the soak's sets and server log are written.")] = Path("soak-results/work"),
    json_out: Annotated[Path, typer.Option(help="JSON report path.")] = Path("soak-results/soak.json"),
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Soak this running server instead of starting one. It must run on this machine, serve --model in "
            "fp32, and --work-dir must lie under one of its adapter roots."
        ),
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option(help="Admin token: the running server's with --url, else the one the soak's server is given.")
    ] = None,
) -> None:
    """Drive a real server with mixed traffic while sets are replaced and reloaded; exit 1 on any failure."""
    from server.default_model import ensure_default_model
    from server.tools.soak import ADMIN_TOKEN, SoakConfig, render_report, run_soak, write_json

    config = SoakConfig(
        model_dir=(model or ensure_default_model(_settings(cache_dir=cache_dir))).resolve(),
        work_dir=work_dir.resolve(),
        requests=requests,
        concurrency=concurrency,
        replace_every=replace_every,
        cycle_every=cycle_every,
        url=url,
        admin_token=admin_token or ADMIN_TOKEN,
    )
    try:
        report = run_soak(config, log=typer.echo)
    except RuntimeError as exc:  # the server could not be started or reached, or refused a set
        typer.echo(f"soak: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(render_report(report))
    write_json(report, config, json_out)
    typer.echo(f"wrote {json_out}")
    if report.failures or report.wrong_version:
        raise typer.Exit(1)


def main() -> None:
    """The `orthoserve` command: usage errors are one line on stderr (exit status 2), like start-up errors."""
    try:
        status = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except TyperException as exc:  # usage errors: unknown flag, a value of the wrong type, no command
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message:
            typer.echo(f"orthoserve: error: {message}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
