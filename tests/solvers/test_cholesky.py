"""The in-place blocked Cholesky behind every primal ridge solve."""

import pytest
import torch

from pilearn.solvers import RidgeStats
from pilearn.solvers._linalg import cholesky_lower_, cholesky_solve_, spd_solve

F64 = torch.float64


def _spd(generator, d, rows=None):
    H = torch.randn(rows or d + 20, d, generator=generator, dtype=F64)
    G = H.T @ H
    G.diagonal().add_(1.0)
    return G


@pytest.mark.parametrize("d, block", [(5, 512), (50, 8), (67, 16), (300, 64)])
def test_blocked_factor_equals_lapack_and_reads_only_the_lower_triangle(generator, d, block):
    G = _spd(generator, d)
    A = G.tril() + 1e3 * torch.randn(d, d, generator=generator, dtype=F64).triu(1)  # garbage above the diagonal
    assert cholesky_lower_(A, block=block) == 0
    L = torch.linalg.cholesky(G)
    assert torch.equal(A.triu(1), torch.zeros_like(A))
    assert torch.allclose(A, L, rtol=0, atol=1e-12 * float(L.abs().max()))


@pytest.mark.parametrize("block", [8, 512])
def test_info_names_the_first_leading_minor_that_is_not_positive_definite(block):
    A = torch.eye(40, dtype=F64)
    A[29, 29] = -1.0
    assert cholesky_lower_(A, block=block) == 30  # LAPACK's order k, as torch.linalg.cholesky_ex reports it


def test_cholesky_solve_rejects_what_spd_solve_sends_to_eigh(generator):
    G = _spd(generator, 30)
    B = torch.randn(30, 2, generator=generator, dtype=F64)
    X = cholesky_solve_(G.clone(), B)
    assert torch.allclose(G @ X, B, atol=1e-10)
    G[0, 0] = 1e20  # condition bound (max L_ii / min L_ii)² far above 1e12
    assert cholesky_solve_(G.clone(), B) is None
    with pytest.warns(RuntimeWarning, match="ill-conditioned"):
        _, method = spd_solve(G, B)
    assert method == "eigh"


def test_ridge_solve_falls_back_after_the_in_place_factor_fails(generator):
    """A singular system destroys the in-place copy; the fallback re-forms it and the statistics stay intact."""
    H = torch.randn(100, 5, generator=generator, dtype=F64)
    H = torch.cat([H, H[:, :1]], 1)  # a repeated column: G̃ is singular at λ = 0
    Y = torch.randn(100, 2, generator=generator, dtype=F64)
    stats = RidgeStats(6, 2, dual=False).update(H, Y)
    M = stats.M.clone()
    with pytest.warns(RuntimeWarning, match="ill-conditioned"):
        sol = stats.solve(0.0)
    assert sol.method == "eigh" and torch.isfinite(sol.coef).all()
    assert torch.equal(stats.M, M)
    Hc, Yc = H - H.mean(0), Y - Y.mean(0)
    ref = torch.linalg.lstsq(Hc, Yc).solution  # the least-squares fit: same fitted values
    assert torch.allclose(Hc @ sol.coef, Hc @ ref, atol=1e-8)
    with pytest.warns(RuntimeWarning, match="ill-conditioned"):
        many = list(stats.solve_many([0.0, 1.0]))
    assert many[0].method == "eigh" and many[1].method == "cholesky"
    assert torch.equal(many[1].coef, stats.solve(1.0).coef)
