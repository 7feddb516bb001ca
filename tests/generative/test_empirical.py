"""Tests for the empirical (memorising) velocity field: closed forms, a dense softmax oracle, sampling to the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pilearn.generative._empirical import EmpiricalVelocityField
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
