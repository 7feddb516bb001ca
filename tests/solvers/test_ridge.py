import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.linear_model import Ridge

from pilearn.solvers import IllConditionedWarning, RidgeStats, gram_update_, symmetrize

F64 = torch.float64


def make_data(g, n, d, k=3, offset=0.5):
    H = torch.randn(n, d, generator=g, dtype=F64) + offset
    Y = H[:, : min(d, 5)] @ torch.randn(min(d, 5), k, generator=g, dtype=F64) + 0.3 * torch.randn(
        n, k, generator=g, dtype=F64
    ) + 2.0
    w = torch.rand(n, generator=g, dtype=F64) + 0.1
    return H, Y, w


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# ---------------------------------------------------------------- oracle: scikit-learn Ridge
@pytest.mark.parametrize("n,d", [(300, 40), (25, 60)])  # primal and dual (n < d)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("lam", [1e-3, 2.5])
def test_solve_equals_sklearn_ridge(generator, n, d, fit_intercept, weighted, lam):
    H, Y, w = make_data(generator, n, d)
    sw = w if weighted else None
    sol = RidgeStats(d, 3, fit_intercept=fit_intercept).update(H, Y, sw).solve(lam)
    ref = Ridge(alpha=lam, fit_intercept=fit_intercept, solver="cholesky").fit(
        H.numpy(), Y.numpy(), sample_weight=None if sw is None else sw.numpy()
    )
    assert sol.method == ("dual" if n < d else "cholesky")
    assert rel_err(sol.coef.numpy(), ref.coef_.T) <= 1e-8
    assert rel_err(sol.intercept.numpy(), np.broadcast_to(ref.intercept_, (3,))) <= 1e-8 or not fit_intercept
    pred = H @ sol.coef + sol.intercept
    assert rel_err(pred.numpy(), ref.predict(H.numpy())) <= 1e-8


def test_float32_features_are_accumulated_in_float64(generator):
    H, Y, _ = make_data(generator, 400, 30)
    a = RidgeStats(30, 3).update(H.float(), Y.float()).solve(0.1)
    b = RidgeStats(30, 3).update(H.float().double(), Y.float().double()).solve(0.1)
    assert a.coef.dtype == F64
    torch.testing.assert_close(a.coef, b.coef, rtol=1e-12, atol=0)


def test_single_target_vector(generator):
    H, Y, _ = make_data(generator, 100, 10, k=1)
    a = RidgeStats(10, 1).update(H, Y[:, 0]).solve(0.5)
    b = RidgeStats(10, 1).update(H, Y).solve(0.5)
    torch.testing.assert_close(a.coef, b.coef)


# ---------------------------------------------------------------- streaming algebra
@pytest.mark.parametrize("d", [20, 80])  # 80 > batch sizes: rows kept, then flushed mid-stream
def test_streaming_equals_one_batch(generator, d):
    H, Y, w = make_data(generator, 240, d)
    one = RidgeStats(d, 3).update(H, Y, w).solve(0.3)
    stream = RidgeStats(d, 3)
    for i in range(0, 240, 37):
        stream.update(H[i : i + 37], Y[i : i + 37], w[i : i + 37])
    assert stream.n_rows == 240
    torch.testing.assert_close(stream.solve(0.3).coef, one.coef, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stream.solve(0.3).intercept, one.intercept, rtol=1e-10, atol=1e-12)


def test_workspace_reuse_across_batch_sizes_and_release(generator):
    H, Y, w = make_data(generator, 300, 12)
    stats = RidgeStats(12, 3)
    for lo, hi in ((0, 100), (100, 130), (130, 300)):  # grows, shrinks, grows the workspace
        stats.update(H[lo:hi], Y[lo:hi], w[lo:hi])
    assert stats._work is not None and stats._work.shape[0] == 170
    stats.release_workspace()
    assert stats._work is None
    ref = RidgeStats(12, 3).update(H, Y, w)
    torch.testing.assert_close(stats.solve(0.1).coef, ref.solve(0.1).coef, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n1,n2", [(150, 90), (10, 15)])
def test_merge_equals_concatenation(generator, n1, n2):
    H, Y, w = make_data(generator, n1 + n2, 40)
    a = RidgeStats(40, 3).update(H[:n1], Y[:n1], w[:n1])
    b = RidgeStats(40, 3).update(H[n1:], Y[n1:], w[n1:])
    both = RidgeStats(40, 3).update(H, Y, w)
    merged = a + b
    assert merged.n_rows == n1 + n2
    torch.testing.assert_close(merged.solve(1.0).coef, both.solve(1.0).coef, rtol=1e-10, atol=1e-12)
    # + did not change its operands
    torch.testing.assert_close(a.solve(1.0).coef, RidgeStats(40, 3).update(H[:n1], Y[:n1], w[:n1]).solve(1.0).coef)


def test_downdate_equals_refit_without_rows(generator):
    H, Y, w = make_data(generator, 300, 25)
    full = RidgeStats(25, 3).update(H, Y, w)
    removed = full.copy().downdate(H[100:160], Y[100:160], w[100:160])
    keep = torch.cat([torch.arange(100), torch.arange(160, 300)])
    refit = RidgeStats(25, 3).update(H[keep], Y[keep], w[keep])
    assert removed.n_rows == 240
    torch.testing.assert_close(removed.solve(0.2).coef, refit.solve(0.2).coef, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(removed.solve(0.2).intercept, refit.solve(0.2).intercept, rtol=1e-9, atol=1e-11)
    sub = full - RidgeStats(25, 3).update(H[100:160], Y[100:160], w[100:160])
    torch.testing.assert_close(sub.solve(0.2).coef, refit.solve(0.2).coef, rtol=1e-9, atol=1e-11)


def test_removing_more_rows_than_held_is_an_error(generator):
    H, Y, _ = make_data(generator, 30, 5)
    with pytest.raises(ValueError, match="cannot remove 30 rows"):
        RidgeStats(5, 3).update(H[:10], Y[:10]) - RidgeStats(5, 3).update(H, Y)


def test_combining_incompatible_stats_is_an_error():
    with pytest.raises(ValueError, match="n_features"):
        RidgeStats(5, 3) + RidgeStats(6, 3)
    with pytest.raises(TypeError, match="RidgeStats"):
        RidgeStats(5, 3) + 1


def test_resume_from_state_dict_equals_uninterrupted(generator):
    H, Y, w = make_data(generator, 400, 30)
    full = RidgeStats(30, 3)
    for i in range(0, 400, 50):
        full.update(H[i : i + 50], Y[i : i + 50], w[i : i + 50])
    first = RidgeStats(30, 3)
    for i in range(0, 200, 50):
        first.update(H[i : i + 50], Y[i : i + 50], w[i : i + 50])
    state = {k: v.clone() for k, v in first.state_dict().items()}
    del first  # "interrupted"
    resumed = RidgeStats(30, 3).load_state_dict(state)
    for i in range(200, 400, 50):
        resumed.update(H[i : i + 50], Y[i : i + 50], w[i : i + 50])
    assert resumed.n_rows == 400
    torch.testing.assert_close(resumed.solve(0.1).coef, full.solve(0.1).coef, rtol=1e-12, atol=1e-13)


def test_load_state_dict_checks_shapes():
    state = RidgeStats(4, 2).update(torch.ones(5, 4), torch.ones(5, 2)).state_dict()
    with pytest.raises(ValueError, match=r"\(n_features, n_targets\) = \(4, 2\), these have \(5, 2\)"):
        RidgeStats(5, 2).load_state_dict(state)


# ---------------------------------------------------------------- GCV and hold-out
def brute_force_gcv(H, Y, lam, fit_intercept=True):
    n, k = Y.shape
    X = torch.cat([H, torch.ones(n, 1, dtype=F64)], 1) if fit_intercept else H
    P = torch.eye(X.shape[1], dtype=F64) * lam
    if fit_intercept:
        P[-1, -1] = 0.0  # intercept unpenalized
    S = X @ torch.linalg.solve(X.T @ X + P, X.T)  # hat matrix
    rss = ((Y - S @ Y) ** 2).sum()
    tr = torch.trace(S)
    return float((rss / (n * k)) / (1 - tr / n) ** 2), float(tr)


@pytest.mark.parametrize("n,d", [(120, 30), (20, 50)])  # primal and dual spectra
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_gcv_equals_brute_force(generator, fit_intercept, n, d):
    H, Y, _ = make_data(generator, n, d)
    lams = torch.logspace(-2, 3, 11, dtype=F64)
    stats = RidgeStats(d, 3, fit_intercept=fit_intercept).update(H, Y)
    path = stats.solve_path(lams)
    Hc = H - H.mean(0) if fit_intercept else H
    assert stats.gram_trace() == pytest.approx(float((Hc * Hc).sum()), rel=1e-10)
    brute = [brute_force_gcv(H, Y, float(lam), fit_intercept) for lam in lams]
    np.testing.assert_allclose(path.gcv.numpy(), [b[0] for b in brute], rtol=1e-8)
    np.testing.assert_allclose(path.df.numpy(), [b[1] for b in brute], rtol=1e-8)
    assert path.best_lam == float(lams[int(np.argmin([b[0] for b in brute]))])


@pytest.mark.parametrize("d", [20, 180])  # primal and dual
def test_path_coefs_and_holdout_mse_match_direct_solves(generator, d):
    H, Y, w = make_data(generator, 200, d)
    train = RidgeStats(d, 3).update(H[:150], Y[:150], w[:150])
    held = RidgeStats(d, 3).update(H[150:], Y[150:])
    lams = [1e-2, 1.0, 100.0]
    path = train.solve_path(lams, holdout=held, return_coefs=True)
    for i, lam in enumerate(lams):
        sol = train.solve(lam)
        torch.testing.assert_close(path.coefs[i], sol.coef, rtol=1e-8, atol=1e-10)
        mse = float(((H[150:] @ sol.coef + sol.intercept - Y[150:]) ** 2).mean())
        assert path.holdout_mse[i].item() == pytest.approx(mse, rel=1e-8)
    assert path.best_index == int(torch.argmin(path.holdout_mse))


@pytest.mark.parametrize("weighted", [False, True])
def test_mse_of_wide_targets_equals_direct(generator, weighted):
    """mse() from the statistics alone, with more targets than features (an auto-encoder's shape)."""
    H, _, w = make_data(generator, 120, 6)
    Y = torch.randn(120, 15, generator=generator, dtype=torch.float64)
    w = w if weighted else None
    stats = RidgeStats(6, 15, dual=False).update(H, Y, w)
    W = torch.randn(6, 15, generator=generator, dtype=torch.float64)
    b = torch.randn(15, generator=generator, dtype=torch.float64)
    r2 = ((H @ W + b - Y) ** 2).sum(1)
    direct = float((r2 if w is None else w * r2).sum()) / (stats.n * 15)
    assert stats.mse(W, b) == pytest.approx(direct, rel=1e-10)


def test_select_equals_streaming_the_chosen_columns(generator):
    H, Y, w = make_data(generator, 90, 12)
    full = RidgeStats(12, 3).update(H[:40], Y[:40], w[:40]).update(H[40:], Y[40:], w[40:])
    cols = [9, 2, 5, 0]  # unsorted on purpose: the lower-triangle storage must be re-folded
    sub = full.select(cols)
    ref = RidgeStats(4, 3, dual=False).update(H[:, cols], Y, w)
    torch.testing.assert_close(sub.M, ref.M, rtol=1e-12, atol=1e-12)
    a, b = sub.solve(0.7), ref.solve(0.7)
    torch.testing.assert_close(a.coef, b.coef, rtol=1e-10, atol=1e-12)
    assert sub.n_rows == full.n_rows
    with pytest.raises(ValueError, match="repeat"):
        full.select([1, 1])
    with pytest.raises(ValueError, match="0..11"):
        full.select([12])
    with pytest.raises(ValueError, match="at least one"):
        full.select([])


@pytest.mark.parametrize("n", [200, 10])  # primal, and dual (rows kept)
def test_solve_many_equals_solve(generator, n):
    H, Y, w = make_data(generator, n, 30)
    stats = RidgeStats(30, 3).update(H, Y, w)
    lams = [3.0, 0.01, 0.5]
    for lam, sol in zip(lams, stats.solve_many(lams)):
        ref = stats.solve(lam)
        torch.testing.assert_close(sol.coef, ref.coef, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sol.intercept, ref.intercept, rtol=1e-12, atol=1e-12)
        assert sol.lam == lam


def test_subproblem_regresses_one_block_on_another(generator):
    """Statistics of Z → [A | Y] also hold A → Y: a sub-block of the joint Gram."""
    Z, Y, w = make_data(generator, 80, 5)
    A = torch.randn(80, 4, generator=generator, dtype=F64)
    joint = RidgeStats(5, 7).update(Z, torch.cat([A, Y], 1), w)
    sub = joint.subproblem(features=[5, 6, 7, 8], targets=[9, 10, 11])
    ref = RidgeStats(4, 3, dual=False).update(A, Y, w)
    torch.testing.assert_close(sub.M, ref.M, rtol=1e-12, atol=1e-12)
    only_a = joint.select(targets=[0, 1, 2, 3])
    torch.testing.assert_close(only_a.solve(0.1).coef, RidgeStats(5, 4).update(Z, A, w).solve(0.1).coef)
    with pytest.raises(ValueError, match="disjoint"):
        joint.subproblem([0, 1], [1, 2])


# ---------------------------------------------------------------- numerical trouble and bad input
def test_singular_system_falls_back_with_warning_and_finite_weights(generator):
    H = torch.randn(50, 4, generator=generator, dtype=F64)
    H = torch.cat([H, H[:, :1], H[:, :1]], 1)  # duplicated columns: G is singular
    Y = torch.randn(50, 2, generator=generator, dtype=F64)
    stats = RidgeStats(6, 2, fit_intercept=False).update(H, Y)
    with pytest.warns(IllConditionedWarning, match="condition number"):
        sol = stats.solve(0.0)
    assert sol.method == "eigh"
    assert bool(torch.isfinite(sol.coef).all())
    ref = torch.linalg.lstsq(H, Y, driver="gelsd").solution  # minimum-norm least squares
    torch.testing.assert_close(sol.coef, ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_rejected(bad):
    H = torch.ones(5, 3)
    H[2, 1] = bad
    with pytest.raises(ValueError, match="H contains 1 NaN or infinite"):
        RidgeStats(3, 1).update(H, torch.ones(5))
    with pytest.raises(ValueError, match="Y contains"):
        RidgeStats(3, 1).update(torch.ones(5, 3), torch.full((5,), bad))


def test_unchecked_non_finite_batch_is_refused_at_solve():
    H = torch.ones(50, 3)
    H[7, 0] = float("nan")
    stats = RidgeStats(3, 1).update(torch.randn(10, 3), torch.randn(10))
    stats.update(H, torch.ones(50), check_finite=False)
    with pytest.raises(ValueError, match="NaN or infinite statistics"):
        stats.solve(1.0)


@pytest.mark.parametrize(
    "H,Y,match",
    [
        (torch.ones(5, 3), torch.ones(4), "same number of rows, got 5 and 4"),
        (torch.ones(5, 4), torch.ones(5), r"3 columns \(n_features\), got shape \(5, 4\)"),
        (torch.ones(5), torch.ones(5), r"H must be 2-D .* got shape \(5,\)"),
        (torch.ones(0, 3), torch.ones(0), "empty"),
        (torch.ones(5, 3), torch.ones(5, 2), r"1 columns \(n_targets\)"),
    ],
)
def test_bad_shapes_name_the_argument(H, Y, match):
    with pytest.raises(ValueError, match=match):
        RidgeStats(3, 1).update(H, Y)


def test_bad_lam_and_weights_and_empty_solve():
    stats = RidgeStats(3, 1).update(torch.randn(10, 3), torch.randn(10))
    with pytest.raises(ValueError, match="lam must be a finite float >= 0, got -1.0"):
        stats.solve(-1.0)
    with pytest.raises(TypeError, match="lam"):
        stats.solve("auto")
    with pytest.raises(ValueError, match="sample_weight must be finite and non-negative"):
        stats.update(torch.randn(2, 3), torch.randn(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="holds no data"):
        RidgeStats(3, 1).solve(1.0)
    with pytest.raises(ValueError, match="n_features must be a positive int, got 0"):
        RidgeStats(0, 1)


# ---------------------------------------------------------------- the Gram kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_update_matches_matmul(generator, dtype):
    G = torch.zeros(33, 33, dtype=dtype)
    H1 = torch.randn(40, 33, generator=generator, dtype=dtype)
    H2 = torch.randn(50, 66, generator=generator, dtype=dtype)[:, ::2]  # non-contiguous
    gram_update_(G, H1)
    gram_update_(G, H2)
    assert bool((G.triu(1) == 0).all())
    H = torch.cat([H1, H2])
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(symmetrize(G), H.T @ H, rtol=tol, atol=tol)


# ---------------------------------------------------------------- torch.distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, H, Y, w, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shard = slice(rank, None, world)  # each rank streams its own shard
        stats = RidgeStats(H.shape[1], Y.shape[1]).update(H[shard], Y[shard], w[shard])
        stats.all_reduce()
        sol = stats.solve(0.05)
        out[rank] = torch.cat([sol.coef.reshape(-1), sol.intercept])
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_all_reduce_equals_single_process(generator):
    H, Y, w = make_data(generator, 300, 24)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), H, Y, w, out), nprocs=2, join=True)
    single = RidgeStats(24, 3).update(H, Y, w).solve(0.05)
    ref = torch.cat([single.coef.reshape(-1), single.intercept])
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)  # identical on every rank
    torch.testing.assert_close(out[0], ref, rtol=1e-10, atol=1e-12)


def test_spd_solve_reads_only_the_lower_triangle(generator):
    from pilearn.solvers import spd_solve

    A = torch.randn(40, 25, generator=generator, dtype=torch.float64)
    G = A.T @ A + 0.1 * torch.eye(25, dtype=torch.float64)
    B = torch.randn(25, 3, generator=generator, dtype=torch.float64)
    junk = G.tril() + torch.triu(torch.randn(25, 25, generator=generator, dtype=torch.float64), 1)
    X, method = spd_solve(G, B)
    X_junk, _ = spd_solve(junk, B)
    assert method == "cholesky"
    assert torch.equal(X, X_junk)
    torch.testing.assert_close(G @ X, B, atol=1e-10, rtol=1e-10)
    with pytest.warns(IllConditionedWarning):  # the eigendecomposition fallback reads the lower triangle too
        S = torch.zeros(25, 25, dtype=torch.float64)
        S[:5, :5] = torch.eye(5, dtype=torch.float64)
        S_junk = S + torch.triu(torch.randn(25, 25, generator=generator, dtype=torch.float64), 1)
        X_s, m_s = spd_solve(S_junk, B)
    assert m_s == "eigh"
    torch.testing.assert_close(X_s[:5], B[:5])
    assert torch.count_nonzero(X_s[5:]) == 0


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_solve_equals_a_cholesky_of_the_full_centred_statistics(generator, fit_intercept):
    """solve works on the lower triangle of one copy; it must equal the textbook solve of centered()."""
    stats = RidgeStats(30, 4, fit_intercept=fit_intercept, dual=False)
    stats.update(torch.randn(200, 30, generator=generator, dtype=torch.float64),
                 torch.randn(200, 4, generator=generator, dtype=torch.float64))
    G, C, _ = stats.centered()
    G.diagonal().add_(0.5)
    expected = torch.linalg.solve(G, C)
    torch.testing.assert_close(stats.solve(0.5).coef, expected, atol=1e-12, rtol=1e-10)
    assert stats.G.triu(1).abs().max() == 0  # the statistics were not touched
    for sol, lam in zip(stats.solve_many([0.5, 2.0]), [0.5, 2.0]):
        torch.testing.assert_close(sol.coef, stats.solve(lam).coef, atol=0, rtol=0)


def test_update_trims_the_heap_after_large_cpu_batches_only(monkeypatch, generator):
    import pilearn.solvers._ridge as ridge_mod
    from pilearn._memory import release_freed_heap

    release_freed_heap()  # runs (a no-op off glibc)
    calls: list[int] = []
    monkeypatch.setattr(ridge_mod, "release_freed_heap", lambda: calls.append(1))
    monkeypatch.setattr(ridge_mod, "_TRIM_MIN_FLOPS", 64 * 11 * 11)  # D = 8 + 2 + 1
    stats = RidgeStats(8, 2, dual=False)
    stats.update(torch.randn(63, 8, generator=generator), torch.randn(63, 2, generator=generator))
    assert calls == []  # below the threshold: no trim
    stats.update(torch.randn(64, 8, generator=generator), torch.randn(64, 2, generator=generator))
    assert calls == [1]
    kept = RidgeStats(8, 2)  # rows kept for the dual form are not streamed through the Gram: nothing to trim
    kept.update(torch.randn(4, 8, generator=generator), torch.randn(4, 2, generator=generator))
    assert calls == [1]
