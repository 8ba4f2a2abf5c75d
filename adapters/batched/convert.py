"""Serving weights from a validated adapter set and the base factors, computed once at load time.

Everything that does not depend on the token is folded here: MoORE's compact-WY correction
`P = T̃ Ŷ V` and task vectors `c_t = T·Emb[t]`, BADIT's scale `s` (into B), LoRA's scaling (into B),
and the transposes the serving products want.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from adapters.badit.loader import BaditModule
from adapters.batched.weights import (
    BaditProjection,
    LoraProjection,
    MooreProjection,
    ProductFactory,
    ProjectionWeights,
    ResidentSlot,
    ServingFactors,
    torch_product,
)
from adapters.format import AdapterSet, load_adapter_set
from adapters.lora.loader import LoraModule
from adapters.moore.loader import MooreModule
from adapters.moore.math import rotation_correction
from adapters.svd_cache import BaseFactors

NEEDS_SVD_CACHE = ("moore", "badit")
SHARES_BASE_FACTORS = ("moore",)  # BADIT copies its small top-k slice into the set instead


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype).contiguous()


def serving_projection(module: object, factors: BaseFactors, layer: int, proj: str, dtype: torch.dtype) -> ProjectionWeights:
    if isinstance(module, MooreModule):
        Y_hat_t, P = rotation_correction(module.Y, factors.get(layer, proj).V)  # (in, h), (h, d)
        return MooreProjection(
            Y_hat=_cast(Y_hat_t, dtype),
            P=_cast(P, dtype),
            G_t=_cast(module.G.T, dtype),
            G_up_t=_cast(module.G_up.T, dtype),
            C=_cast(module.task_vectors(), dtype),
        )
    if isinstance(module, BaditModule):
        top = factors.get(layer, proj).top(module.num_experts * module.expert_rank)
        return BaditProjection(
            V_k=_cast(top.V, dtype),
            S_k=_cast(top.S, dtype),
            U_k_t=_cast(top.U.T, dtype),
            A_t=_cast(module.A.T, dtype),
            B_t=_cast(module.B.to(torch.float32).T * module.scale, dtype),
            G_t=None if module.G is None else _cast(module.G.T, dtype),
            rank_per_expert=module.expert_rank,
            task_mixture=None if module.task_mixture is None else _cast(module.task_mixture, dtype),
        )
    if isinstance(module, LoraModule):
        return LoraProjection(A_t=_cast(module.A.T, dtype), B_t=_cast(module.B.to(torch.float32).T * module.scaling, dtype))
    raise TypeError(f"no serving form for {type(module).__name__}")


def serving_slot(adapter_set: AdapterSet, factors_dir: Path | None, dtype: torch.dtype) -> ResidentSlot:
    factors = BaseFactors(factors_dir) if factors_dir is not None else None
    if adapter_set.kind in NEEDS_SVD_CACHE and factors is None:
        raise ValueError(f"a {adapter_set.kind} set needs the base factors")
    projections = {
        (layer, proj): serving_projection(module, factors, layer, proj, dtype)
        for layer, proj, module in adapter_set.modules()
    }
    return ResidentSlot(kind=adapter_set.kind, projections=projections)


def load_serving_slot(set_dir: Path, dtype: torch.dtype, factors_dir: Path | None) -> ResidentSlot:
    """Read a set (already validated against the base by the server) and build its serving weights."""
    return serving_slot(load_adapter_set(set_dir, base=None), factors_dir, dtype)


def load_serving_factors(
    factors_dir: Path,
    keys: Iterable[tuple[int, str]],
    dtype: torch.dtype,
    product: ProductFactory = torch_product,
) -> dict[tuple[int, str], ServingFactors]:
    """The base factors of the given (layer, projection) pairs, in the serving dtype, as shared products."""
    factors = BaseFactors(factors_dir)
    serving = {}
    for layer, proj in keys:
        f = factors.get(layer, proj)
        serving[(layer, proj)] = ServingFactors.build(_cast(f.U, dtype), _cast(f.S, dtype), _cast(f.V, dtype), product)
    return serving
