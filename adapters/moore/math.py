"""MoORE math (methods.md §1), pure torch; every function works in fp32 and casts back.

Per adapted matrix W = U diag(S) Vᵀ (out×in, d = min(in, out)) and a token x (row of size in):

    z = (x M) V                           M = H_1⋯H_h, H_i = I − 2 ŷ_i ŷ_iᵀ
    g = ReLU(S + T·Emb[t] + G_up (G x))
    y = (z ⊙ g) Uᵀ                        the whole output: it replaces x Wᵀ

Householder vectors are stored as the rows of Y (h×in).
"""

from __future__ import annotations

import torch


def normalise_householder(Y: torch.Tensor) -> torch.Tensor:
    """ŷ_i = y_i / ‖y_i‖, fp32."""
    Y = Y.to(torch.float32)  # (h, in)
    return Y / torch.linalg.vector_norm(Y, dim=1, keepdim=True)  # (h, in)


def rotate_explicit(x: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """x M = x H_1 H_2 ⋯ H_h, one reflection at a time (the definition)."""
    Y_hat = normalise_householder(Y)  # (h, in)
    out = x.to(torch.float32)  # (n, in)
    for y in Y_hat:  # (in,)
        out = out - 2.0 * (out @ y).unsqueeze(-1) * y  # (n, in)
    return out


def compact_wy(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ŷ, T̃) with M = H_1⋯H_h = I − Ŷᵀ T̃ Ŷ, T̃ upper-triangular (h×h).

    For unit vectors and H_i = I − 2 ŷ_i ŷ_iᵀ, T̃⁻¹ = ½ I + striu(Ŷ Ŷᵀ) (the compact WY form of
    Schreiber and Van Loan, in the closed form of Joffrain et al.), so T̃ is one triangular solve.
    """
    Y_hat = normalise_householder(Y)  # (h, in)
    h = Y_hat.shape[0]
    eye = torch.eye(h, dtype=torch.float32, device=Y_hat.device)  # (h, h)
    T_inverse = 0.5 * eye + torch.triu(Y_hat @ Y_hat.T, diagonal=1)  # (h, h)
    return Y_hat, torch.linalg.solve_triangular(T_inverse, eye, upper=True)


def rotation_correction(Y: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ŷᵀ, P) such that x M V = x V − (x Ŷᵀ) P, P = T̃ Ŷ V (h×d)."""
    Y_hat, T_tilde = compact_wy(Y)  # (h, in), (h, h)
    P = T_tilde @ (Y_hat @ V.to(torch.float32))  # (h, d)
    return Y_hat.T, P  # (in, h), (h, d)


def rotate_and_project_wy(x: torch.Tensor, Y: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """x M V through the compact-WY form: x V − (x Ŷᵀ) P."""
    Y_hat_t, P = rotation_correction(Y, V)
    x = x.to(torch.float32)  # (n, in)
    return x @ V.to(torch.float32) - (x @ Y_hat_t) @ P  # (n, d)


def householder_matrix(Y: torch.Tensor) -> torch.Tensor:
    """M (in×in), explicitly."""
    eye = torch.eye(Y.shape[1], dtype=torch.float32, device=Y.device)  # (in, in)
    return rotate_explicit(eye, Y)  # rows of I M = M


def task_vectors(T: torch.Tensor, Emb: torch.Tensor) -> torch.Tensor:
    """c_t = T·Emb[t] for every task: (n_tasks, d)."""
    return Emb.to(torch.float32) @ T.to(torch.float32).T  # (n_tasks, e) @ (e, d) → (n_tasks, d)


def gate(x: torch.Tensor, S: torch.Tensor, c_t: torch.Tensor, G: torch.Tensor, G_up: torch.Tensor) -> torch.Tensor:
    """g = ReLU(S + c_t + G_up (G x)); the router reads the raw (unrotated) x."""
    x = x.to(torch.float32)  # (n, in)
    router = (x @ G.to(torch.float32).T) @ G_up.to(torch.float32).T  # (n, E) → (n, d)
    return torch.relu(S.to(torch.float32) + c_t.to(torch.float32) + router)  # (n, d)


def moore_forward(
    x: torch.Tensor,
    U: torch.Tensor,
    S: torch.Tensor,
    V: torch.Tensor,
    Y: torch.Tensor,
    G: torch.Tensor,
    G_up: torch.Tensor,
    c_t: torch.Tensor,
) -> torch.Tensor:
    """y = ((x M) V ⊙ g) Uᵀ, the whole layer output for the rows of x (one task)."""
    z = rotate_explicit(x, Y) @ V.to(torch.float32)  # (n, in) → (n, d)
    g = gate(x, S, c_t, G, G_up)  # (n, d)
    return ((z * g) @ U.to(torch.float32).T).to(x.dtype)  # (n, out)
