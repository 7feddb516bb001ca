"""Closed-form solvers: the ridge sufficient statistics every pilearn model is fitted through.

Pure tensor math: no modules, no scikit-learn, no files, no printing.
"""

from ._gram import gram_update_, symmetrize
from ._linalg import MAX_CONDITION, IllConditionedWarning, spd_solve
from ._ridge import RidgePath, RidgeSolution, RidgeStats
from ._select import DEFAULT_HOLDOUT_GRID, holdout_scan, lam_scale
from ._stream import array_batches, fit_stream, load_checkpoint

__all__ = [
    "RidgeStats",
    "RidgeSolution",
    "RidgePath",
    "IllConditionedWarning",
    "spd_solve",
    "gram_update_",
    "symmetrize",
    "MAX_CONDITION",
    "DEFAULT_HOLDOUT_GRID",
    "holdout_scan",
    "lam_scale",
    "array_batches",
    "fit_stream",
    "load_checkpoint",
]
