"""Closed-form coefficients where a random-basis layer's output is linear in them.

For a linear map whose weight is a combination of fixed matrices,

    y(x) = x (W₀ + Σⱼ αⱼ Wⱼ)ᵀ + b₀ + Σⱼ αⱼ bⱼ ,

every output coordinate is linear in α: y_o(xₙ) − (xₙW₀ᵀ + b₀)_o = Σⱼ αⱼ [(xₙWⱼᵀ)_o + bⱼ,o]. Stacking one row
per (sample n, output o) gives a least-squares problem in k unknowns,

    H[(n, o), j] = (xₙ Wⱼᵀ)_o + bⱼ,o        (N·d_out, k)
    t[(n, o)]    = Y[n, o] − (xₙ W₀ᵀ + b₀)_o  (N·d_out,)
    α = argmin ‖t − Hα‖² + λ‖α‖²  ⇔  (HᵀH + λI) α = Hᵀt ,

streamed batch by batch into :class:`~pilearn.solvers.RidgeStats` (features = k, one target column, no
intercept: a free intercept is not part of these parameterizations) and solved once in float64.

* PRANC on a linear head (:func:`solve_pranc_head`): W₀ = 0, b₀ = 0 and (Wⱼ, bⱼ) = basis network j. The
  head regresses the targets onto the features of a frozen body: the body's output is X.
* NOLA with A fixed (:func:`fit_nola_layer`): ΔW = s·B A with B = Σⱼ bⱼ Bⱼ is linear in b, with
  Wⱼ = s·Bⱼ A; the regression target is the residual R = desired output − base layer output.

``distributed=True`` (every function here; data parallelism under ``torch.distributed``, gloo on CPU or NCCL on
GPU; user shards): each rank passes its own rows of X and Y (or R), any number including none, and the statistics
HᵀH, Hᵀt (one :class:`~pilearn.solvers.RidgeStats`) are summed over the ranks (one all-reduce) before the solve,
so every rank gets the α of all the rows, as one process fitting their concatenation would (up to the rounding
of the float sums; a distributed fit always solves the primal system, as one process does once N·d_out > k).
The bases (seeded) and the module must be the same on every rank.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..distributed import all_reduce_stats, check_distributed
from ..solvers import RidgeStats
from ._nola import NOLALinear
from ._pranc import PRANC

__all__ = ["fit_linear_coefficients", "solve_pranc_head", "fit_nola_layer"]

_BATCH_ELEMENTS = 2**22  # default batch: about 4M entries of H per update


def _check_matrix(name: str, x: object, cols: int | None = None, cols_name: str = "") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_columns), got shape {tuple(x.shape)}")
    if cols is not None and x.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns ({cols_name}), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or infinite values; clean the data before fitting")
    return x


def _check_rows(X: torch.Tensor, Y: torch.Tensor, x_name: str = "X", y_name: str = "Y") -> None:
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{x_name} and {y_name} must have the same number of rows, got {x_name} shape "
                         f"{tuple(X.shape)} and {y_name} shape {tuple(Y.shape)}")


def _check_lam(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite float >= 0, got {lam!r}")
    return float(lam)


def fit_linear_coefficients(
    weight_basis: torch.Tensor,
    X: torch.Tensor,
    Y: torch.Tensor,
    lam: float,
    *,
    bias_basis: torch.Tensor | None = None,
    weight0: torch.Tensor | None = None,
    bias0: torch.Tensor | None = None,
    batch_size: int | None = None,
    distributed: bool = False,
) -> torch.Tensor:
    """Ridge coefficients α of y = x(W₀ + Σⱼ αⱼWⱼ)ᵀ + b₀ + Σⱼ αⱼbⱼ for fixed inputs (see the module docstring).

    Args:
        weight_basis: (k, d_out, d_in) the matrices Wⱼ.
        X: (N, d_in) inputs.
        Y: (N, d_out) targets.
        lam: λ ≥ 0.
        bias_basis: (k, d_out) the bias parts bⱼ, or None.
        weight0: (d_out, d_in) fixed offset W₀, or None for 0.
        bias0: (d_out,) fixed offset b₀, or None for 0.
        batch_size: samples per :meth:`RidgeStats.update` (each adds batch·d_out rows of H); default keeps a
            batch of H near 4M entries.
        distributed: each rank passes its own rows; HᵀH and Hᵀt are summed over the ranks before the solve
            (see the module docstring).

    Returns:
        α (k,) float64: the solution of (HᵀH + λI)α = Hᵀt.
    """
    if not isinstance(weight_basis, torch.Tensor) or weight_basis.ndim != 3:
        shape = tuple(weight_basis.shape) if isinstance(weight_basis, torch.Tensor) else type(weight_basis).__name__
        raise ValueError(f"weight_basis must be a (k, d_out, d_in) tensor, got {shape}")
    k, d_out, d_in = weight_basis.shape
    distributed = check_distributed(distributed)
    lam = _check_lam(lam)
    X = _check_matrix("X", X, d_in, "d_in of weight_basis")
    Y = _check_matrix("Y", Y, d_out, "d_out of weight_basis")
    _check_rows(X, Y)
    for name, t, shape in (("bias_basis", bias_basis, (k, d_out)), ("weight0", weight0, (d_out, d_in)),
                           ("bias0", bias0, (d_out,))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if batch_size is None:
        batch_size = max(1, _BATCH_ELEMENTS // (d_out * k))
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dtype = torch.promote_types(X.dtype, weight_basis.dtype)
    W = weight_basis.to(dtype)
    stats = RidgeStats(k, 1, fit_intercept=False, device=X.device)
    for start in range(0, X.shape[0], batch_size):
        Xb, Yb = X[start : start + batch_size].to(dtype), Y[start : start + batch_size].to(dtype)
        H = torch.einsum("ni,koi->nok", Xb, W)  # (n, d_out, k): H[(n, o), j] = (xₙWⱼᵀ)_o
        if bias_basis is not None:
            H = H + bias_basis.to(dtype).T
        t = Yb
        if weight0 is not None:
            t = t - Xb @ weight0.to(dtype).T
        if bias0 is not None:
            t = t - bias0.to(dtype)
        stats.update(H.reshape(-1, k), t.reshape(-1, 1))
    all_reduce_stats(stats, distributed=distributed)
    return stats.solve(lam).coef[:, 0]


def solve_pranc_head(pranc: PRANC, X: torch.Tensor, Y: torch.Tensor, lam: float, *,
                     batch_size: int | None = None, distributed: bool = False) -> torch.Tensor:
    """Set the coefficients of a PRANC-parameterized linear head by ridge regression; return α.

    ``pranc`` wraps an ``nn.Linear`` (d_in → d_out), so θ = [vec W, b] = Σⱼ αⱼ θ̂ⱼ and the head's output is
    linear in α with Wⱼ, bⱼ the weight and bias blocks of basis network θ̂ⱼ. X holds the head's inputs
    (the features of a frozen body, computed once), Y its targets (e.g. one-hot labels):

        H[(n, o), j] = (xₙ Wⱼᵀ + bⱼ)_o,    (HᵀH + λI) α = Hᵀ vec(Y).

    ``pranc.alpha`` is overwritten in place. Memory: the k basis networks of the head, k·(d_in+1)·d_out numbers.
    ``distributed``: each rank passes its own rows of X and Y; the statistics are summed over the ranks before the
    solve (see the module docstring).
    """
    check_distributed(distributed)
    if not isinstance(pranc, PRANC):
        raise TypeError(f"pranc must be a PRANC wrapper, got {type(pranc).__name__}")
    layer = pranc.module
    names = [spec.names for spec in pranc.specs]
    if not isinstance(layer, nn.Linear) or names not in ([("weight",), ("bias",)], [("weight",)]):
        raise TypeError(f"solve_pranc_head needs a PRANC around an nn.Linear with trainable weight (and bias), got "
                        f"{type(layer).__name__} with parameters {names}")
    k, d_out, d_in = pranc.basis.n_basis, layer.out_features, layer.in_features
    X = _check_matrix("X", X, d_in, "in_features of the head")
    Y = _check_matrix("Y", Y, d_out, "out_features of the head")
    _check_rows(X, Y)
    nets = pranc.basis_networks(0, k)  # (k, D)
    weight_basis = nets[:, : d_out * d_in].reshape(k, d_out, d_in)
    bias_basis = nets[:, d_out * d_in :] if len(names) == 2 else None
    alpha = fit_linear_coefficients(weight_basis, X.to(nets.device), Y.to(nets.device), lam,
                                    bias_basis=bias_basis, batch_size=batch_size, distributed=distributed)
    with torch.no_grad():
        pranc.alpha.copy_(alpha)
    return pranc.alpha


def fit_nola_layer(layer: NOLALinear, X: torch.Tensor, R: torch.Tensor, lam: float, *,
                   batch_size: int | None = None, distributed: bool = False) -> torch.Tensor:
    """Set a NOLA layer's B-coefficients b by ridge regression, A fixed at its current coefficients; return b.

    With zₙ = A xₙ (r,) and s = α/r, the delta is Δ(xₙ) = s·B zₙ = Σⱼ bⱼ · s·Bⱼ zₙ, linear in b:

        H[(n, o), j] = s (Bⱼ zₙ)_o,    (HᵀH + λI) b = Hᵀ vec(R),

    where R is the residual the delta must produce: the desired layer output minus ``base_layer(X)``
    (a distillation target, or the closed-form target of a deeper fit). ``layer.nola_b`` is overwritten.

    Args:
        layer: an unmerged :class:`NOLALinear`.
        X: (N, in_features) layer inputs.
        R: (N, out_features) residual targets.
        lam: λ ≥ 0.
        batch_size: samples per update (default: about 4M entries of H per batch).
        distributed: each rank passes its own rows of X and R; the statistics are summed over the ranks before
            the solve (see the module docstring). A fixed, the layer must be the same on every rank.
    """
    check_distributed(distributed)
    if not isinstance(layer, NOLALinear):
        raise TypeError(f"layer must be a NOLALinear, got {type(layer).__name__}")
    if layer.merged:
        raise ValueError("layer is merged (its delta is folded into the base weight); unmerge() it before fitting")
    X = _check_matrix("X", X, layer.in_features, "in_features")
    R = _check_matrix("R", R, layer.out_features, "out_features")
    _check_rows(X, R, "X", "R")
    with torch.no_grad():
        A = layer.lora_A()  # (r, in)
        dtype = torch.promote_types(X.dtype, A.dtype)
        Z = X.to(device=A.device, dtype=dtype) @ A.T.to(dtype)  # (N, r)
        weight_basis = layer.scaling * layer.b_basis()  # (k_B, out, r)
    b = fit_linear_coefficients(weight_basis, Z, R.to(Z.device), lam, batch_size=batch_size,
                                distributed=distributed)
    with torch.no_grad():
        layer.nola_b.copy_(b)
    return layer.nola_b
