"""``ClosedFormHead``: a ridge classifier on frozen (e.g. mean-pooled) features, solved through ``RidgeStats``."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..distributed import all_agree, all_reduce_stats, check_distributed, union_labels
from ..solvers import RidgeStats, holdout_scan, lam_scale
from ._config import DEFAULT_LAM_GRID, _check_nonnegative

__all__ = ["ClosedFormHead", "fit_head"]


def _as_features(name: str, x: object) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a 2-D float array (n_samples, n_features), got {x.dtype} {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains {int((~torch.isfinite(x)).sum())} NaN or infinite values")
    return x.detach()


def _as_labels(name: str, y: object, n: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with one label per row ({n}), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    return y.to(torch.int64)


class ClosedFormHead(nn.Module):
    """Ridge classifier on frozen features: ``scores = f W + b`` with W (d, C), b (C,) from one-hot targets,

        [W; b] = argmin ‖Y − F W − b‖² + λ‖W‖²,   Y (n, C) one-hot,   λ = lam · tr(F̃ᵀF̃)/d,

    accumulated in one :class:`~pilearn.solvers.RidgeStats` (streams, so features may come in chunks) and solved
    once. ``lam="auto"`` picks λ from ``lam_grid`` by generalized cross-validation, or by the error on
    ``valid=(features, labels)`` when given (one Cholesky per candidate, :func:`~pilearn.solvers.holdout_scan`).

    ``distributed=True``: data parallelism under ``torch.distributed`` (gloo on CPU, NCCL on GPU; user shards):
    each rank passes its own rows (and its own ``valid`` rows) to :meth:`fit`; the classes are the union of every
    rank's labels and the training and hold-out :class:`~pilearn.solvers.RidgeStats` are summed over the ranks (one
    all-reduce each) before λ is chosen and the head solved, so every rank holds the head one process fits on all
    the rows (up to the rounding of the float sums; a distributed fit always solves the primal problem, as one
    process does once there are more rows than features).

    Fitted state: ``coef`` (d, C), ``intercept`` (C,), ``classes`` (C,) the sorted labels, ``lam_`` (relative λ).
    """

    def __init__(self, *, lam: float | Literal["auto"] = "auto", lam_grid: Sequence[float] = DEFAULT_LAM_GRID,
                 fit_intercept: bool = True, distributed: bool = False) -> None:
        super().__init__()
        self.lam = lam
        self.lam_grid = tuple(lam_grid)
        self.fit_intercept = fit_intercept
        self.distributed = distributed
        self.register_buffer("coef", None)
        self.register_buffer("intercept", None)
        self.register_buffer("classes", None)
        self.lam_: float | None = None

    def _stats(self, F: torch.Tensor, y: torch.Tensor, classes: torch.Tensor) -> RidgeStats:
        idx = torch.searchsorted(classes, y)
        if bool((idx >= classes.numel()).any()) or not bool((classes[idx.clamp_max(classes.numel() - 1)] == y).all()):
            raise ValueError("validation labels include classes not seen in training")
        Y = torch.nn.functional.one_hot(idx, classes.numel()).to(F.dtype)
        stats = RidgeStats(F.shape[1], classes.numel(), fit_intercept=self.fit_intercept)
        if F.shape[0] > 0:  # a rank of a distributed fit may hold no rows
            stats.update(F, Y)
        all_reduce_stats(stats, distributed=self.distributed)
        return stats

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor,
            valid: tuple[torch.Tensor, torch.Tensor] | None = None) -> "ClosedFormHead":
        """Solve the head. features (n, d) float, labels (n,) int; ``valid`` optional held-out pair for λ."""
        distributed = check_distributed(self.distributed)
        if self.lam != "auto":
            _check_nonnegative("lam", self.lam, ' or "auto"')
        if not self.lam_grid:
            raise ValueError("lam_grid must not be empty")
        F = _as_features("features", features)
        y = _as_labels("labels", labels, F.shape[0])
        classes = torch.unique(y)
        if distributed:  # every rank one-hot encodes the same classes: the union over the shards
            classes = torch.from_numpy(union_labels(classes.cpu().numpy())).to(device=y.device, dtype=y.dtype)
        if classes.numel() < 2:
            raise ValueError(f"labels must hold at least 2 classes, got {classes.tolist()}")
        all_agree(valid is not None, "valid (given or None)", distributed)  # it decides the collectives below
        stats = self._stats(F, y, classes)
        scale = lam_scale(stats)
        if self.lam != "auto":
            lam_rel = float(self.lam)
            sol = stats.solve(lam_rel * scale)
        elif valid is not None:
            Fv = _as_features("valid features", valid[0])
            hold = self._stats(Fv, _as_labels("valid labels", valid[1], Fv.shape[0]), classes)
            lam_rel, sol, _ = holdout_scan(stats, hold, self.lam_grid)
        else:
            path = stats.solve_path([rel * scale for rel in self.lam_grid])
            lam_rel = self.lam_grid[path.best_index]
            sol = stats.solve(lam_rel * scale)
        self.coef = sol.coef.to(F.dtype)
        self.intercept = sol.intercept.to(F.dtype)
        self.classes = classes
        self.lam_ = lam_rel
        return self

    def _check_fitted(self) -> None:
        if self.coef is None:
            raise RuntimeError("ClosedFormHead is not fitted; call fit(features, labels) first")

    @property
    def weight(self) -> torch.Tensor:
        """Wᵀ (C, d), the ``nn.Linear`` layout."""
        self._check_fitted()
        return self.coef.T

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Scores (n, C) = f W + b."""
        self._check_fitted()
        return features @ self.coef.to(features.dtype) + self.intercept.to(features.dtype)

    def label_index(self, labels: torch.Tensor) -> torch.Tensor:
        """Column index of each label in ``classes`` (ValueError for an unseen label)."""
        self._check_fitted()
        labels = labels.to(self.classes.device)
        idx = torch.searchsorted(self.classes, labels).clamp_max(self.classes.numel() - 1)
        if not bool((self.classes[idx] == labels).all()):
            raise ValueError(f"labels include classes not seen by the head (it knows {self.classes.tolist()})")
        return idx

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The label with the highest score."""
        return self.classes[self(features).argmax(-1)]


def fit_head(features: torch.Tensor, labels: torch.Tensor, *, lam: float | Literal["auto"] = "auto",
             valid: tuple[torch.Tensor, torch.Tensor] | None = None, distributed: bool = False,
             **kwargs: object) -> ClosedFormHead:
    """``ClosedFormHead(lam=lam, distributed=distributed, **kwargs).fit(features, labels, valid)``: a ridge
    classifier on frozen features (``distributed``: each rank passes its own rows, see :class:`ClosedFormHead`)."""
    if isinstance(lam, numbers.Real) and not isinstance(lam, bool):
        lam = float(lam)
    head = ClosedFormHead(lam=lam, distributed=distributed, **kwargs)  # type: ignore[arg-type]
    return head.fit(features, labels, valid)
