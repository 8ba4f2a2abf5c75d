import pytest
import torch

from adapters.moore.math import (
    compact_wy,
    householder_matrix,
    moore_forward,
    rotate_and_project_wy,
    rotate_explicit,
    task_vectors,
)
from adapters.svd_cache import thin_svd


@pytest.mark.parametrize("h", [1, 2, 5, 8])
@pytest.mark.parametrize("in_features,out_features", [(32, 48), (48, 32)])
def test_compact_wy_equals_explicit_chain(h: int, in_features: int, out_features: int) -> None:
    g = torch.Generator().manual_seed(h)
    Y = torch.randn(h, in_features, generator=g)
    x = torch.randn(7, in_features, generator=g)
    f = thin_svd(torch.randn(out_features, in_features, generator=g))
    torch.testing.assert_close(rotate_and_project_wy(x, Y, f.V), rotate_explicit(x, Y) @ f.V, atol=1e-5, rtol=1e-5)
    Y_hat, T_tilde = compact_wy(Y)
    M = torch.eye(in_features) - Y_hat.T @ T_tilde @ Y_hat
    torch.testing.assert_close(M, householder_matrix(Y), atol=1e-5, rtol=1e-5)
    assert torch.equal(T_tilde, torch.triu(T_tilde))


def test_householder_product_is_orthogonal_and_pairs_cancel() -> None:
    Y = torch.randn(6, 16)
    M = householder_matrix(Y)
    torch.testing.assert_close(M @ M.T, torch.eye(16), atol=1e-5, rtol=0)
    paired = torch.randn(3, 16).repeat_interleave(2, dim=0)
    torch.testing.assert_close(householder_matrix(paired), torch.eye(16), atol=1e-6, rtol=0)
    assert not torch.allclose(M, torch.eye(16), atol=1e-2)


def test_identity_router_gives_base_output() -> None:
    """Whole-output contract: M = I, T = 0, G_up = 0 ⇒ y = x Wᵀ."""
    W = torch.randn(24, 40)
    f = thin_svd(W)
    x = torch.randn(5, 40)
    Y = torch.randn(2, 40).repeat_interleave(2, dim=0)
    d, E, e = 24, 8, 4
    c_t = task_vectors(torch.zeros(d, e), torch.randn(3, e))[1]
    y = moore_forward(x, f.U, f.S, f.V, Y, torch.randn(E, 40), torch.zeros(d, E), c_t)
    torch.testing.assert_close(y, x @ W.T, atol=1e-4, rtol=1e-5)


def test_gate_reweights_singular_values_per_task() -> None:
    W = torch.randn(24, 40)
    f = thin_svd(W)
    x = torch.randn(5, 40)
    Y, G, G_up = torch.randn(4, 40), torch.randn(8, 40), torch.randn(24, 8)
    C = task_vectors(torch.randn(24, 4), torch.randn(2, 4))  # (2, d)
    y0 = moore_forward(x, f.U, f.S, f.V, Y, G, G_up, C[0])
    y1 = moore_forward(x, f.U, f.S, f.V, Y, G, G_up, C[1])
    assert y0.shape == (5, 24)
    assert not torch.allclose(y0, y1)
