"""The exact marginal velocity of the σ = 0 OT path when p_data is the empirical distribution of a training set.

Notation (as :mod:`pilearn.generative._paths`): training points x₁⁽ⁱ⁾, i = 1..N; x₀ ~ N(0, I); t ∈ [0, 1].

Given x at time t < 1, x = (1 − t)·x₀ + t·x₁⁽ⁱ⁾ has density N(x; t·x₁⁽ⁱ⁾, (1 − t)²I) under training point i, so

    p(i | x, t) = softmax_i( −‖x − t·x₁⁽ⁱ⁾‖² / (2(1 − t)²) )
    x̂₁(x, t)   = E[x₁ | x, t] = Σ_i p(i | x, t)·x₁⁽ⁱ⁾                       (the ideal denoiser)
    v(x, t)     = E[x₁ − x₀ | x, t] = (x̂₁(x, t) − x) / (1 − t)               (since x₀ = (x − t·x₁)/(1 − t))

This is the minimiser of the flow-matching loss over *all* functions, for this training set: a model that fits it
perfectly memorises, since integrating v from noise lands on a training point (the posterior collapses onto the
nearest one as t → 1). It is the reference a learned field is compared to (Bertrand et al. 2025, "On the closed-form
of flow matching"; Kamb & Ganguli 2024 for the diffusion analogue).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ._paths import check_time

__all__ = ["EmpiricalVelocityField"]


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


class EmpiricalVelocityField:
    """Exact marginal velocity ``v(x, t)`` of the σ = 0 OT path to the empirical distribution of ``X_train``.

    The math is in the module docstring. Calling the object is :meth:`velocity`, so it plugs straight into
    :func:`pilearn.generative.integrate`.

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

    def __init__(self, X_train: torch.Tensor | np.ndarray, y_train: torch.Tensor | np.ndarray | None = None,
                 *, chunk_size: int = 4096) -> None:
        self.X_train = _as_float64_matrix(X_train, "X_train")  # (N, D)
        n_train = self.X_train.shape[0]
        self.y_train = None if y_train is None else _as_labels(y_train, n_train, "y_train").to(self.X_train.device)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self.chunk_size = int(chunk_size)
        self._sq_norms = (self.X_train**2).sum(dim=1)  # (N,) ‖x₁⁽ⁱ⁾‖²
        self.classes = None if self.y_train is None else torch.unique(self.y_train)

    @property
    def n_train(self) -> int:
        return self.X_train.shape[0]

    @property
    def dim(self) -> int:
        return self.X_train.shape[1]

    def denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | np.ndarray | int | None = None
                ) -> torch.Tensor:
        """Return the posterior mean x̂₁ = E[x₁ | x_t = x] ``(n, D)`` for ``x (n, D)`` and ``t (n,)`` in [0, 1].

        With ``y`` (an int, or ``(n,)`` labels, one per query row) the posterior is restricted to training rows
        of that label: x̂₁ = Σ_{i: yᵢ = y} p(i | x, t)·x₁⁽ⁱ⁾ / Σ_{i: yᵢ = y} p(i | x, t). The result has the dtype
        and device of ``x``.
        """
        x64, tt, labels = self._check_query(x, t, y)
        return self._posterior_mean(x64, tt, labels).to(dtype=x.dtype, device=x.device)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | np.ndarray | int | None = None
                 ) -> torch.Tensor:
        """Return v(x, t) = (x̂₁(x, t) − x)/(1 − t) ``(n, D)`` for ``x (n, D)``, ``t (n,)`` (clamped to ``T_MAX``).

        ``y`` conditions on a class as in :meth:`denoise`. The result has the dtype and device of ``x``.
        """
        x64, tt, labels = self._check_query(x, t, y)
        x1_hat = self._posterior_mean(x64, tt, labels)
        return ((x1_hat - x64) / (1 - tt)[:, None]).to(dtype=x.dtype, device=x.device)

    __call__ = velocity

    def _check_query(self, x: object, t: object, y: object
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Validate a query; return x (n, D) and clamped t (n,) in float64 on the training device, and labels."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (n, {self.dim}), got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x must be finite, got NaN or inf entries")
        n = x.shape[0]
        t = check_time(t, n)
        device = self.X_train.device
        tt = t.to(device=device, dtype=torch.float64).clamp(max=self.T_MAX)
        return x.to(device=device, dtype=torch.float64), tt, self._check_labels(y, n)

    def _check_labels(self, y: object, n: int) -> torch.Tensor | None:
        if y is None:
            return None
        if self.y_train is None:
            raise ValueError("y was given but the field has no labels: build it with "
                             "EmpiricalVelocityField(X_train, y_train)")
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

    def _posterior_mean(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Σ_i softmax_i(logit) x₁⁽ⁱ⁾ over the (label-restricted) training set, streamed over chunks.

        logit_i = −‖x − t x₁⁽ⁱ⁾‖²/(2(1−t)²) = (t·x·x₁⁽ⁱ⁾ − t²‖x₁⁽ⁱ⁾‖²/2)/(1−t)² + (a term constant in i, dropped).
        """
        n = x.shape[0]
        inv_var = 1.0 / (1 - t) ** 2  # (n,)
        m = torch.full((n,), -torch.inf, dtype=torch.float64, device=x.device)  # running max of the logits
        s = torch.zeros(n, dtype=torch.float64, device=x.device)  # Σ exp(logit − m)
        acc = torch.zeros_like(x)  # (n, D) Σ exp(logit − m)·x₁⁽ⁱ⁾
        for start in range(0, self.n_train, self.chunk_size):
            X = self.X_train[start:start + self.chunk_size]  # (c, D)
            logits = (t[:, None] * (x @ X.T) - 0.5 * (t**2)[:, None] * self._sq_norms[start:start + X.shape[0]])
            logits = logits * inv_var[:, None]  # (n, c)
            if labels is not None:
                keep = labels[:, None] == self.y_train[None, start:start + X.shape[0]]
                logits = logits.masked_fill(~keep, -torch.inf)
            m_new = torch.maximum(m, logits.max(dim=1).values)
            shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # all -inf so far: 0
            w = torch.exp(logits - shift[:, None])  # (n, c), 0 for masked rows
            rescale = torch.exp(m - shift)  # 0 while m = -inf
            s = s * rescale + w.sum(dim=1)
            acc = acc * rescale[:, None] + w @ X
            m = m_new
        return acc / s[:, None]
