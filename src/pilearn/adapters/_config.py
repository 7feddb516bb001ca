"""``PILLoraConfig``: which ``nn.Linear`` layers PIL-LoRA adapts, and the shape of each adapter."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..features import ACTIVATIONS, MATRIX_KINDS
from ..features._random import _check_seed

__all__ = ["PILLoraConfig", "ALL_LINEAR", "DEFAULT_LAM_GRID"]

#: the ``target_modules`` value that adapts every ``nn.Linear`` except the model's output embedding (as peft)
ALL_LINEAR = "all-linear"
#: relative λ candidates (× tr(G̃)/rank) that ``lam="auto"`` scans by generalized cross-validation
DEFAULT_LAM_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-6, 2, 17))


@dataclass
class PILLoraConfig:
    """Which layers PIL-LoRA adapts and how (the peft ``LoraConfig`` of closed-form adapters).

    An adapted ``nn.Linear`` computes ``y = base(x) + Δ(x)`` with

        Δ(x) = scaling · (σ(x̂ W_down) W_up + b),   x̂ = (x − μ) / s,

    ``W_down`` (in × rank) a fixed seeded projection with unit-variance columns divided by √in (so each entry of
    x̂ W_down has unit variance when x̂ does), regenerated from ``derive_seed(seed, "pil_lora", name)`` and never
    stored; ``W_up`` (rank × out) and ``b`` (out,) solved by ridge regression; μ (in,) and s (a scalar) the input's
    mean and root-mean-square spread, measured on the first batch a fit streams through the layer.

    Attributes:
        target_modules: module names matched as peft does: a module is adapted when its full name equals an entry
            or ends with ``"." + entry`` (``"q_proj"`` matches ``"model.layers.0.self_attn.q_proj"``); or
            ``"all-linear"``: every ``nn.Linear`` except the model's output embedding (``get_output_embeddings()``).
        rank: width of the random feature layer σ(x̂ W_down), an int >= 1.
        lam: ridge λ relative to tr(G̃)/rank (the mean eigenvalue of the centred feature Gram, as everywhere in
            pilearn; for ``down="rrr"`` the Gram of x̂, so tr(G̃)/in), a float >= 0; or ``"auto"``: generalized
            cross-validation over ``lam_grid``, per layer (for ``"rrr"``, of the full-rank ridge fit).
        lam_grid: relative λ candidates of ``lam="auto"``.
        activation: σ, a name in :data:`pilearn.features.ACTIVATIONS` (``"gelu"``, ``"relu"``, ``"tanh"``,
            ``"identity"``, ...). Only ``"identity"`` adapters are linear and can be merged into the base weight.
        seed: parent seed of every ``W_down``.
        scaling: the adapter's output multiplier. Fits solve for ``W_up`` and ``b`` against targets divided by
            ``scaling``, so a fitted ``scaling · (...)`` reproduces the targets whatever its value; change
            ``layer.scaling`` after a fit to shrink or amplify an adapter.
        init: distribution of ``W_down`` (:data:`pilearn.features.MATRIX_KINDS`): ``"orthogonal"`` (orthonormal
            columns, ``rank <= in`` gives an exact rank-``rank`` projection) or ``"gaussian"``, ``"rademacher"``,
            ``"sparse"``.
        fit_bias: solve an unpenalized intercept ``b`` (the ridge fit centres features and targets).
        standardize: measure μ and s on the first fitting batch (else μ = 0, s = 1). s is one scalar, so x̂ keeps
            the geometry of x (relative variances, outlier dimensions) and only σ's input scale is fixed.
        down: where ``W_down`` comes from. ``"random"`` (the seed's adapter): the fixed seeded projection above.
            ``"rrr"``: chosen from the data by reduced-rank ridge regression, still in one pass and closed form —
            the fit accumulates the statistics of (x̂, target) instead of (σ(x̂ W_down), target), solves the
            full-rank ridge B̂ = (X̂ᵀX̂ + λI)⁻¹X̂ᵀY (in × out), and keeps the rank-r part that explains the most:
            with V_r the top r eigenvectors of B̂ᵀ(X̂ᵀX̂ + λI)B̂ (the fitted values' covariance),
            ``W_down = B̂ V_r`` and ``W_up = V_rᵀ``, which minimizes ‖Y − X̂B‖² + λ‖B‖² over rank(B) ≤ r exactly
            (Mukherjee & Zhu 2011). Needs ``activation="identity"`` (the optimum is for a linear adapter); the
            chosen ``W_down`` is stored in checkpoints, and an adapter is fitted once (``reset=True``).
    """

    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    rank: int = 8
    lam: float | Literal["auto"] = 1e-3
    activation: str = "gelu"
    seed: int = 0
    scaling: float = 1.0
    init: str = "orthogonal"
    fit_bias: bool = True
    standardize: bool = True
    lam_grid: tuple[float, ...] = DEFAULT_LAM_GRID
    down: Literal["random", "rrr"] = "random"

    def __post_init__(self) -> None:
        self.target_modules = _check_targets(self.target_modules)
        if isinstance(self.rank, bool) or not isinstance(self.rank, numbers.Integral) or self.rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {self.rank!r}")
        self.rank = int(self.rank)
        if self.lam != "auto":
            self.lam = _check_nonnegative("lam", self.lam, extra=' or "auto"')
        grid = self.lam_grid
        if isinstance(grid, (str, bytes)) or not isinstance(grid, (list, tuple)) or not grid:
            raise ValueError(f"lam_grid must be a non-empty tuple of floats >= 0, got {grid!r}")
        self.lam_grid = tuple(_check_nonnegative("lam_grid", v) for v in grid)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        self.seed = _check_seed(self.seed)
        s = self.scaling
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or s == 0:
            raise ValueError(f"scaling must be a finite non-zero float, got {s!r}")
        self.scaling = float(s)
        if self.init not in MATRIX_KINDS:
            raise ValueError(f"init must be one of {MATRIX_KINDS}, got {self.init!r}")
        if self.down not in ("random", "rrr"):
            raise ValueError(f'down must be "random" or "rrr", got {self.down!r}')
        if self.down == "rrr" and self.activation != "identity":
            raise ValueError(f'down="rrr" chooses W_down for a linear adapter and needs activation="identity", got '
                             f"activation={self.activation!r}")
        for name in ("fit_bias", "standardize"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        out = dataclasses.asdict(self)
        out["lam_grid"] = list(self.lam_grid)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PILLoraConfig":
        """Rebuild a config from :meth:`to_dict`; an unknown key is a ValueError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PILLoraConfig field(s) {unknown}; known fields are {sorted(known)}")
        data = dict(data)
        if "lam_grid" in data:
            data["lam_grid"] = tuple(data["lam_grid"])
        return cls(**data)


def _check_targets(targets: object) -> list[str] | str:
    if targets == ALL_LINEAR:
        return ALL_LINEAR
    if isinstance(targets, str):
        raise ValueError(f'target_modules must be a list of module names or "all-linear", got the string '
                         f"{targets!r} (write [{targets!r}] for one module)")
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f'target_modules must be a list of module names or "all-linear", got {targets!r}')
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target_modules must be a non-empty list of non-empty strings, got {targets!r}")
    return list(targets)


def _check_nonnegative(name: str, value: object, extra: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite float >= 0{extra}, got {value!r}")
    return float(value)
