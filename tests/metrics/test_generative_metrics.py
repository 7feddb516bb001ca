"""Generative-model metrics against closed forms, brute force and hand-written loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from pilearn.metrics import (
    LeNet,
    class_accuracy,
    fd_lenet,
    frechet_distance,
    memorization_report,
    mmd_rbf,
    nearest_neighbour_distance,
    wasserstein2,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _correlated(n: int, d: int, generator: torch.Generator, shift: float = 0.0) -> torch.Tensor:
    """``n`` rows of ``z @ A + shift``, ``z`` standard normal: a full, non-diagonal covariance."""
    z = torch.randn(n, d, generator=generator, dtype=torch.float64)
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return z @ a + shift


def _brute_nn(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Exact NN distances from explicit differences (no ‖a‖² + ‖b‖² − 2ab)."""
    return torch.cdist(q.double(), r.double(), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values


# ------------------------------------------------------------------------------------------ Fréchet distance
def test_frechet_matches_scipy_sqrtm(generator):
    a = _correlated(300, 6, generator)
    b = _correlated(200, 6, generator, shift=0.5)
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)  # unbiased
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a.numpy().astype(np.float32), b.float()) == pytest.approx(expected, rel=1e-5)


def test_frechet_identical_and_symmetric(generator):
    a = _correlated(100, 8, generator)
    b = _correlated(80, 8, generator, shift=1.0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    assert frechet_distance(a, b) > 1.0


def test_frechet_one_dimensional_closed_form():
    # 1-D: FD = (μa − μb)² + (σa − σb)²
    assert frechet_distance(np.array([[-1.0], [1.0]]), np.array([[0.0], [2.0]])) == pytest.approx(1.0, abs=1e-12)
    a = np.array([[0.0], [1.0], [5.0]])  # mean 2, var 7
    b = np.array([[3.0], [-3.0]])  # mean 0, var 18
    assert frechet_distance(a, b) == pytest.approx(4.0 + (math.sqrt(7.0) - math.sqrt(18.0)) ** 2, rel=1e-12)


def test_frechet_rank_deficient(generator):
    a = torch.randn(3, 10, generator=generator, dtype=torch.float64)  # covariance of rank 2
    b = torch.randn(4, 10, generator=generator, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "exc", "match"),
    [
        (np.zeros((1, 3)), np.zeros((5, 3)), ValueError, r"feats_a needs at least 2 row\(s\), got 1"),
        (np.zeros((5, 3)), np.zeros((5, 4)), ValueError, r"same number of columns, got shapes \(5, 3\) and \(5, 4\)"),
        (np.zeros((5, 3)), np.array([[np.nan] * 3] * 5), ValueError, r"feats_b must be finite, got 15 NaN"),
        (np.zeros((5, 3, 1)), np.zeros((5, 3)), ValueError, r"feats_a must be 2-D \(n, d\), got shape \(5, 3, 1\)"),
        ([[0.0, 1.0]], np.zeros((5, 2)), TypeError, r"feats_a must be a torch.Tensor or numpy.ndarray, got list"),
        (np.zeros((5, 2), dtype=complex), np.zeros((5, 2)), TypeError, r"feats_a must be real-valued"),
    ],
)
def test_frechet_bad_input(a, b, exc, match):
    with pytest.raises(exc, match=match):
        frechet_distance(a, b)


# -------------------------------------------------------------------------------------------- LeNet metrics
@pytest.fixture(scope="module")
def small_net() -> LeNet:
    return LeNet((1, 8, 8), 10, seed=0).eval()


def test_fd_lenet_is_fd_of_features(small_net, generator):
    x = torch.rand(50, 64, generator=generator)
    r = torch.rand(60, 1, 8, 8, generator=generator) ** 2
    with torch.no_grad():
        expected = frechet_distance(small_net.features(x).double(), small_net.features(r).double())
    assert fd_lenet(x, r, small_net) == pytest.approx(expected, rel=1e-9)
    assert fd_lenet(x.numpy(), r, small_net, batch_size=7) == pytest.approx(expected, rel=1e-9)
    assert fd_lenet(x, x, small_net) == pytest.approx(0.0, abs=1e-9)
    # not clipped: values outside [0, 1] change the figure
    assert fd_lenet(x * 3.0, r, small_net) != pytest.approx(fd_lenet(x.clamp(0, 1), r, small_net))


def test_class_accuracy_matches_argmax(small_net, generator):
    x = torch.rand(40, 64, generator=generator)
    labels = torch.randint(0, 10, (40,), generator=generator)
    with torch.no_grad():
        pred = small_net(x).argmax(1)
    assert class_accuracy(x, labels, small_net, batch_size=9) == pytest.approx(float((pred == labels).double().mean()))
    assert class_accuracy(x, pred.numpy(), small_net) == 1.0
    assert class_accuracy(x, (pred + 1) % 10, small_net) == 0.0


@pytest.mark.parametrize(
    ("x", "labels", "exc", "match"),
    [
        (torch.rand(4, 64), torch.arange(3), ValueError, r"labels must have shape \(4,\), got \(3,\)"),
        (torch.rand(4, 64), torch.tensor([0, 1, 2, 10]), ValueError, r"labels must be < net.n_classes=10, got max 10"),
        (torch.rand(4, 64), torch.zeros(4), TypeError, r"labels must hold integer class labels"),
        (torch.full((4, 64), math.inf), torch.arange(4), ValueError, r"samples must be finite, got 256 NaN or inf"),
        (torch.rand(4, 8, 8), torch.arange(4), ValueError, r"samples must be \(n, D\) or \(n, C, H, W\) images"),
        (torch.rand(4, 63), torch.arange(4), ValueError, r"x must have shape \(n, 64\)"),
    ],
)
def test_class_accuracy_bad_input(small_net, x, labels, exc, match):
    with pytest.raises(exc, match=match):
        class_accuracy(x, labels, small_net)


def test_fd_lenet_bad_net(generator):
    x = torch.rand(4, 64, generator=generator)
    with pytest.raises(TypeError, match="net must be a LeNet"):
        fd_lenet(x, x, object())


# --------------------------------------------------------------------------------------- nearest neighbours
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n_q", "m", "d", "batch_size"), [(37, 53, 5, 8), (300, 500, 64, 1024), (5, 3, 2, 1)])
def test_nn_distance_matches_brute_force(n_q, m, d, batch_size, dtype, generator):
    q = torch.rand(n_q, d, generator=generator).to(dtype)
    r = torch.rand(m, d, generator=generator).to(dtype)
    got = nearest_neighbour_distance(q, r, batch_size=batch_size)
    assert got.shape == (n_q,) and got.dtype == torch.float64
    torch.testing.assert_close(got, _brute_nn(q, r), rtol=1e-10, atol=1e-12)


def test_nn_distance_large_offset(generator):
    """A common offset of 1000 with spreads of 1e-5: the expansion alone would be pure rounding noise."""
    base = 1000.3 + torch.rand(1, 17, generator=generator, dtype=torch.float64)
    r = base + 1e-5 * torch.rand(400, 17, generator=generator, dtype=torch.float64)
    q = base + 1e-5 * torch.rand(50, 17, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(nearest_neighbour_distance(q, r), _brute_nn(q, r), rtol=1e-6, atol=0)
    # exact copies are at distance exactly 0
    assert torch.equal(nearest_neighbour_distance(r[:20], r), torch.zeros(20, dtype=torch.float64))


def test_nn_distance_near_ties_fall_back_to_differences(generator, caplog):
    """Two clusters far apart, tiny spreads: neither screen can certify; explicit differences decide."""
    centres = torch.tensor([[1000.0] * 8, [-1000.0] * 8], dtype=torch.float64)
    r = centres[torch.arange(400) % 2] + 1e-4 * torch.rand(400, 8, generator=generator, dtype=torch.float64)
    q = centres[torch.arange(30) % 2] + 1e-4 * torch.rand(30, 8, generator=generator, dtype=torch.float64)
    with caplog.at_level("DEBUG", logger="pilearn.metrics._generative"):
        got = nearest_neighbour_distance(q, r, batch_size=16)
    assert "not certified by the torch.float64 screen" in caplog.text  # the last level ran
    torch.testing.assert_close(got, _brute_nn(q, r), rtol=1e-6, atol=0)
    x = torch.cat([q, q[:3]])
    full = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").fill_diagonal_(math.inf)
    torch.testing.assert_close(nearest_neighbour_distance(x, x, exclude_self=True), full.min(1).values,
                               rtol=1e-6, atol=0)


def test_nn_distance_exclude_self(generator):
    x = torch.rand(60, 4, generator=generator, dtype=torch.float64)
    full = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    full.fill_diagonal_(math.inf)
    torch.testing.assert_close(nearest_neighbour_distance(x, x, exclude_self=True, batch_size=16),
                               full.min(1).values, rtol=1e-10, atol=1e-12)
    assert bool((nearest_neighbour_distance(x, x) == 0).all())
    # a duplicated row is still at distance 0 from its twin
    y = torch.cat([x, x[:1]])
    assert nearest_neighbour_distance(y, y, exclude_self=True)[0] == 0.0
    # two points: each one's neighbour is the other
    two = np.array([[0.0, 0.0], [3.0, 4.0]])
    torch.testing.assert_close(nearest_neighbour_distance(two, two, exclude_self=True),
                               torch.tensor([5.0, 5.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("q", "r", "kwargs", "match"),
    [
        (np.zeros((3, 2)), np.zeros((4, 2)), {"exclude_self": True}, r"same set, got 3 and 4 rows"),
        (np.zeros((1, 2)), np.zeros((1, 2)), {"exclude_self": True}, r"reference needs at least 2 row"),
        (np.zeros((3, 2)), np.zeros((4, 3)), {}, r"queries and reference must have the same number of columns"),
        (np.zeros((3, 2)), np.zeros((4, 2)), {"batch_size": 0}, r"batch_size must be a positive int, got 0"),
        (np.array([[np.nan, 0.0]]), np.zeros((4, 2)), {}, r"queries must be finite"),
    ],
)
def test_nn_distance_bad_input(q, r, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nearest_neighbour_distance(q, r, **kwargs)


# ---------------------------------------------------------------------------------------- memorization report
def test_memorization_report_fresh_samples_vs_copies(generator):
    d = 8
    train = torch.randn(3000, d, generator=generator, dtype=torch.float64)
    test = torch.randn(600, d, generator=generator, dtype=torch.float64)
    fresh = torch.randn(600, d, generator=generator, dtype=torch.float64)
    rep = memorization_report(fresh, train, test)
    assert 0.9 <= rep["ratio"] <= 1.1
    assert rep["near_copy_fraction"] < 0.05
    d_s = _brute_nn(fresh, train)
    assert rep["median_samples_to_train"] == pytest.approx(float(np.median(d_s.numpy())), rel=1e-10)
    assert rep["mean_samples_to_train"] == pytest.approx(float(d_s.mean()), rel=1e-10)
    assert rep["ratio"] == pytest.approx(rep["median_samples_to_train"] / rep["median_test_to_train"])
    assert rep["near_copy_threshold"] == pytest.approx(float(torch.quantile(_brute_nn(test, train), 0.01)))
    assert (rep["n_samples"], rep["n_test"], rep["n_train"]) == (600, 600, 3000)

    copies = train[:600] + 1e-6 * torch.randn(600, d, generator=generator, dtype=torch.float64)
    rep = memorization_report(copies.numpy(), train.numpy(), test.numpy())
    assert rep["ratio"] < 0.01
    assert rep["near_copy_fraction"] == 1.0


def test_memorization_report_subsamples(generator):
    train = torch.randn(200, 3, generator=generator)
    test = torch.randn(100, 3, generator=generator)
    samples = torch.randn(150, 3, generator=generator)
    rep = memorization_report(samples, train, test, n=40, seed=1)
    assert (rep["n_samples"], rep["n_test"], rep["n_train"]) == (40, 40, 200)
    assert rep == memorization_report(samples, train, test, n=40, seed=1)
    assert rep != memorization_report(samples, train, test, n=40, seed=2)
    with pytest.raises(ValueError, match=r"test and train must have the same number of columns"):
        memorization_report(samples, train, test[:, :2])
    with pytest.raises(ValueError, match=r"n must be a positive int, got 0"):
        memorization_report(samples, train, test, n=0)


# ---------------------------------------------------------------------------------------------- Wasserstein-2
def test_wasserstein2_shift_and_permutation(generator):
    a = torch.rand(40, 3, generator=generator, dtype=torch.float64)
    perm = torch.randperm(40, generator=generator)
    assert wasserstein2(a, a[perm]) == pytest.approx(0.0, abs=1e-12)
    c = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    # mean_i ‖a_i − a_σ(i) − c‖² = mean_i ‖a_i − a_σ(i)‖² + ‖c‖² (the cross term averages to 0): σ = id, W2 = ‖c‖
    assert wasserstein2(a, (a + c)[perm]) == pytest.approx(float(c.norm()), rel=1e-12)


def test_wasserstein2_matches_all_permutations(generator):
    a = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    b = torch.randn(6, 2, generator=generator, dtype=torch.float64) + 0.5
    best = min(float((a - b[list(p)]).square().sum(1).mean()) for p in itertools.permutations(range(6)))
    assert wasserstein2(a, b) == pytest.approx(math.sqrt(best), rel=1e-12)


def test_wasserstein2_unequal_sizes():
    with pytest.raises(ValueError, match=r"got 5 and 4; subsample the larger one to 4 rows"):
        wasserstein2(np.zeros((5, 2)), np.zeros((4, 2)))


# ------------------------------------------------------------------------------------------------------- MMD
def _mmd_loops(a: np.ndarray, b: np.ndarray, hs: list[float]) -> float:
    def k(x, y):
        return sum(math.exp(-float(np.sum((x - y) ** 2)) / (2 * h * h)) for h in hs)

    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd_matches_double_loop(generator):
    a = torch.randn(4, 2, generator=generator, dtype=torch.float64).numpy()
    b = (torch.randn(5, 2, generator=generator, dtype=torch.float64) + 0.7).numpy()
    assert mmd_rbf(a, b, bandwidths=[0.5, 2.0]) == pytest.approx(_mmd_loops(a, b, [0.5, 2.0]), rel=1e-10)
    assert mmd_rbf(a, b, bandwidths=1.3) == pytest.approx(_mmd_loops(a, b, [1.3]), rel=1e-10)
    pooled = np.concatenate([a, b])
    med = float(np.median([np.linalg.norm(pooled[i] - pooled[j]) for i, j in itertools.combinations(range(9), 2)]))
    expected = _mmd_loops(a, b, [0.5 * med, med, 2.0 * med])
    assert mmd_rbf(a, b) == pytest.approx(expected, rel=1e-10)


def test_mmd_same_vs_shifted(generator):
    a = torch.randn(400, 2, generator=generator, dtype=torch.float64)
    b = torch.randn(400, 2, generator=generator, dtype=torch.float64)
    same = mmd_rbf(a, b)
    shifted = mmd_rbf(a, b + torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert abs(same) < 0.01
    assert shifted > 0.1 and shifted > 20 * abs(same)


@pytest.mark.parametrize(
    ("a", "kwargs", "exc", "match"),
    [
        (np.zeros((4, 2)), {}, ValueError, r"median pairwise distance of a and b is 0"),
        (np.ones((4, 2)), {"bandwidths": [1.0, -1.0]}, ValueError, r"bandwidths must be finite and > 0"),
        (np.ones((4, 2)), {"bandwidths": "wide"}, TypeError, r"bandwidths must be None, a float or a sequence"),
        (np.ones((1, 2)), {}, ValueError, r"a needs at least 2 row"),
    ],
)
def test_mmd_bad_input(a, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mmd_rbf(a, np.zeros((4, 2)), **kwargs)
