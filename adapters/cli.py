"""`orthoserve adapters ...`: create, import, inspect and validate adapter sets."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from adapters.base_model import describe_base_model
from adapters.errors import AdapterError
from adapters.format import TENSORS_FILE, AdapterSet, load_adapter_set
from adapters.importers.badit_loramoe import import_badit_checkpoint
from adapters.importers.moore_peft import import_moore_checkpoint
from adapters.importers.peft_lora import import_peft_lora
from adapters.initialise import init_adapter_set
from adapters.registry import get_method, registered_methods
from adapters.svd_cache import default_cache_dir

app = typer.Typer(help="Create, import, inspect and validate adapter sets.", no_args_is_help=True)


class InitModeOption(str, enum.Enum):
    paper = "paper"
    random = "random"


class ImportFormat(str, enum.Enum):
    moore_peft = "moore-peft"
    badit_loramoe = "badit-loramoe"
    peft_lora = "peft-lora"


BaseModelOption = Annotated[Path, typer.Option("--base-model", help="Base model folder (config.json + safetensors).")]
OutOption = Annotated[Path, typer.Option("--out", help="Folder to write the set to (must not exist).")]
CacheDirOption = Annotated[Path | None, typer.Option("--cache-dir", help="SVD factor cache (default ~/.cache/orthoserve/svd).")]
NameOption = Annotated[str | None, typer.Option(help="Set name (default: the output folder name).")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]


def _fail(error: Exception) -> NoReturn:
    code = getattr(error, "code", "invalid_option")
    typer.echo(f"error [{code}]: {error}", err=True)
    raise typer.Exit(1)


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def _split(values: str | None) -> list[str] | None:
    return [v.strip() for v in values.split(",") if v.strip()] if values else None


def _parse_params(params: list[str]) -> dict[str, Any]:
    parsed = {}
    for item in params:
        key, separator, raw = item.partition("=")
        if not separator:
            raise typer.BadParameter(f"'{item}' is not key=value", param_hint="--param")
        try:
            parsed[key] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key] = raw
    return parsed


@app.command()
def init(
    kind: Annotated[str, typer.Argument(help=f"Method: {', '.join(registered_methods())}.")],
    base_model: BaseModelOption,
    tasks: Annotated[str, typer.Option(help="Comma-separated task names.")],
    out: OutOption,
    mode: Annotated[InitModeOption, typer.Option(help="paper: the method's own init; random: non-trivial, for tests.")] = InitModeOption.paper,
    targets: Annotated[str | None, typer.Option(help="Comma-separated projections (default: the method's).")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Hyper-parameter key=value (repeatable).")] = None,
    seed: int = 0,
    name: NameOption = None,
    cache_dir: CacheDirOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Initialise a new adapter set for a base model."""
    try:
        config = get_method(kind).config_cls(**_parse_params(param or []))
        created = init_adapter_set(
            out,
            kind=kind,
            base=describe_base_model(base_model),
            tasks=_split(tasks) or [],
            name=name,
            mode=mode.value,
            config=config,
            target_modules=_split(targets),
            cache_dir=cache_dir or default_cache_dir(),
            seed=seed,
            overwrite=overwrite,
        )
    except (AdapterError, ValidationError, FileExistsError) as error:
        _fail(error)
    typer.echo(f"wrote {created.kind} set '{created.name}' to {out} ({created.nbytes:,} bytes)")


@app.command("import")
def import_(
    format: Annotated[ImportFormat, typer.Argument(help="Layout of the source checkpoint.")],
    source: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
    base_model: BaseModelOption,
    out: OutOption,
    tasks: Annotated[str | None, typer.Option(help="moore-peft: the task rows to keep, e.g. arc-e,boolq or glue:cola.")] = None,
    all_task_rows: Annotated[bool, typer.Option("--all-task-rows", help="moore-peft: keep every task row (untrained rows are random).")] = False,
    task: Annotated[str, typer.Option(help="badit-loramoe / peft-lora: the set's task name.")] = "default",
    uniform_gate: Annotated[bool, typer.Option("--uniform-gate", help="badit-loramoe without a gate: route uniformly (untrained).")] = False,
    name: NameOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Convert a foreign checkpoint into an adapter set."""
    try:
        base = describe_base_model(base_model)
        common = dict(name=name, overwrite=overwrite)
        if format is ImportFormat.moore_peft:
            created = import_moore_checkpoint(
                source, base, out, tasks=_split(tasks), all_task_rows=all_task_rows, warn=_warn, **common
            )
        elif format is ImportFormat.badit_loramoe:
            created = import_badit_checkpoint(source, base, out, uniform_gate=uniform_gate, task=task, **common)
        else:
            created = import_peft_lora(source, base, out, task=task, **common)
    except (AdapterError, FileExistsError) as error:
        _fail(error)
    typer.echo(f"imported {created.kind} set '{created.name}' to {out} ({created.nbytes:,} bytes)")


@app.command()
def inspect(set_dir: Annotated[Path, typer.Argument(help="Adapter set folder.")]) -> None:
    """Print what a set holds (integrity is checked; use `validate` to check it against a base model)."""
    try:
        loaded = load_adapter_set(set_dir, None)
    except AdapterError as error:
        _fail(error)
    typer.echo(_summary(loaded, set_dir))


@app.command()
def validate(set_dir: Annotated[Path, typer.Argument(help="Adapter set folder.")], base_model: BaseModelOption) -> None:
    """Fully validate a set against a base model; exits non-zero with the reason when it is not servable."""
    try:
        loaded = load_adapter_set(set_dir, describe_base_model(base_model))
    except AdapterError as error:
        _fail(error)
    typer.echo(f"ok: {loaded.kind} set '{loaded.name}' is valid for {base_model}")


def _summary(loaded: AdapterSet, set_dir: Path) -> str:
    manifest = loaded.manifest
    hyper = ", ".join(f"{key}={value}" for key, value in manifest.hyper_parameters.items())
    provenance = ", ".join(f"{key}={value}" for key, value in manifest.provenance.items()) or "-"
    lines = [
        f"name:             {loaded.name}",
        f"kind:             {loaded.kind}",
        f"tasks:            {', '.join(loaded.tasks)} ({len(loaded.tasks)})",
        f"routing:          {'input (task optional)' if loaded.input_routed else 'task'}",
        f"targets:          {', '.join(loaded.target_modules)} x {loaded.num_layers} layers",
        f"hyper-parameters: {hyper}",
        f"tensors:          {len(loaded.tensors)} ({loaded.nbytes:,} bytes; file {(set_dir / TENSORS_FILE).stat().st_size:,})",
        f"base fingerprint: {manifest.base_fingerprint}",
        f"provenance:       {provenance}",
    ]
    return "\n".join(lines)
