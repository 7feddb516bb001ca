"""Probability paths of flow matching: how a training pair (x₀, x₁) and a time t become (x_t, u_t).

Notation (Lipman et al. 2023, "Flow Matching for Generative Modeling"; Tong et al. 2024, torchcfm):

    x₀ ~ N(0, I)   source (noise)         x₁ ~ p_data   target (data)         t ∈ [0, 1]
    x_t = (1 − t)·x₀ + t·x₁ + σ·ε,  ε ~ N(0, I)         (σ = 0: the straight "rectified" / OT path)
    u_t = x₁ − x₀                                        the conditional velocity regressed onto

The marginal velocity v(x, t) = E[u_t | x_t = x] is what a model learns by least squares on (x_t, u_t);
integrating dx/dt = v(x, t) from t = 0 carries N(0, I) to the data distribution (to p_data ⊛ N(0, σ²) for σ > 0).
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["OTPath", "check_time"]


def check_time(t: object, n: int, *, name: str = "t") -> torch.Tensor:
    """Validate times: a float tensor of shape ``(n,)`` with every value in ``[0, 1]``; return it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({n},), got {type(t).__name__}")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if n and not bool(((t >= 0) & (t <= 1)).all()):  # also False for NaN
        bad = t[~((t >= 0) & (t <= 1))][0].item()
        raise ValueError(f"{name} must lie in [0, 1], got a value {bad!r}")
    return t


class OTPath:
    """The straight (optimal-transport) conditional path, optionally with Gaussian width ``sigma``.

    Args:
        sigma: ``>= 0``, the constant standard deviation of the path around the straight line
            (torchcfm's ``ConditionalFlowMatcher(sigma)``); 0 gives rectified flow.
    """

    def __init__(self, sigma: float = 0.0) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not 0 <= sigma < math.inf:
            raise ValueError(f"sigma must be a finite float >= 0, got {sigma!r}")
        self.sigma = float(sigma)

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
               eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x_t, u_t)``, both ``(n, D)``, for ``x0, x1 (n, D)`` and ``t (n,)``.

        ``eps (n, D)`` is the path noise; it is needed (and only used) when ``sigma > 0``.
        """
        if x0.shape != x1.shape or x0.ndim != 2:
            raise ValueError(f"x0 and x1 must both have shape (n, D), got {tuple(x0.shape)} and {tuple(x1.shape)}")
        t = check_time(t, x0.shape[0])
        tt = t.to(x0.dtype)[:, None]
        xt = (1 - tt) * x0 + tt * x1
        if self.sigma > 0:
            if eps is None or eps.shape != x0.shape:
                raise ValueError(f"eps must have shape {tuple(x0.shape)} when sigma > 0, got "
                                 f"{None if eps is None else tuple(eps.shape)}")
            xt = xt + self.sigma * eps
        return xt, x1 - x0

    def __repr__(self) -> str:
        return f"OTPath(sigma={self.sigma})"
