import math

import pytest
import torch

from pilearn.features import MATRIX_KINDS, derive_seed, make_generator, random_matrix

SHAPE = (400, 500)
N = SHAPE[0] * SHAPE[1]
DERIVED_BIAS_0 = 8521343751908398093
DERIVED_BIPIL_0_1 = 2970834528684483397


def test_make_generator_is_seeded_and_on_cpu():
    a = torch.randn(5, generator=make_generator(3))
    b = torch.randn(5, generator=make_generator(3))
    c = torch.randn(5, generator=make_generator(4))
    assert make_generator(3).device.type == "cpu"
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("seed", [-1, 1.0, True, "0", None, 2**63])
def test_make_generator_rejects_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        make_generator(seed)


def test_derive_seed_is_stable_and_distinct():
    # Hard-coded values: a change here silently changes every checkpoint's weights.
    assert derive_seed(0, "bias") == DERIVED_BIAS_0
    assert derive_seed(0, "bipil", 1) == DERIVED_BIPIL_0_1
    children = {derive_seed(s, k) for s in range(5) for k in ("bias", "other")}
    assert len(children) == 10
    assert all(0 <= c < 2**63 for c in children)


@pytest.mark.parametrize("kind", MATRIX_KINDS)
def test_same_seed_same_bits_regardless_of_global_rng(kind):
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = random_matrix((30, 20), kind=kind, seed=7)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be advanced"
    torch.manual_seed(12345)
    torch.rand(10)
    b = random_matrix((30, 20), kind=kind, seed=7)
    c = random_matrix((30, 20), kind=kind, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kind", MATRIX_KINDS)
def test_float32_is_float64_cast_down(kind):
    w64 = random_matrix((17, 9), kind=kind, seed=3, dtype=torch.float64)
    w32 = random_matrix((17, 9), kind=kind, seed=3, dtype=torch.float32)
    assert w64.dtype == torch.float64 and w32.dtype == torch.float32
    assert torch.equal(w32, w64.to(torch.float32))


# Variance of w and of w² per kind, for CLT tolerances on the sample mean over N entries (5 sigma).
_DENSITY = 1.0 / math.sqrt(SHAPE[0])
_VAR_W2 = {"gaussian": 2.0, "rademacher": 0.0, "sparse": 1.0 / _DENSITY - 1.0, "orthogonal": 0.0}


@pytest.mark.parametrize("kind", MATRIX_KINDS)
def test_moments(kind):
    w = random_matrix(SHAPE, kind=kind, seed=0, dtype=torch.float64)
    assert w.shape == SHAPE
    assert abs(w.mean().item()) < 5 * math.sqrt(1.0 / N)
    # orthogonal: every column has norm² = in exactly, so mean(w²) = 1 up to rounding; rademacher: w² = 1.
    tol = max(5 * math.sqrt(_VAR_W2[kind] / N), 1e-12)
    assert abs((w**2).mean().item() - 1.0) < tol


def test_rademacher_values():
    w = random_matrix((50, 40), kind="rademacher", seed=0)
    assert set(w.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("density", [None, 0.1, 1.0])
def test_sparse_values_and_density(density):
    w = random_matrix(SHAPE, kind="sparse", seed=1, dtype=torch.float64, density=density)
    d = _DENSITY if density is None else density
    v = 1.0 / math.sqrt(d)
    assert set(w.unique().tolist()) <= {-v, 0.0, v}
    frac = (w != 0).double().mean().item()
    assert abs(frac - d) <= 5 * math.sqrt(d * (1 - d) / N) + 1e-12
    pos = (w > 0).double().mean().item()
    assert abs(pos - d / 2) <= 5 * math.sqrt(d / 2 * (1 - d / 2) / N)


def test_orthogonal_tall_has_orthogonal_columns_of_norm_sqrt_in():
    n_in, n_out = 40, 25
    w = random_matrix((n_in, n_out), kind="orthogonal", seed=2, dtype=torch.float64)
    torch.testing.assert_close(w.T @ w, n_in * torch.eye(n_out, dtype=torch.float64), atol=1e-10, rtol=0)


def test_orthogonal_wide_stacks_independent_orthogonal_blocks():
    n_in, n_out = 6, 15  # blocks of 6, 6 and 3 columns
    w = random_matrix((n_in, n_out), kind="orthogonal", seed=2, dtype=torch.float64)
    torch.testing.assert_close(w.norm(dim=0), torch.full((n_out,), math.sqrt(n_in), dtype=torch.float64))
    for lo, hi in [(0, 6), (6, 12), (12, 15)]:
        block = w[:, lo:hi]
        eye = n_in * torch.eye(hi - lo, dtype=torch.float64)
        torch.testing.assert_close(block.T @ block, eye, atol=1e-10, rtol=0)
    # different blocks are independent draws, not copies
    assert (w[:, :6].T @ w[:, 6:12]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(3, 4), kind="uniform"), "kind"),
        (dict(shape=(0, 4)), "shape"),
        (dict(shape=(3, -1)), "shape"),
        (dict(shape=()), "shape"),
        (dict(shape=(2, 3, 4), kind="orthogonal"), "orthogonal"),
        (dict(shape=(3, 4), kind="sparse", density=0.0), "density"),
        (dict(shape=(3, 4), kind="sparse", density=1.5), "density"),
        (dict(shape=(3, 4), kind="gaussian", density=0.5), "density"),
        (dict(shape=(3, 4), dtype=torch.int64), "dtype"),
        (dict(shape=(3, 4), seed=-2), "seed"),
    ],
)
def test_random_matrix_rejects_bad_arguments(kwargs, match):
    kwargs.setdefault("seed", 0)
    with pytest.raises(ValueError, match=match):
        random_matrix(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", MATRIX_KINDS)
def test_same_bits_on_cuda(kind):
    cpu = random_matrix((33, 21), kind=kind, seed=5)
    gpu = random_matrix((33, 21), kind=kind, seed=5, device="cuda")
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), cpu)
