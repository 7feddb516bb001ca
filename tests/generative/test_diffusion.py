"""PILDiffusion: shared, bucketed and per-timestep heads equal their normal equations, the denoiser approaches the
analytic Gaussian optimum, sampling, save/load, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pilearn.generative import DDIMScheduler, PILDiffusion, denoise
from pilearn.generative._readout import _Head

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n: int = 200, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) * 0.2 + np.where(y[:, None] == 0, -1.0, 1.0)
    return X.astype(np.float64), y


def _normal_equations(model: PILDiffusion, k: int, c: int, X, labels, lam: float) -> _Head:
    """Regenerate head (k, c)'s draws, check them against the forward process, and solve the normal equations."""
    idx = np.arange(len(X)) if c < 0 else np.flatnonzero(labels == c)
    Hs, Ys = [], []
    ab = model.alphas_cumprod
    X = torch.as_tensor(X)
    x0_all, at = X[torch.from_numpy(idx)].repeat(model.draws, 1), 0  # the draws walk the head's points once per draw
    for xt, t, onehot, target in model._draws(0, k, c, X, labels, idx, "all"):
        tl = t.long()
        x0, at = x0_all[at: at + len(xt)], at + len(xt)
        eps = (xt - ab[tl].sqrt()[:, None] * x0) / (1 - ab[tl]).sqrt()[:, None]  # the noise the draw used
        want = {"epsilon": eps, "sample": x0,
                "v_prediction": ab[tl].sqrt()[:, None] * eps - (1 - ab[tl]).sqrt()[:, None] * x0}
        torch.testing.assert_close(target, want[model.prediction_type], rtol=1e-9, atol=1e-9)
        Hs.append(model._phi(0, xt, t, onehot, None).double())
        Ys.append(target.double())
    H, Y = torch.cat(Hs), torch.cat(Ys)
    hm, ym = H.mean(0), Y.mean(0)
    Hc, Yc = H - hm, Y - ym
    coef = torch.linalg.solve(Hc.T @ Hc + lam * torch.eye(H.shape[1], dtype=torch.float64), Hc.T @ Yc)
    return _Head(coef, ym - hm @ coef, lam, None)


@pytest.mark.parametrize("cells, prediction_type, conditioning", [
    (dict(time_buckets=1), "epsilon", "separate"),  # shared over t
    (dict(time_buckets=3), "v_prediction", "features"),  # per bucket
    (dict(head_timesteps=[999, 10, 500]), "sample", "separate"),  # per timestep
])
def test_every_head_equals_its_normal_equations(cells, prediction_type, conditioning):
    X, y = _blobs()
    lam = 0.2
    model = PILDiffusion(width=20, draws=2, lam=lam, conditioning=conditioning, prediction_type=prediction_type,
                         batch_size=60, dtype="float64", **cells).fit(X, y)
    n_cells = len(cells.get("head_timesteps", [])) or cells["time_buckets"]
    assert len(model.heads_) == n_cells * (2 if conditioning == "separate" else 1)
    labels = np.searchsorted(model.classes_, y)
    for (_, k, c), head in model.heads_.items():
        ref = _normal_equations(model, k, c, X, labels, lam)
        torch.testing.assert_close(head.coef, ref.coef, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(head.intercept, ref.intercept, rtol=1e-6, atol=1e-8)


def test_draws_stay_in_their_cell_and_per_timestep_heads_see_only_their_timestep():
    X, _ = _blobs(50)
    model = PILDiffusion(width=8, time_buckets=4, bucket_spacing="timestep", num_train_timesteps=100,
                         batch_size=64).fit(X)
    for k in range(4):
        ts = torch.cat([t for _, t, _, _ in model._draws(0, k, -1, torch.as_tensor(X), None, np.arange(50), "all")])
        assert 25 * k <= ts.min() and ts.max() < 25 * (k + 1)
        assert len(torch.unique(ts)) > 10  # uniform over the cell, not one value
    # flow spacing: bucket k holds the timesteps whose flow-time noise share s/(a + s) lies in [k/K, (k+1)/K)
    flow = PILDiffusion(width=8, time_buckets=4).fit(X)
    ab = flow.alphas_cumprod
    share = (1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt())
    for k in range(4):
        ts = torch.cat([t for _, t, _, _ in flow._draws(0, k, -1, torch.as_tensor(X), None, np.arange(50), "all")])
        assert k / 4 <= share[ts.long()].min() and share[ts.long()].max() < (k + 1) / 4
        assert torch.all(flow._cell_of(ts) == k)
    assert flow._cell_of(torch.arange(1000, dtype=torch.float64)).bincount().min() > 0
    per_t = PILDiffusion(width=8, head_timesteps=[3, 70], num_train_timesteps=100).fit(X)
    ts = torch.cat([t for _, t, _, _ in per_t._draws(0, 1, -1, torch.as_tensor(X), None, np.arange(50), "all")])
    assert torch.all(ts == 70)
    with pytest.raises(ValueError, match="heads only at timesteps"):
        per_t(torch.zeros(2, 3), 50)


def test_denoiser_approaches_the_analytic_gaussian_optimum():
    # x₀ ~ N(μ, s²I): ε*(x, t) = √(1−ᾱ)(x − √ᾱ μ)/(ᾱ s² + 1 − ᾱ), linear in x and inside the model class per timestep
    # At small t most of ε is unpredictable (ε* is small against it), so the estimate converges like 1/√draws there.
    mu, s, d = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5, 2
    g = torch.Generator().manual_seed(0)
    X = (mu + s * torch.randn(6000, d, generator=g, dtype=torch.float64))
    ts = [50, 300, 700]

    def rel_errors(model: PILDiffusion) -> list[float]:
        ab, errs = model.alphas_cumprod, []
        for t in ts:
            a = ab[t]
            x = math.sqrt(a) * mu + math.sqrt(a * s**2 + 1 - a) * torch.randn(500, d, generator=g, dtype=torch.float64)
            exact = math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / (a * s**2 + 1 - a)
            errs.append(float((model(x, t) - exact).norm() / exact.norm()))
        return errs

    fit = lambda draws, **cells: PILDiffusion(width=4, draws=draws, lam=1e-3, dtype="float64",  # noqa: E731
                                              random_state=2, **cells).fit(X)
    few, many = rel_errors(fit(2, head_timesteps=ts)), rel_errors(fit(16, head_timesteps=ts))
    assert many[0] < 0.08 and many[1] < 0.02 and many[2] < 0.005, many
    assert many[0] < few[0], (few, many)  # more draws: closer (the 6,000 data points set the floor)
    # one read-out shared by all t cannot follow the t-dependent coefficient: far worse with the same draws
    shared = rel_errors(fit(16 * 3, time_buckets=1))
    assert shared[0] > 3 * many[0] and shared[1] > 3 * many[1], (shared, many)


def test_ddim_samples_match_those_of_the_exact_denoiser():
    # DDIM with 25 steps under-disperses even with the exact ε* (std 0.25 for s = 0.3; 0.2999 at 1000 steps), so the
    # model is compared with the exact denoiser through the same sampler from the same x_T
    mu, s = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64), 0.3
    g = torch.Generator().manual_seed(1)
    X = mu + s * torch.randn(3000, 3, generator=g, dtype=torch.float64)
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(25)
    model = PILDiffusion(width=16, head_timesteps=sched.timesteps.tolist(), draws=2, lam=1e-3,
                         dtype="float64").fit(X)
    res = model.sample(2000, scheduler=sched, num_inference_steps=25, seed=3, return_result=True)
    assert res.nfe == 25 and res.x.shape == (2000, 3)
    ab = sched.alphas_cumprod

    def exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ab[t].to(x.dtype)[:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    x_T = torch.randn(2000, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = denoise(exact, sched, x_T, 25).x
    torch.testing.assert_close(res.x.mean(0), ref.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(res.x.std(0), ref.std(0), atol=0.02, rtol=0)
    assert (res.x - ref).norm() / (ref - mu).norm() < 0.1  # sample by sample, not only in distribution


def test_conv_features_on_images_and_conditional_sampling_shapes():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 1, 8, 8, generator=g) * 2 - 1
    y = np.arange(60) % 3
    model = PILDiffusion(features="conv", conv_channels=(2, 3), width=16, time_buckets=2).fit(X, y)
    assert model.image_shape_ == (1, 8, 8)
    # φ = [x (64), conv level 1 (2·4·4), conv level 2 (3·2·2), dense (16)]
    assert model._n_phi(0) == 64 + 32 + 12 + 16
    out = model(X[:5], torch.tensor([0, 100, 500, 900, 999]), y[:5])
    assert out.shape == (5, 1, 8, 8)
    samples = model.sample(y=[0, 2, 2], num_inference_steps=5)
    assert samples.shape == (3, 1, 8, 8) and torch.isfinite(samples).all()
    # the images path and the flat path with image_shape give the same model
    flat = PILDiffusion(features="conv", conv_channels=(2, 3), width=16, time_buckets=2,
                        image_shape=(1, 8, 8)).fit(X.reshape(60, -1), y)
    torch.testing.assert_close(flat(X[:5].reshape(5, -1), 300, y[:5]), model(X[:5], 300, y[:5]).reshape(5, -1))


def test_save_load_roundtrip(tmp_path):
    X, y = _blobs()
    model = PILDiffusion(width=12, time_buckets=2, lam="holdout", fusion="concat", time_embedding="fourier",
                         beta_schedule="cosine", prediction_type="v_prediction").fit(X, y)
    model.save(tmp_path / "m.safetensors")
    back = PILDiffusion.load(tmp_path / "m.safetensors")
    x = torch.randn(7, 3)
    torch.testing.assert_close(back(x, 400, y[:7]), model(x, 400, y[:7]), rtol=1e-6, atol=1e-6)
    assert back.get_params() == model.get_params()
    torch.testing.assert_close(back.sample(y=y[:4], num_inference_steps=4), model.sample(y=y[:4], num_inference_steps=4))
    per_t = PILDiffusion(width=8, head_timesteps=(5, 50)).fit(X)
    per_t.save(tmp_path / "p.safetensors")
    assert PILDiffusion.load(tmp_path / "p.safetensors").head_timesteps == (5, 50)
    # conv features on images, timestep spacing: the image shape, the cells and the sample shape come back
    imgs = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    conv = PILDiffusion(features="conv", conv_channels=(2,), width=8, time_buckets=3,
                        bucket_spacing="timestep").fit(imgs, np.arange(40) % 2)
    conv.save(tmp_path / "c.safetensors")
    back = PILDiffusion.load(tmp_path / "c.safetensors")
    assert back.image_shape_ == (1, 8, 8) and back.bucket_spacing == "timestep"
    torch.testing.assert_close(back._cells, conv._cells, rtol=0, atol=0)
    torch.testing.assert_close(back(imgs[:4], 400, [0, 1, 0, 1]), conv(imgs[:4], 400, [0, 1, 0, 1]),
                               rtol=1e-6, atol=1e-6)
    assert back.sample(y=[1, 0], num_inference_steps=3).shape == (2, 1, 8, 8)
    from pilearn.generative import PILFlowMatching
    PILFlowMatching(width=4).fit(X).save(tmp_path / "f.safetensors")
    with pytest.raises(ValueError, match="not a PILDiffusion file"):
        PILDiffusion.load(tmp_path / "f.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file at all")
    with pytest.raises(ValueError, match="is not a readable safetensors file .*; expected a PILDiffusion file"):
        PILDiffusion.load(tmp_path / "junk.safetensors")
    assert repr(PILDiffusion(head_timesteps=np.array([5, 50]))) == "PILDiffusion(head_timesteps=array([ 5, 50]))"


def test_n_stored_parameters_counts_every_head():
    X, y = _blobs()
    model = PILDiffusion(width=10, time_buckets=3).fit(X, y)
    d = 3 + 10
    assert model.n_stored_parameters() == 3 * 2 * (d * 3 + 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prediction_type="score"), "prediction_type"),
    (dict(features="unet"), "features"),
    (dict(time_buckets=0), "time_buckets"),
    (dict(time_buckets=2000), "time_buckets"),
    (dict(head_timesteps=[5, 1000]), "head_timesteps"),
    (dict(head_timesteps=[]), "head_timesteps"),
    (dict(conv_channels=(4, 0)), "conv_channels"),
    (dict(image_shape=(1, 28)), "image_shape"),
    (dict(lam=-1.0), "lam"),
    (dict(beta_schedule="sigmoid"), "beta_schedule"),
])
def test_bad_parameters_are_named(kwargs, match):
    X, _ = _blobs(20)
    with pytest.raises(ValueError, match=match):
        PILDiffusion(**kwargs).fit(X)


def test_bad_input_is_a_clear_error():
    X, y = _blobs(40)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PILDiffusion(width=4).fit(bad)
    with pytest.raises(ValueError, match="needs images"):
        PILDiffusion(features="conv").fit(X)
    with pytest.raises(ValueError, match="image_shape"):
        PILDiffusion(image_shape=(1, 2, 2)).fit(X)
    model = PILDiffusion(width=4, time_buckets=2).fit(X, y)
    with pytest.raises(RuntimeError, match="not fitted"):
        PILDiffusion()(torch.zeros(1, 3), 0)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        model(torch.zeros(2, 4), 0, [0, 1])
    with pytest.raises(ValueError, match=r"timestep must lie in \[0, 999\]"):
        model(torch.zeros(2, 3), 1000, [0, 1])
    with pytest.raises(ValueError, match="timestep must hold integer time-step indices"):
        model(torch.zeros(2, 3), torch.tensor([0.5, 1.0]), [0, 1])
    with pytest.raises(ValueError, match="class-conditional"):
        model(torch.zeros(2, 3), 5)
    with pytest.raises(ValueError, match="not seen in fit"):
        model.sample(y=[0, 7])
    with pytest.raises(ValueError, match="noise schedule"):
        model.sample(y=[0], scheduler=DDIMScheduler(beta_schedule="cosine"))
    with pytest.raises(ValueError, match="prediction_type"):
        model.sample(y=[0], scheduler=DDIMScheduler(prediction_type="sample"))
    with pytest.raises(TypeError, match="scheduler"):
        model.sample(y=[0], scheduler="ddim")
    with pytest.raises(ValueError, match="from the model"):
        model.make_scheduler("ddim", beta_schedule="cosine")


def test_per_timestep_model_samples_with_its_scheduler_and_rejects_other_timesteps():
    X, _ = _blobs(60)
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(6)
    model = PILDiffusion(width=8, head_timesteps=sched.timesteps.tolist()).fit(X)
    # the scheduler's own step count (or one per head) is the default: no step count to repeat
    assert model.sample(4, scheduler=sched, return_result=True).nfe == 6
    assert model.sample(4, return_result=True).nfe == 6
    with pytest.raises(ValueError, match="heads only at timesteps"):
        model.sample(4, num_inference_steps=10)
