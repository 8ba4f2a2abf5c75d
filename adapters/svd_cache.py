"""Thin SVD factors of every targeted base weight, computed once per base model and cached on disk.

`W = U diag(S) Vᵀ` (fp32, `torch.linalg.svd(full_matrices=False)`), for all 7 projections of every
layer. MoORE gates are index-specific, so one routine is used everywhere and recorded in the cache.
The cache lives under a caller-chosen directory, one folder per base fingerprint:

    <cache_dir>/<fingerprint>/factors.safetensors   layers.{i}.{proj}.{U,S,V}
    <cache_dir>/<fingerprint>/meta.json             routine, torch version, fingerprint

A folder that fails verification (other fingerprint or routine, truncated file, missing tensor or
wrong shape) is recomputed. Factors belong to the base model and are never stored in an adapter set.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from adapters.base_model import BaseModelInfo
from adapters.errors import AdapterInvalid
from adapters.safetensors_io import read_header

SVD_ROUTINE = "torch.linalg.svd(W.float(), full_matrices=False)"
FACTORS_FILE = "factors.safetensors"
META_FILE = "meta.json"
_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path("~/.cache/orthoserve/svd").expanduser()


@dataclass(frozen=True)
class SvdFactors:
    """Thin SVD of one base weight W (out, in)."""

    U: torch.Tensor  # (out, d)
    S: torch.Tensor  # (d,) descending
    V: torch.Tensor  # (in, d)

    def top(self, k: int) -> SvdFactors:
        """The k largest singular triplets."""
        return SvdFactors(self.U[:, :k], self.S[:k], self.V[:, :k])

    def reconstruct(self) -> torch.Tensor:
        return (self.U * self.S) @ self.V.T  # (out, in)


def thin_svd(weight: torch.Tensor) -> SvdFactors:
    """The one SVD routine of orthoserve (fp32, thin)."""
    U, S, Vh = torch.linalg.svd(weight.to(torch.float32), full_matrices=False)  # (out,d) (d,) (d,in)
    return SvdFactors(U.contiguous(), S.contiguous(), Vh.T.contiguous())


def factor_name(layer: int, proj: str, factor: str) -> str:
    return f"layers.{layer}.{proj}.{factor}"


def expected_factor_shapes(base: BaseModelInfo) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for layer, proj in base.targets():
        out_features, in_features = base.shape(proj)
        d = base.rank(proj)
        shapes[factor_name(layer, proj, "U")] = (out_features, d)
        shapes[factor_name(layer, proj, "S")] = (d,)
        shapes[factor_name(layer, proj, "V")] = (in_features, d)
    return shapes


class StoredFactors:
    """The factors of one projection in a cache file, each tensor read on first use (a set that needs
    only V, or only the top k triplets, reads only that)."""

    def __init__(self, handle: Any, layer: int, proj: str) -> None:
        self._handle = handle
        self._layer = layer
        self._proj = proj

    def _read(self, factor: str) -> torch.Tensor:
        return self._handle.get_tensor(factor_name(self._layer, self._proj, factor))

    @cached_property
    def U(self) -> torch.Tensor:  # noqa: N802 - the method's notation
        return self._read("U")

    @cached_property
    def S(self) -> torch.Tensor:  # noqa: N802
        return self._read("S")

    @cached_property
    def V(self) -> torch.Tensor:  # noqa: N802
        return self._read("V")

    def top(self, k: int) -> SvdFactors:
        """The k largest singular triplets, reading k columns only."""
        def columns(factor: str) -> torch.Tensor:
            return self._handle.get_slice(factor_name(self._layer, self._proj, factor))[:, :k].contiguous()

        return SvdFactors(columns("U"), self._handle.get_slice(factor_name(self._layer, self._proj, "S"))[:k], columns("V"))

    def reconstruct(self) -> torch.Tensor:
        return SvdFactors(self.U, self.S, self.V).reconstruct()


class BaseFactors:
    """Read access to one verified cache folder, through one memory-mapped handle; each projection's
    factors are read on first use and kept."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._handle: Any = None
        self._loaded: dict[tuple[int, str], StoredFactors] = {}

    def get(self, layer: int, proj: str) -> StoredFactors:
        if self._handle is None:
            self._handle = safe_open(str(self.folder / FACTORS_FILE), framework="pt")
        key = (layer, proj)
        if key not in self._loaded:
            self._loaded[key] = StoredFactors(self._handle, layer, proj)
        return self._loaded[key]


def base_factors(base: BaseModelInfo, cache_dir: Path | str | None = None, *, progress: bool = True) -> BaseFactors:
    """The verified factors of `base`, computing and caching them first if needed."""
    return BaseFactors(ensure_base_factors(base, cache_dir, progress=progress))


def ensure_base_factors(base: BaseModelInfo, cache_dir: Path | str | None = None, *, progress: bool = True) -> Path:
    """Folder holding the verified factors of `base` under `cache_dir` (computed if absent or corrupt).

    Replicas and TP ranks often share one cache folder: a lock file per fingerprint makes one process
    compute while the others wait and then reuse its result."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / base.fingerprint
    if folder.exists() and cache_problem(folder, base) is None:
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f".{base.fingerprint}.lock"):
        if folder.exists():
            problem = cache_problem(folder, base)
            if problem is None:
                return folder
            _log.warning("Recomputing the SVD cache in %s: %s", folder, problem)
        _compute_and_publish(folder, base, progress)
    return folder


def _compute_and_publish(folder: Path, base: BaseModelInfo, progress: bool) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{base.fingerprint}.", dir=folder.parent))
    try:
        _compute_into(staging, base, progress)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def cache_problem(folder: Path, base: BaseModelInfo) -> str | None:
    """Why `folder` cannot be reused for `base`, or None when it can."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        entries = read_header(folder / FACTORS_FILE)
    except (OSError, ValueError, AdapterInvalid) as error:
        return f"unreadable ({error})"
    if meta.get("fingerprint") != base.fingerprint:
        return f"fingerprint {meta.get('fingerprint')} is not {base.fingerprint}"
    if meta.get("routine") != SVD_ROUTINE:
        return f"routine '{meta.get('routine')}' is not '{SVD_ROUTINE}'"
    for name, shape in expected_factor_shapes(base).items():
        entry = entries.get(name)
        if entry is None or entry.shape != shape or entry.dtype != "F32":
            return f"tensor '{name}' is missing or has the wrong shape or dtype"
    return None


def _compute_into(folder: Path, base: BaseModelInfo, progress: bool) -> None:
    tensors: dict[str, torch.Tensor] = {}
    targets = list(base.targets())
    for layer, proj in tqdm(targets, desc="SVD of base weights", unit="matrix", disable=not progress):
        factors = thin_svd(base.read_weight(layer, proj))
        tensors[factor_name(layer, proj, "U")] = factors.U
        tensors[factor_name(layer, proj, "S")] = factors.S
        tensors[factor_name(layer, proj, "V")] = factors.V
    save_file(tensors, str(folder / FACTORS_FILE))
    meta = {"fingerprint": base.fingerprint, "routine": SVD_ROUTINE, "torch_version": torch.__version__}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
