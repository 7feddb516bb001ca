"""What the estimators share: the relative λ scale, the hold-out λ scan, and the common parameter checks."""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import torch

from ..solvers import RidgeSolution, RidgeStats

__all__ = ["DEFAULT_HOLDOUT_GRID", "lam_scale", "holdout_scan", "check_common_params"]

#: relative λ candidates (× tr(G̃)/d) of a hold-out scan: one Cholesky each, scanned from the largest down
DEFAULT_HOLDOUT_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-7, 1, 9))


def lam_scale(stats: RidgeStats) -> float:
    """tr(G̃)/d, the mean eigenvalue of the centred Gram: relative λ grids are multiples of it."""
    return max(stats.gram_trace() / stats.n_features, np.finfo(float).tiny)


def holdout_scan(train: RidgeStats, hold: RidgeStats,
                 rel_grid: Sequence[float]) -> tuple[float, RidgeSolution, dict[float, float]]:
    """The relative λ minimizing the hold-out mean squared error: (relative λ, its solution, the path scanned).

    One Cholesky per candidate (``RidgeStats.solve_many`` centres once), from the largest λ down, stopping once
    the error has risen twice in a row (the error is unimodal in λ in practice).
    """
    scale = lam_scale(train)
    grid = sorted((float(v) for v in rel_grid), reverse=True)
    path: dict[float, float] = {}
    best: tuple[float, float, RidgeSolution] | None = None
    prev, rises = np.inf, 0
    for rel, sol in zip(grid, train.solve_many(rel * scale for rel in grid)):
        err = hold.mse(sol.coef, sol.intercept)
        path[rel] = err
        if best is None or err < best[0]:
            best = (err, rel, sol)
        rises = rises + 1 if err > prev else 0
        prev = err
        if rises >= 2:
            break
    assert best is not None  # the grid is checked non-empty by the estimators
    return best[1], best[2], path


def check_common_params(est: Any, dtypes: Sequence[str]) -> None:
    """The checks every estimator shares: batch_size, validation_fraction, dtype, random_state, device."""
    bs = est.batch_size
    if isinstance(bs, bool) or not isinstance(bs, numbers.Integral) or bs < 1:
        raise ValueError(f"batch_size must be a positive int, got {bs!r}")
    vf = est.validation_fraction
    if isinstance(vf, bool) or not isinstance(vf, numbers.Real) or not 0 < vf < 1:
        raise ValueError(f"validation_fraction must be a float in (0, 1), got {vf!r}")
    if est.dtype not in dtypes:
        raise ValueError(f"dtype must be one of {tuple(dtypes)}, got {est.dtype!r}")
    rs = est.random_state
    if rs is not None and (isinstance(rs, bool) or not isinstance(rs, numbers.Integral) or rs < 0):
        raise ValueError(f"random_state must be None or a non-negative int, got {rs!r}")
    try:
        torch.device(est.device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {est.device!r}") from err
