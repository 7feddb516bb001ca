"""Tests for the DDPM/DDIM schedulers and the sampling loop.

Oracles: the formulas of the papers written out by hand (float64, small tensors), the real diffusers schedulers
(float32, so atol ~1e-5), and a Gaussian data set whose exact ε-predictor is known in closed form.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from pilearn.generative._schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionSampleResult,
    SchedulerOutput,
    denoise,
    make_betas,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PREDICTIONS = ("epsilon", "sample", "v_prediction")
SCHEDULES = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")
DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def f64(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def x0_eps_by_hand(prediction_type: str, out: torch.Tensor, x: torch.Tensor, ab: float):
    """(x̂₀, ε̂) from the model output (Ho et al. 2020 eq. 15; Salimans & Ho 2022 for v)."""
    a, b = math.sqrt(ab), math.sqrt(1 - ab)
    if prediction_type == "epsilon":
        return (x - b * out) / a, out
    if prediction_type == "sample":
        return out, (x - a * out) / b
    return a * x - b * out, a * out + b * x


# ------------------------------------------------------------------------------------------------- schedules


def test_make_betas_formulas() -> None:
    T, b0, b1 = 11, 1e-3, 0.3
    linear = [b0 + (b1 - b0) * i / (T - 1) for i in range(T)]
    scaled = [(math.sqrt(b0) + (math.sqrt(b1) - math.sqrt(b0)) * i / (T - 1)) ** 2 for i in range(T)]

    def alpha_bar(tau: float) -> float:  # Nichol & Dhariwal 2021, eq. 17
        return math.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2

    cosine = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
    for name, expected in (("linear", linear), ("scaled_linear", scaled), ("cosine", cosine),
                           ("squaredcos_cap_v2", cosine)):
        betas = make_betas(name, T, b0, b1)
        assert betas.dtype == torch.float64 and betas.shape == (T,) and betas.device.type == "cpu"
        torch.testing.assert_close(betas, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=1e-15)
    assert cosine[-1] == 0.999  # the cap is exercised


def test_scheduler_attributes() -> None:
    s = DDPMScheduler(num_train_timesteps=20, beta_schedule="scaled_linear", beta_end=0.1)
    torch.testing.assert_close(s.betas, make_betas("scaled_linear", 20, 1e-4, 0.1))
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    expected = torch.tensor([math.prod(1 - b for b in s.betas[: t + 1].tolist()) for t in range(20)],
                            dtype=torch.float64)
    torch.testing.assert_close(s.alphas_cumprod, expected, rtol=1e-14, atol=0)
    assert s.alphas_cumprod.dtype == torch.float64
    assert s.num_inference_steps is None and s.init_noise_sigma == 1.0 and len(s) == 20
    assert s.timesteps.dtype == torch.long and s.timesteps.tolist() == list(range(19, -1, -1))
    assert s.previous_timestep(5) == 4 and s.previous_timestep(0) == -1  # the full chain, as diffusers
    assert s.config["beta_schedule"] == "scaled_linear" and s.config.variance_type == "fixed_small"
    assert set(s.config) == {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
                             "variance_type", "clip_sample", "clip_sample_range", "timestep_spacing", "steps_offset"}
    assert DDPMScheduler(**s.config).config == s.config
    assert DDIMScheduler().config.set_alpha_to_one is True
    with pytest.raises(TypeError, match="read-only"):
        s.config["prediction_type"] = "sample"
    assert copy.deepcopy(s).config == s.config
    x = f64(3, 2, seed=0)
    assert s.scale_model_input(x, 5) is x


def test_set_timesteps_spacings() -> None:
    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading")
    s.set_timesteps(10)
    assert s.timesteps.tolist() == list(range(900, -1, -100)) and s.num_inference_steps == 10
    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1)
    s.set_timesteps(50)
    assert s.timesteps[0] == 981 and s.timesteps[-1] == 1
    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    s.set_timesteps(10)
    assert s.timesteps.tolist() == list(range(999, 0, -100))
    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    s.set_timesteps(10)
    assert s.timesteps.tolist() == list(range(999, -1, -111))
    assert s.previous_timestep(999) == 888 and s.previous_timestep(torch.tensor(0)) == -1
    for spacing in SPACINGS:  # N = T visits every timestep
        s = DDPMScheduler(num_train_timesteps=13, timestep_spacing=spacing)
        s.set_timesteps(13)
        assert s.timesteps.tolist() == list(range(12, -1, -1))
    for N in (1, 7, 61, 122, 1000):  # distinct, descending, in range
        s = DDPMScheduler(timestep_spacing="trailing")
        s.set_timesteps(N)
        ts = s.timesteps.tolist()
        assert len(ts) == N and ts == sorted(set(ts), reverse=True) and ts[0] == 999 and ts[-1] >= 0


# ------------------------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("shape", [(4,), (4, 3), (4, 2, 3, 3)])
def test_add_noise_and_velocity_match_formula(shape: tuple[int, ...]) -> None:
    s = DDPMScheduler(num_train_timesteps=50, beta_end=0.2)
    x0, eps = f64(*shape, seed=1), f64(*shape, seed=2)
    t = torch.tensor([0, 7, 31, 49])
    ab = s.alphas_cumprod[t].reshape(4, *([1] * (len(shape) - 1)))
    torch.testing.assert_close(s.add_noise(x0, eps, t), ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=0, atol=1e-15)
    torch.testing.assert_close(s.get_velocity(x0, eps, t), ab.sqrt() * eps - (1 - ab).sqrt() * x0, rtol=0,
                               atol=1e-15)
    # One int for all samples; float32 in, float32 out.
    ab7 = float(s.alphas_cumprod[7])
    torch.testing.assert_close(s.add_noise(x0, eps, 7), math.sqrt(ab7) * x0 + math.sqrt(1 - ab7) * eps)
    out = s.add_noise(x0.float(), eps.float(), t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, s.add_noise(x0, eps, t).float())


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_exact_prediction_recovers_x0(prediction_type: str) -> None:
    # x_t from add_noise; a perfect model (ε, x₀ or v = get_velocity) makes step() predict x₀ exactly.
    s = DDIMScheduler(num_train_timesteps=100, prediction_type=prediction_type, clip_sample=False)
    s.set_timesteps(10)
    x0, eps = f64(5, 3, seed=3), f64(5, 3, seed=4)
    for t in s.timesteps.tolist():
        x_t = s.add_noise(x0, eps, t)
        out = {"epsilon": eps, "sample": x0, "v_prediction": s.get_velocity(x0, eps, t)}[prediction_type]
        res = s.step(out, t, x_t)
        torch.testing.assert_close(res.pred_original_sample, x0, rtol=1e-10, atol=1e-10)
        # DDIM with η = 0 and the true ε lands on the forward process at t': √ᾱ' x₀ + √(1 − ᾱ') ε.
        t_prev = s.previous_timestep(t)
        ab_prev = float(s.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        torch.testing.assert_close(res.prev_sample, math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps,
                                   rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------ steps by formula


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddpm_step_matches_formula(prediction_type: str, variance_type: str, clip: bool) -> None:
    # T = 100, N = 7 trailing: uneven strides 99, 85, 70, 56, ..., 13, so t' must come from the schedule.
    s = DDPMScheduler(num_train_timesteps=100, beta_end=0.1, prediction_type=prediction_type,
                      variance_type=variance_type, clip_sample=clip, clip_sample_range=0.8,
                      timestep_spacing="trailing")
    s.set_timesteps(7)
    ts = s.timesteps.tolist()
    assert ts == [round(100 - k * 100 / 7) - 1 for k in range(7)] == [99, 85, 70, 56, 42, 28, 13]
    x_t, out = 1.5 * f64(6, 4, seed=5), f64(6, 4, seed=6)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        assert s.previous_timestep(t) == t_prev
        ab = float(s.alphas_cumprod[t])
        ab_prev = float(s.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        alpha, beta = ab / ab_prev, 1 - ab / ab_prev
        x0, _ = x0_eps_by_hand(prediction_type, out, x_t, ab)
        if clip:
            x0 = x0.clamp(-0.8, 0.8)
        mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(alpha) * (1 - ab_prev) / (1 - ab) * x_t
        var = max((1 - ab_prev) / (1 - ab) * beta, 1e-20) if variance_type == "fixed_small" else beta
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        res = s.step(out, t, x_t, generator=torch.Generator().manual_seed(i))
        assert isinstance(res, SchedulerOutput)
        torch.testing.assert_close(res.prev_sample, mean + math.sqrt(var) * z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(res.pred_original_sample, x0, rtol=1e-12, atol=1e-12)
    # At t = 0 there is no noise: the step returns the posterior mean.
    s.set_timesteps(100)
    ab0 = float(s.alphas_cumprod[0])
    x0, _ = x0_eps_by_hand(prediction_type, out, x_t, ab0)
    x0 = x0.clamp(-0.8, 0.8) if clip else x0
    prev, pred = s.step(out, 0, x_t, generator=torch.Generator().manual_seed(0), return_dict=False)
    torch.testing.assert_close(prev, x0, rtol=1e-12, atol=1e-12)  # ᾱ_{t'} = 1: μ̃ = x̂₀
    torch.testing.assert_close(pred, x0)


@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_step_matches_formula(prediction_type: str, eta: float, clip: bool, use_clipped: bool) -> None:
    s = DDIMScheduler(num_train_timesteps=100, beta_end=0.1, prediction_type=prediction_type, clip_sample=clip,
                      clip_sample_range=0.8, timestep_spacing="trailing", set_alpha_to_one=False)
    s.set_timesteps(7)
    ts = s.timesteps.tolist()
    x_t, out, z = 1.5 * f64(6, 4, seed=7), f64(6, 4, seed=8), f64(6, 4, seed=9)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ab = float(s.alphas_cumprod[t])
        ab_prev = float(s.alphas_cumprod[t_prev] if t_prev >= 0 else s.alphas_cumprod[0])  # set_alpha_to_one=False
        x0, eps = x0_eps_by_hand(prediction_type, out, x_t, ab)
        if clip:
            x0 = x0.clamp(-0.8, 0.8)
        if use_clipped:
            eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps + sigma * z
        res = s.step(out, t, x_t, eta=eta, use_clipped_model_output=use_clipped, variance_noise=z)
        torch.testing.assert_close(res.prev_sample, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(res.pred_original_sample, x0, rtol=1e-12, atol=1e-12)


def test_ddim_last_step_set_alpha_to_one() -> None:
    x_t, out = f64(3, 2, seed=10), f64(3, 2, seed=11)
    for to_one in (True, False):
        s = DDIMScheduler(num_train_timesteps=10, beta_end=0.2, set_alpha_to_one=to_one, clip_sample=False)
        s.set_timesteps(5)  # leading: 8, 6, 4, 2, 0
        assert s.timesteps.tolist() == [8, 6, 4, 2, 0]
        res = s.step(out, 0, x_t)
        ab = float(s.alphas_cumprod[0])
        x0 = (x_t - math.sqrt(1 - ab) * out) / math.sqrt(ab)
        expected = x0 if to_one else math.sqrt(ab) * x0 + math.sqrt(1 - ab) * out
        torch.testing.assert_close(res.prev_sample, expected, rtol=1e-12, atol=1e-12)
        assert float(s.final_alpha_cumprod) == (1.0 if to_one else ab)


def test_step_keeps_dtype_and_draws_noise_in_sample_dtype() -> None:
    s = DDPMScheduler(num_train_timesteps=100)
    s.set_timesteps(10)
    x, out = f64(4, 3, seed=12).float(), f64(4, 3, seed=13).float()
    res = s.step(out, 50, x, generator=torch.Generator().manual_seed(3))
    assert res.prev_sample.dtype == torch.float32 and res.pred_original_sample.dtype == torch.float32
    # The noise is the float32 draw (as diffusers' randn_tensor), not a float64 one.
    z32 = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    ab, ab_prev = float(s.alphas_cumprod[50]), float(s.alphas_cumprod[40])
    beta = 1 - ab / ab_prev
    x64, o64 = x.double(), out.double()
    x0 = ((x64 - math.sqrt(1 - ab) * o64) / math.sqrt(ab)).clamp(-1, 1)
    mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x64
    expected = mean + math.sqrt((1 - ab_prev) / (1 - ab) * beta) * z32.double()
    torch.testing.assert_close(res.prev_sample, expected.float(), rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------------- diffusers


@pytest.fixture(scope="module")
def diffusers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("diffusers")


def pair(diffusers, kind: str, schedule: str, **kwargs):
    ours = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind](beta_schedule=schedule, **kwargs)
    ref_cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ref_cls(beta_schedule=DIFFUSERS_NAME[schedule], **kwargs)
    return ours, ref


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_timesteps_and_add_noise_match_diffusers(diffusers, schedule: str, spacing: str) -> None:
    ours, ref = pair(diffusers, "ddim", schedule, timestep_spacing=spacing, steps_offset=1 if spacing == "leading"
                     else 0)
    torch.testing.assert_close(ours.betas, ref.betas.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), rtol=0, atol=1e-6)
    assert torch.equal(ours.timesteps, ref.timesteps)
    for N in (1, 10, 50, 333, 1000 if spacing != "leading" else 999):
        ours.set_timesteps(N)
        ref.set_timesteps(N)
        assert torch.equal(ours.timesteps, ref.timesteps), (N, ours.timesteps, ref.timesteps)
    x0, eps = f64(5, 2, 3, seed=14).float(), f64(5, 2, 3, seed=15).float()
    t = torch.tensor([0, 1, 500, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, eps, t), ref.add_noise(x0, eps, t), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.get_velocity(x0, eps, t), ref.get_velocity(x0, eps, t), rtol=0, atol=1e-5)


def test_trailing_drops_the_extra_timestep_of_diffusers(diffusers) -> None:
    # np.arange(1000, 0, -1000/61) has 62 entries; diffusers keeps the last one, which becomes timestep -1.
    ours, ref = pair(diffusers, "ddim", "linear", timestep_spacing="trailing")
    ours.set_timesteps(61)
    ref.set_timesteps(61)
    assert len(ours.timesteps) == 61 and int(ours.timesteps[-1]) >= 0
    assert torch.equal(ours.timesteps, ref.timesteps[:61])


def fake_outputs(steps: int, shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    return list(torch.randn(steps, *shape, generator=torch.Generator().manual_seed(16), dtype=dtype))


def sample_loop(scheduler, outputs, x, **step_kwargs) -> list[torch.Tensor]:
    """The diffusers loop on a fixed fake model (output = 0.5·x + a fixed tensor): every x_{t'} and x̂₀."""
    seen = []
    for out, t in zip(outputs, scheduler.timesteps):
        res = scheduler.step(0.5 * x + out, t, x, **step_kwargs)
        x = res.prev_sample
        seen += [res.prev_sample, res.pred_original_sample]
    return seen


# float32: diffusers as it is (its ᾱ_t is float32, and x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t amplifies that rounding at the
# ends of the schedule, hence 3e-5). float64: diffusers is given our float64 ᾱ_t, so only the step logic is compared.
TOLERANCE = {torch.float32: 3e-5, torch.float64: 1e-9}


def diffusers_pair(diffusers, kind: str, schedule: str, dtype: torch.dtype, **kwargs):
    ours, ref = pair(diffusers, kind, schedule, **kwargs)
    if dtype == torch.float64:
        ref.alphas_cumprod = ours.alphas_cumprod.clone()
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    return ours, ref


def assert_loops_close(a: list[torch.Tensor], b: list[torch.Tensor], dtype: torch.dtype, what: str) -> None:
    assert len(a) == len(b) == 20
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype == dtype
        tol = TOLERANCE[dtype]
        torch.testing.assert_close(u, v, rtol=tol, atol=tol, msg=lambda m: f"{what}, output #{i}: {m}")


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddim_loop_matches_diffusers(diffusers, schedule: str, spacing: str, prediction_type: str) -> None:
    shape = (4, 2, 3)
    for dtype in (torch.float32, torch.float64):
        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(17), dtype=dtype)
        outputs = fake_outputs(10, shape, dtype)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(20), dtype=dtype)
        for eta, clip in ((0.0, True), (0.0, False), (0.5, True)):
            ours, ref = diffusers_pair(diffusers, "ddim", schedule, dtype, timestep_spacing=spacing,
                                       prediction_type=prediction_type, clip_sample=clip)
            if spacing == "linspace":
                # diffusers' DDIM steps from t to t − T//N = t − 100 while linspace visits 999, 888, ..., 0
                # (diffusers issue #12633); we step to the visited timestep, which diffusers does for stride 111.
                ref.num_inference_steps = 9
            assert_loops_close(sample_loop(ours, outputs, x_T, eta=eta, variance_noise=noise),
                               sample_loop(ref, outputs, x_T, eta=eta, variance_noise=noise), dtype,
                               f"{dtype}, eta={eta}, clip={clip}")


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddpm_loop_matches_diffusers_with_the_same_seed(diffusers, schedule: str, spacing: str,
                                                        variance_type: str) -> None:
    # Identically seeded CPU generators: the same noise z at every step, so the whole chains agree.
    shape = (4, 2, 3)
    for dtype in (torch.float32, torch.float64):
        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(18), dtype=dtype)
        outputs = fake_outputs(10, shape, dtype)
        for prediction_type, clip in zip(PREDICTIONS, (True, False, True)):
            ours, ref = diffusers_pair(diffusers, "ddpm", schedule, dtype, timestep_spacing=spacing,
                                       prediction_type=prediction_type, variance_type=variance_type,
                                       clip_sample=clip)
            assert_loops_close(sample_loop(ours, outputs, x_T, generator=torch.Generator().manual_seed(19)),
                               sample_loop(ref, outputs, x_T, generator=torch.Generator().manual_seed(19)), dtype,
                               f"{dtype}, {prediction_type}, clip={clip}")


# ---------------------------------------------------------------------------------------------------- denoise


def test_denoise_counts_and_shapes() -> None:
    calls = []

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t.clone())
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        return 0.1 * x

    x_T = f64(5, 2, 3, seed=20)
    res = denoise(predict, DDIMScheduler(num_train_timesteps=100), x_T, 8, return_trajectory=True)
    assert isinstance(res, DiffusionSampleResult)
    assert res.nfe == 8 == len(calls) and res.timesteps.tolist() == list(range(84, -1, -12))
    assert [int(t[0]) for t in calls] == res.timesteps.tolist()
    assert res.trajectory.shape == (9, 5, 2, 3) and res.pred_original.shape == (8, 5, 2, 3)
    assert torch.equal(res.trajectory[0], x_T) and torch.equal(res.trajectory[-1], res.x)
    bare = denoise(predict, DDIMScheduler(num_train_timesteps=100), x_T, 8)
    assert bare.trajectory is None and bare.pred_original is None and torch.equal(bare.x, res.x)


def test_denoise_is_the_diffusers_loop() -> None:
    # denoise with a seeded generator equals the hand-written loop with the same seed (DDPM and DDIM η > 0).
    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * (t[:, None].to(x.dtype) / 100)

    x_T = f64(6, 3, seed=21)
    for scheduler, kwargs in ((DDPMScheduler(num_train_timesteps=100), {}),
                              (DDIMScheduler(num_train_timesteps=100), {"eta": 0.7})):
        res = denoise(predict, scheduler, x_T, 10, generator=torch.Generator().manual_seed(1), **kwargs)
        g, x = torch.Generator().manual_seed(1), x_T
        for t in scheduler.timesteps:
            x = scheduler.step(predict(x, t.repeat(6)), t, x, generator=g, **kwargs).prev_sample
        torch.testing.assert_close(res.x, x, rtol=0, atol=0)


MU, S = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.8  # x₀ ~ N(μ, s²I)


def gaussian_eps(scheduler):
    """The exact ε-prediction for x₀ ~ N(μ, s²I): x_t ~ N(√ᾱ μ, (ᾱ s² + 1 − ᾱ) I) and
    E[ε | x_t] = √(1 − ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ)."""
    alpha_bar = scheduler.alphas_cumprod

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = alpha_bar[t][:, None]  # (n, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * S**2 + 1 - ab)

    return predict


def standard_normal(n: int, seed: int) -> torch.Tensor:
    """n samples of N(0, I₂) standardized to mean 0 and std 1 exactly, so only the sampler's error is measured."""
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z - z.mean(0)) / z.std(0)


def test_denoise_ddim_gaussian_exact() -> None:
    # With the exact ε, a DDIM (η = 0) step is affine: x_{t'} − √ᾱ' μ = r·(x_t − √ᾱ μ) with
    # r = (√(ᾱᾱ') s² + √((1 − ᾱ)(1 − ᾱ')))/(ᾱ s² + 1 − ᾱ). By Cauchy–Schwarz r ≤ √(v_{t'}/v_t): with few
    # steps DDIM shrinks the variance (the discretization error of the probability-flow ODE).
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    x_T = standard_normal(500, seed=1)
    res = denoise(gaussian_eps(scheduler), scheduler, x_T, 20)
    ts = res.timesteps.tolist()
    y = x_T - math.sqrt(float(scheduler.alphas_cumprod[ts[0]])) * MU
    for i, t in enumerate(ts):
        ab = float(scheduler.alphas_cumprod[t])
        ab_prev = float(scheduler.alphas_cumprod[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        y = y * (math.sqrt(ab * ab_prev) * S**2 + math.sqrt((1 - ab) * (1 - ab_prev))) / (ab * S**2 + 1 - ab)
    torch.testing.assert_close(res.x, MU + y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind,steps", [("ddim", 50), ("ddpm", 1000)])
def test_denoise_gaussian_statistics(kind: str, steps: int) -> None:
    # DDIM (η = 0, 50 steps) and ancestral DDPM (all 1000 steps) map N(0, I) to N(μ, s²I) within a few percent.
    scheduler = DDIMScheduler(clip_sample=False) if kind == "ddim" else DDPMScheduler(clip_sample=False)
    x_T = standard_normal(4000, seed=0)
    res = denoise(gaussian_eps(scheduler), scheduler, x_T, steps, generator=torch.Generator().manual_seed(1))
    assert res.nfe == steps
    torch.testing.assert_close(res.x.mean(0), MU, rtol=0, atol=0.05)  # 4 standard errors s/√n for DDPM
    torch.testing.assert_close(res.x.std(0), torch.full((2,), S, dtype=torch.float64), rtol=0.05, atol=0)


def test_denoise_reports_nan_where_it_happened() -> None:
    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * float("nan") if int(t[0]) < 500 else 0.1 * x

    with pytest.raises(FloatingPointError, match=r"NaN at timestep 450 \(step 11 of 20\)"):
        denoise(predict, DDIMScheduler(), f64(3, 2, seed=22), 20)  # leading: 950, 900, ..., 450 is step 11
    with pytest.raises(FloatingPointError, match=r"inf at timestep 999 \(step 1 of 4\)"):
        denoise(lambda x, t: x / 0, DDPMScheduler(timestep_spacing="trailing"), f64(3, 2, seed=22) + 1, 4)


def test_denoise_rejects_wrong_shape_and_bad_arguments() -> None:
    x_T = f64(3, 2, seed=23)
    with pytest.raises(ValueError, match=r"shape \(3, 1\) at timestep 900 .*\(3, 2\)"):
        denoise(lambda x, t: x[:, :1], DDIMScheduler(), x_T, 10)
    with pytest.raises(TypeError, match="predict must return a torch.Tensor"):
        denoise(lambda x, t: 0.0, DDIMScheduler(), x_T, 10)
    with pytest.raises(ValueError, match="eta .* DDPMScheduler"):
        denoise(lambda x, t: x, DDPMScheduler(), x_T, 10, eta=0.5)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        denoise(lambda x, t: x, DDIMScheduler(), x_T, 10, eta=-0.1)
    with pytest.raises(ValueError, match="num_inference_steps must be <= num_train_timesteps=1000"):
        denoise(lambda x, t: x, DDIMScheduler(), x_T, 1001)
    with pytest.raises(TypeError, match="scheduler must be"):
        denoise(lambda x, t: x, object(), x_T, 10)
    with pytest.raises(TypeError, match="x_T must be a floating-point tensor"):
        denoise(lambda x, t: x, DDIMScheduler(), x_T.long(), 10)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs,error,match", [
    ({"beta_schedule": "sigmoid"}, ValueError, r"beta_schedule must be one of \('linear', 'scaled_linear'"),
    ({"prediction_type": "x0"}, ValueError, r"prediction_type must be one of \('epsilon', 'sample', 'v_pred"),
    ({"variance_type": "learned"}, ValueError, r"variance_type must be one of \('fixed_small', 'fixed_large'\)"),
    ({"timestep_spacing": "even"}, ValueError, r"timestep_spacing must be one of \('leading', 'trailing', 'lin"),
    ({"num_train_timesteps": 0}, ValueError, "num_train_timesteps must be >= 1, got 0"),
    ({"num_train_timesteps": 10.0}, TypeError, "num_train_timesteps must be an int"),
    ({"beta_start": 0.0}, ValueError, r"beta_start must be in \(0, 1\), got 0.0"),
    ({"beta_end": 1.0}, ValueError, r"beta_end must be in \(0, 1\), got 1.0"),
    ({"beta_start": 0.1, "beta_end": 0.01}, ValueError, "beta_start must be <= beta_end"),
    ({"clip_sample_range": 0.0}, ValueError, "clip_sample_range must be > 0"),
    ({"steps_offset": -1}, ValueError, "steps_offset must be >= 0"),
])
def test_bad_constructor_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        DDPMScheduler(**kwargs)
    if "variance_type" not in kwargs:
        with pytest.raises(error, match=match):
            DDIMScheduler(**kwargs)


def test_bad_set_timesteps() -> None:
    s = DDIMScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1, got 0"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps must be <= num_train_timesteps=100, got 101"):
        s.set_timesteps(101)
    with pytest.raises(ValueError, match="steps_offset=1 .* first timestep at 100"):
        DDIMScheduler(num_train_timesteps=100, steps_offset=1).set_timesteps(100)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_bad_step_arguments(cls) -> None:
    s = cls(num_train_timesteps=100)
    x = f64(3, 2, seed=24)
    with pytest.raises(ValueError, match="call .*set_timesteps"):
        s.step(x, 50, x)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match=r"model_output must have the shape of sample \(3, 2\), got \(3, 1\)"):
        s.step(x[:, :1], 50, x)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 100\), got 100"):
        s.step(x, 100, x)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 100\), got -1"):
        s.step(x, torch.tensor(-1), x)
    with pytest.raises(ValueError, match="timestep must be one of the 10 timesteps"):
        s.step(x, 55, x)
    with pytest.raises(TypeError, match="timestep must be an integer timestep"):
        s.step(x, 50.5, x)
    with pytest.raises(TypeError, match="model_output must be a torch.Tensor"):
        s.step(x.numpy(), 50, x)


def test_bad_ddim_noise_arguments() -> None:
    s = DDIMScheduler(num_train_timesteps=100)
    s.set_timesteps(10)
    x = f64(3, 2, seed=25)
    with pytest.raises(ValueError, match="eta must be >= 0, got -0.5"):
        s.step(x, 50, x, eta=-0.5)
    with pytest.raises(ValueError, match="generator or variance_noise, not both"):
        s.step(x, 50, x, eta=1.0, generator=torch.Generator(), variance_noise=x)
    with pytest.raises(ValueError, match=r"variance_noise must have the shape of sample \(3, 2\), got \(3,\)"):
        s.step(x, 50, x, eta=1.0, variance_noise=x[:, 0])
    with pytest.raises(ValueError, match="eta=5.0 is too large at timestep 90"):
        s.step(x, 90, x, eta=5.0)


def test_bad_add_noise_arguments() -> None:
    s = DDPMScheduler(num_train_timesteps=100)
    x = f64(4, 3, seed=26)
    with pytest.raises(ValueError, match=r"timesteps must have one entry per sample \(batch size n = 4\), got "
                                         r"length 3"):
        s.add_noise(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 100\), got values in \[1, 100\]"):
        s.add_noise(x, x, torch.tensor([1, 2, 3, 100]))
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 100\), got -2"):
        s.get_velocity(x, x, -2)
    with pytest.raises(TypeError, match="timesteps must be an int or a 1-D integer tensor"):
        s.add_noise(x, x, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match=r"noise must have the shape of original_samples \(4, 3\), got \(4, 2\)"):
        s.add_noise(x, x[:, :2], 5)
