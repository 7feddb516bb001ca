"""The precision policy of RidgeStats: float64 by default (bit for bit the explicit syrk accumulation), float32 Gram
accumulation on request, within its rounding bound of the float64 statistics."""

import pytest
import torch

from pilearn.solvers import RidgeStats, gram_update_, symmetrize

F64, F32 = torch.float64, torch.float32
EPS32 = torch.finfo(F32).eps


def gelu_features(g, n, d, k=4):
    """Random GELU features of uniform inputs (non-zero means, like a PIL hidden layer) and noisy targets."""
    X = torch.rand(n, 20, generator=g)
    W = torch.randn(20, d, generator=g) / 20**0.5
    H = torch.nn.functional.gelu(X @ W + torch.rand(d, generator=g) * 2 - 1)
    Y = H[:, :k] @ torch.randn(k, k, generator=g) + 0.1 * torch.randn(n, k, generator=g)
    return H, Y


def stream(stats, H, Y, w=None, batch=128):
    for i in range(0, H.shape[0], batch):
        stats.update(H[i : i + batch], Y[i : i + batch], None if w is None else w[i : i + batch])
    return stats


def augmented64(H, Y, w=None):
    A = torch.cat([H.double(), Y.double(), torch.ones(H.shape[0], 1, dtype=F64)], 1)
    return A if w is None else A * w.double().sqrt()[:, None]


# ---------------------------------------------------------------- default: unchanged bit for bit
@pytest.mark.parametrize("weighted", [False, True])
def test_default_is_float64_syrk_of_the_augmented_rows_bit_for_bit(generator, weighted):
    H, Y = gelu_features(generator, 700, 40)
    w = torch.rand(700, generator=generator, dtype=F64) + 0.1 if weighted else None
    stats = stream(RidgeStats(40, 4, dual=False), H, Y, w)
    assert stats.accumulate_dtype == F64 and stats.M.dtype == F64
    M = torch.zeros_like(stats.M)
    for i in range(0, 700, 128):  # the oracle: dsyrk of [h, y, 1]·√w in float64, batch by batch
        gram_update_(M, augmented64(H[i : i + 128], Y[i : i + 128], None if w is None else w[i : i + 128]))
    assert torch.equal(stats.M, M)
    explicit = stream(RidgeStats(40, 4, dual=False, accumulate_dtype=F64), H, Y, w)
    assert torch.equal(explicit.M, stats.M) and torch.equal(explicit.solve(0.1).coef, stats.solve(0.1).coef)


def test_centered_statistics_are_the_textbook_formulas_bit_for_bit(generator):
    H, Y = gelu_features(generator, 500, 30)
    stats = stream(RidgeStats(30, 4, dual=False), H, Y)
    G_low = stats.G
    ref_G = G_low + G_low.tril(-1).T  # the former symmetrize
    h_sum, y_sum, _, n = stats._sums()
    h_mean, y_mean = h_sum / n, y_sum / n
    ref_G -= n * torch.outer(h_mean, h_mean)
    ref_C = stats.C.clone() - n * torch.outer(h_mean, y_mean)
    G, C, _ = stats.centered()
    # G̃ is formed by one rank-1 update (addr_), which may round n·h̄ᵢh̄ⱼ differently from the outer product
    assert torch.allclose(G, ref_G, rtol=0, atol=4 * torch.finfo(F64).eps * float(G_low.abs().max()))
    assert torch.equal(C, ref_C)
    assert torch.equal(symmetrize(G_low), G_low + G_low.tril(-1).T)
    assert torch.equal(G.tril(), stats._centered(full=False)[0].tril())  # the solve's lower triangle: the same bits
    assert torch.equal(G, G.T)  # exactly symmetric


# ---------------------------------------------------------------- float32 accumulation
@pytest.mark.parametrize("weighted", [False, True])
def test_float32_accumulation_is_within_its_rounding_bound(generator, weighted):
    """Each batch's Gram in float32 is off by at most n_b·ε₃₂·(|A|ᵀ|A|) entrywise (the dot-product error bound);
    summing batches in float64 adds nothing visible at that scale."""
    n, d, batch = 1000, 48, 200
    H, Y = gelu_features(generator, n, d)
    w = torch.rand(n, generator=generator) + 0.1 if weighted else None
    s64 = stream(RidgeStats(d, 4, dual=False), H, Y, w, batch)
    s32 = stream(RidgeStats(d, 4, dual=False, accumulate_dtype=F32), H, Y, w, batch)
    assert s32.M.dtype == F64 and s32.n_rows == s64.n_rows
    bound = torch.zeros_like(s64.M)
    for i in range(0, n, batch):
        A = augmented64(H[i : i + batch], Y[i : i + batch], None if w is None else w[i : i + batch]).abs()
        bound += torch.tril(A.T @ A) * (A.shape[0] + 2) * EPS32  # + 2: rounding A itself to float32 (√w)
    err = (s32.M - s64.M).abs()
    assert bool((err <= bound + 1e-12).all()), float((err - bound).max())
    assert float(err.max()) > 0  # float32 really was used
    assert torch.equal(s32.M.triu(1), torch.zeros_like(s32.M).triu(1))  # lower-triangle convention kept


def test_float32_accumulation_solution_and_predictions_match_float64(generator):
    """The stated tolerance (docs/scale.md): with G̃ + λI of condition number ≲ 10³, relative error of W ≤ 2e-3
    and of the predictions ≤ 1e-4 (here 8e-4 and 1e-5)."""
    n, d = 4000, 128
    H, Y = gelu_features(generator, n, d)
    s64 = stream(RidgeStats(d, 4), H, Y, batch=512)
    s32 = stream(RidgeStats(d, 4, accumulate_dtype=F32), H, Y, batch=512)
    G, _, _ = s64.centered()
    lam = 1e-3 * float(torch.linalg.eigvalsh(G)[-1])  # condition number of G̃ + λI at most ~10³
    a, b = s64.solve(lam), s32.solve(lam)
    assert b.coef.dtype == F64 and b.method == "cholesky"
    rel_w = float((a.coef - b.coef).norm() / a.coef.norm())
    pa, pb = H.double() @ a.coef + a.intercept, H.double() @ b.coef + b.intercept
    rel_p = float((pa - pb).norm() / pa.norm())
    assert 0 < rel_w <= 2e-3 and rel_p <= 1e-4, (rel_w, rel_p)


def test_float32_accumulation_with_kept_rows_and_downdate(generator):
    H, Y = gelu_features(generator, 300, 100)
    dual = RidgeStats(100, 4, accumulate_dtype=F32).update(H[:60], Y[:60]).update(H[60:], Y[60:])
    primal = RidgeStats(100, 4, dual=False, accumulate_dtype=F32).update(H[:60], Y[:60]).update(H[60:], Y[60:])
    assert torch.equal(dual.M, primal.M)  # kept rows fold in through the same float32 path
    s = RidgeStats(100, 4, dual=False, accumulate_dtype=F32).update(H[:200], Y[:200])
    ref = RidgeStats(100, 4, dual=False, accumulate_dtype=F32).update(H[:200], Y[:200])
    s.update(H[200:], Y[200:]).downdate(H[200:], Y[200:])  # removes the same float32 batch Gram
    torch.testing.assert_close(s.M, ref.M, rtol=0, atol=1e-9 * float(ref.M.abs().max()))


def test_accumulate_dtype_is_checked_and_carried(generator):
    with pytest.raises(ValueError, match="accumulate_dtype must be torch.float64 or torch.float32, got 'float32'"):
        RidgeStats(3, 1, accumulate_dtype="float32")
    with pytest.raises(ValueError, match="accumulate_dtype"):
        RidgeStats(3, 1, accumulate_dtype=torch.float16)
    H, Y = gelu_features(generator, 50, 8)
    s = RidgeStats(8, 4, accumulate_dtype=F32).update(H, Y)
    assert s.copy().accumulate_dtype == F32 and (s + s).accumulate_dtype == F32
    assert s.select([0, 1], [0]).accumulate_dtype == F32
    assert "accumulate_dtype=torch.float32" in repr(s) and "accumulate_dtype" not in repr(RidgeStats(8, 4))
    s.release_workspace()
    assert s._partial is None and s._work is None


def test_statistics_pickled_before_the_option_unpickle_as_float64(generator):
    H, Y = gelu_features(generator, 50, 8)
    s = RidgeStats(8, 4, dual=False).update(H, Y)
    del s.__dict__["accumulate_dtype"], s.__dict__["_partial"]  # what an older pickle restores
    ref = RidgeStats(8, 4, dual=False).update(H, Y)
    s.update(H, Y)
    ref.update(H, Y)
    assert s.accumulate_dtype == F64 and torch.equal(s.M, ref.M)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tf32", [False, True])
def test_float32_accumulation_on_cuda(generator, tf32):
    H, Y = gelu_features(generator, 4000, 256)
    s64 = stream(RidgeStats(256, 4, device="cuda"), H.cuda(), Y.cuda(), batch=1000)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        s32 = stream(RidgeStats(256, 4, device="cuda", accumulate_dtype=F32), H.cuda(), Y.cuda(), batch=1000)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    rel = float((s32.M - s64.M).abs().max() / s64.M.abs().max())
    assert rel <= (3e-3 if tf32 else 1e-5), rel  # TF32 keeps 10 mantissa bits
