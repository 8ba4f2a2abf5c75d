"""Adapter sets on disk: a folder with `manifest.json` and `adapter.safetensors`.

    <set>/manifest.json          see adapters/manifest.py (version, kind, base fingerprint, targets,
                                 hyper-parameters, tasks, sha256/shape/dtype of every tensor)
    <set>/adapter.safetensors    tensors `layers.{i}.{proj}.{param}` (params per method: see
                                 adapters/{moore,badit,lora}/loader.py)

`load_adapter_set` validates everything before a tensor is handed out, in two steps that can also run
apart: `check_structure` (manifest and header, no tensor bytes) and `read_checked_tensors` (checksums
and values). `save_adapter_set` validates the same way, writes into a temporary folder and renames it
into place.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adapters.base_model import BaseModelInfo
from adapters.errors import (
    AdapterNotFound,
    ChecksumMismatch,
    DtypeInvalid,
    ExtraTensor,
    FileTruncated,
    FingerprintMismatch,
    ManifestInvalid,
    MissingTensor,
    NonFiniteTensor,
    ShapeMismatch,
    format_names,
)
from adapters.manifest import FORMAT_VERSION, Manifest, hyper_parameters_of, parse_manifest
from adapters.registry import MethodConfig, MethodSpec
from adapters.safetensors_io import TensorEntry, check_regular_file, read_header, tensor_checksums
from adapters.tensor_names import TENSOR_NAME

MANIFEST_FILE = "manifest.json"
TENSORS_FILE = "adapter.safetensors"
_DTYPES: dict[str, torch.dtype] = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_DTYPE_TAGS = {dtype: tag for tag, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class AdapterSet:
    """A validated adapter set in memory."""

    manifest: Manifest
    config: MethodConfig
    tensors: dict[str, torch.Tensor]
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.manifest.tasks

    @property
    def target_modules(self) -> tuple[str, ...]:
        return self.manifest.target_modules

    @property
    def num_layers(self) -> int:
        return self.manifest.num_layers

    @property
    def method(self) -> MethodSpec:
        return self.manifest.method()

    @property
    def input_routed(self) -> bool:
        """True when a request may omit the task (a BADIT set routed on its input)."""
        return self.method.input_routed(self.config)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def module(self, layer: int, proj: str) -> Any:
        """The method's typed view of one module (MooreModule, BaditModule or LoraModule)."""
        return self.method.module_view(self.tensors, layer, proj, self.config)

    def modules(self) -> Iterator[tuple[int, str, Any]]:
        for layer in range(self.num_layers):
            for proj in self.target_modules:
                yield layer, proj, self.module(layer, proj)


@dataclass(frozen=True)
class SetStructure:
    """A set whose manifest, tensor names, shapes and dtypes are checked; its tensor bytes are not read yet."""

    path: Path
    manifest: Manifest
    config: MethodConfig
    entries: dict[str, TensorEntry]

    @property
    def num_elements(self) -> int:
        """Elements of all its tensors together."""
        return sum(math.prod(entry.shape) for entry in self.entries.values())


def load_adapter_set(path: Path | str, base: BaseModelInfo | None) -> AdapterSet:
    """Read and fully validate a set. With `base=None` (inspection only) the base checks are skipped."""
    structure = check_structure(path, base)
    tensors = read_checked_tensors(structure)
    return AdapterSet(manifest=structure.manifest, config=structure.config, tensors=tensors, path=structure.path)


def check_structure(path: Path | str, base: BaseModelInfo | None) -> SetStructure:
    """Everything but the tensor bytes: the manifest, the base fingerprint, the tensor file's header
    (a regular file whose byte ranges are whole and disjoint), and every tensor's name, shape and dtype.
    Cheap: reads the manifest and the header only. After it, the file is safe to hand to a reader."""
    path = Path(path)
    manifest = read_manifest(path)
    config = manifest.method_config()
    expected = _expected_shapes(manifest, config, base)
    tensors_path = path / TENSORS_FILE
    check_regular_file(tensors_path)
    if not tensors_path.is_file():
        raise MissingTensor(f"{path} has no {TENSORS_FILE}.", field=TENSORS_FILE)
    entries = read_header(tensors_path)
    _check_names("the manifest", set(manifest.tensors), "expected for this base model", set(expected))
    _check_names(TENSORS_FILE, set(entries), "listed in the manifest", set(manifest.tensors))
    for name, entry in entries.items():
        record = manifest.tensors[name]
        _check_shape(name, entry.shape, expected[name], base)
        if entry.shape != record.shape:
            raise ShapeMismatch(f"Tensor '{name}' has shape {list(entry.shape)} but the manifest says {list(record.shape)}.", field=name)
        _check_dtype(name, entry.dtype, manifest.method())
        if entry.dtype != record.dtype:
            raise DtypeInvalid(f"Tensor '{name}' is {entry.dtype} but the manifest says {record.dtype}.", field=name)
    return SetStructure(path=path, manifest=manifest, config=config, entries=entries)


def read_checked_tensors(structure: SetStructure) -> dict[str, torch.Tensor]:
    """The tensors of a set whose structure is checked, each read once: its bytes must match the
    manifest's sha256, and its values must be finite and pass the method's checks."""
    tensors = {}
    with (structure.path / TENSORS_FILE).open("rb") as handle:
        for name, entry in sorted(structure.entries.items(), key=lambda item: item[1].start):
            tensor = torch.empty(entry.shape, dtype=_DTYPES[entry.dtype])
            raw = tensor.view(-1).view(torch.uint8).numpy()  # the tensor's own bytes, filled in place
            handle.seek(entry.start)
            if handle.readinto(raw) != raw.size:
                raise FileTruncated(f"{TENSORS_FILE} ended inside tensor '{name}': the file changed while it was read.", field=name)
            if hashlib.sha256(raw).hexdigest() != structure.manifest.tensors[name].sha256:
                raise ChecksumMismatch(f"Tensor '{name}' does not match its sha256 in the manifest: the file is corrupt.", field=name)
            tensors[name] = tensor
    _check_values(tensors, structure.manifest.method(), structure.config)
    return tensors


def read_manifest(path: Path | str) -> Manifest:
    path = Path(path)
    if not path.is_dir():
        raise AdapterNotFound(f"No adapter set at {path}.")
    manifest_path = path / MANIFEST_FILE
    check_regular_file(manifest_path)
    if not manifest_path.is_file():
        raise ManifestInvalid(f"{path} has no {MANIFEST_FILE}.", field=MANIFEST_FILE)
    try:
        raw = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestInvalid(f"{manifest_path} is not valid JSON: {error}.") from error
    manifest, _ = parse_manifest(raw)
    return manifest


def save_adapter_set(
    out_dir: Path | str,
    *,
    name: str,
    config: MethodConfig,
    base: BaseModelInfo,
    target_modules: list[str] | tuple[str, ...],
    tasks: list[str] | tuple[str, ...],
    tensors: dict[str, torch.Tensor],
    provenance: dict[str, str] | None = None,
    overwrite: bool = False,
) -> AdapterSet:
    """Validate and write a set atomically (temporary folder, then rename)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it.")
    raw: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "kind": config.kind,  # type: ignore[attr-defined]
        "base_fingerprint": base.fingerprint,
        "num_layers": base.num_layers,
        "target_modules": list(target_modules),
        "hyper_parameters": hyper_parameters_of(config),
        "tasks": list(tasks),
        "tensors": {},
        "provenance": provenance or {},
    }
    manifest, config = parse_manifest(raw)
    expected = _expected_shapes(manifest, config, base)
    _check_names("the tensors to save", set(tensors), "expected for this base model", set(expected))
    for tensor_name, tensor in tensors.items():
        _check_shape(tensor_name, tuple(tensor.shape), expected[tensor_name], base)
        if tensor.dtype not in _DTYPE_TAGS:
            raise DtypeInvalid(f"Tensor '{tensor_name}' is {tensor.dtype}; use float32, bfloat16 or float16.", field=tensor_name)
        _check_dtype(tensor_name, _DTYPE_TAGS[tensor.dtype], manifest.method())
    _check_values(tensors, manifest.method(), config)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tensors_path = staging / TENSORS_FILE
        save_file({k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())}, str(tensors_path))
        entries = read_header(tensors_path)
        raw["tensors"] = {
            k: {"sha256": digest, "shape": list(entries[k].shape), "dtype": entries[k].dtype}
            for k, digest in tensor_checksums(tensors_path).items()
        }
        manifest = Manifest.model_validate(raw)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        _replace_dir(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return AdapterSet(manifest=manifest, config=config, tensors=dict(tensors), path=out_dir)


def _replace_dir(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    retired.rmdir()
    out_dir.rename(retired)
    staging.rename(out_dir)
    shutil.rmtree(retired)


def _expected_shapes(manifest: Manifest, config: MethodConfig, base: BaseModelInfo | None) -> dict[str, tuple[int, ...]]:
    """Names and shapes the set must hold: from the base model, or (no base) the manifest's own records."""
    if base is None:
        for name in manifest.tensors:
            match = TENSOR_NAME.match(name)
            if not match or int(match.group(1)) >= manifest.num_layers or match.group(2) not in manifest.target_modules:
                raise ExtraTensor(f"Tensor '{name}' is not a tensor of this set's layers and target modules.", field=name)
        return {name: record.shape for name, record in manifest.tensors.items()}
    if manifest.base_fingerprint != base.fingerprint:
        raise FingerprintMismatch(
            f"Set '{manifest.name}' was made for base model {manifest.base_fingerprint}, "
            f"not for {base.model_dir} ({base.fingerprint}).",
            field="base_fingerprint",
        )
    if manifest.num_layers != base.num_layers:
        raise ShapeMismatch(
            f"Set '{manifest.name}' has {manifest.num_layers} layers; the base model has {base.num_layers}.",
            field="num_layers",
        )
    return manifest.method().expected_tensors(config, base, list(manifest.target_modules), len(manifest.tasks))


def _check_names(found_where: str, found: set[str], expected_where: str, expected: set[str]) -> None:
    missing, extra = expected - found, found - expected
    if missing:
        first = sorted(missing)[0]
        raise MissingTensor(f"{found_where} lacks tensors {expected_where}: {format_names(missing)}.", field=first)
    if extra:
        first = sorted(extra)[0]
        raise ExtraTensor(f"{found_where} has tensors not {expected_where}: {format_names(extra)}.", field=first)


def _check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...], base: BaseModelInfo | None) -> None:
    if tuple(shape) != tuple(expected):
        against = f"the base model {base.model_dir}" if base else "the manifest"
        raise ShapeMismatch(f"Tensor '{name}' has shape {list(shape)}; {against} requires {list(expected)}.", field=name)


def _check_dtype(name: str, tag: str, method: MethodSpec) -> None:
    if tag not in _DTYPES:
        raise DtypeInvalid(f"Tensor '{name}' has dtype {tag}; adapter tensors must be F32, BF16 or F16.", field=name)
    if name.rsplit(".", 1)[-1] in method.fp32_params and tag != "F32":
        raise DtypeInvalid(f"Tensor '{name}' must be stored as F32 (it is {tag}).", field=name)


def _check_values(tensors: dict[str, torch.Tensor], method: MethodSpec, config: MethodConfig) -> None:
    for name in sorted(tensors):
        tensor = tensors[name]
        if not _all_finite(tensor):
            raise NonFiniteTensor(f"Tensor '{name}' contains NaN or infinite values.", field=name)
        method.check_values(name, tensor, config)



def _all_finite(tensor: torch.Tensor) -> bool:
    # One pass without a boolean copy: NaN spreads to both extremes, ±inf shows in one of them.
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def read_validated_set(path: Path | str) -> AdapterSet:
    """Read a set that `load_adapter_set` has already validated against the base, without repeating
    the checks (engine workers loading a set the server has just validated)."""
    path = Path(path)
    manifest = read_manifest(path)
    tensors = load_file(str(path / TENSORS_FILE))
    return AdapterSet(manifest=manifest, config=manifest.method_config(), tensors=tensors, path=path)
