"""What the estimators share: the common parameter checks (the λ scan lives in ``pilearn.solvers``)."""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import torch

from ..solvers import DEFAULT_HOLDOUT_GRID, holdout_scan, lam_scale

__all__ = ["DEFAULT_HOLDOUT_GRID", "lam_scale", "holdout_scan", "check_common_params"]


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
