"""Gradient-trained flow matching and DDPM: the baselines that PIL flow matching and PIL diffusion are compared to.

**Flow matching** as torchcfm does it (Lipman et al. 2023; Tong et al. 2024), with the straight path of
:class:`pilearn.generative.OTPath`:

    x₁ ~ p_data (a row of X)     x₀ ~ N(0, I)     t ~ U(0, 1)     ε ~ N(0, I) (only when σ > 0)
    x_t = (1 − t)·x₀ + t·x₁ + σ·ε        u_t = x₁ − x₀
    L(θ) = E ‖v_θ(x_t, t, y) − u_t‖²  (mean over rows and coordinates, ``F.mse_loss``)

Its minimiser is the marginal velocity v(x, t) = E[u_t | x_t = x] that PIL flow matching fits in closed form, so
both are scored by the same loss on the same draws (:func:`flow_matching_loss`).

**DDPM** with ε-prediction and L_simple (Ho et al. 2020), for a schedule ᾱ_t = ``alphas_cumprod[t]``, t = 0..T−1:

    x₀ ~ p_data (a row of X)     t ~ U{0, …, T−1}     ε ~ N(0, I)
    x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε
    L(θ) = E ‖ε_θ(x_t, t/T, y) − ε‖²  (mean over rows and coordinates)

whose minimiser is E[ε | x_t] (for the training set itself: :class:`pilearn.generative.EmpiricalDenoiser`); it is
scored by :func:`ddpm_loss`. The network sees the time as t/T ∈ [0, 1), the range the velocity networks take.

Both objectives run through one training loop (AdamW, time budget / epochs / early stopping on a fixed-draw
validation loss), which an objective plugs into with two formulas: what it draws per row, and how a data row and
its draws become (model input x, model input time in [0, 1], regression target).

Two networks, both ``forward(x (n, D), t (n,), y (n,) | None) -> (n, D)``, serve as velocity fields for flow
matching and as ε-networks for DDPM:

- :class:`MLPVelocity`: ``[x, time embedding, one-hot label]`` → ``depth`` × (Linear + SiLU) → Linear.
- :class:`ConvVelocity`: a small U-Net for ``C×H×W`` images (MNIST 28×28, digits 8×8, odd sizes too).

Randomness: the caller seeds the weight initialisation (``torch.manual_seed`` before building the model, or under
``torch.random.fork_rng``); everything the trainers draw (validation split, shuffling, and the objective's draws:
x₀, t, ε for flow matching; t, ε for DDPM) comes from CPU :class:`torch.Generator` objects seeded with ``seed``, so
the same seed on the same initial weights gives the same trained weights.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..features import sinusoidal_embedding
from ..generative import OTPath
from ..generative._empirical import check_alphas_cumprod, check_timesteps

__all__ = [
    "MLPVelocity",
    "ConvVelocity",
    "TrainResult",
    "FlowTrainResult",
    "train_flow_matching",
    "flow_matching_loss",
    "model_velocity",
    "train_ddpm",
    "ddpm_loss",
    "model_noise",
]

logger = logging.getLogger(__name__)

#: times in [0, 1] are multiplied by this before the sinusoidal embedding, so they span the 0..1000 range of
#: DDPM's integer time steps that the embedding's frequencies (max_period 10⁴) were chosen for
TIME_SCALE = 1000.0


# ----------------------------------------------------------------------------------------------------------- checks
def _check_positive_int(value: object, name: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_inputs(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, dim: int, n_classes: int) -> None:
    """Shape checks shared by both networks' ``forward``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != dim:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (n, {dim}), got {got}")
    n = x.shape[0]
    if not isinstance(t, torch.Tensor) or t.shape != (n,):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"t must be a tensor of shape ({n},), got {got}")
    if n_classes == 0:
        if y is not None:
            raise ValueError("y must be None for an unconditional model (n_classes=0), got a label tensor")
        return
    if y is None:
        raise ValueError(f"y is required: the model is conditional (n_classes={n_classes}), got None")
    if not isinstance(y, torch.Tensor) or y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool:
        got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be an integer tensor of shape ({n},), got {got}")
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"y must lie in [0, {n_classes - 1}], got values in [{int(y.min())}, {int(y.max())}]")


def _time_embedding(t: torch.Tensor, time_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``(n,) -> (n, time_dim)``: :func:`~pilearn.features.sinusoidal_embedding` of ``t · TIME_SCALE``."""
    return sinusoidal_embedding(t.to(dtype) * TIME_SCALE, time_dim)


# ------------------------------------------------------------------------------------------------------------- MLP
class MLPVelocity(nn.Module):
    """A velocity MLP ``v_θ(x, t, y)`` for flat data (torchcfm's ``MLP`` with a sinusoidal time embedding).

    ``h₀ = [x, emb(t), onehot(y)]`` of width ``dim + time_dim (+ n_classes)``, then ``depth`` layers
    ``h ← SiLU(W h + b)`` of width ``hidden``, then a Linear back to ``dim``. ``emb(t)`` is
    ``sinusoidal_embedding(1000·t, time_dim)`` (see :data:`TIME_SCALE`).

    Args:
        dim: ``D``, the data dimension.
        hidden: width of the hidden layers.
        depth: number of hidden (Linear + SiLU) layers, ``>= 1``.
        time_dim: width of the time embedding, ``>= 1``.
        n_classes: ``0`` for an unconditional model; otherwise the label count, and ``forward`` needs ``y``.

    Shapes: ``forward(x (n, D), t (n,), y (n,) int | None) -> (n, D)``; ``t`` in [0, 1] (0 noise, 1 data). As a
    DDPM ε-network (:func:`train_ddpm`) it is given t/T instead, which runs the other way (0 data, → 1 noise).
    """

    def __init__(self, dim: int, *, hidden: int = 512, depth: int = 3, time_dim: int = 64, n_classes: int = 0) -> None:
        super().__init__()
        self.dim = _check_positive_int(dim, "dim")
        self.hidden = _check_positive_int(hidden, "hidden")
        self.depth = _check_positive_int(depth, "depth")
        self.time_dim = _check_positive_int(time_dim, "time_dim")
        self.n_classes = _check_positive_int(n_classes, "n_classes", allow_zero=True)
        layers: list[nn.Module] = []
        width = self.dim + self.time_dim + self.n_classes
        for _ in range(self.depth):
            layers += [nn.Linear(width, self.hidden), nn.SiLU()]
            width = self.hidden
        layers.append(nn.Linear(width, self.dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(x, t, y, self.dim, self.n_classes)
        parts = [x, _time_embedding(t, self.time_dim, x.dtype)]  # (n, D), (n, time_dim)
        if self.n_classes:
            parts.append(F.one_hot(y.long(), self.n_classes).to(x.dtype))  # (n, n_classes)
        return self.net(torch.cat(parts, dim=1))  # (n, D)


# ---------------------------------------------------------------------------------------------------------- U-Net
def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _Block(nn.Module):
    """Residual block: ``h = SiLU(GN(conv₁ x) + W e)``, ``h = SiLU(GN(conv₂ h))``, out ``h + skip(x)``.

    ``e (n, emb_dim)`` is the time (+ label) embedding, added per channel after the first conv (DDPM's ResBlock).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = _group_norm(c_out)
        self.emb = nn.Linear(emb_dim, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = _group_norm(c_out)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)) + self.emb(e)[:, :, None, None])  # (n, c_out, h, w)
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class ConvVelocity(nn.Module):
    """A small U-Net velocity ``v_θ(x, t, y)`` for ``C×H×W`` images given as flat rows.

    With ``channels = (c₀, …, c_{L−1})``: a 3×3 stem to ``c₀``; at level ``i`` a residual block
    (:class:`_Block`: conv3×3 + GroupNorm + SiLU twice, the embedding added per block) whose output is kept as a
    skip, followed (except at the last level) by a stride-2 3×3 conv; a middle block; then back up: a 3×3 conv to
    ``c_i`` at the coarse size, nearest interpolation *to the skip's size* (so odd sizes such as 7×7 → 4×4 → 7×7
    work), concatenation with the skip and a block; finally GroupNorm + SiLU + a 3×3 conv to ``C``.

    The embedding ``e`` (width ``4·c₀``, DDPM's convention) is ``MLP(sinusoidal_embedding(1000·t, time_dim))``
    plus a learned label embedding when ``n_classes > 0``. With the defaults on 1×28×28 it has about 260k
    parameters (one downsample: 28 → 14).

    Args:
        in_shape: ``(C, H, W)``; ``D = C·H·W``.
        channels: channel width per level, each ``>= 1``; ``len(channels) − 1`` downsamples.
        time_dim: width of the sinusoidal time embedding.
        n_classes: ``0`` for an unconditional model; otherwise the label count, and ``forward`` needs ``y``.

    Shapes: ``forward(x (n, D), t (n,), y (n,) int | None) -> (n, D)``, rows in ``C, H, W`` (row-major) order;
    ``t`` in [0, 1] as for :class:`MLPVelocity` (flow time, or t/T for a DDPM ε-network).
    """

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), *, channels: tuple[int, ...] = (32, 64),
                 time_dim: int = 64, n_classes: int = 0) -> None:
        super().__init__()
        if not isinstance(in_shape, (tuple, list)) or len(in_shape) != 3:
            raise ValueError(f"in_shape must be a (C, H, W) tuple, got {in_shape!r}")
        self.in_shape = tuple(_check_positive_int(s, "in_shape entries") for s in in_shape)
        if not isinstance(channels, (tuple, list)) or len(channels) == 0:
            raise ValueError(f"channels must be a non-empty tuple of ints, got {channels!r}")
        self.channels = tuple(_check_positive_int(c, "channels entries") for c in channels)
        self.time_dim = _check_positive_int(time_dim, "time_dim")
        self.n_classes = _check_positive_int(n_classes, "n_classes", allow_zero=True)
        self.dim = math.prod(self.in_shape)
        c_img, chs = self.in_shape[0], self.channels
        emb_dim = 4 * chs[0]
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(self.n_classes, emb_dim) if self.n_classes else None
        self.stem = nn.Conv2d(c_img, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(_Block(chs[max(i - 1, 0)], c, emb_dim) for i, c in enumerate(chs))
        self.downsamples = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in chs[:-1])
        self.mid = _Block(chs[-1], chs[-1], emb_dim)
        self.up_convs = nn.ModuleList(nn.Conv2d(chs[i + 1], chs[i], 3, padding=1) for i in range(len(chs) - 1))
        self.up_blocks = nn.ModuleList(_Block(2 * chs[i], chs[i], emb_dim) for i in range(len(chs) - 1))
        self.out_norm = _group_norm(chs[0])
        self.out_conv = nn.Conv2d(chs[0], c_img, 3, padding=1)

    def _embedding(self, t: torch.Tensor, y: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        e = self.time_mlp(_time_embedding(t, self.time_dim, dtype))  # (n, emb_dim)
        if self.label_emb is not None:
            e = e + self.label_emb(y.long())
        return e

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(x, t, y, self.dim, self.n_classes)
        e = self._embedding(t, y, x.dtype)
        h = self.stem(x.reshape(-1, *self.in_shape))  # (n, c₀, H, W)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, e)
            if i < len(self.downsamples):
                skips.append(h)  # (n, c_i, H_i, W_i)
                h = self.downsamples[i](h)  # (n, c_i, ⌈H_i/2⌉, ⌈W_i/2⌉)
        h = self.mid(h, e)
        for i in reversed(range(len(self.up_blocks))):
            skip = skips[i]
            h = F.interpolate(self.up_convs[i](h), size=skip.shape[-2:], mode="nearest")  # (n, c_i, H_i, W_i)
            h = self.up_blocks[i](torch.cat([h, skip], dim=1), e)
        h = self.out_conv(F.silu(self.out_norm(h)))  # (n, C, H, W)
        return h.reshape(x.shape[0], self.dim)


# ------------------------------------------------------------------------------------------------------ objectives
class _Objective:
    """A regression objective for :func:`_train`: its per-row randomness and its (input, time, target) formula.

    ``draw(n, D, gen, dtype)`` returns a tuple of CPU tensors drawn from ``gen``, each with the row on its first
    axis (so a fixed set of draws slices into batches); ``pair(x_data (b, D), draws)`` (draws on the data's device)
    returns the model input ``x (b, D)``, the model time ``t (b,)`` in [0, 1] and the target ``(b, D)``. The loss is
    ``mean (model(x, t, y) − target)²``.
    """

    name: str

    def draw(self, n: int, dim: int, gen: torch.Generator, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def pair(self, x_data: torch.Tensor, draws: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class _FlowMatching(_Objective):
    """Draws ``x₀ (n, D)``, ``t (n,)``, then ``ε (n, D)`` when σ > 0; ``(x_t, t, u_t)`` from :class:`OTPath`."""

    name = "flow-matching"

    def __init__(self, sigma: float) -> None:
        self.path = OTPath(sigma)

    def draw(self, n: int, dim: int, gen: torch.Generator, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        x0 = torch.randn(n, dim, generator=gen, dtype=dtype)
        t = torch.rand(n, generator=gen, dtype=dtype)
        if self.path.sigma == 0:
            return x0, t
        return x0, t, torch.randn(n, dim, generator=gen, dtype=dtype)

    def pair(self, x_data: torch.Tensor, draws: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0, t, *eps = draws
        xt, u = self.path.sample(x0, x_data, t, eps[0] if eps else None)
        return xt, t, u


def _model_time(timesteps: torch.Tensor, num_train_timesteps: int, dtype: torch.dtype) -> torch.Tensor:
    """DDPM time step t ``(n,)`` int → the network's time t/T ``(n,)`` in [0, 1)."""
    return timesteps.to(dtype) / num_train_timesteps


class _DDPM(_Objective):
    """Draws ``t (n,)`` ~ U{0..T−1}, then ``ε (n, D)``; ``(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, t/T, ε)``."""

    name = "DDPM"

    def __init__(self, alphas_cumprod: object) -> None:
        self.alphas_cumprod = check_alphas_cumprod(alphas_cumprod)  # (T,) float64

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def draw(self, n: int, dim: int, gen: torch.Generator, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        timesteps = torch.randint(0, self.num_train_timesteps, (n,), generator=gen)
        return timesteps, torch.randn(n, dim, generator=gen, dtype=dtype)

    def pair(self, x_data: torch.Tensor, draws: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        timesteps, eps = draws
        if self.alphas_cumprod.device != x_data.device:
            self.alphas_cumprod = self.alphas_cumprod.to(x_data.device)
        abar = self.alphas_cumprod[timesteps]  # (b,) float64
        a, s = abar.sqrt().to(x_data.dtype)[:, None], (1 - abar).sqrt().to(x_data.dtype)[:, None]
        return a * x_data + s * eps, _model_time(timesteps, self.num_train_timesteps, x_data.dtype), eps


# ------------------------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """What :func:`train_flow_matching` and :func:`train_ddpm` return.

    Attributes:
        model: the trained model in eval mode; the best-validation weights when a validation split was used.
        seconds: wall time of the training loop (validation evaluations included), from the first step to the stop.
        steps: optimiser steps taken.
        epochs: passes over the training rows, fractional (rows seen / training rows).
        n_params: trainable parameters.
        loss_curve: ``(step, seconds, train_loss)`` records; ``train_loss`` is the mean minibatch loss over the
            steps since the previous record (every ``log_every`` steps and at the stop).
        val_curve: ``(step, val_loss)`` per validation evaluation (empty without validation).
        final_train_loss: ``loss_curve[-1][2]``, the mean minibatch loss of the last logging window.
        stop_reason: ``"time_budget"``, ``"epochs"`` or ``"patience"``.
        best_val_loss: the lowest validation loss, that of the returned weights; ``None`` without validation.
        val_indices: ``(n_val,)`` the rows of ``X`` held out for validation (empty without validation).
        val_seed: the seed of the fixed validation draws: ``flow_matching_loss(model, X[val_indices],
            y[val_indices], sigma=sigma, seed=val_seed)`` (or :func:`ddpm_loss` with the same ``alphas_cumprod``)
            reproduces ``best_val_loss``.
    """

    model: nn.Module
    seconds: float
    steps: int
    epochs: float
    n_params: int
    loss_curve: list[tuple[int, float, float]]
    val_curve: list[tuple[int, float]]
    final_train_loss: float
    stop_reason: str
    best_val_loss: float | None = None
    val_indices: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    val_seed: int = 0


#: the name the flow suite has always used
FlowTrainResult = TrainResult


def _as_data(X: object, y: object, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate ``X (n, D)`` and ``y (n,)``; return them as tensors (``X`` in the model's dtype)."""
    if not isinstance(X, (torch.Tensor, np.ndarray)):
        raise TypeError(f"X must be a torch.Tensor or numpy array of shape (n, D), got {type(X).__name__}")
    X = torch.as_tensor(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must be 2-D (n, D) with n, D >= 1, got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise TypeError(f"X must be floating point (scale images to [-1, 1] first), got dtype {X.dtype}")
    if not bool(torch.isfinite(X).all()):
        bad = int((~torch.isfinite(X)).any(dim=1).nonzero()[0])
        raise ValueError(f"X must be finite, got a NaN or inf in row {bad}")
    param = next(model.parameters(), None)
    X = X.to(param.dtype if param is not None else torch.float32)
    n_classes = int(getattr(model, "n_classes", 0) or 0)
    if y is None:
        if n_classes:
            raise ValueError(f"y is required: the model is conditional (n_classes={n_classes}), got None")
        return X, None
    if not isinstance(y, (torch.Tensor, np.ndarray)):
        raise TypeError(f"y must be a torch.Tensor or numpy array of shape ({X.shape[0]},), got {type(y).__name__}")
    y = torch.as_tensor(y)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X {tuple(X.shape)}, got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
    if hasattr(model, "n_classes") and n_classes == 0:
        raise ValueError("y must be None for an unconditional model (n_classes=0); build it with n_classes > 0")
    low, high = int(y.min()), int(y.max())
    if low < 0 or (n_classes and high >= n_classes):
        allowed = f"[0, {n_classes - 1}] (n_classes={n_classes})" if n_classes else "[0, inf)"
        raise ValueError(f"y must lie in {allowed}, got values in [{low}, {high}]")
    return X, y.long()



def _call(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return model(x, t) if y is None else model(x, t, y)


def _check_output(v: object, u: torch.Tensor) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or v.shape != u.shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"model output must have the shape of its input x {tuple(u.shape)}, got {got}")
    return v


@torch.no_grad()
def _loss_on_draws(model: nn.Module, X: torch.Tensor, y: torch.Tensor | None, draws: tuple[torch.Tensor, ...],
                   objective: _Objective, batch_size: int) -> float:
    """Mean of ``(model(x, t, y) − target)²`` over all rows and coordinates, on fixed draws, in eval mode."""
    was_training = model.training
    model.eval()
    device = X.device
    total = 0.0
    for i in range(0, X.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        x, t, target = objective.pair(X[sl], tuple(d[sl].to(device) for d in draws))
        v = _check_output(_call(model, x, t, None if y is None else y[sl]), target)
        total += float(((v - target) ** 2).sum(dtype=torch.float64))
    model.train(was_training)
    return total / X.numel()


def _fixed_draw_loss(model: nn.Module, X: object, y: object, objective: _Objective, seed: int, batch_size: int
                     ) -> float:
    """``objective``'s loss of ``model`` on ``X``, on draws from ``torch.Generator().manual_seed(seed)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    X, y = _as_data(X, y, model)
    batch_size = _check_positive_int(batch_size, "batch_size")
    seed = _check_positive_int(seed, "seed", allow_zero=True)
    device = _model_device(model)
    draws = objective.draw(X.shape[0], X.shape[1], torch.Generator().manual_seed(seed), X.dtype)
    return _loss_on_draws(model, X.to(device), None if y is None else y.to(device), draws, objective, batch_size)


def flow_matching_loss(model: nn.Module, X: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | None = None,
                       *, sigma: float = 0.0, seed: int = 0, batch_size: int = 1024) -> float:
    """The flow-matching loss of ``model`` on data ``X``, on draws fixed by ``seed`` (so models compare fairly).

    ``x₀ (n, D)``, ``t (n,)`` and (for ``σ > 0``) ``ε (n, D)`` are drawn in that order from
    ``torch.Generator().manual_seed(seed)`` on the CPU; the value is
    ``mean_{i, j} (v_θ(x_t, t, y)_{ij} − (x₁ − x₀)_{ij})²``, computed in eval mode without gradients.

    Args:
        model: ``model(x (n, D), t (n,)[, y (n,)]) -> (n, D)``; it stays on its device, ``X`` is moved there.
        X: ``(n, D)`` data rows (x₁).
        y: ``(n,)`` integer labels for a conditional model, else ``None``.
        sigma: the path width σ of :class:`~pilearn.generative.OTPath`.
        seed: seed of the draws.
        batch_size: rows per forward pass (the value does not depend on it beyond float rounding).
    """
    return _fixed_draw_loss(model, X, y, _FlowMatching(sigma), seed, batch_size)


def ddpm_loss(model: nn.Module, X: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | None = None, *,
              alphas_cumprod: torch.Tensor | np.ndarray, seed: int = 0, batch_size: int = 1024) -> float:
    """DDPM's L_simple of an ε-network ``model`` on data ``X``, on draws fixed by ``seed`` (so models compare fairly).

    ``t (n,)`` ~ U{0..T−1} and ``ε (n, D)`` ~ N(0, I) are drawn in that order from
    ``torch.Generator().manual_seed(seed)`` on the CPU, ``x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε``, and the value is
    ``mean_{i, j} (ε_θ(x_t, t/T, y)_{ij} − ε_{ij})²``, computed in eval mode without gradients. Predicting 0
    scores 1 (E ε²); the exact posterior mean E[ε | x_t] scores the least any model can.

    Args:
        model: ``model(x (n, D), t (n,) in [0, 1)[, y (n,)]) -> (n, D)``; it stays on its device, ``X`` is moved
            there.
        X: ``(n, D)`` data rows (x₀).
        y: ``(n,)`` integer labels for a conditional model, else ``None``.
        alphas_cumprod: ``(T,)`` the schedule ᾱ_t, in (0, 1] and strictly decreasing.
        seed: seed of the draws.
        batch_size: rows per forward pass (the value does not depend on it beyond float rounding).
    """
    return _fixed_draw_loss(model, X, y, _DDPM(alphas_cumprod), seed, batch_size)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, bool]]:
    """Yield ``(row indices, last batch of the epoch?)`` forever, reshuffling each epoch with ``gen``."""
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size], start + batch_size >= n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_options(time_budget: float | None, epochs: int | None, lr: float, weight_decay: float,
                   val_fraction: float, schedule: str, grad_clip: float | None) -> None:
    if time_budget is None and epochs is None:
        raise ValueError("time_budget and epochs cannot both be None: give a time budget (seconds), "
                         "an epoch count, or both")
    if time_budget is not None and (isinstance(time_budget, bool) or not isinstance(time_budget, numbers.Real)
                                    or not 0 < time_budget < math.inf):
        raise ValueError(f"time_budget must be a finite number of seconds > 0 or None, got {time_budget!r}")
    if epochs is not None:
        _check_positive_int(epochs, "epochs")
    for name, value, low_ok in (("lr", lr, False), ("weight_decay", weight_decay, True)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                (0 <= value if low_ok else 0 < value) and value < math.inf):
            raise ValueError(f"{name} must be a finite float {'>=' if low_ok else '>'} 0, got {value!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be a float in [0, 1), got {val_fraction!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if schedule == "cosine" and epochs is None:
        raise ValueError("schedule='cosine' needs epochs (the length of the cosine); with only a time_budget "
                         "use schedule='constant'")
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, numbers.Real)
                                  or not 0 < grad_clip < math.inf):
        raise ValueError(f"grad_clip must be a finite float > 0 or None, got {grad_clip!r}")


def _split(n: int, val_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(train rows, validation rows)``; no validation rows when ``val_fraction == 0``."""
    if val_fraction == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    n_val = int(round(val_fraction * n))
    if not 1 <= n_val < n:
        raise ValueError(f"val_fraction={val_fraction!r} of n={n} rows leaves {n_val} validation and "
                         f"{n - n_val} training rows; both must be >= 1")
    perm = torch.randperm(n, generator=gen)
    return perm[n_val:], perm[:n_val]



def _train(model: nn.Module, X: object, y: object, objective: _Objective, *, time_budget: float | None,
           epochs: int | None, batch_size: int, lr: float, weight_decay: float, schedule: str,
           grad_clip: float | None, seed: int, val_fraction: float, val_every: int | None, patience: int,
           log_every: int, device: str | torch.device) -> TrainResult:
    """The AdamW loop shared by every objective; the options are those of :func:`train_flow_matching`.

    Per step: a minibatch of training rows (reshuffled each epoch), ``objective.draw`` for its rows, and the loss
    ``mean (model(x, t, y) − target)²`` of ``objective.pair``. The split, the shuffling and the draws all come
    from one CPU generator seeded with ``seed``; validation draws from one seeded with ``seed + 1``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_options(time_budget, epochs, lr, weight_decay, val_fraction, schedule, grad_clip)
    batch_size = _check_positive_int(batch_size, "batch_size")
    seed = _check_positive_int(seed, "seed", allow_zero=True)
    patience = _check_positive_int(patience, "patience")
    log_every = _check_positive_int(log_every, "log_every")
    if val_every is not None:
        val_every = _check_positive_int(val_every, "val_every")
    X, y = _as_data(X, y, model)
    device = torch.device(device)
    model.to(device)

    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = _split(X.shape[0], float(val_fraction), gen)
    n_train, dim = len(train_idx), X.shape[1]
    X_dev, y_dev = X.to(device), None if y is None else y.to(device)
    X_train, y_train = X_dev[train_idx.to(device)], None if y is None else y_dev[train_idx.to(device)]
    validator = None
    if len(val_idx):
        X_val, y_val = X_dev[val_idx.to(device)], None if y is None else y_dev[val_idx.to(device)]
        val_draws = objective.draw(len(val_idx), dim, torch.Generator().manual_seed(seed + 1), X.dtype)
        validator = functools.partial(_loss_on_draws, model, X_val, y_val, val_draws, objective,
                                      max(batch_size, 1024))

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = None if epochs is None else epochs * math.ceil(n_train / batch_size)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps) if schedule == "cosine" else None)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    loss_curve: list[tuple[int, float, float]] = []
    val_curve: list[tuple[int, float]] = []
    best_val, best_state, bad = math.inf, None, 0
    steps, rows, window_sum, window_n = 0, 0, torch.zeros((), dtype=torch.float64, device=device), 0
    stop_reason = ""
    model.train()
    _sync(device)
    t0 = time.perf_counter()

    def log_window() -> None:
        nonlocal window_sum, window_n
        mean = float(window_sum) / window_n
        if not math.isfinite(mean):
            raise FloatingPointError(f"the {objective.name} loss became non-finite ({mean}) by step {steps}; "
                                     f"lower lr (got {lr!r}) or set grad_clip")
        loss_curve.append((steps, time.perf_counter() - t0, mean))
        window_sum, window_n = torch.zeros_like(window_sum), 0

    def validate() -> bool:
        """Evaluate; keep the best weights; return whether patience ran out."""
        nonlocal best_val, best_state, bad
        val = validator()
        val_curve.append((steps, val))
        if val < best_val:
            best_val, best_state, bad = val, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
        return bad >= patience

    for idx, epoch_end in _batches(n_train, batch_size, gen):
        draws = tuple(d.to(device) for d in objective.draw(len(idx), dim, gen, X.dtype))
        idx = idx.to(device)
        x, t, target = objective.pair(X_train[idx], draws)
        v = _check_output(_call(model, x, t, None if y_train is None else y_train[idx]), target)
        loss = F.mse_loss(v, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        steps, rows = steps + 1, rows + len(idx)
        window_sum += loss.detach().to(torch.float64)
        window_n += 1
        if steps % log_every == 0:
            log_window()
        if validator is not None and (epoch_end if val_every is None else steps % val_every == 0) and validate():
            stop_reason = "patience"
        elif epochs is not None and rows >= epochs * n_train:
            stop_reason = "epochs"
        _sync(device)
        if not stop_reason and time_budget is not None and time.perf_counter() - t0 >= time_budget:
            stop_reason = "time_budget"
        if stop_reason:
            break

    if window_n:
        log_window()
    if validator is not None and (not val_curve or val_curve[-1][0] != steps):
        validate()  # the weights at the stop compete too
    seconds = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    logger.info("%s: %d steps, %.1f s, stop=%s, final train loss %.4g%s", objective.name, steps, seconds,
                stop_reason, loss_curve[-1][2], "" if validator is None else f", best val loss {best_val:.4g}")
    return TrainResult(
        model=model, seconds=seconds, steps=steps, epochs=rows / n_train, n_params=n_params,
        loss_curve=loss_curve, val_curve=val_curve, final_train_loss=loss_curve[-1][2], stop_reason=stop_reason,
        best_val_loss=None if validator is None else best_val, val_indices=val_idx, val_seed=seed + 1,
    )


def train_flow_matching(
    model: nn.Module,
    X: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray | None = None,
    *,
    time_budget: float | None = None,
    epochs: int | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: Literal["constant", "cosine"] = "constant",
    grad_clip: float | None = None,
    sigma: float = 0.0,
    seed: int = 0,
    val_fraction: float = 0.0,
    val_every: int | None = None,
    patience: int = 5,
    log_every: int = 50,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train ``model`` by conditional flow matching (torchcfm's loop, σ-width straight path) with AdamW.

    Each step: ``x₁`` = a minibatch of rows of ``X`` (shuffled each epoch), ``x₀ ~ N(0, I)``, ``t ~ U(0, 1)``,
    ``ε ~ N(0, I)`` (σ > 0), ``(x_t, u_t) = OTPath(σ).sample(x₀, x₁, t, ε)``, and the loss
    ``mean (v_θ(x_t, t, y) − u_t)²``. All of these draws come from one CPU generator seeded with ``seed``.

    Stopping (at least one of ``time_budget`` / ``epochs``; with both, whichever comes first):

    - ``time_budget``: stop after the first step at which the wall time since training began (validation
      included) reaches ``time_budget`` seconds — the time-matched comparison with a PIL fit.
    - ``epochs``: stop after that many passes over the training rows — the to-convergence comparison.
    - with ``val_fraction > 0``, a seeded ``val_fraction`` of the rows is held out and scored by
      :func:`flow_matching_loss` on draws fixed by ``seed + 1`` every ``val_every`` steps (default: at the end of
      each epoch) and once at the stop; training also stops when it has not improved for ``patience``
      evaluations, and the best-validation weights are restored.

    Defaults: ``lr = 1e-3`` with a constant schedule is torchcfm's MNIST recipe (Adam's default rate; its CIFAR
    U-Net uses 2e-4 with warm-up, which a much larger net needs); ``schedule="cosine"`` anneals from ``lr`` to 0
    over ``epochs`` epochs (so it needs ``epochs``). ``weight_decay = 0`` makes AdamW plain Adam.

    Args:
        model: ``model(x (n, D), t (n,)[, y (n,)]) -> (n, D)``, e.g. :class:`MLPVelocity` or
            :class:`ConvVelocity`. The caller builds and seeds it (``torch.manual_seed`` before construction);
            it is trained in place and moved to ``device``.
        X: ``(n, D)`` float data, e.g. images flattened and scaled to [−1, 1] by the caller.
        y: ``(n,)`` integer labels in ``[0, model.n_classes)`` for a conditional model, else ``None``.
        time_budget: seconds, or ``None``.
        epochs: int, or ``None``.
        batch_size: rows per step.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        schedule: ``"constant"`` or ``"cosine"``.
        grad_clip: clip the global gradient norm to this value, or ``None`` for no clipping.
        sigma: the path width σ (0: rectified flow).
        seed: seeds the split, the shuffling and every draw.
        val_fraction: in ``[0, 1)``; the held-out share of rows.
        val_every: steps between validation evaluations, or ``None`` for once per epoch.
        patience: validation evaluations without improvement before stopping.
        log_every: steps per ``loss_curve`` record.
        device: where to train.

    Returns:
        :class:`TrainResult` (alias :data:`FlowTrainResult`).
    """
    return _train(model, X, y, _FlowMatching(sigma), time_budget=time_budget, epochs=epochs,
                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule, grad_clip=grad_clip,
                  seed=seed, val_fraction=val_fraction, val_every=val_every, patience=patience,
                  log_every=log_every, device=device)


def train_ddpm(
    model: nn.Module,
    X: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray | None = None,
    *,
    alphas_cumprod: torch.Tensor | np.ndarray,
    time_budget: float | None = None,
    epochs: int | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: Literal["constant", "cosine"] = "constant",
    grad_clip: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
    val_every: int | None = None,
    patience: int = 5,
    log_every: int = 50,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train an ε-network ``model`` by DDPM's L_simple (Ho et al. 2020, Algorithm 1) with AdamW.

    Each step: ``x₀`` = a minibatch of rows of ``X`` (shuffled each epoch), ``t ~ U{0, …, T−1}``,
    ``ε ~ N(0, I)``, ``x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε``, and the loss ``mean (ε_θ(x_t, t/T, y) − ε)²``. The
    network is given the time as t/T ∈ [0, 1): :class:`MLPVelocity` and :class:`ConvVelocity` embed
    ``1000·t/T``, which for T = 1000 is the integer time step itself, as in DDPM's own network. All draws come from
    one CPU generator seeded with ``seed``; with ``val_fraction > 0`` the held-out rows are scored by
    :func:`ddpm_loss` on draws fixed by ``seed + 1``.

    Stopping, validation, defaults and every option other than ``alphas_cumprod`` are those of
    :func:`train_flow_matching` (which has ``sigma`` in place of ``alphas_cumprod``). DDPM's own recipe trains
    for far longer at ``lr = 2e-4`` on a 35M-parameter U-Net; the small networks here take 1e-3.

    Args:
        model: ``model(x (n, D), t (n,) in [0, 1)[, y (n,)]) -> ε̂ (n, D)``, e.g. :class:`MLPVelocity` or
            :class:`ConvVelocity` used as an ε-network; built and seeded by the caller, trained in place and
            moved to ``device``.
        X: ``(n, D)`` float data, e.g. images flattened and scaled to [−1, 1] by the caller.
        y: ``(n,)`` integer labels in ``[0, model.n_classes)`` for a conditional model, else ``None``.
        alphas_cumprod: ``(T,)`` the schedule ᾱ_t for t = 0..T−1, in (0, 1] and strictly decreasing (e.g. a
            scheduler's ``alphas_cumprod``).
        time_budget, epochs, batch_size, lr, weight_decay, schedule, grad_clip, seed, val_fraction, val_every,
            patience, log_every, device: as in :func:`train_flow_matching`.

    Returns:
        :class:`TrainResult`.
    """
    return _train(model, X, y, _DDPM(alphas_cumprod), time_budget=time_budget, epochs=epochs,
                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule, grad_clip=grad_clip,
                  seed=seed, val_fraction=val_fraction, val_every=val_every, patience=patience,
                  log_every=log_every, device=device)


# -------------------------------------------------------------------------------------------------------- sampling
def _fixed_labels(model: nn.Module, y: object) -> torch.Tensor | None:
    """Validate the labels a sampler fixes for every call: ``(n,)`` integers on the model's device, or ``None``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    n_classes = int(getattr(model, "n_classes", 0) or 0)
    if y is None:
        if n_classes:
            raise ValueError(f"y is required: the model is conditional (n_classes={n_classes}), got None")
        return None
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be an integer tensor of shape (n,), got {tuple(y.shape)} {y.dtype}")
    return y.long().to(_model_device(model))


def _check_rows(x: torch.Tensor, y: torch.Tensor | None) -> None:
    if y is not None and x.shape[0] != y.shape[0]:
        raise ValueError(f"x must have {y.shape[0]} rows to match the fixed labels y, got {tuple(x.shape)}")


def model_velocity(model: nn.Module, y: torch.Tensor | np.ndarray | None = None
                   ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The ODE samplers' interface to a trained model: ``velocity(x (n, D), t (n,)) -> (n, D)``.

    Puts ``model`` in eval mode; each call runs under ``torch.no_grad()``. For a conditional model ``y`` is a
    fixed ``(n,)`` integer label tensor (one label per sample being generated) and every call must pass ``n`` rows.
    """
    y = _fixed_labels(model, y)
    model.eval()

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_rows(x, y)
        with torch.no_grad():
            return _call(model, x, t, y)

    return velocity


def model_noise(model: nn.Module, y: torch.Tensor | np.ndarray | None = None, *, num_train_timesteps: int
                ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The diffusion samplers' interface to a trained ε-network: ``noise(x (n, D), timesteps (n,) long) -> ε̂ (n, D)``.

    ``timesteps`` are DDPM time steps in [0, T) (an int is taken for every row); the network is called at
    t/T, as in :func:`train_ddpm`. Puts ``model`` in eval mode; each call runs under ``torch.no_grad()``. For a
    conditional model ``y`` is a fixed ``(n,)`` integer label tensor (one label per sample being generated) and
    every call must pass ``n`` rows.

    Args:
        model: an ε-network trained by :func:`train_ddpm`.
        y: ``(n,)`` fixed labels for a conditional model, else ``None``.
        num_train_timesteps: T, the length of the schedule it was trained with.
    """
    y = _fixed_labels(model, y)
    T = _check_positive_int(num_train_timesteps, "num_train_timesteps")
    model.eval()

    def noise(x: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (n, D), got {type(x).__name__}")
        _check_rows(x, y)
        steps = check_timesteps(timesteps, x.shape[0], T).to(x.device)
        with torch.no_grad():
            return _call(model, x, _model_time(steps, T, x.dtype), y)

    return noise
