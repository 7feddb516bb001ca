"""``PILLoraLinear``: a frozen ``nn.Linear`` plus a closed-form adapter on a fixed seeded projection."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..features import get_activation, random_matrix

__all__ = ["PILLoraLinear"]


class PILLoraLinear(nn.Module):
    """``y = base_layer(x) + Δ(x)``, ``Δ(x) = scaling · (σ(x̂ W_down) W_up + b)``, ``x̂ = (x − μ)/s``.

    Notation (code ↔ math)::

        W_down       (in, rank)   fixed: random_matrix(kind=init, seed) / √in, a non-persistent buffer
                                  (down="rrr": chosen by the fit, a persistent buffer)
        W_up         (rank, out)  solved (a Parameter; requires_grad False: set it to refine by SGD)
        bias         (out,)       solved intercept b, or None (fit_bias=False)
        input_shift  (in,)        μ, the input mean measured on the first fitting batch (0 if not standardized)
        input_scale  ()           s, √(mean over rows and features of (x − μ)²) (1 if not standardized)

    ``W_down`` is regenerated from the seed on construction (drawn in float64 on the CPU, then cast), so a
    checkpoint stores only ``W_up``, ``bias``, μ and s (and ``W_down`` itself when ``down="rrr"`` chose it). ``W_up = b = 0`` until a fit: the layer starts as its
    base, and while ``fitted`` is False the adapter path is skipped entirely.

    Args:
        base_layer: the ``nn.Linear`` to adapt; it is kept as ``self.base_layer`` and its parameters frozen.
        rank, activation, init, scaling, fit_bias, standardize: see :class:`PILLoraConfig`.
        seed: this layer's seed (:func:`get_pil_model` passes ``derive_seed(config.seed, "pil_lora", name)``).
        name: the layer's name in the base model (for messages).
    """

    def __init__(self, base_layer: nn.Linear, *, rank: int, activation: str, seed: int, init: str = "orthogonal",
                 scaling: float = 1.0, fit_bias: bool = True, standardize: bool = True, name: str = "",
                 down: str = "random") -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"base_layer must be a torch.nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.rank = int(rank)
        self.activation = activation
        self.sigma = get_activation(activation)
        self.seed = int(seed)
        self.init = init
        self.scaling = float(scaling)
        self.fit_bias = bool(fit_bias)
        self.standardize = bool(standardize)
        self.name = name
        self.down = down  # "random": W_down regenerated from the seed; "rrr": chosen by the fit and stored
        self.disabled = False
        w = base_layer.weight
        W0 = random_matrix((self.in_features, self.rank), kind=init, seed=self.seed, dtype=torch.float64)
        self.register_buffer("W_down", (W0 / math.sqrt(self.in_features)).to(device=w.device, dtype=w.dtype),
                             persistent=self.down == "rrr")  # a data-chosen W_down belongs in the state_dict
        self.W_up = nn.Parameter(torch.zeros(self.rank, self.out_features, dtype=w.dtype, device=w.device),
                                 requires_grad=False)
        if self.fit_bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=w.dtype, device=w.device),
                                     requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.register_buffer("input_shift", torch.zeros(self.in_features, dtype=w.dtype, device=w.device))
        self.register_buffer("input_scale", torch.ones((), dtype=w.dtype, device=w.device))
        # flags as buffers so a plain state_dict round trip keeps them; mirrored in Python for a sync-free forward
        self.register_buffer("calibrated", torch.tensor(False, device=w.device))
        self.register_buffer("fitted", torch.tensor(False, device=w.device))
        self._is_fitted = False

    # ------------------------------------------------------------------ forward
    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ = (x − μ)/s, in x's dtype."""
        return (x - self.input_shift.to(x.dtype)) / self.input_scale.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """H = σ(x̂ W_down): (..., in) -> (..., rank), in x's dtype."""
        return self.sigma(self.standardized(x) @ self.W_down.to(x.dtype))

    @property
    def stored_tensors(self) -> tuple[str, ...]:
        """The attributes a checkpoint holds: the solved numbers and input statistics, and W_down when the fit
        chose it (``down="rrr"``)."""
        return ("W_up", "bias", "input_shift", "input_scale") + (("W_down",) if self.down == "rrr" else ())

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """Δ(x) = scaling · (H W_up + b): (..., in) -> (..., out)."""
        out = self.features(x) @ self.W_up.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return self.scaling * out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.disabled or not self._is_fitted:
            return y
        return y + self.delta(x)

    # ------------------------------------------------------------------ fitting support
    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set μ and s from rows x (n, in) when ``standardize`` (μ = 0 for a single row); mark calibrated."""
        if self.standardize:
            x = x.detach().to(torch.float64)
            shift = x.mean(0) if x.shape[0] > 1 else torch.zeros_like(x[0])
            scale = float((x - shift).pow(2).mean().sqrt())
            if not math.isfinite(scale) or scale <= 0:
                scale = 1.0
            self.input_shift.copy_(shift)
            self.input_scale.fill_(scale)
        self.calibrated.fill_(True)

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the base layer: W_up = b = 0, not fitted, not calibrated."""
        self.W_up.zero_()
        if self.bias is not None:
            self.bias.zero_()
        self.input_shift.zero_()
        self.input_scale.fill_(1.0)
        self.calibrated.fill_(False)
        self._set_fitted(False)

    @torch.no_grad()
    def set_down(self, W_down: torch.Tensor) -> None:
        """Replace W_down by a data-chosen (in, rank) matrix (``down="rrr"`` fits, before any W_up is added)."""
        if self.down != "rrr":
            raise ValueError(f"layer {self.name!r}: W_down of a down={self.down!r} adapter is fixed by its seed")
        if tuple(W_down.shape) != (self.in_features, self.rank):
            raise ValueError(f"W_down must have shape {(self.in_features, self.rank)}, got {tuple(W_down.shape)}")
        self.W_down.copy_(W_down.to(self.W_down.dtype))

    @torch.no_grad()
    def add_solution(self, coef: torch.Tensor, intercept: torch.Tensor | None, step: float = 1.0) -> None:
        """W_up += step · coef, b += step · intercept (a ridge solution for targets already divided by scaling)."""
        if tuple(coef.shape) != (self.rank, self.out_features):
            raise ValueError(f"coef must have shape {(self.rank, self.out_features)}, got {tuple(coef.shape)}")
        self.W_up.add_((step * coef).to(self.W_up.dtype))
        if self.bias is not None and intercept is not None:
            self.bias.add_((step * intercept).to(self.bias.dtype))
        self._set_fitted(True)

    def _set_fitted(self, value: bool) -> None:
        self.fitted.fill_(value)
        self._is_fitted = value

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self._is_fitted = bool(self.fitted)

    # ------------------------------------------------------------------ merging
    def delta_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ΔW (out, in), Δb (out,)) in float64 with Δ(x) = x ΔWᵀ + Δb; only for ``activation="identity"``.

            Δ(x) = scaling · (((x − μ)/s) W_down W_up + b)
                 = x · (scaling/s) W_down W_up  +  scaling · (b − (μ/s) W_down W_up)
        """
        if self.activation != "identity":
            raise ValueError(
                f"layer {self.name!r}: a {self.activation!r} adapter computes scaling·σ(x̂ W_down) W_up, which is not "
                "linear in x, so no weight W' gives x W'ᵀ = base(x) + Δ(x) for every x and it cannot be merged; keep "
                "the PILModel (or unload() it), or refit with activation='identity'"
            )
        f64 = torch.float64
        down_up = self.W_down.to(f64) @ self.W_up.to(f64)  # (in, out)
        s = self.input_scale.to(f64)
        dW = (self.scaling / s) * down_up.T
        db = -(self.scaling / s) * (self.input_shift.to(f64) @ down_up)
        if self.bias is not None:
            db = db + self.scaling * self.bias.to(f64)
        return dW, db

    def merged_linear(self) -> nn.Linear:
        """A new ``nn.Linear`` equal to this layer (identity activation only; see :meth:`delta_weight`)."""
        base = self.base_layer
        dW, db = self.delta_weight()
        need_bias = base.bias is not None or bool(db.abs().max() > 0)
        out = nn.Linear(self.in_features, self.out_features, bias=need_bias, device=base.weight.device,
                        dtype=base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(base.weight.to(torch.float64) + dW)
            if need_bias:
                b0 = base.bias.to(torch.float64) if base.bias is not None else torch.zeros_like(db)
                out.bias.copy_(b0 + db)
        out.requires_grad_(base.weight.requires_grad)
        return out

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, rank={self.rank}, activation={self.activation!r}, scaling={self.scaling}, "
                f"fitted={self._is_fitted}")
