"""Base factors `U, S, V` of one projection held once per engine for every set that shares them (MoORE),
as the two products those sets run: `x ↦ x V` and `z ↦ z Uᵀ`. Loaded with the first such set, freed
with the last."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adapters.serving.bank import ProjectionShape
from adapters.svd_cache import SvdFactors

Product = Callable[[torch.Tensor], torch.Tensor]
"""`x ↦ x @ B` for one fixed matrix B; engines may back it with a prepacked GEMM."""
ProductFactory = Callable[[torch.Tensor], Product]


def torch_product(matrix: torch.Tensor) -> Product:
    return functools.partial(torch.matmul, other=matrix)


@dataclass(frozen=True)
class ServingFactors:
    S: torch.Tensor  # (d,)
    project_in: Product  # x ↦ x V    (n, in) → (n, d)
    project_out: Product  # z ↦ z Uᵀ   (n, d) → (n, out)
    nbytes: int


class SharedFactors:
    """The factors of one projection in the adapters' compute dtype, or nothing while no slot needs them."""

    def __init__(self, compute_dtype: torch.dtype, device: torch.device, product: ProductFactory) -> None:
        self._compute_dtype = compute_dtype
        self._device = device
        self._product = product
        self._factors: ServingFactors | None = None

    def hold(self, factors: Callable[[], SvdFactors], shape: ProjectionShape) -> None:
        """Load the factors, this rank's part only: its input rows of V, its output rows of U."""
        if self._factors is not None:
            return
        f = factors()
        V = shape.input_part(f.V, 0).to(self._device, self._compute_dtype).contiguous()  # (in, d)
        U_t = shape.output_part(f.U, 0).T.to(self._device, self._compute_dtype).contiguous()  # (d, out)
        S = f.S.to(self._device, self._compute_dtype)
        nbytes = sum(t.numel() * t.element_size() for t in (V, U_t, S))
        self._factors = ServingFactors(S=S, project_in=self._product(V), project_out=self._product(U_t), nbytes=nbytes)

    def release(self) -> int:
        freed = self.nbytes
        self._factors = None
        return freed

    def current(self) -> ServingFactors:
        if self._factors is None:
            raise RuntimeError("MoORE rows reached a projection whose base factors are not loaded")
        return self._factors

    @property
    def nbytes(self) -> int:
        return 0 if self._factors is None else self._factors.nbytes
