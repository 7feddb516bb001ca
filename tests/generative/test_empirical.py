"""Tests for the empirical (memorising) velocity field and DDPM denoiser: closed forms, a dense softmax oracle,
sampling to the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pilearn.generative._empirical import EmpiricalDenoiser, EmpiricalVelocityField
from pilearn.generative._samplers import integrate


pytestmark = pytest.mark.usefixtures("one_thread")


def dense_denoiser(X: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Oracle: softmax_i(−‖x − t·x₁⁽ⁱ⁾‖²/(2(1−t)²)) · X, all at once in float64, distances written out."""
    X, x, t = X.double(), x.double(), t.double()
    sq_dist = ((x[:, None, :] - t[:, None, None] * X[None]) ** 2).sum(-1)  # (n, N)
    w = torch.softmax(-sq_dist / (2 * (1 - t[:, None]) ** 2), dim=1)
    return w @ X


@pytest.fixture
def five_points() -> torch.Tensor:
    return torch.tensor([[2.0, 0.0], [-2.0, 0.5], [0.0, 2.0], [0.5, -2.0], [1.5, 1.5]], dtype=torch.float64)


def test_single_point_is_the_conditional_velocity(generator: torch.Generator) -> None:
    x1 = torch.randn(1, 4, generator=generator, dtype=torch.float64)
    field = EmpiricalVelocityField(x1)
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999, 1.0], dtype=torch.float64)
    t_clamped = t.clamp(max=1 - 1e-4)
    expected = (x1 - x) / (1 - t_clamped)[:, None]
    torch.testing.assert_close(field.velocity(x, t), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(field.denoise(x, t), x1.expand(6, 4), rtol=0, atol=0)


def test_two_points_hand_computed_weights() -> None:
    a, b = (1.0, 0.0), (-1.0, 2.0)
    field = EmpiricalVelocityField(torch.tensor([a, b], dtype=torch.float64))
    x, t = (0.3, 0.4), 0.6
    # p(a)/p(b) = exp(−(‖x − t a‖² − ‖x − t b‖²)/(2(1 − t)²)), by hand.
    da = (x[0] - t * a[0]) ** 2 + (x[1] - t * a[1]) ** 2
    db = (x[0] - t * b[0]) ** 2 + (x[1] - t * b[1]) ** 2
    wa = 1.0 / (1.0 + math.exp((da - db) / (2 * (1 - t) ** 2)))
    x1_hat = [wa * a[i] + (1 - wa) * b[i] for i in range(2)]
    v = [(x1_hat[i] - x[i]) / (1 - t) for i in range(2)]
    xq, tq = torch.tensor([x], dtype=torch.float64), torch.tensor([t], dtype=torch.float64)
    assert 0.01 < wa < 0.99  # a genuine mixture, not a collapsed posterior
    torch.testing.assert_close(field.denoise(xq, tq), torch.tensor([x1_hat], dtype=torch.float64))
    torch.testing.assert_close(field.velocity(xq, tq), torch.tensor([v], dtype=torch.float64))


@pytest.mark.parametrize("chunk_size", [1, 7, 100])
def test_streaming_matches_dense_oracle(chunk_size: int, generator: torch.Generator) -> None:
    X = torch.randn(23, 5, generator=generator)
    x = torch.randn(8, 5, generator=generator)
    t = torch.linspace(0, 0.97, 8)
    field = EmpiricalVelocityField(X, chunk_size=chunk_size)
    expected = dense_denoiser(X, x, t)
    torch.testing.assert_close(field.denoise(x.double(), t.double()), expected, rtol=1e-10, atol=1e-10)
    out = field.velocity(x, t)  # float32 in, float32 out
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ((expected - x.double()) / (1 - t.double())[:, None]).float())


def test_t_zero_gives_the_mean(generator: torch.Generator) -> None:
    X = torch.randn(10, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    v = EmpiricalVelocityField(X).velocity(x, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(v, X.mean(0) - x)


def test_stable_near_t_one_with_large_data(generator: torch.Generator) -> None:
    # MNIST-sized norms (‖x₁‖² ~ 100) at the clamp: logits ~ 1e10, must not overflow to NaN.
    X = 3 + torch.rand(50, 784, generator=generator, dtype=torch.float64) * 0.1
    field = EmpiricalVelocityField(X, chunk_size=16)
    x = X[[3, 17]] + 1e-3 * torch.randn(2, 784, generator=generator, dtype=torch.float64)
    x1_hat = field.denoise(x, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(x1_hat, X[[3, 17]], rtol=0, atol=1e-12)


def test_sampling_from_noise_reproduces_training_points(five_points: torch.Tensor,
                                                        generator: torch.Generator) -> None:
    field = EmpiricalVelocityField(five_points)
    noise = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    x = integrate(field, noise, method="rk4", steps=200).x
    nearest = torch.cdist(x, five_points).min(dim=1).values
    assert nearest.max().item() < 1e-2
    assert len(set(torch.cdist(x, five_points).argmin(dim=1).tolist())) == 5  # not all to one point


def test_class_conditioning(five_points: torch.Tensor, generator: torch.Generator) -> None:
    X = torch.cat([five_points, -five_points])  # 10 points
    y = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 1])  # numpy labels accepted
    field = EmpiricalVelocityField(X, torch.as_tensor(y))
    noise = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    wanted = torch.arange(40) % 2  # per-row labels
    x = integrate(lambda x, t: field(x, t, y=wanted), noise, method="rk4", steps=200).x
    dist = torch.cdist(x, X)  # (40, 10)
    same_class = torch.as_tensor(y)[None, :] == wanted[:, None]
    assert dist.masked_fill(~same_class, math.inf).min(dim=1).values.max().item() < 1e-2
    # An int label conditions every row; the posterior is the dense oracle on that class's rows.
    xq = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    tq = torch.full((6,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(field.denoise(xq, tq, y=1), dense_denoiser(X[y == 1], xq, tq))


def test_class_conditioning_with_chunks_missing_a_class(generator: torch.Generator) -> None:
    # Chunks of 2 over sorted labels: the first chunks hold no row of class 1 (streaming starts from all −inf).
    X = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1])
    field = EmpiricalVelocityField(X, y, chunk_size=2)
    xq = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    tq = torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64)
    torch.testing.assert_close(field.denoise(xq, tq, y=torch.tensor([1, 0, 1])),
                               torch.cat([dense_denoiser(X[6:], xq[[0]], tq[[0]]),
                                          dense_denoiser(X[:6], xq[[1]], tq[[1]]),
                                          dense_denoiser(X[6:], xq[[2]], tq[[2]])]))


def test_bad_inputs(five_points: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"X_train must have shape \(N, D\)"):
        EmpiricalVelocityField(torch.zeros(5))
    with pytest.raises(ValueError, match="X_train must be finite"):
        EmpiricalVelocityField(torch.tensor([[math.nan, 0.0]]))
    with pytest.raises(TypeError, match="X_train must be a torch.Tensor or numpy.ndarray"):
        EmpiricalVelocityField([[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"y_train must have shape \(5,\), got \(4,\)"):
        EmpiricalVelocityField(five_points, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="y_train must hold integer class labels"):
        EmpiricalVelocityField(five_points, torch.zeros(5))
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        EmpiricalVelocityField(five_points, chunk_size=0)

    field = EmpiricalVelocityField(five_points, torch.tensor([0, 0, 1, 1, 1]))
    t = torch.full((3,), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\), got \(3, 4\)"):
        field.velocity(torch.zeros(3, 4, dtype=torch.float64), t)
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        field.velocity(torch.zeros(3, 2, dtype=torch.int64), t)
    with pytest.raises(ValueError, match="x must be finite"):
        field.velocity(torch.full((3, 2), math.inf, dtype=torch.float64), t)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got a value 1.5"):
        field.velocity(torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0.1, 1.5, 0.2]))
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        field.velocity(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(2))
    with pytest.raises(ValueError, match=r"y must hold labels present in y_train \[0, 1\], got 7"):
        field.velocity(torch.zeros(3, 2, dtype=torch.float64), t, y=7)
    with pytest.raises(ValueError, match=r"y must have shape \(3,\), got \(2,\)"):
        field.denoise(torch.zeros(3, 2, dtype=torch.float64), t, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="the field has no labels"):
        EmpiricalVelocityField(five_points).velocity(torch.zeros(3, 2, dtype=torch.float64), t, y=0)


# ------------------------------------------------------------------------------------------------ EmpiricalDenoiser
def linear_alphas_cumprod(T: int = 1000) -> torch.Tensor:
    """DDPM's schedule (Ho et al. 2020): β linear from 1e-4 to 0.02, ᾱ_t = Π_{s<=t} (1 − β_s)."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), dim=0)


def dense_x0(X: torch.Tensor, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Oracle: softmax_i(−‖x − √ᾱ·x⁽ⁱ⁾‖²/(2(1 − ᾱ))) · X, all at once in float64, distances written out."""
    X, x, abar = X.double(), x.double(), abar.double()
    sq_dist = ((x[:, None, :] - abar.sqrt()[:, None, None] * X[None]) ** 2).sum(-1)  # (n, N)
    w = torch.softmax(-sq_dist / (2 * (1 - abar[:, None])), dim=1)
    return w @ X


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_denoiser_matches_dense_oracle(chunk_size: int, generator: torch.Generator) -> None:
    X = torch.randn(23, 5, generator=generator)
    x = torch.randn(8, 5, generator=generator)
    abar = linear_alphas_cumprod()
    steps = torch.tensor([0, 50, 100, 200, 300, 450, 700, 999])
    den = EmpiricalDenoiser(X, alphas_cumprod=abar, chunk_size=chunk_size)
    x0 = dense_x0(X, x, abar[steps])
    assert 0.05 < float(x0.norm(dim=1).min())  # queries in the mixed regime, not all at the data mean (0)
    torch.testing.assert_close(den.denoise(x.double(), steps), x0, rtol=1e-10, atol=1e-10)
    eps = den.predict_noise(x, steps)  # float32 in, float32 out
    assert eps.dtype == torch.float32
    a = abar[steps].sqrt()[:, None]
    torch.testing.assert_close(eps, ((x.double() - a * x0) / (1 - a**2).sqrt()).float())
    torch.testing.assert_close(den(x, steps), eps, rtol=0, atol=0)  # __call__ is predict_noise


def test_denoiser_chunked_equals_unchunked(generator: torch.Generator) -> None:
    X = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.arange(40) % 3
    x = torch.randn(10, 3, generator=generator, dtype=torch.float64)
    steps = torch.randint(0, 1000, (10,), generator=generator)
    whole = EmpiricalDenoiser(X, y, alphas_cumprod=linear_alphas_cumprod())
    chunked = EmpiricalDenoiser(X, y, alphas_cumprod=linear_alphas_cumprod(), chunk_size=6)
    torch.testing.assert_close(chunked.predict_noise(x, steps), whole.predict_noise(x, steps), rtol=1e-12,
                               atol=1e-12)
    labels = torch.arange(10) % 3
    torch.testing.assert_close(chunked.denoise(x, steps, labels), whole.denoise(x, steps, labels), rtol=1e-12,
                               atol=1e-12)


def test_denoiser_int_timestep_and_noise_consistent_with_x0(generator: torch.Generator) -> None:
    """x_t = √ᾱ_t·x̂₀ + √(1 − ᾱ_t)·ε̂ holds exactly: the two outputs are one posterior mean seen two ways."""
    X = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    abar = linear_alphas_cumprod()
    den = EmpiricalDenoiser(X, alphas_cumprod=abar)
    for t in (0, 250, 999):
        x0, eps = den.denoise(x, t), den.predict_noise(x, t)
        torch.testing.assert_close(abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps, x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x0, den.denoise(x, torch.full((6,), t)), rtol=0, atol=0)


def test_denoiser_large_noise_gives_the_class_mean(five_points: torch.Tensor, generator: torch.Generator) -> None:
    X = torch.cat([five_points, -five_points + 0.3])  # 10 points
    y = torch.tensor([0, 0, 1, 1, 1, 0, 0, 1, 1, 1])
    # ᾱ → 0: p(i | x_t) → uniform, x̂₀ − mean = √ᾱ·Cov(X)·x_t + O(ᾱ), here ~1e-8
    abar = torch.tensor([0.5, 1e-16], dtype=torch.float64)
    den = EmpiricalDenoiser(X, y, alphas_cumprod=abar, chunk_size=3)
    x = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(den.denoise(x, 1), X.mean(0).expand(4, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(den.denoise(x, 1, y=1), X[y == 1].mean(0).expand(4, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(den.denoise(x, 1, y=0), X[y == 0].mean(0).expand(4, 2), rtol=0, atol=1e-6)
    assert not torch.allclose(den.denoise(x, 0), X.mean(0).expand(4, 2), atol=1e-2)  # not so at ᾱ = 0.5
    # ... and ε̂ → x_t itself, the prior's answer when x_t carries no signal of the data
    torch.testing.assert_close(den.predict_noise(x, 1), x, rtol=0, atol=1e-6)


def test_denoiser_small_noise_returns_the_nearest_training_point(five_points: torch.Tensor,
                                                                  generator: torch.Generator) -> None:
    abar = torch.cumprod(1 - torch.linspace(1e-6, 0.02, 1000, dtype=torch.float64), dim=0)
    den = EmpiricalDenoiser(five_points, alphas_cumprod=abar, chunk_size=2)
    rows = torch.tensor([0, 3, 4, 1])
    eps = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    a, s = abar[0].sqrt(), (1 - abar[0]).sqrt()
    x = a * five_points[rows] + s * eps  # x_t from each row at 1 − ᾱ_0 = 1e-6
    torch.testing.assert_close(den.denoise(x, 0), five_points[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(den.predict_noise(x, 0), eps, rtol=0, atol=1e-8)  # the true noise, recovered
    # a query off the data goes to the nearest row; ᾱ = 1 (allowed) is the limit, with no 0/0
    q = five_points[[2]] + torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    torch.testing.assert_close(den.denoise(q, 0), five_points[[2]], rtol=0, atol=0)
    at_one = EmpiricalDenoiser(five_points, alphas_cumprod=torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(at_one.denoise(q, 0), five_points[[2]], rtol=0, atol=0)
    assert torch.isfinite(at_one.predict_noise(q, 0)).all()


def test_denoiser_class_conditioning(generator: torch.Generator) -> None:
    # chunks of 2 over sorted labels: the first chunks hold no row of class 1 (streaming starts from all −inf)
    X = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])  # numpy labels accepted
    abar = linear_alphas_cumprod()
    den = EmpiricalDenoiser(X, y, alphas_cumprod=abar, chunk_size=2)
    x = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    steps = torch.tensor([100, 400, 800])
    got = den.denoise(x, steps, y=torch.tensor([1, 0, 1]))
    expected = torch.cat([dense_x0(X[6:], x[[0]], abar[steps[[0]]]), dense_x0(X[:6], x[[1]], abar[steps[[1]]]),
                          dense_x0(X[6:], x[[2]], abar[steps[[2]]])])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    unconditional = den.denoise(x, steps)
    assert not torch.allclose(got, unconditional, atol=1e-3)  # the restriction changes the answer
    torch.testing.assert_close(den.denoise(x, steps, y=1), dense_x0(X[6:], x, abar[steps]), rtol=1e-10, atol=1e-10)


_ABAR = linear_alphas_cumprod(10)


@pytest.mark.parametrize(
    "alphas_cumprod, error, match",
    [
        (_ABAR[None], ValueError, r"alphas_cumprod must have shape \(T,\) with T >= 1, got \(1, 10\)"),
        (_ABAR[:0], ValueError, r"alphas_cumprod must have shape \(T,\) with T >= 1, got \(0,\)"),
        (torch.tensor([1.0, 0.5, 0.0]), ValueError, r"alphas_cumprod must lie in \(0, 1\], got 0.0 at index 2"),
        (torch.tensor([1.5, 0.5]), ValueError, r"alphas_cumprod must lie in \(0, 1\], got 1.5 at index 0"),
        (torch.tensor([0.9, math.nan]), ValueError, r"alphas_cumprod must lie in \(0, 1\], got nan at index 1"),
        (_ABAR.flip(0), ValueError, r"must be strictly decreasing.*betas.*alphas_cumprod\[0\] = 0.903.* <= "
                                   r"alphas_cumprod\[1\] = 0.922"),
        (torch.tensor([0.9, 0.9], dtype=torch.float64), ValueError,
         r"strictly decreasing.*\[0\] = 0.9 <= alphas_cumprod\[1\] = 0.9"),
        (torch.ones(3, dtype=torch.int64), ValueError, "alphas_cumprod must be a floating-point tensor"),
        ([0.9, 0.5], TypeError, "alphas_cumprod must be a 1-D torch.Tensor"),
    ],
)
def test_denoiser_rejects_bad_schedules(five_points: torch.Tensor, alphas_cumprod, error, match) -> None:
    with pytest.raises(error, match=match):
        EmpiricalDenoiser(five_points, alphas_cumprod=alphas_cumprod)


def test_denoiser_bad_queries(five_points: torch.Tensor) -> None:
    den = EmpiricalDenoiser(five_points, torch.tensor([0, 0, 1, 1, 1]), alphas_cumprod=_ABAR.numpy())
    assert den.num_train_timesteps == 10 and den.alphas_cumprod.dtype == torch.float64
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 9\] \(T = 10 train time steps\), got 10"):
        den.denoise(x, torch.tensor([0, 10, 3]))
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 9\].*got -1"):
        den.predict_noise(x, -1)
    with pytest.raises(ValueError, match="timesteps must hold integer time-step indices, got dtype torch.float32"):
        den.denoise(x, torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match=r"timesteps must have shape \(3,\), got \(2,\)"):
        den.denoise(x, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="timesteps must be an int or an integer tensor"):
        den.denoise(x, 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\), got \(3, 4\)"):
        den.denoise(torch.zeros(3, 4), 0)
    with pytest.raises(ValueError, match=r"y must hold labels present in y_train \[0, 1\], got 2"):
        den.denoise(x, 0, y=2)
    with pytest.raises(ValueError, match=r"the denoiser has no labels: build it with EmpiricalDenoiser\(X_train"):
        EmpiricalDenoiser(five_points, alphas_cumprod=_ABAR).denoise(x, 0, y=0)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'alphas_cumprod'"):
        EmpiricalDenoiser(five_points)
