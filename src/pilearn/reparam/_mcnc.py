"""MCNC: parameters on a seeded nonlinear manifold wrapped around the sphere (Thrash et al., ICLR 2025)."""

from __future__ import annotations

import math
import numbers
from typing import Literal, Sequence

import torch
from torch import nn

from ._basis import _check_positive_int, _check_seed, basis_rows, derive_seed
from ._flat import FlatReparam, default_init_bounds

__all__ = ["MCNC", "SineGenerator"]


class SineGenerator(nn.Module):
    """A frozen, seeded MLP with sine activations φ: R^k → S^{d-1}, applied row-wise.

        h₀ = α,   hₗ = sin(ω (Wₗ hₗ₋₁ + cₗ))  (l = 1..L),   φ(α) = W_out h_L,   u = φ(α) / ‖φ(α)‖

    Weights are U[-√(3/fan_in), √(3/fan_in)) (variance 1/fan_in, so every pre-activation has the variance
    of its input), hidden biases cₗ are U[-π, π) (random phases), and the output layer has no bias. All
    are drawn from ``derive_seed(seed, "mcnc-generator", l)`` with the uniform basis generator, so they
    are the same bits on every machine; they are non-persistent buffers, never stored.

    ω sets how tightly the k-dimensional manifold wraps the sphere: near-linear for small ω, many folds
    for large ω. With no hidden layers φ is a random linear map and u sweeps a great k-sphere.

    Args:
        k: input dimension.
        d: output dimension (the segment size).
        hidden: widths of the sine layers.
        omega: the sine frequency ω.
        seed: generator seed.
    """

    def __init__(self, k: int, d: int, *, hidden: Sequence[int], omega: float, seed: int) -> None:
        super().__init__()
        self.k, self.d, self.hidden, self.omega = k, d, tuple(hidden), float(omega)
        widths = (k, *self.hidden, d)
        for l, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            rows = basis_rows(derive_seed(seed, "mcnc-generator", l), 0, fan_out, fan_in)
            self.register_buffer(f"weight{l}", rows * math.sqrt(3.0 / fan_in), persistent=False)
            if l < len(self.hidden):  # a random phase per hidden unit
                phases = basis_rows(derive_seed(seed, "mcnc-phase", l), 0, 1, fan_out)[0]
                self.register_buffer(f"bias{l}", phases * math.pi, persistent=False)

    def raw(self, alpha: torch.Tensor) -> torch.Tensor:
        """φ(α) (n, d) before normalization, for α (n, k)."""
        h = alpha
        for l in range(len(self.hidden)):
            w, c = getattr(self, f"weight{l}"), getattr(self, f"bias{l}")
            h = torch.sin(self.omega * (h @ w.to(h.dtype).T + c.to(h.dtype)))
        return h @ getattr(self, f"weight{len(self.hidden)}").to(h.dtype).T

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        """u = φ(α)/‖φ(α)‖ (n, d) on the unit sphere, for α (n, k)."""
        return _normalize(self.raw(alpha))


def _normalize(phi: torch.Tensor) -> torch.Tensor:
    return phi / phi.norm(dim=1, keepdim=True).clamp_min(torch.finfo(phi.dtype).tiny)


class MCNC(FlatReparam):
    """Manifold-Constrained Neural Compression: each segment of θ is a point of a random k-manifold.

    Notation (paper → code)::

        θ ∈ R^D            trainable parameters, flattened, cut into S = ⌈D/d⌉ segments of d = segment_size
                           (the last one zero-padded)                                      theta()
        θ₀                 seeded default init of the module (base="init"), or 0 (base="zero")  self.theta0
        φ: R^k → S^{d-1}   frozen sine generator, shared by all segments                    self.generator
        αₛ ∈ R^k, βₛ ∈ R   learned: a point of the manifold and an amplitude per segment     self.alpha, self.beta
        θₛ = θ₀ₛ + βₛ φ(αₛ)

    Choices (the paper's code was not at hand; these are ours, stated so they can be ablated):

    * θ₀ is a default-initialized network drawn from the seed with the same per-layer bounds PRANC uses
      (U(±1/√fan_in) for weights and biases, U(±1) for normalization parameters): regenerated, never stored.
    * φ: ``hidden`` sine layers, weights of variance 1/fan_in, random phases, frequency ``omega`` (see
      :class:`SineGenerator`). φ's output lies in the span of its last weight matrix (dimension
      ``hidden[-1]``), so the width bounds how much of the sphere a segment can reach. ω = 4 by default: on
      a toy teacher–student sweep (ω ∈ {0.5, 1, 2, 4, 8, 30}, widths 64 and 256, Adam), ω ∈ [2, 4] trained
      best, ω ≤ 1 behaved like a nearly linear map and ω = 30 failed to train.
    * α is initialized U[-1, 1)^k from the seed (the paper samples α uniformly in a box [-L, L]^k).
    * β: with ``base="init"`` β = 0, so the network starts exactly at θ₀ (as LoRA starts at its base); the
      first step moves β, after which α receives gradients. With ``base="zero"`` βₛ = ‖θ_initₛ‖, so the
      network starts on the manifold at the norm of a default init, segment by segment.

    Storage. S·(k + 1) learned numbers plus the module's persistent buffers (:attr:`n_stored`).

    Args:
        module: any ``nn.Module``; taken over in place.
        k: manifold dimension per segment.
        segment_size: d, the length of a segment of θ.
        seed: seeds θ₀, φ and the initial α.
        hidden: widths of φ's sine layers.
        omega: φ's sine frequency ω.
        base: ``"init"`` (θ = θ₀ + …) or ``"zero"`` (θ = …).
    """

    def __init__(
        self,
        module: nn.Module,
        k: int,
        segment_size: int,
        *,
        seed: int = 0,
        hidden: Sequence[int] = (256, 256),
        omega: float = 4.0,
        base: Literal["init", "zero"] = "init",
    ) -> None:
        k = _check_positive_int("k", k)
        segment_size = _check_positive_int("segment_size", segment_size)
        seed = _check_seed(seed)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of positive ints, got {hidden!r}")
        hidden = tuple(_check_positive_int(f"hidden[{i}]", h) for i, h in enumerate(hidden))
        if isinstance(omega, bool) or not isinstance(omega, numbers.Real) or not (math.isfinite(omega) and omega > 0):
            raise ValueError(f"omega must be a finite float > 0, got {omega!r}")
        if base not in ("init", "zero"):
            raise ValueError(f"base must be 'init' or 'zero', got {base!r}")
        super().__init__(module)
        self.k, self.segment_size, self.seed, self.base = k, segment_size, seed, base
        self.n_segments = math.ceil(self.n_params / segment_size)
        device, dtype = self.device, self.param_dtype
        self.generator = SineGenerator(k, segment_size, hidden=hidden, omega=float(omega), seed=seed).to(device)

        bounds = default_init_bounds(module, list(self.specs))
        theta_init = (basis_rows(derive_seed(seed, "mcnc-init"), 0, 1, self.n_params)[0] * bounds).to(dtype)
        self.register_buffer("theta0", theta_init.to(device) if base == "init" else None, persistent=False)
        alpha = basis_rows(derive_seed(seed, "mcnc-alpha"), 0, self.n_segments, k).to(dtype)
        if base == "init":
            beta = torch.zeros(self.n_segments, dtype=dtype)
        else:
            beta = self._segments(theta_init).norm(dim=1)
        self.alpha = nn.Parameter(alpha.to(device))
        self.beta = nn.Parameter(beta.to(device))

    def _segments(self, flat: torch.Tensor) -> torch.Tensor:
        """(D,) → (S, d), zero-padded at the end."""
        pad = self.n_segments * self.segment_size - flat.shape[0]
        return torch.nn.functional.pad(flat, (0, pad)).view(self.n_segments, self.segment_size)

    def directions(self) -> torch.Tensor:
        """u (S, d): φ(αₛ) normalized, each row of unit norm; the last segment's padding is zero (its
        direction is normalized over the coordinates θ has, so ‖θ_S − θ₀_S‖ = |β_S| too)."""
        phi = self.generator.raw(self.alpha).reshape(-1)[: self.n_params]
        return _normalize(self._segments(phi))

    def theta(self) -> torch.Tensor:
        """θ = θ₀ + (β ⊙ φ(α)) flattened to D (differentiable in α and β)."""
        delta = (self.beta[:, None] * self.directions()).reshape(-1)[: self.n_params]
        return delta if self.theta0 is None else self.theta0 + delta

    def reparam_config(self) -> dict:
        return {"k": self.k, "segment_size": self.segment_size, "seed": self.seed,
                "hidden": list(self.generator.hidden), "omega": self.generator.omega, "base": self.base}

    def extra_repr(self) -> str:
        return (f"n_params={self.n_params}, k={self.k}, segment_size={self.segment_size}, "
                f"n_segments={self.n_segments}, base={self.base!r}, n_stored={self.n_stored}")
