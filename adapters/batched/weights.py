"""Per-projection serving weights, derived once at load time from a validated adapter set."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

Product = Callable[[torch.Tensor], torch.Tensor]
"""`x ↦ x @ B` for one fixed matrix B; engines may back it with a prepacked GEMM."""
ProductFactory = Callable[[torch.Tensor], Product]


def torch_product(matrix: torch.Tensor) -> Product:
    return functools.partial(torch.matmul, other=matrix)


@dataclass(frozen=True)
class MooreProjection:
    """MoORE for one projection of one set: `x M V = x V − (x Ŷ) P`, gate input `S + C[t] + (x Gᵀ) G_upᵀ`."""

    Y_hat: torch.Tensor  # (in, h) normalised Householder vectors
    P: torch.Tensor  # (h, d) compact-WY correction T̃ Ŷᵀ V
    G_t: torch.Tensor  # (in, E) router down-projection, transposed
    G_up_t: torch.Tensor  # (E, d) router up-projection, transposed
    C: torch.Tensor  # (n_tasks, d) task vectors T·Emb[t], precomputed per task


@dataclass(frozen=True)
class BaditProjection:
    """BADIT for one projection: `y = W x − U_k S_k V_kᵀ x + Σ_e w_e (x A_eᵀ) B_eᵀ`, scale folded into B.

    The top-k base triplets are copied into each set (k = K·r is small), so BADIT needs no shared factors.
    """

    V_k: torch.Tensor  # (in, k)
    S_k: torch.Tensor  # (k,)
    U_k_t: torch.Tensor  # (k, out)
    A_t: torch.Tensor  # (in, K·r)
    B_t: torch.Tensor  # (K·r, out), multiplied by s = α/r
    G_t: torch.Tensor | None  # (in, K) ability gate, transposed; None for task routing
    rank_per_expert: int  # r
    task_mixture: torch.Tensor | None  # (n_tasks, K) fixed per-task ability weights, or None for input routing


@dataclass(frozen=True)
class LoraProjection:
    A_t: torch.Tensor  # (in, r)
    B_t: torch.Tensor  # (r, out), multiplied by the LoRA scaling


@dataclass(frozen=True)
class ServingFactors:
    """Thin SVD of one base weight `W = U diag(S) Vᵀ`, as the two products MoORE shares across sets."""

    S: torch.Tensor  # (d,)
    project_in: Product  # x ↦ x V    (n, in) → (n, d)
    project_out: Product  # z ↦ z Uᵀ   (n, d) → (n, out)
    nbytes: int

    @classmethod
    def build(cls, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, product: ProductFactory = torch_product) -> ServingFactors:
        """From U (out, d), S (d,), V (in, d), already in the serving dtype."""
        U_t = U.T.contiguous()  # (d, out)
        nbytes = sum(t.numel() * t.element_size() for t in (U_t, S, V))
        return cls(S=S, project_in=product(V.contiguous()), project_out=product(U_t), nbytes=nbytes)


ProjectionWeights = MooreProjection | BaditProjection | LoraProjection


@dataclass(frozen=True)
class ResidentSlot:
    """One adapter-set version as a worker holds it: serving weights per (layer index, projection name)."""

    kind: str
    projections: dict[tuple[int, str], ProjectionWeights]

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for weights in self.projections.values()
            for t in vars(weights).values()
            if isinstance(t, torch.Tensor)
        )
