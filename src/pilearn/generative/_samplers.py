"""Samplers: stateless integration of the flow ODE dx/dt = v(x, t) from t₀ to t₁ (default noise 0 → data 1).

Notation (the flow path contract of :mod:`pilearn.generative._paths`): ``x`` is the state ``(n, D)``, ``v`` the
velocity callable, ``h = (t₁ − t₀)/steps`` the step (negative when integrating backwards), ``t_k = t₀ + k·h``.
Every fixed-step method below is a Runge–Kutta scheme; "order p" means the global error at ``t₁`` is O(hᵖ).

    euler     x_{k+1} = x_k + h·v(x_k, t_k)                                                     order 1, 1 eval/step
    heun      k₁ = v(x_k, t_k),  k₂ = v(x_k + h·k₁, t_k + h)
              x_{k+1} = x_k + h/2·(k₁ + k₂)          (explicit trapezoid)                        order 2, 2 evals/step
    midpoint  k₁ = v(x_k, t_k),  k₂ = v(x_k + h/2·k₁, t_k + h/2)
              x_{k+1} = x_k + h·k₂                                                               order 2, 2 evals/step
    rk4       k₁ = v(x_k, t_k),            k₂ = v(x_k + h/2·k₁, t_k + h/2)
              k₃ = v(x_k + h/2·k₂, t_k + h/2),  k₄ = v(x_k + h·k₃, t_k + h)
              x_{k+1} = x_k + h/6·(k₁ + 2k₂ + 2k₃ + k₄)   (classic Runge–Kutta)                  order 4, 4 evals/step
    dopri5    Dormand–Prince 5(4) with adaptive steps (``torchdiffeq.odeint``): each accepted step is order 5,
              the step size is chosen so the embedded order-4 error estimate stays below atol + rtol·|x|
              (Dormand & Prince 1980; Chen et al. 2018, torchdiffeq). About 6 evals per step, ``steps`` ignored.

The samplers hold no state and no weights (as diffusers schedulers): a call is pure tensor math on ``x0`` and
whatever ``velocity`` returns. Every velocity output is checked (shape, finiteness) so that a model that blows up
is reported at the time it happened instead of as NaN samples.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torchdiffeq

__all__ = ["ODEResult", "ODE_METHODS", "integrate"]

ODE_METHODS: tuple[str, ...] = ("euler", "heun", "midpoint", "rk4", "dopri5")
_EVALS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}
_DOPRI5_DEFAULT_POINTS = 11

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_model_output(out: object, x: torch.Tensor, name: str, where: str,
                       nonfinite: type[Exception] = ValueError) -> torch.Tensor:
    """What every sampler checks of a model's output: a tensor of ``x``'s shape, finite (else ``nonfinite``,
    with ``where`` the evaluation, so that a model that blows up is reported where it happened)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor of shape {tuple(x.shape)}, got "
                        f"{type(out).__name__} at {where}")
    if out.shape != x.shape:
        raise ValueError(f"{name} returned shape {tuple(out.shape)} at {where}, expected the shape of x "
                         f"{tuple(x.shape)}")
    if not bool(torch.isfinite(out).all()):
        kind = "NaN" if bool(torch.isnan(out).any()) else "inf"
        raise nonfinite(f"{name} returned {kind} at {where}")
    return out


@dataclass
class ODEResult:
    """What :func:`integrate` returns.

    Attributes:
        x: ``(n, D)`` the state at ``t1``.
        nfe: the number of velocity evaluations made (function evaluations), counted exactly.
        times: ``(T,)`` the times of the saved frames (dtype and device of ``x``), or ``None`` when no trajectory
            was asked for.
        trajectory: ``(T, n, D)`` the saved states, ``trajectory[0]`` is ``x0`` and ``trajectory[-1]`` is ``x``;
            or ``None``.
    """

    x: torch.Tensor
    nfe: int
    times: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None


class _CheckedVelocity:
    """Wrap ``velocity``: count calls, broadcast a scalar time to ``(n,)``, check every output."""

    def __init__(self, velocity: Velocity) -> None:
        self.velocity = velocity
        self.nfe = 0
        self.where = ""  # filled in by the fixed-step loop: "step k of steps, "

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        t_value = float(t)
        tt = torch.full((x.shape[0],), t_value, dtype=x.dtype, device=x.device)  # (n,)
        self.nfe += 1
        v = check_model_output(self.velocity(x, tt), x, "velocity", self._at(t_value))
        return v.to(x.dtype)

    def _at(self, t: float) -> str:
        """Where the current evaluation is: ``"t=0.53 (step 54 of 100, evaluation 54)"``."""
        return f"t={t:.6g} ({self.where}evaluation {self.nfe})"


def _euler(f: _CheckedVelocity, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    return x + h * f(x, t)


def _heun(f: _CheckedVelocity, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    k1 = f(x, t)
    k2 = f(x + h * k1, t + h)
    return x + (h / 2) * (k1 + k2)


def _midpoint(f: _CheckedVelocity, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    k1 = f(x, t)
    k2 = f(x + (h / 2) * k1, t + h / 2)
    return x + h * k2


def _rk4(f: _CheckedVelocity, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    k1 = f(x, t)
    k2 = f(x + (h / 2) * k1, t + h / 2)
    k3 = f(x + (h / 2) * k2, t + h / 2)
    k4 = f(x + h * k3, t + h)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


_STEPPERS = {"euler": _euler, "heun": _heun, "midpoint": _midpoint, "rk4": _rk4}


def _check_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite float, got {value!r}")
    return float(value)


def _check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_x0(x0: object) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor of shape (n, D), got {type(x0).__name__}")
    if x0.ndim != 2:
        raise ValueError(f"x0 must have shape (n, D), got {tuple(x0.shape)}")
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite, got NaN or inf entries")
    return x0


def _save_indices(steps: int, points: int | None) -> list[int]:
    """Step indices ``k`` (state after k steps) to save: all ``0..steps``, or ``points`` evenly spaced ones."""
    if points is None:
        return list(range(steps + 1))
    if points > steps + 1:
        raise ValueError(f"trajectory_points must be <= steps + 1 = {steps + 1} for a fixed-step method, "
                         f"got {points}")
    return [round(i * steps / (points - 1)) for i in range(points)]


def _fixed_step(f: _CheckedVelocity, x0: torch.Tensor, method: str, steps: int, t0: float, t1: float,
                save: list[int] | None) -> tuple[torch.Tensor, list[float], list[torch.Tensor]]:
    stepper = _STEPPERS[method]
    h = (t1 - t0) / steps
    x = x0
    times: list[float] = []
    frames: list[torch.Tensor] = []
    wanted = set(save) if save is not None else set()
    if 0 in wanted:
        times.append(t0)
        frames.append(x0.clone())
    for k in range(steps):
        t = t0 + (t1 - t0) * k / steps  # no drift from summing h
        f.where = f"step {k + 1} of {steps}, "
        x = stepper(f, x, t, h)
        if k + 1 in wanted:
            times.append(t1 if k + 1 == steps else t0 + (t1 - t0) * (k + 1) / steps)
            frames.append(x)
    f.where = ""
    return x, times, frames


def _dopri5(f: _CheckedVelocity, x0: torch.Tensor, t0: float, t1: float, rtol: float, atol: float,
            points: int) -> tuple[torch.Tensor, torch.Tensor]:
    # torchdiffeq calls func(t, y) with a scalar tensor t; _CheckedVelocity broadcasts it to (n,).
    grid = torch.linspace(t0, t1, points, dtype=torch.float64, device=x0.device)
    path = torchdiffeq.odeint(lambda t, y: f(y, t), x0, grid, method="dopri5", rtol=rtol, atol=atol)
    return grid.to(x0.dtype), path  # (T,), (T, n, D)


def integrate(
    velocity: Velocity,
    x0: torch.Tensor,
    *,
    method: Literal["euler", "heun", "midpoint", "rk4", "dopri5"] = "euler",
    steps: int = 100,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    return_trajectory: bool = False,
    trajectory_points: int | None = None,
) -> ODEResult:
    """Integrate dx/dt = v(x, t) from ``x(t0) = x0`` to ``t1`` (the update formulas are in the module docstring).

    Runs under ``torch.no_grad()``: no graph is built through the solver, so sampling from a large model costs
    no activation memory (and the result cannot be back-propagated through).

    Args:
        velocity: ``v(x, t) -> (n, D)`` for ``x (n, D)`` and ``t (n,)`` of the dtype and device of ``x``, all
            entries of ``t`` equal. Its output is cast to the dtype of ``x``; it must have the shape of ``x`` and
            be finite, otherwise a ``ValueError`` names the time (and the step) where it first went wrong.
        x0: ``(n, D)`` floating, finite; the state at ``t0`` (noise ``N(0, I)`` for the flow path).
        method: ``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"`` (fixed ``steps``) or ``"dopri5"``
            (adaptive, ``rtol``/``atol``).
        steps: number of uniform steps of a fixed-step method, an int >= 1 (validated, but ignored by
            ``"dopri5"``); the cost is ``steps`` × 1, 2, 2, 4 evaluations.
        t0, t1: finite start and end times, ``t0 != t1``; ``t1 < t0`` integrates backwards (data → noise).
            They are not restricted to ``[0, 1]`` here; the velocity may be.
        rtol, atol: relative and absolute error tolerances of ``"dopri5"``, floats > 0 (ignored otherwise).
        return_trajectory: also return the intermediate states. Fixed-step methods save the state after every
            step (``steps + 1`` frames, ``x0`` included); ``"dopri5"`` saves ``trajectory_points`` (default 11)
            evenly spaced times, at which torchdiffeq interpolates without forcing extra steps.
        trajectory_points: ``T >= 2`` frames evenly spaced in time instead of every step (fixed-step methods
            save the grid states ``k = round(i·steps/(T − 1))``, so ``T <= steps + 1``); only with
            ``return_trajectory=True``.

    Returns:
        :class:`ODEResult` with ``x (n, D)``, ``nfe`` and, if asked for, ``times (T,)`` and
        ``trajectory (T, n, D)``.
    """
    if not callable(velocity):
        raise TypeError(f"velocity must be callable as velocity(x, t), got {type(velocity).__name__}")
    x0 = _check_x0(x0)
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    steps = _check_positive_int(steps, "steps")
    t0, t1 = _check_real(t0, "t0"), _check_real(t1, "t1")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0!r}")
    rtol, atol = _check_real(rtol, "rtol"), _check_real(atol, "atol")
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol!r}, atol={atol!r}")
    if trajectory_points is not None:
        if not return_trajectory:
            raise ValueError(f"trajectory_points is only used with return_trajectory=True, got "
                             f"trajectory_points={trajectory_points!r} and return_trajectory=False")
        trajectory_points = _check_positive_int(trajectory_points, "trajectory_points", minimum=2)

    f = _CheckedVelocity(velocity)
    with torch.no_grad():
        if method == "dopri5":
            points = (trajectory_points or _DOPRI5_DEFAULT_POINTS) if return_trajectory else 2
            times, path = _dopri5(f, x0, t0, t1, rtol, atol, points)
            if not return_trajectory:
                return ODEResult(x=path[-1], nfe=f.nfe)
            return ODEResult(x=path[-1], nfe=f.nfe, times=times, trajectory=path)
        save = _save_indices(steps, trajectory_points) if return_trajectory else None
        x, times_list, frames = _fixed_step(f, x0, method, steps, t0, t1, save)
    if not return_trajectory:
        return ODEResult(x=x, nfe=f.nfe)
    times = torch.tensor(times_list, dtype=x0.dtype, device=x0.device)
    return ODEResult(x=x, nfe=f.nfe, times=times, trajectory=torch.stack(frames))
