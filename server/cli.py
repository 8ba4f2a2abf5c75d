"""`orthoserve` command line: serve a model, prepare the default model, manage adapter sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from adapters.cli import app as adapters_app
from server.settings import Settings

app = typer.Typer(help="Multi-adapter LLM inference server on vLLM.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")


def _help(name: str) -> str:
    return Settings.model_fields[name].description or ""


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with every flag that was given taking precedence."""
    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def serve(
    model: Annotated[Path | None, typer.Option(help=_help("model"))] = None,
    served_model_name: Annotated[str | None, typer.Option(help=_help("served_model_name"))] = None,
    host: Annotated[str | None, typer.Option(help=_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("port"))] = None,
    dtype: Annotated[str | None, typer.Option(help=_help("dtype"))] = None,
    max_model_len: Annotated[int | None, typer.Option(help=_help("max_model_len"))] = None,
    kv_cache_gib: Annotated[float | None, typer.Option(help=_help("kv_cache_gib"))] = None,
    tensor_parallel_size: Annotated[int | None, typer.Option(help=_help("tensor_parallel_size"))] = None,
    cpu_threads: Annotated[int | None, typer.Option(help=_help("cpu_threads"))] = None,
    admin_token: Annotated[str | None, typer.Option(help=_help("admin_token"))] = None,
    adapter_sets: Annotated[Path | None, typer.Option(help=_help("adapter_sets"))] = None,
    adapter_roots: Annotated[list[Path] | None, typer.Option("--adapter-root", help=_help("adapter_roots"))] = None,
    adapter_memory_budget: Annotated[int | None, typer.Option(help=_help("adapter_memory_budget"))] = None,
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
    log_level: Annotated[str | None, typer.Option(help=_help("log_level"))] = None,
    metrics_max_tasks: Annotated[int | None, typer.Option(help=_help("metrics_max_tasks"))] = None,
    metrics_buckets: Annotated[str | None, typer.Option(help=_help("metrics_buckets"))] = None,
) -> None:
    """Serve a model behind the OpenAI-compatible API."""
    settings = _settings(**locals())

    import uvicorn

    from server.app import create_app
    from server.default_model import ensure_default_model
    from server.engine.service import EngineService

    model_dir = settings.model or ensure_default_model(settings)
    if not (model_dir / "config.json").is_file():
        raise typer.BadParameter(f"{model_dir} is not a Hugging Face model folder (no config.json)", param_hint="--model")
    engine = EngineService(settings, model_dir.resolve())
    uvicorn.run(create_app(settings, engine), host=settings.host, port=settings.port, log_level=settings.log_level)


@app.command("prepare-model")
def prepare_model(
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
) -> None:
    """Convert the default model (SmolLM2-135M-Instruct) to a safetensors folder once, and print its path."""
    from server.default_model import ensure_default_model

    typer.echo(ensure_default_model(_settings(cache_dir=cache_dir)))


if __name__ == "__main__":
    app()
