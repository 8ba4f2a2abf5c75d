"""BADIT math (methods.md §2), pure torch, fp32 inside.

BAD split of the top k = K·r triplets into K contiguous rank-r experts (expert 0 = largest σ),
PiSSA-style with s = α/r:  B_e = U_e diag(√(S_e/s)),  A_e = diag(√(S_e/s)) V_eᵀ.
Forward:  y = W_res x + s Σ_e w_e B_e A_e x,  W_res = W − U_k diag(S_k) V_kᵀ,  w = softmax(G x̄).
With top-k routing (k_route < K, PEFT LoRAMoE's `top_k`), only the k_route largest w_e are kept and
renormalised to sum to 1; the others are 0.
A (K·r × in) stacks the A_e, B (out × K·r) concatenates the B_e.
"""

from __future__ import annotations

import torch


def bad_split(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, k: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) from the top-k triplets: A (k, in), B (out, k); B A = U_k diag(S_k) V_kᵀ / s."""
    root = torch.sqrt(S[:k].to(torch.float32) / scale)  # (k,)
    A = root.unsqueeze(1) * V[:, :k].to(torch.float32).T  # (k, in)
    B = U[:, :k].to(torch.float32) * root  # (out, k)
    return A, B


def residual_weight(W: torch.Tensor, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, k: int) -> torch.Tensor:
    """W_res = W − U_k diag(S_k) V_kᵀ (out, in)."""
    top = (U[:, :k].to(torch.float32) * S[:k].to(torch.float32)) @ V[:, :k].to(torch.float32).T  # (out, in)
    return W.to(torch.float32) - top


def masked_mean(x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """x̄: mean of the rows of x (n, in) where token_mask (n,) is True; padding never counts."""
    weights = token_mask.to(torch.float32).unsqueeze(1)  # (n, 1)
    return (x.to(torch.float32) * weights).sum(0) / weights.sum().clamp(min=1.0)  # (in,)


def ability_weights(x_mean: torch.Tensor, G: torch.Tensor, route_top_k: int | None = None) -> torch.Tensor:
    """w = softmax(G x̄), optionally kept to its top k and renormalised: (..., K) for x̄ (..., in)."""
    w = torch.softmax(x_mean.to(torch.float32) @ G.to(torch.float32).T, dim=-1)  # (..., in) @ (in, K) → (..., K)
    return w if route_top_k is None else top_k_renormalise(w, route_top_k)


def top_k_renormalise(w: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest weights of each row of w (..., K), zero the others, rescale the kept ones to sum 1."""
    if k >= w.shape[-1]:
        return w
    kept, index = torch.topk(w, k, dim=-1)  # (..., k)
    sparse = torch.zeros_like(w).scatter(-1, index, kept)  # (..., K)
    return sparse / sparse.sum(-1, keepdim=True)


def expert_sum(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, w: torch.Tensor, rank: int) -> torch.Tensor:
    """Σ_e w_e (x A_eᵀ) B_eᵀ, one expert at a time (the definition): (n, out)."""
    x = x.to(torch.float32)  # (n, in)
    out = torch.zeros(x.shape[0], B.shape[0], dtype=torch.float32, device=x.device)  # (n, out)
    for e in range(w.shape[0]):
        rows = slice(e * rank, (e + 1) * rank)
        out = out + w[e] * ((x @ A[rows].to(torch.float32).T) @ B[:, rows].to(torch.float32).T)  # (n, r) → (n, out)
    return out


def vector_scaled_lora(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """((x Aᵀ) ⊙ ω) Bᵀ: a rank-K·r LoRA with a vector scale between shrink and expand, ω = repeat(w, r)."""
    return ((x.to(torch.float32) @ A.to(torch.float32).T) * omega) @ B.to(torch.float32).T  # (n, k) → (n, out)


def badit_forward(
    x: torch.Tensor, W_res: torch.Tensor, A: torch.Tensor, B: torch.Tensor, w: torch.Tensor, rank: int, scale: float
) -> torch.Tensor:
    """y = x W_resᵀ + s Σ_e w_e (x A_eᵀ) B_eᵀ, the whole output (n, out)."""
    y = x.to(torch.float32) @ W_res.to(torch.float32).T + scale * expert_sum(x, A, B, w, rank)  # (n, out)
    return y.to(x.dtype)
