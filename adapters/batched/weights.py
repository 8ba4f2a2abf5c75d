"""Per-projection serving weights, derived once at load time from a validated adapter set."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    """BADIT for one projection: `y = W x − U_k S_k V_kᵀ x + Σ_e w_e (x A_eᵀ) B_eᵀ`, scale folded into B."""

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
    """Thin SVD of one base weight `W = U diag(S) Vᵀ`, in serving layout."""

    U_t: torch.Tensor  # (d, out)
    S: torch.Tensor  # (d,)
    V: torch.Tensor  # (in, d)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.U_t, self.S, self.V))


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
