"""PILFlowMatching: each head equals its normal equations, the field approaches the analytic velocity, I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pilearn.features import derive_seed
from pilearn.generative import PILFlowMatching
from pilearn.generative._readout import _Head
from pilearn.solvers import RidgeStats, lam_scale


pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, 2)) * 0.15 + np.where(y[:, None] == 0, [-2.0, 0.0], [2.0, 0.0])
    return X.astype(np.float32), y


def _normal_equations(model: PILFlowMatching, layer: int, k: int, c: int, X, labels, lam: float) -> _Head:
    """Regenerate head (layer, k, c)'s draws and solve the centred normal equations with torch.linalg.solve."""
    idx = np.arange(len(X)) if c < 0 else np.flatnonzero(labels == c)
    Hs, Ys = [], []
    for xt, t, onehot, u in model._draws(layer, k, c, torch.as_tensor(X), labels, idx, "all"):
        prev = model._predict_layers(layer, k, c, xt, t, onehot) if layer else None
        Hs.append(model._phi(layer, xt, t, onehot, prev).double())
        Ys.append((u - prev if prev is not None else u).double())
    H, Y = torch.cat(Hs), torch.cat(Ys)
    hm, ym = H.mean(0), Y.mean(0)
    Hc, Yc = H - hm, Y - ym
    coef = torch.linalg.solve(Hc.T @ Hc + lam * torch.eye(H.shape[1], dtype=torch.float64), Hc.T @ Yc)
    return _Head(coef, ym - hm @ coef, lam, None)


@pytest.mark.parametrize("conditioning", ["separate", "features"])
def test_every_head_equals_its_normal_equations(conditioning):
    X, y = _blobs()
    lam = 0.3
    model = PILFlowMatching(width=24, time_buckets=2, draws=2, num_layers=2, lam=lam, conditioning=conditioning,
                            batch_size=50, dtype="float64").fit(X, y)
    expected_heads = 2 * 2 * (2 if conditioning == "separate" else 1)
    assert len(model.heads_) == expected_heads
    labels = np.searchsorted(model.classes_, y)
    for (layer, k, c), head in model.heads_.items():
        ref = _normal_equations(model, layer, k, c, X, labels, lam)
        torch.testing.assert_close(head.coef, ref.coef, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(head.intercept, ref.intercept, rtol=1e-6, atol=1e-8)


def test_unconditional_shared_head_equals_normal_equations_with_sigma():
    X, _ = _blobs(120)
    model = PILFlowMatching(width=16, time_buckets=1, draws=3, sigma=0.2, lam=0.05, time_embedding="fourier",
                            fusion="concat", dtype="float64").fit(X)
    assert list(model.heads_) == [(0, 0, -1)]
    ref = _normal_equations(model, 0, 0, -1, X, None, 0.05)
    torch.testing.assert_close(model.heads_[(0, 0, -1)].coef, ref.coef, rtol=1e-6, atol=1e-8)


def test_field_approaches_the_analytic_gaussian_velocity():
    # x₀ ~ N(0, 1), x₁ ~ N(m, s²): x_t ~ N(t m, (1−t)² + t² s²) and
    # v*(x, t) = E[x₁ − x₀ | x_t = x] = m + (t s² − (1 − t)) / ((1 − t)² + t² s²) · (x − t m)
    m, s = 2.0, 0.5
    rng = np.random.default_rng(0)
    X = (m + s * rng.normal(size=(4000, 1))).astype(np.float64)
    model = PILFlowMatching(width=64, time_buckets=10, draws=4, dtype="float64", random_state=1).fit(X)
    errs, scale = [], []
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        var = (1 - t) ** 2 + t**2 * s**2
        x = torch.linspace(t * m - 1.5 * math.sqrt(var), t * m + 1.5 * math.sqrt(var), 21, dtype=torch.float64)
        exact = m + (t * s**2 - (1 - t)) / var * (x - t * m)
        fitted = model.velocity(x[:, None], t)[:, 0]
        errs.append((fitted - exact).abs().max().item())
        scale.append(exact.abs().max().item())
    assert max(errs) < 0.1 * max(scale), (errs, scale)
    # and the samples carry N(0, 1) to N(m, s²)
    xs = model.sample(3000, steps=40, seed=2)[:, 0]
    assert abs(xs.mean().item() - m) < 0.05
    assert abs(xs.std().item() - s) < 0.05


def test_conditional_samples_go_to_their_class():
    X, y = _blobs()
    model = PILFlowMatching(width=32, time_buckets=4, draws=4).fit(X, y)
    req = np.array([0, 1] * 20)
    xs = model.sample(y=req, steps=20, method="rk4")
    assert torch.all(torch.sign(xs[:, 0]) == torch.from_numpy(np.where(req == 0, -1.0, 1.0)).float())
    res = model.sample(y=req, method="dopri5", return_result=True)
    assert res.nfe > 0 and res.x.shape == (40, 2)


def test_holdout_chooses_lambda_on_the_grid_and_resolves_on_all_points():
    X, y = _blobs()
    grid = (1e-6, 1e-3, 1.0)
    model = PILFlowMatching(width=16, time_buckets=2, draws=2, lam="holdout", lam_grid=grid,
                            dtype="float64").fit(X, y)
    labels = np.searchsorted(model.classes_, y)
    for (layer, k, c), head in model.heads_.items():
        assert head.lam_relative in grid
        # re-solved on the held-out and the training draws together, at the chosen relative λ
        idx = np.flatnonzero(labels == c)
        perm = np.random.default_rng(derive_seed(model.random_state, "holdout", layer, k, c)).permutation(idx)
        n_hold = int(round(model.validation_fraction * len(idx)))
        stats = RidgeStats(model._n_phi(layer), 2, dual=False)
        for stream, rows in (("hold", perm[:n_hold]), ("train", perm[n_hold:])):
            for xt, t, onehot, u in model._draws(layer, k, c, torch.as_tensor(X), labels, np.sort(rows), stream):
                stats.update(model._phi(layer, xt, t, onehot, None), u)
        assert head.lam == pytest.approx(head.lam_relative * lam_scale(stats), rel=1e-9)
        ref = stats.solve(head.lam)
        torch.testing.assert_close(head.coef, ref.coef, rtol=1e-6, atol=1e-8)


def test_draws_of_a_head_stay_in_its_time_bucket_and_class():
    X, y = _blobs(90)
    model = PILFlowMatching(width=8, time_buckets=3, draws=2, lam=0.1, batch_size=16).fit(X, y)
    labels = np.searchsorted(model.classes_, y)
    Xt = torch.as_tensor(X)
    for k in range(3):
        for c in (0, 1):
            idx = np.flatnonzero(labels == c)
            n_rows = 0
            for xt, t, _, u in model._draws(0, k, c, Xt, labels, idx, "all"):
                assert bool(((t >= k / 3) & (t < (k + 1) / 3)).all())
                x1 = xt + (1 - t[:, None].float()) * u  # x_t + (1 − t)(x₁ − x₀) = x₁ on the straight path
                d, nearest = torch.cdist(x1.double(), Xt.double()).min(1)  # float32 draws: x₁ back to ~1e-5
                assert d.max() < 1e-3 and bool((torch.from_numpy(labels)[nearest] == c).all())  # rows of class c
                n_rows += len(t)
            assert n_rows == 2 * len(idx)


def test_save_load_roundtrip(tmp_path):
    X, y = _blobs()
    model = PILFlowMatching(width=16, time_buckets=2, draws=1, num_layers=2, lam=0.1).fit(X, y + 3)
    path = tmp_path / "flow.safetensors"
    model.save(path)
    loaded = PILFlowMatching.load(path)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    labels = np.array([3, 4] * 5)
    torch.testing.assert_close(loaded.velocity(x, 0.6, labels), model.velocity(x, 0.6, labels))
    assert loaded.get_params() == model.get_params()
    np_model = PILFlowMatching(width=np.int64(8), time_buckets=np.int32(1), lam=0.1).fit(X, y)
    np_model.save(tmp_path / "np.safetensors")  # NumPy ints in the parameters are stored as ints
    assert PILFlowMatching.load(tmp_path / "np.safetensors").width == 8
    with pytest.raises(ValueError, match="not a PILFlowMatching file"):
        from safetensors.torch import save_file

        save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        PILFlowMatching.load(tmp_path / "other.safetensors")


def test_fit_is_seeded():
    X, y = _blobs(80)
    a = PILFlowMatching(width=8, time_buckets=1, lam=0.1, random_state=3).fit(X, y)
    b = PILFlowMatching(width=8, time_buckets=1, lam=0.1, random_state=3).fit(X, y)
    c = PILFlowMatching(width=8, time_buckets=1, lam=0.1, random_state=4).fit(X, y)
    assert torch.equal(a.heads_[(0, 0, 0)].coef, b.heads_[(0, 0, 0)].coef)
    assert not torch.allclose(a.heads_[(0, 0, 0)].coef, c.heads_[(0, 0, 0)].coef)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"width": 0}, "width must be an int >= 1"),
        ({"time_buckets": 1.5}, "time_buckets must be an int"),
        ({"fusion": "mul"}, "fusion must be one of"),
        ({"time_embedding": "learned"}, "time_embedding must be one of"),
        ({"lam": -1.0}, "lam must be a float >= 0"),
        ({"lam": "gcv"}, "lam must be a float >= 0"),
        ({"sigma": -0.1}, "sigma must be a finite float >= 0"),
        ({"input_scale": 0.0}, "input_scale must be a finite float > 0"),
        ({"lam_grid": ()}, "lam_grid must be a non-empty"),
        ({"validation_fraction": 1.0}, "validation_fraction must be a float in"),
    ],
)
def test_bad_parameters_are_named(params, match):
    X, _ = _blobs(40)
    with pytest.raises(ValueError, match=match):
        PILFlowMatching(**params).fit(X)


def test_bad_input_is_refused_clearly():
    X, y = _blobs(60)
    bad = X.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="X has NaN or infinite values in 1 row.*first row 7"):
        PILFlowMatching(lam=0.1).fit(bad)
    with pytest.raises(ValueError, match=r"X must have shape \(n, D\)"):
        PILFlowMatching(lam=0.1).fit(X[:, :, None])
    with pytest.raises(ValueError, match=r"y must have shape \(60,\)"):
        PILFlowMatching(lam=0.1).fit(X, y[:10])
    with pytest.raises(RuntimeError, match="not fitted"):
        PILFlowMatching().velocity(torch.zeros(2, 2), 0.5)
    model = PILFlowMatching(width=8, time_buckets=1, lam=0.1).fit(X, y)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        model.velocity(torch.zeros(3, 5), 0.5, [0, 1, 0])
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        model.velocity(torch.zeros(3, 2), 1.5, [0, 1, 0])
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        model.velocity(torch.zeros(2, 2), torch.tensor([0.5, float("nan")]), [0, 1])
    with pytest.raises(ValueError, match="labels not seen in fit: \\[7\\]"):
        model.velocity(torch.zeros(2, 2), 0.5, [0, 7])
    with pytest.raises(ValueError, match="class-conditional"):
        model.sample(4)
    with pytest.raises(ValueError, match=r"y must be a sequence of class labels of shape \(n,\)"):
        model.sample(y=1)
    uncond = PILFlowMatching(width=8, time_buckets=1, lam=0.1).fit(X)
    with pytest.raises(ValueError, match="fitted without labels"):
        uncond.velocity(torch.zeros(2, 2), 0.5, [0, 1])
    with pytest.raises(ValueError, match="needs points on both sides"):
        PILFlowMatching(width=8, time_buckets=1, lam="holdout", validation_fraction=0.001).fit(X[:5])
