"""Exact optimal denoisers of the empirical distribution of a training set: the memorization references.

Both generative processes here corrupt a training point by scaling it and adding Gaussian noise, so one posterior
serves both. With training points x⁽ⁱ⁾, i = 1..N, and a query x drawn as x = a·x⁽ⁱ⁾ + s·z, z ~ N(0, I), for an
unknown i (uniform prior), x has density N(x; a·x⁽ⁱ⁾, s²I) under point i and

    p(i | x)  = softmax_i( −‖x − a·x⁽ⁱ⁾‖² / (2s²) )
    x̂(x)     = E[x⁽ⁱ⁾ | x] = Σ_i p(i | x)·x⁽ⁱ⁾                               (the ideal denoiser)

computed, streamed over the training set, by one method (``_EmpiricalPosterior._posterior_mean``) for a per-row
scale ``a (n,)`` and standard deviation ``s (n,)``; the two classes differ only in how they set a and s.

**Flow matching** (:class:`EmpiricalVelocityField`; notation of :mod:`pilearn.generative._paths`: data x₁⁽ⁱ⁾,
noise x₀ ~ N(0, I), t ∈ [0, 1]): x = (1 − t)·x₀ + t·x₁⁽ⁱ⁾, so a = t, s = 1 − t, and

    x̂₁(x, t) = Σ_i p(i | x, t)·x₁⁽ⁱ⁾,      v(x, t) = E[x₁ − x₀ | x, t] = (x̂₁(x, t) − x) / (1 − t)

(since x₀ = (x − t·x₁)/(1 − t)). This minimises the flow-matching loss over *all* functions, for this training set
(Bertrand et al. 2025, "On the closed-form of flow matching").

**Diffusion** (:class:`EmpiricalDenoiser`; DDPM's variance-preserving forward process, Ho et al. 2020, with
ᾱ_t = ``alphas_cumprod[t]`` for integer t = 0..T−1): x_t = √ᾱ_t·x₀⁽ⁱ⁾ + √(1 − ᾱ_t)·ε, so a = √ᾱ_t,
s = √(1 − ᾱ_t), and

    x̂₀(x_t, t) = Σ_i p(i | x_t, t)·x₀⁽ⁱ⁾,    ε̂(x_t, t) = E[ε | x_t, t] = (x_t − √ᾱ_t·x̂₀(x_t, t)) / √(1 − ᾱ_t)

(since ε = (x_t − √ᾱ_t·x₀)/√(1 − ᾱ_t)). ε̂ minimises DDPM's L_simple E‖ε_θ(x_t, t) − ε‖² over all functions for
this training set: the "ideal denoiser" whose reverse process only ever reproduces training points (Kamb & Ganguli
2024, "An analytic theory of creativity in convolutional diffusion models").

A model that fits either optimum perfectly memorises: sampling from noise lands on a training point, since the
posterior collapses onto the nearest one as the noise vanishes. Each is the reference a learned model is compared
to. With class labels the posterior is restricted to the rows of the queried class.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ._paths import check_time

__all__ = ["EmpiricalDenoiser", "EmpiricalVelocityField", "check_alphas_cumprod", "check_timesteps"]


def _as_float64_matrix(X: object, name: str) -> torch.Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray of shape (N, D), got {type(X).__name__}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N, D >= 1, got {tuple(X.shape)}")
    if X.dtype == torch.bool or X.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {X.dtype}")
    X = X.to(torch.float64)
    if not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    return X


def _as_labels(y: object, n: int, name: str) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray of shape ({n},), got {type(y).__name__}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    return y.to(torch.int64)


def check_alphas_cumprod(alphas_cumprod: object, name: str = "alphas_cumprod") -> torch.Tensor:
    """Validate a DDPM noise schedule ᾱ ``(T,)``; return it as a float64 tensor (on its device).

    ᾱ_t = Π_{s ≤ t} (1 − β_s) with every β_s in (0, 1), so the values must lie in (0, 1] and strictly decrease.
    """
    if isinstance(alphas_cumprod, np.ndarray):
        alphas_cumprod = torch.from_numpy(alphas_cumprod)
    if not isinstance(alphas_cumprod, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D torch.Tensor (or numpy.ndarray) of shape (T,), "
                        f"got {type(alphas_cumprod).__name__}")
    if alphas_cumprod.ndim != 1 or alphas_cumprod.shape[0] == 0:
        raise ValueError(f"{name} must have shape (T,) with T >= 1, got {tuple(alphas_cumprod.shape)}")
    if not alphas_cumprod.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {alphas_cumprod.dtype}")
    abar = alphas_cumprod.to(torch.float64)
    outside = ~((abar > 0) & (abar <= 1))  # also True for NaN
    if bool(outside.any()):
        i = int(outside.nonzero()[0])
        raise ValueError(f"{name} must lie in (0, 1], got {abar[i].item()!r} at index {i}")
    rising = abar[1:] >= abar[:-1]
    if bool(rising.any()):
        i = int(rising.nonzero()[0])
        raise ValueError(f"{name} must be strictly decreasing (ᾱ_t = Π_{{s<=t}} (1 − β_s), β_s > 0: betas are "
                         f"not alphas_cumprod), got {name}[{i}] = {abar[i].item()!r} <= "
                         f"{name}[{i + 1}] = {abar[i + 1].item()!r}")
    return abar


def check_timesteps(timesteps: object, n: int, num_train_timesteps: int, *, name: str = "timesteps"
                    ) -> torch.Tensor:
    """Validate DDPM time-step indices: an int or a 0-d integer tensor (for every row) or an ``(n,)`` integer
    tensor or array, in [0, T); return them as an ``(n,)`` int64 CPU tensor (on the device given)."""
    T = num_train_timesteps
    if isinstance(timesteps, numbers.Integral) and not isinstance(timesteps, bool):
        steps = torch.full((n,), int(timesteps), dtype=torch.int64)
    else:
        if isinstance(timesteps, np.ndarray):
            timesteps = torch.from_numpy(timesteps)
        if not isinstance(timesteps, torch.Tensor):
            raise TypeError(f"{name} must be an int or an integer tensor of shape ({n},), "
                            f"got {type(timesteps).__name__}")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(n)
        if timesteps.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(timesteps.shape)}")
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer time-step indices, got dtype {timesteps.dtype}")
        steps = timesteps.to(torch.int64)
    outside = (steps < 0) | (steps >= T)
    if bool(outside.any()):
        raise ValueError(f"{name} must lie in [0, {T - 1}] (T = {T} train time steps), got "
                         f"{steps[outside][0].item()!r}")
    return steps


class _EmpiricalPosterior:
    """The training set, its labels, the query checks and the posterior mean shared by the two empirical optima."""

    _kind = "model"  # how errors name the object

    def __init__(self, X_train: torch.Tensor | np.ndarray, y_train: torch.Tensor | np.ndarray | None,
                 chunk_size: int) -> None:
        self.X_train = _as_float64_matrix(X_train, "X_train")  # (N, D)
        n_train = self.X_train.shape[0]
        self.y_train = None if y_train is None else _as_labels(y_train, n_train, "y_train").to(self.X_train.device)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self.chunk_size = int(chunk_size)
        self._sq_norms = (self.X_train**2).sum(dim=1)  # (N,) ‖x⁽ⁱ⁾‖²
        self.classes = None if self.y_train is None else torch.unique(self.y_train)

    @property
    def n_train(self) -> int:
        return self.X_train.shape[0]

    @property
    def dim(self) -> int:
        return self.X_train.shape[1]

    def _posterior_mean(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None
                        ) -> torch.Tensor:
        """Σ_i softmax_i(logit_i) x⁽ⁱ⁾ ``(n, D)`` over the (label-restricted) training rows, streamed in chunks.

        logit_i = −‖x − a·x⁽ⁱ⁾‖²/(2s²) = (a·x·x⁽ⁱ⁾ − a²‖x⁽ⁱ⁾‖²/2)/s² + (a term constant in i, dropped), per query
        row, for ``x (n, D)``, scale ``a (n,)`` and standard deviation ``s (n,)``, all float64 on the training
        device. A running max and rescaled sums (a streaming log-sum-exp) keep memory at O(n × chunk_size + n × D).
        """
        n = x.shape[0]
        inv_var = 1.0 / s**2  # (n,)
        m = torch.full((n,), -torch.inf, dtype=torch.float64, device=x.device)  # running max of the logits
        total = torch.zeros(n, dtype=torch.float64, device=x.device)  # Σ exp(logit − m)
        acc = torch.zeros_like(x)  # (n, D) Σ exp(logit − m)·x⁽ⁱ⁾
        for start in range(0, self.n_train, self.chunk_size):
            X = self.X_train[start:start + self.chunk_size]  # (c, D)
            logits = (a[:, None] * (x @ X.T) - 0.5 * (a**2)[:, None] * self._sq_norms[start:start + X.shape[0]])
            logits = logits * inv_var[:, None]  # (n, c)
            if labels is not None:
                keep = labels[:, None] == self.y_train[None, start:start + X.shape[0]]
                logits = logits.masked_fill(~keep, -torch.inf)
            m_new = torch.maximum(m, logits.max(dim=1).values)
            shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # all -inf so far: 0
            w = torch.exp(logits - shift[:, None])  # (n, c), 0 for masked rows
            rescale = torch.exp(m - shift)  # 0 while m = -inf
            total = total * rescale + w.sum(dim=1)
            acc = acc * rescale[:, None] + w @ X
            m = m_new
        return acc / total[:, None]

    def _check_x(self, x: object) -> torch.Tensor:
        """Validate queries ``x (n, D)``; return them in float64 on the training device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (n, {self.dim}), got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x must be finite, got NaN or inf entries")
        return x.to(device=self.X_train.device, dtype=torch.float64)

    def _check_labels(self, y: object, n: int) -> torch.Tensor | None:
        if y is None:
            return None
        if self.y_train is None:
            raise ValueError(f"y was given but the {self._kind} has no labels: build it with "
                             f"{type(self).__name__}(X_train, y_train)")
        if isinstance(y, numbers.Integral) and not isinstance(y, bool):
            labels = torch.full((n,), int(y), dtype=torch.int64)
        else:
            labels = _as_labels(y, n, "y")
        labels = labels.to(self.y_train.device)
        missing = labels[~torch.isin(labels, self.classes)]
        if missing.numel():
            raise ValueError(f"y must hold labels present in y_train {self.classes.tolist()}, got "
                             f"{missing[0].item()!r}")
        return labels


class EmpiricalVelocityField(_EmpiricalPosterior):
    """Exact marginal velocity ``v(x, t)`` of the σ = 0 OT path to the empirical distribution of ``X_train``.

    The math is in the module docstring (a = t, s = 1 − t). Calling the object is :meth:`velocity`, so it plugs
    straight into :func:`pilearn.generative.integrate`.

    Computation is in float64 on the device of ``X_train``, streaming over the training set in chunks of
    ``chunk_size`` rows with a running log-sum-exp, so memory is O(n × chunk_size + n × D) for a batch of ``n``
    queries (60 000 × 784 MNIST is fine). Times are clamped to at most ``T_MAX = 1 − 1e-4``: at t = 1 the field
    is 0/0, its limit along a trajectory is set by the nearest training point, and the clamp keeps the
    posterior and the division by ``1 − t`` finite.

    Args:
        X_train: ``(N, D)`` training points x₁⁽ⁱ⁾ (tensor or array, any real dtype; stored as float64).
        y_train: optional ``(N,)`` integer class labels, enabling class-conditional queries.
        chunk_size: training rows per chunk, an int >= 1.
    """

    T_MAX: float = 1.0 - 1e-4
    _kind = "field"

    def __init__(self, X_train: torch.Tensor | np.ndarray, y_train: torch.Tensor | np.ndarray | None = None,
                 *, chunk_size: int = 4096) -> None:
        super().__init__(X_train, y_train, chunk_size)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | np.ndarray | int | None = None
                ) -> torch.Tensor:
        """Return the posterior mean x̂₁ = E[x₁ | x_t = x] ``(n, D)`` for ``x (n, D)`` and ``t (n,)`` in [0, 1].

        With ``y`` (an int, or ``(n,)`` labels, one per query row) the posterior is restricted to training rows
        of that label: x̂₁ = Σ_{i: yᵢ = y} p(i | x, t)·x₁⁽ⁱ⁾ / Σ_{i: yᵢ = y} p(i | x, t). The result has the dtype
        and device of ``x``.
        """
        x64, tt, labels = self._check_query(x, t, y)
        return self._posterior_mean(x64, tt, 1 - tt, labels).to(dtype=x.dtype, device=x.device)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | np.ndarray | int | None = None
                 ) -> torch.Tensor:
        """Return v(x, t) = (x̂₁(x, t) − x)/(1 − t) ``(n, D)`` for ``x (n, D)``, ``t (n,)`` (clamped to ``T_MAX``).

        ``y`` conditions on a class as in :meth:`denoise`. The result has the dtype and device of ``x``.
        """
        x64, tt, labels = self._check_query(x, t, y)
        x1_hat = self._posterior_mean(x64, tt, 1 - tt, labels)
        return ((x1_hat - x64) / (1 - tt)[:, None]).to(dtype=x.dtype, device=x.device)

    __call__ = velocity

    def _check_query(self, x: object, t: object, y: object
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Validate a query; return x (n, D) and clamped t (n,) in float64 on the training device, and labels."""
        x64 = self._check_x(x)
        n = x64.shape[0]
        t = check_time(t, n)
        tt = t.to(device=self.X_train.device, dtype=torch.float64).clamp(max=self.T_MAX)
        return x64, tt, self._check_labels(y, n)


class EmpiricalDenoiser(_EmpiricalPosterior):
    """Exact optimal DDPM denoiser ``x̂₀(x_t, t)`` and noise predictor ``ε̂(x_t, t)`` of the empirical distribution.

    The math is in the module docstring (a = √ᾱ_t, s = √(1 − ᾱ_t)): ε̂ is the minimiser of DDPM's L_simple over
    all functions for ``X_train`` (Kamb & Ganguli 2024), the memorization reference for a trained ε-network.
    Calling the object is :meth:`predict_noise`, the interface of a trained ε-network.

    Computation is in float64 on the device of ``X_train``, streamed over the training set in chunks of
    ``chunk_size`` rows (as :class:`EmpiricalVelocityField`). ``1 − ᾱ_t`` is floored at ``VAR_MIN = 1e-12`` (far
    below any practical schedule's smallest noise, DDPM's 1e-4), so a step with ᾱ_t = 1 gives the nearest-point
    limit of x̂₀ and a finite ε̂ instead of 0/0.

    Args:
        X_train: ``(N, D)`` training points x₀⁽ⁱ⁾ (tensor or array, any real dtype; stored as float64).
        y_train: optional ``(N,)`` integer class labels, enabling class-conditional queries.
        alphas_cumprod: ``(T,)`` the schedule ᾱ_t for t = 0..T−1, in (0, 1] and strictly decreasing; stored as
            float64 on the device of ``X_train``.
        chunk_size: training rows per chunk, an int >= 1.
    """

    VAR_MIN: float = 1e-12
    _kind = "denoiser"

    def __init__(self, X_train: torch.Tensor | np.ndarray, y_train: torch.Tensor | np.ndarray | None = None,
                 *, alphas_cumprod: torch.Tensor | np.ndarray, chunk_size: int = 4096) -> None:
        super().__init__(X_train, y_train, chunk_size)
        self.alphas_cumprod = check_alphas_cumprod(alphas_cumprod).to(self.X_train.device)  # (T,)

    @property
    def num_train_timesteps(self) -> int:
        """T, the length of the schedule."""
        return self.alphas_cumprod.shape[0]

    def denoise(self, x: torch.Tensor, timesteps: torch.Tensor | np.ndarray | int,
                y: torch.Tensor | np.ndarray | int | None = None) -> torch.Tensor:
        """Return x̂₀ = E[x₀ | x_t = x] ``(n, D)`` for ``x (n, D)`` and ``timesteps`` (an int or ``(n,)``) in [0, T).

        With ``y`` (an int, or ``(n,)`` labels, one per query row) the posterior is restricted to training rows
        of that label. The result has the dtype and device of ``x``.
        """
        x64, a, s, labels = self._check_query(x, timesteps, y)
        return self._posterior_mean(x64, a, s, labels).to(dtype=x.dtype, device=x.device)

    def predict_noise(self, x: torch.Tensor, timesteps: torch.Tensor | np.ndarray | int,
                      y: torch.Tensor | np.ndarray | int | None = None) -> torch.Tensor:
        """Return ε̂ = (x − √ᾱ_t·x̂₀)/√(1 − ᾱ_t) ``(n, D)``; arguments as in :meth:`denoise`.

        The result has the dtype and device of ``x``.
        """
        x64, a, s, labels = self._check_query(x, timesteps, y)
        x0_hat = self._posterior_mean(x64, a, s, labels)
        return ((x64 - a[:, None] * x0_hat) / s[:, None]).to(dtype=x.dtype, device=x.device)

    __call__ = predict_noise

    def _check_query(self, x: object, timesteps: object, y: object
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Validate a query; return x (n, D), a = √ᾱ_t (n,), s = √(1 − ᾱ_t) (n,) in float64, and labels."""
        x64 = self._check_x(x)
        n = x64.shape[0]
        steps = check_timesteps(timesteps, n, self.num_train_timesteps).to(self.X_train.device)
        abar = self.alphas_cumprod[steps]  # (n,)
        return x64, abar.sqrt(), (1 - abar).clamp(min=self.VAR_MIN).sqrt(), self._check_labels(y, n)
