"""Adapter sets for router and admin tests: valid random sets and a corpus of broken ones.

Broken sets are made from a valid one by changing exactly one thing; where a tensor changes, the
manifest's checksum is updated too, so the loader reaches the check the corruption is aimed at.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adapters.base_model import BaseModelInfo
from adapters.format import MANIFEST_FILE, TENSORS_FILE
from adapters.initialise import init_adapter_set
from adapters.registry import MethodConfig
from adapters.safetensors_io import tensor_checksums


def make_set(
    out_dir: Path,
    base: BaseModelInfo,
    *,
    kind: str = "moore",
    tasks: list[str] | tuple[str, ...] = ("boolq", "piqa"),
    seed: int = 0,
    config: MethodConfig | None = None,
    svd_cache_dir: Path | None = None,
) -> Path:
    """A valid set with random (non-identity) weights, so it visibly changes the base model's output."""
    init_adapter_set(
        out_dir, kind=kind, base=base, tasks=list(tasks), mode="random", seed=seed, config=config,
        cache_dir=svd_cache_dir, overwrite=True,
    )
    return out_dir


def _edit_manifest(set_dir: Path, edit: Callable[[dict], None]) -> None:
    path = set_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _edit_tensors(set_dir: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Change tensors and re-record their shapes and checksums in the manifest."""
    path = set_dir / TENSORS_FILE
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    checksums = tensor_checksums(path)

    def record(manifest: dict) -> None:
        for name, tensor in tensors.items():
            manifest["tensors"][name].update(sha256=checksums[name], shape=list(tensor.shape))

    _edit_manifest(set_dir, record)


def _first_name(tensors: dict[str, torch.Tensor]) -> str:
    return sorted(tensors)[0]


def _truncate(set_dir: Path) -> None:
    path = set_dir / TENSORS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_shape(set_dir: Path) -> None:
    def shrink(tensors: dict[str, torch.Tensor]) -> None:
        name = _first_name(tensors)
        tensors[name] = tensors[name][..., :-1].contiguous()

    _edit_tensors(set_dir, shrink)


def _nan(set_dir: Path) -> None:
    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors[_first_name(tensors)].view(-1)[0] = float("nan")

    _edit_tensors(set_dir, poison)


def _unknown_kind(set_dir: Path) -> None:
    _edit_manifest(set_dir, lambda manifest: manifest.update(kind="dora"))


def _no_tasks(set_dir: Path) -> None:
    _edit_manifest(set_dir, lambda manifest: manifest.pop("tasks"))


def _no_manifest(set_dir: Path) -> None:
    (set_dir / MANIFEST_FILE).unlink()


# name → (corruption of a valid set, the adapters' error code the server must answer with)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated-safetensors": (_truncate, "file_truncated"),
    "wrong-shape": (_wrong_shape, "shape_mismatch"),
    "nan": (_nan, "non_finite_tensor"),
    "unknown-kind": (_unknown_kind, "unknown_kind"),
    "missing-task-list": (_no_tasks, "task_list_invalid"),
    "missing-manifest": (_no_manifest, "manifest_invalid"),
}


def make_broken_set(valid: Path, out_dir: Path, corruption: str) -> Path:
    shutil.copytree(valid, out_dir)
    CORRUPTIONS[corruption][0](out_dir)
    return out_dir
