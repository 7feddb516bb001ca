"""Tests for the 2-D toy distributions: contract, determinism, and each shape's geometry against its definition."""

from __future__ import annotations

import numpy as np
import pytest

from pilearn.data import TOY_2D_NAMES, make_toy_2d
from pilearn.data import _toy

N = 4000


def distance_to_curve(points: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Distance of each point ``(n, 2)`` to a densely sampled curve ``(m, 2)``: ``(n,)``."""
    sq = (points**2).sum(1)[:, None] - 2 * points @ curve.T + (curve**2).sum(1)[None, :]
    return np.sqrt(np.maximum(sq.min(axis=1), 0))


@pytest.mark.parametrize("name", TOY_2D_NAMES)
def test_contract_and_scale(name: str) -> None:
    X = make_toy_2d(name, N)
    assert X.shape == (N, 2) and X.dtype == np.float32 and X.flags.c_contiguous
    assert np.isfinite(X).all()
    # Comparable to the N(0, I) source: per-coordinate std in [0.9, 1.9], mean near 0.
    assert np.all((X.std(0) > 0.9) & (X.std(0) < 1.9)), X.std(0)
    assert np.abs(X.mean(0)).max() < 0.5
    assert make_toy_2d(name, 1).shape == (1, 2)
    assert make_toy_2d(name, 3).shape == (3, 2)  # odd n for two-part shapes


@pytest.mark.parametrize("name", TOY_2D_NAMES)
def test_determinism(name: str) -> None:
    np.testing.assert_array_equal(make_toy_2d(name, 500, seed=3), make_toy_2d(name, 500, seed=3))
    assert not np.allclose(make_toy_2d(name, 500, seed=3), make_toy_2d(name, 500, seed=4))


def test_eight_gaussians_near_their_centres() -> None:
    X = make_toy_2d("8gaussians", N).astype(np.float64)
    angles = np.arange(8) * np.pi / 4
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    d = np.linalg.norm(X[:, None] - centres[None], axis=2)
    k = d.argmin(1)
    residual = X - centres[k]
    assert d.min(1).max() < 5 * 0.2
    assert residual.std(0) == pytest.approx([0.2, 0.2], rel=0.06)  # the component std
    counts = np.bincount(k, minlength=8) / N
    assert counts.min() > 0.1 and counts.max() < 0.15  # 1/8 each


def test_checkerboard_on_squares_only() -> None:
    X = make_toy_2d("checkerboard", N)
    assert X.min() >= -2 and X.max() <= 2
    cell = np.floor(X).astype(int)
    assert ((cell.sum(1)) % 2 == 0).all()  # 'on' squares: floor(x) + floor(y) even
    _, counts = np.unique(cell[:, 0] * 10 + cell[:, 1], return_counts=True)
    assert len(counts) == 8 and counts.min() / N > 0.1 and counts.max() / N < 0.15


def test_circles_near_their_radii() -> None:
    r = np.linalg.norm(make_toy_2d("circles", N).astype(np.float64), axis=1)
    inner = r < 1.5
    assert inner.mean() == pytest.approx(0.5, abs=1e-3)  # n // 2 on each circle, none misassigned
    assert r[inner].mean() == pytest.approx(1.0, abs=0.01) and r[~inner].mean() == pytest.approx(2.0, abs=0.01)
    assert r[inner].std() == pytest.approx(0.1, rel=0.1) and r[~inner].std() == pytest.approx(0.1, rel=0.1)


def test_moons_spirals_swissroll_near_their_curves() -> None:
    # Curves sampled at most 0.01 apart along their length, so discretising adds <= 0.005 to a distance.
    theta = np.linspace(0, np.pi, 1000)
    moons = np.concatenate([_toy.moons_curve(theta, 0), _toy.moons_curve(theta, 1)])
    angle = np.linspace(0, 3 * np.pi, 3000)
    spirals = np.concatenate([_toy.spirals_curve(angle, 0), _toy.spirals_curve(angle, 1)])
    roll = _toy.swissroll_curve(np.linspace(1.5 * np.pi, 4.5 * np.pi, 3000))
    for name, curve, noise in [("moons", moons, 0.2), ("spirals", spirals, 0.1), ("swissroll", roll, 0.1)]:
        d = distance_to_curve(make_toy_2d(name, 2000).astype(np.float64), curve)
        assert d.max() < 4.5 * noise, name  # the 2-D noise norm exceeds 4.5σ with probability e^{-10}
        assert np.median(d) == pytest.approx(0.674 * noise, rel=0.2), name  # median |N(0, σ²)| normal part


def test_moons_halves() -> None:
    X = make_toy_2d("moons", 2000).astype(np.float64)
    theta = np.linspace(0, np.pi, 1000)
    d0 = distance_to_curve(X, _toy.moons_curve(theta, 0))
    d1 = distance_to_curve(X, _toy.moons_curve(theta, 1))
    assert (d0 < d1).mean() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("gaussians", 10), {}, r"name must be one of \('8gaussians', 'moons'.*got 'gaussians'"),
        (("moons", 0), {}, "n must be an int >= 1, got 0"),
        (("moons", 2.0), {}, "n must be an int >= 1, got 2.0"),
        (("moons", True), {}, "n must be an int >= 1, got True"),
        (("moons", 10), {"seed": -1}, "seed must be an int >= 0, got -1"),
    ],
)
def test_bad_arguments(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_toy_2d(*args, **kwargs)
