"""Tests for the ODE samplers: exact solutions of linear ODEs as oracles, convergence orders, NFE, errors."""

from __future__ import annotations

import math

import pytest
import torch

from pilearn.generative._samplers import ODE_METHODS, ODEResult, integrate

FIXED = ("euler", "heun", "midpoint", "rk4")
ORDER = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}
EVALS = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}


def decay(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = −x: x(t₁) = x(t₀)·exp(−(t₁ − t₀))."""
    return -x


def growth(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = t·x: x(t₁) = x(t₀)·exp((t₁² − t₀²)/2)."""
    return t[:, None] * x


EXACT = {
    decay: lambda t0, t1: math.exp(-(t1 - t0)),
    growth: lambda t0, t1: math.exp((t1**2 - t0**2) / 2),
}


@pytest.fixture
def x0(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(5, 3, generator=generator, dtype=torch.float64)


def error(result: ODEResult, x0: torch.Tensor, field, t0: float = 0.0, t1: float = 1.0) -> float:
    return (result.x - x0 * EXACT[field](t0, t1)).abs().max().item()


def test_rk_step_polynomials_on_decay(x0: torch.Tensor) -> None:
    # On the linear ODE x' = −x one step multiplies x by the stability polynomial R(−h) of the method.
    steps, h = 7, 1.0 / 7
    z = -h
    factor = {
        "euler": 1 + z,
        "heun": 1 + z + z**2 / 2,
        "midpoint": 1 + z + z**2 / 2,
        "rk4": 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24,
    }
    for method, r in factor.items():
        result = integrate(decay, x0, method=method, steps=steps)
        torch.testing.assert_close(result.x, x0 * r**steps, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("field", [decay, growth], ids=["decay", "growth"])
@pytest.mark.parametrize("method", FIXED)
def test_convergence_order(method: str, field, x0: torch.Tensor) -> None:
    # Doubling the steps divides the global error by 2^order (the growth field also checks stage times).
    e1 = error(integrate(field, x0, method=method, steps=16), x0, field)
    e2 = error(integrate(field, x0, method=method, steps=32), x0, field)
    assert e1 > 0
    assert e1 / e2 == pytest.approx(2 ** ORDER[method], rel=0.12)


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_time_dependent(method: str, dtype: torch.dtype, x0: torch.Tensor) -> None:
    # From t0 = 1 back to t1 = 0.2 on x' = t·x: exact factor exp((0.04 − 1)/2).
    x0 = x0.to(dtype)
    result = integrate(growth, x0, method=method, steps=400, t0=1.0, t1=0.2)
    assert result.x.dtype == dtype
    tol = {1: 3e-3, 2: 1e-5, 4: 1e-5}[ORDER[method]]
    assert error(result, x0, growth, 1.0, 0.2) < tol


@pytest.mark.parametrize("field", [decay, growth], ids=["decay", "growth"])
@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (1.0, 0.0)])
def test_dopri5_within_tolerance(field, t0: float, t1: float, x0: torch.Tensor) -> None:
    loose = integrate(field, x0, method="dopri5", t0=t0, t1=t1, rtol=1e-4, atol=1e-4)
    tight = integrate(field, x0, method="dopri5", t0=t0, t1=t1, rtol=1e-8, atol=1e-8)
    assert error(loose, x0, field, t0, t1) < 1e-3
    assert error(tight, x0, field, t0, t1) < 1e-6
    assert tight.nfe > loose.nfe > 0


@pytest.mark.parametrize("method", ODE_METHODS)
def test_nfe_matches_a_counter(method: str, x0: torch.Tensor) -> None:
    calls = []

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t.clone())
        return decay(x, t)

    result = integrate(counted, x0, method=method, steps=9)
    assert result.nfe == len(calls)
    if method != "dopri5":
        assert result.nfe == EVALS[method] * 9
    for t in calls:  # the velocity sees (n,) times, of x's dtype, all equal
        assert t.shape == (5,) and t.dtype == x0.dtype and bool((t == t[0]).all())


def test_stage_times_of_rk4(x0: torch.Tensor) -> None:
    seen = []
    integrate(lambda x, t: seen.append(t[0].item()) or -x, x0, method="rk4", steps=2, t0=0.0, t1=1.0)
    assert seen == pytest.approx([0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0])


@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_trajectory(method: str, x0: torch.Tensor) -> None:
    result = integrate(decay, x0, method=method, steps=8, return_trajectory=True)
    assert result.trajectory.shape == (9, 5, 3)
    torch.testing.assert_close(result.times, torch.linspace(0, 1, 9, dtype=torch.float64))
    torch.testing.assert_close(result.trajectory[0], x0, rtol=0, atol=0)
    torch.testing.assert_close(result.trajectory[-1], result.x, rtol=0, atol=0)
    # Frame k is the state after k steps: the same as integrating k steps of the same size to t = k/8.
    half = integrate(decay, x0, method=method, steps=4, t1=0.5)
    torch.testing.assert_close(result.trajectory[4], half.x, rtol=1e-14, atol=1e-14)


def test_fixed_step_trajectory_points(x0: torch.Tensor) -> None:
    result = integrate(decay, x0, method="euler", steps=100, return_trajectory=True, trajectory_points=5)
    assert result.trajectory.shape == (5, 5, 3)
    torch.testing.assert_close(result.times, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    torch.testing.assert_close(result.trajectory[0], x0, rtol=0, atol=0)
    torch.testing.assert_close(result.trajectory[2], x0 * (1 - 0.01) ** 50, rtol=1e-13, atol=1e-13)
    assert result.nfe == 100


def test_dopri5_trajectory(x0: torch.Tensor) -> None:
    result = integrate(decay, x0, method="dopri5", rtol=1e-7, atol=1e-7, return_trajectory=True)
    assert result.trajectory.shape == (11, 5, 3)
    torch.testing.assert_close(result.times, torch.linspace(0, 1, 11, dtype=torch.float64))
    torch.testing.assert_close(result.trajectory[0], x0, rtol=0, atol=0)
    exact = x0[None] * torch.exp(-result.times)[:, None, None]
    torch.testing.assert_close(result.trajectory, exact, rtol=0, atol=1e-5)
    four = integrate(decay, x0, method="dopri5", return_trajectory=True, trajectory_points=4)
    assert four.trajectory.shape == (4, 5, 3) and four.times.shape == (4,)


def test_without_trajectory_and_no_grad(x0: torch.Tensor) -> None:
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    for method in ODE_METHODS:
        result = integrate(lambda x, t: -w * x, x0, method=method, steps=4)
        assert result.times is None and result.trajectory is None
        assert not result.x.requires_grad


@pytest.mark.parametrize("method", ODE_METHODS)
def test_nan_velocity_names_the_time(method: str, x0: torch.Tensor) -> None:
    seen = []

    def bad(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t[0].item())
        return torch.full_like(x, math.nan) if t[0] > 0.5275 else -x

    with pytest.raises(ValueError, match="velocity returned NaN at t=") as info:
        integrate(bad, x0, method=method, steps=100)
    # The message names the first time the velocity went wrong (every stage time is a multiple of 0.005).
    assert f"t={seen[-1]:.6g}" in str(info.value) and seen[-1] > 0.5275
    assert all(t <= 0.5275 for t in seen[:-1])
    if method != "dopri5":
        # Euler and midpoint first reach t = 0.53 at the start of step 54, Heun and RK4 at the end of step 53.
        step = 54 if method in ("euler", "midpoint") else 53
        assert f"t=0.53 (step {step} of 100, evaluation {len(seen)})" in str(info.value)


def test_inf_velocity_raises(x0: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"inf at t=0 \(step 1 of 100, evaluation 1\)"):
        integrate(lambda x, t: x / 0, x0, method="heun")


@pytest.mark.parametrize("method", ODE_METHODS)
def test_wrong_shape_names_both_shapes(method: str, x0: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"shape \(5, 2\) at t=0.*\(5, 3\)"):
        integrate(lambda x, t: x[:, :2], x0, method=method)


def test_non_tensor_velocity_output(x0: torch.Tensor) -> None:
    with pytest.raises(TypeError, match="velocity must return a torch.Tensor"):
        integrate(lambda x, t: x.numpy(), x0)
    with pytest.raises(TypeError, match="velocity must be callable"):
        integrate("not callable", x0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "rk45"}, "method must be one of"),
        ({"steps": 0}, "steps must be an int >= 1, got 0"),
        ({"steps": 2.5}, "steps must be an int >= 1, got 2.5"),
        ({"steps": True}, "steps must be an int >= 1, got True"),
        ({"t0": 0.5, "t1": 0.5}, "t0 and t1 must differ"),
        ({"t1": math.nan}, "t1 must be a finite float, got nan"),
        ({"t0": "0"}, "t0 must be a finite float"),
        ({"rtol": 0.0}, "rtol and atol must be > 0"),
        ({"atol": -1.0}, "rtol and atol must be > 0"),
        ({"trajectory_points": 3}, "only used with return_trajectory=True"),
        ({"return_trajectory": True, "trajectory_points": 1}, "trajectory_points must be an int >= 2, got 1"),
        ({"return_trajectory": True, "trajectory_points": 12, "steps": 10}, r"trajectory_points must be <= "),
    ],
)
def test_bad_arguments(kwargs: dict, match: str, x0: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=match):
        integrate(decay, x0, **kwargs)


def test_bad_x0() -> None:
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        integrate(decay, [[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"x0 must have shape \(n, D\), got \(3,\)"):
        integrate(decay, torch.zeros(3))
    with pytest.raises(ValueError, match="x0 must be a floating-point tensor, got dtype torch.int64"):
        integrate(decay, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x0 must be finite"):
        integrate(decay, torch.tensor([[0.0, math.inf]]))
