"""Choosing λ from sufficient statistics alone: the relative λ scale and the hold-out scan."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._ridge import RidgeSolution, RidgeStats

__all__ = ["DEFAULT_HOLDOUT_GRID", "lam_scale", "holdout_scan"]

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
