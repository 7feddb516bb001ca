"""Sufficient statistics of a ridge regression, and its closed-form solutions.

Every closed-form fit in pilearn reduces to one accumulator: stream (H, Y) batches through
:meth:`RidgeStats.update`, combine accumulators (``+``, ``-``, :meth:`RidgeStats.all_reduce`), then
:meth:`RidgeStats.solve` the ridge problem

    min_{W, b}  Σᵢ wᵢ ‖yᵢ − hᵢW − b‖² + λ‖W‖²_F ,

whose solution is W = (H̃ᵀDH̃ + λI)⁻¹H̃ᵀDỸ (H̃, Ỹ centred by their weighted means, D = diag(w)) and
b = ȳ − h̄W; the intercept b is not penalized, as in scikit-learn's ``Ridge``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from .._memory import release_freed_heap
from ._gram import gram_update_, symmetrize
from ._linalg import cholesky_solve_, pinv_solve, spd_solve

__all__ = ["RidgeStats", "RidgeSolution", "RidgePath"]

_F64 = torch.float64
#: Gram flops (n·D²) of a batch from which update() trims the heap first (about 25 ms of work at 80 GFLOP/s)
_TRIM_MIN_FLOPS = 2**31
_ACCUMULATE_DTYPES = (torch.float64, torch.float32)


@dataclass(frozen=True)
class RidgeSolution:
    """A solved ridge problem: predictions are ``H @ coef + intercept``.

    Attributes:
        coef: (d, k) float64 weights.
        intercept: (k,) float64 (zeros when ``fit_intercept=False``).
        lam: the λ used.
        method: ``"cholesky"``, ``"eigh"`` (pseudo-inverse fallback) or ``"dual"``.
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    lam: float
    method: str


@dataclass(frozen=True)
class RidgePath:
    """Errors along a λ grid from one eigendecomposition.

    Attributes:
        lams: (L,) the grid.
        gcv: (L,) generalized cross-validation score (RSS/(n·k)) / (1 − df/n)².
        df: (L,) effective degrees of freedom Σ sᵢ/(sᵢ+λ) (+1 for the intercept).
        train_mse: (L,) training mean squared error RSS/(n·k).
        holdout_mse: (L,) mean squared error on the hold-out statistics, or None.
        best_lam: λ minimizing the hold-out error if given, else GCV.
        best_index: its index in ``lams``.
        coefs: (L, d, k) solutions, when asked for.
    """

    lams: torch.Tensor
    gcv: torch.Tensor
    df: torch.Tensor
    train_mse: torch.Tensor
    holdout_mse: torch.Tensor | None
    best_lam: float
    best_index: int
    coefs: torch.Tensor | None = None


def _as_2d(name: str, x: object, device: torch.device, check_finite: bool = True) -> torch.Tensor:
    """Validate a batch (2-D, real, finite) and move it to ``device``; the dtype is kept."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x if x.flags.writeable else x.copy())
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim == 1 and name == "Y":
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_columns), got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.detach().to(device)
    # one pass: a NaN or ±Inf anywhere makes the sum non-finite (an overflowing sum of finite
    # values only sends us to the exact count below)
    if check_finite and x.is_floating_point() and not bool(torch.isfinite(x.sum())):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{name} contains {bad} NaN or infinite values; clean the data before fitting")
    return x


class RidgeStats:
    """Streaming sufficient statistics of a multi-output weighted ridge regression.

    One float64 matrix holds every statistic: the Gram of the augmented rows [h, y, 1]·√w,

        M = [[HᵀDH,  ·,     · ],
             [YᵀDH,  YᵀDY,  · ],
             [1ᵀDH,  1ᵀDY,  1ᵀD1]]      (lower triangle; D = diag(w)),

    so G = HᵀDH, C = HᵀDY, the weighted column sums of H and Y, the per-column ‖Y‖² and the
    total weight n all come from one symmetric rank-k update (BLAS ``syrk``) per batch: the
    cross-products and sums cost (d+k+1)²/d² − 1 ≈ 2k/d extra instead of separate passes over H.
    Memory is O((d + k)²), independent of the number of rows streamed.

    Precision policy: M is float64 and every solve is float64. Features may be float32; by default
    (``accumulate_dtype=torch.float64``) each batch is cast to float64 and its Gram formed by
    ``dsyrk``. With ``accumulate_dtype=torch.float32`` each batch's Gram is formed in float32
    (``ssyrk`` on the CPU, about twice as fast; a float32 matmul on CUDA, which uses TF32 tensor
    cores when ``torch.backends.cuda.matmul.allow_tf32`` is set) and added into the float64 M, so
    rounding error is that of one batch (≈ ε₃₂·√batch relative to the Gram's entries) and does not
    grow with the number of batches. It costs a (d+k+1)² float32 buffer more.

    While no more rows than features have been seen, the rows themselves are kept instead of M
    (``dual=True``), and :meth:`solve` uses the dual form W = H̃ᵀ(H̃H̃ᵀ + λI)⁻¹Ỹ (n × n); the
    first update that makes n exceed d folds them into M and drops them.

    Args:
        n_features: d, the width of H.
        n_targets: k, the width of Y.
        fit_intercept: centre H and Y by their weighted means and fit an unpenalized intercept.
        dual: keep rows while n ≤ d to solve the dual problem.
        device: where the statistics live (``"cuda"`` for GPU fits; reduce with NCCL there).
        accumulate_dtype: ``torch.float64`` (default) or ``torch.float32``, the dtype in which each
            batch's Gram is formed (see the precision policy above); M and solves stay float64.

    Example:
        >>> stats = RidgeStats(64, 3)
        >>> for H, Y in batches:            # doctest: +SKIP
        ...     stats.update(H, Y)
        >>> sol = stats.solve(1e-2)         # doctest: +SKIP
        >>> Y_hat = H @ sol.coef + sol.intercept   # doctest: +SKIP
    """

    # class-level defaults: statistics pickled before these attributes existed unpickle as float64 accumulators
    accumulate_dtype: torch.dtype = _F64
    _partial: torch.Tensor | None = None

    def __init__(
        self,
        n_features: int,
        n_targets: int,
        *,
        fit_intercept: bool = True,
        dual: bool = True,
        device: str | torch.device | None = None,
        accumulate_dtype: torch.dtype = torch.float64,
    ) -> None:
        for name, v in (("n_features", n_features), ("n_targets", n_targets)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if accumulate_dtype not in _ACCUMULATE_DTYPES:
            raise ValueError(f"accumulate_dtype must be torch.float64 or torch.float32, got {accumulate_dtype!r}")
        self.accumulate_dtype = accumulate_dtype
        self.n_features = int(n_features)
        self.n_targets = int(n_targets)
        self.fit_intercept = bool(fit_intercept)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        D = self.n_features + self.n_targets + 1
        self.M = torch.zeros(D, D, dtype=_F64, device=self.device)
        self.n_rows = 0
        # rows kept for the dual form: (H, Y, w) in float64, or None once M holds them
        self._rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] | None = [] if dual else None
        self._work: torch.Tensor | None = None  # batch workspace of _augmented; see release_workspace
        self._partial: torch.Tensor | None = None  # one batch's float32 Gram (accumulate_dtype=float32)

    def release_workspace(self) -> None:
        """Free the buffers that :meth:`update` reuses between batches."""
        self._work = None
        self._partial = None

    # ------------------------------------------------------------------ views of M
    @property
    def G(self) -> torch.Tensor:
        """HᵀDH, lower triangle (zeros above); a view of M. Folds kept rows in first."""
        self._flush_rows()
        d = self.n_features
        return self.M[:d, :d]

    @property
    def C(self) -> torch.Tensor:
        """HᵀDY (d, k); a view of M. Folds kept rows in first."""
        self._flush_rows()
        d, k = self.n_features, self.n_targets
        return self.M[d : d + k, :d].T

    def _sums(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """(Σ w h (d,), Σ w y (k,), Σ w y² (k,), Σ w), from M or from the kept rows."""
        d, k = self.n_features, self.n_targets
        if self._rows is not None:
            h = torch.zeros(d, dtype=_F64, device=self.device)
            y = torch.zeros(k, dtype=_F64, device=self.device)
            yy = torch.zeros(k, dtype=_F64, device=self.device)
            n = 0.0
            for H, Y, w in self._rows:
                if w is None:
                    h += H.sum(0)
                    y += Y.sum(0)
                    yy += (Y * Y).sum(0)
                    n += H.shape[0]
                else:
                    h += w @ H
                    y += w @ Y
                    yy += w @ (Y * Y)
                    n += float(w.sum())
            return h, y, yy, n
        last = self.M[-1]
        return last[:d], last[d : d + k], self.M[d : d + k, d : d + k].diagonal(), float(last[-1])

    @property
    def h_sum(self) -> torch.Tensor:
        """Σᵢ wᵢhᵢ (d,)."""
        return self._sums()[0]

    @property
    def y_sum(self) -> torch.Tensor:
        """Σᵢ wᵢyᵢ (k,)."""
        return self._sums()[1]

    @property
    def yy(self) -> torch.Tensor:
        """Σᵢ wᵢyᵢ² per target column (k,)."""
        return self._sums()[2]

    @property
    def n(self) -> float:
        """Σᵢ wᵢ, the total sample weight (the row count when unweighted)."""
        return self._sums()[3]

    # ------------------------------------------------------------------ streaming
    def update(self, H: torch.Tensor, Y: torch.Tensor, sample_weight: torch.Tensor | None = None, *,
               check_finite: bool = True) -> "RidgeStats":
        """Add a batch.

        Args:
            H: (n, d) features (any float dtype; accumulated in ``accumulate_dtype``).
            Y: (n, k) or (n,) targets.
            sample_weight: (n,) non-negative finite weights, or None for ones.
            check_finite: reject NaN/Inf in H and Y before they touch the statistics. A caller whose
                inputs are already checked may skip this pass; :meth:`solve` still refuses
                non-finite statistics.

        Returns:
            self.
        """
        H = _as_2d("H", H, self.device, check_finite)
        Y = _as_2d("Y", Y, self.device, check_finite)
        if H.shape[1] != self.n_features:
            raise ValueError(f"H must have {self.n_features} columns (n_features), got shape {tuple(H.shape)}")
        if Y.shape[1] != self.n_targets:
            raise ValueError(f"Y must have {self.n_targets} columns (n_targets), got shape {tuple(Y.shape)}")
        if H.shape[0] != Y.shape[0]:
            raise ValueError(f"H and Y must have the same number of rows, got {H.shape[0]} and {Y.shape[0]}")
        if H.shape[0] == 0:
            raise ValueError("H is empty (0 rows); every batch must hold at least one sample")
        w = self._check_weight(sample_weight, H.shape[0])
        self.n_rows += H.shape[0]
        if self._rows is not None and self.n_rows <= self.n_features:
            # copies: H may be a caller's reused buffer (stream_features), which .to() would alias when float64
            self._rows.append((H.to(_F64, copy=True), Y.to(_F64, copy=True), w))
            return self
        self._flush_rows()
        self._release_heap(H.shape[0])
        self._accumulate(H, Y, w, sign=1.0)
        return self

    def _release_heap(self, n: int) -> None:
        """Before a large CPU batch is accumulated, return the heap pages the stream freed since the last one (see
        :func:`pilearn._memory.release_freed_heap`): without it the resident set grows with the number of batches.
        Skipped below ``_TRIM_MIN_FLOPS`` of Gram work, where the millisecond it costs would show."""
        D = self.M.shape[0]
        if self.device.type == "cpu" and n * D * D >= _TRIM_MIN_FLOPS:
            release_freed_heap()

    def _check_weight(self, sample_weight: object, n: int) -> torch.Tensor | None:
        if sample_weight is None:
            return None
        if isinstance(sample_weight, np.ndarray):
            sample_weight = torch.from_numpy(np.array(sample_weight))
        if not isinstance(sample_weight, torch.Tensor):
            raise TypeError(f"sample_weight must be a tensor, array or None, got {type(sample_weight).__name__}")
        w = sample_weight.detach().to(device=self.device, dtype=_F64).reshape(-1)
        if w.shape[0] != n:
            raise ValueError(f"sample_weight must have {n} entries (one per row of H), got {w.shape[0]}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("sample_weight must be finite and non-negative")
        return w

    def _augmented(self, H: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """The rows [h, y, 1]·√w in ``accumulate_dtype``: (n, d + k + 1)."""
        d, k = self.n_features, self.n_targets
        n = H.shape[0]
        # one workspace reused across batches: a fresh n × D buffer per batch costs page faults
        if self._work is None or self._work.shape[0] < n:
            self._work = torch.empty(n, d + k + 1, dtype=self.accumulate_dtype, device=self.device)
        A = self._work[:n]
        A[:, :d] = H  # the float32 → float64 cast (default policy) happens in this copy
        A[:, d : d + k] = Y
        A[:, -1] = 1.0
        if w is not None:
            A *= w.sqrt()[:, None]
        return A

    def _accumulate(self, H: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None, sign: float) -> None:
        """M += sign · AᵀA (lower triangle) for the augmented rows A."""
        A = self._augmented(H, Y, w)
        if self.accumulate_dtype != _F64:  # this batch's Gram in float32, summed into M in float64
            if self._partial is None:
                self._partial = torch.zeros_like(self.M, dtype=self.accumulate_dtype)
            P = gram_update_(self._partial.zero_(), A)
            self.M.add_(P, alpha=sign)
        elif sign > 0:
            gram_update_(self.M, A)
        else:
            self.M -= gram_update_(torch.zeros_like(self.M), A)

    def _flush_rows(self) -> None:
        """Fold the kept rows into M, and stop keeping rows."""
        if self._rows is None:
            return
        rows, self._rows = self._rows, None
        for H, Y, w in rows:
            self._accumulate(H, Y, w, sign=1.0)

    # ------------------------------------------------------------------ algebra
    def _check_compatible(self, other: object) -> "RidgeStats":
        if not isinstance(other, RidgeStats):
            raise TypeError(f"can only combine RidgeStats with RidgeStats, got {type(other).__name__}")
        if (other.n_features, other.n_targets, other.fit_intercept) != (
            self.n_features,
            self.n_targets,
            self.fit_intercept,
        ):
            raise ValueError(
                "RidgeStats differ in (n_features, n_targets, fit_intercept): "
                f"{(self.n_features, self.n_targets, self.fit_intercept)} vs "
                f"{(other.n_features, other.n_targets, other.fit_intercept)}"
            )
        return other

    def copy(self) -> "RidgeStats":
        """A deep copy."""
        out = RidgeStats(self.n_features, self.n_targets, fit_intercept=self.fit_intercept, dual=False,
                         device=self.device, accumulate_dtype=self.accumulate_dtype)
        out.M.copy_(self.M)
        out.n_rows = self.n_rows
        out._rows = None if self._rows is None else list(self._rows)
        return out

    def _folded_M(self) -> torch.Tensor:
        """M with any kept rows folded in, without changing self."""
        if self._rows is None:
            return self.M
        other = self.copy()
        other._flush_rows()
        return other.M

    def __iadd__(self, other: "RidgeStats") -> "RidgeStats":
        """Merge: the statistics of the concatenated data."""
        self._check_compatible(other)
        if self._rows is not None and other._rows is not None and self.n_rows + other.n_rows <= self.n_features:
            self._rows = self._rows + other._rows
        else:
            self._flush_rows()
            self.M += other._folded_M()
        self.n_rows += other.n_rows
        return self

    def __add__(self, other: "RidgeStats") -> "RidgeStats":
        return self.copy().__iadd__(other)

    def __isub__(self, other: "RidgeStats") -> "RidgeStats":
        """Downdate: remove rows that were added before (exact unlearning, hold-out by subtraction)."""
        self._check_compatible(other)
        if other.n_rows > self.n_rows:
            raise ValueError(f"cannot remove {other.n_rows} rows from statistics of {self.n_rows} rows")
        self._flush_rows()
        self.M -= other._folded_M()
        self.n_rows -= other.n_rows
        return self

    def __sub__(self, other: "RidgeStats") -> "RidgeStats":
        return self.copy().__isub__(other)

    def downdate(self, H: torch.Tensor, Y: torch.Tensor, sample_weight: torch.Tensor | None = None) -> "RidgeStats":
        """Remove a batch that was added with :meth:`update` (same rows, same weights)."""
        removed = RidgeStats(self.n_features, self.n_targets, fit_intercept=self.fit_intercept, dual=False,
                             device=self.device, accumulate_dtype=self.accumulate_dtype)
        removed.update(H, Y, sample_weight)
        return self.__isub__(removed)

    def select(self, features: Sequence[int] | torch.Tensor | None = None,
               targets: Sequence[int] | torch.Tensor | None = None) -> "RidgeStats":
        """The statistics of the regression on a subset of the feature columns and of the target columns.

        Every block of M restricted to the chosen columns is exactly what streaming those columns alone
        would have accumulated, so one pass over a wide concatenation of candidate features yields the
        statistics of every subset of them (e.g. each pair of layers a fused head could read).
        ``None`` keeps all columns of that block.
        """
        d, k = self.n_features, self.n_targets
        f = torch.arange(d) if features is None else self._check_index("features", features, d)
        t = torch.arange(k) if targets is None else self._check_index("targets", targets, k)
        return self.subproblem(f, t + d)

    def subproblem(self, features: Sequence[int] | torch.Tensor, targets: Sequence[int] | torch.Tensor) -> "RidgeStats":
        """Re-root the statistics: regress the columns ``targets`` on the columns ``features``, both indexing
        the joint columns [H | Y] (0 … d + k − 1), e.g. one target block on another.

        M is the Gram of every column streamed, so any regression between disjoint sets of them is a
        sub-block of it: an auto-encoder's statistics whose targets are [A | labels] also hold the
        regression of the labels on A, at no extra pass.
        """
        D = self.n_features + self.n_targets
        f = self._check_index("features", features, D)
        t = self._check_index("targets", targets, D)
        if np.intersect1d(f.numpy(), t.numpy()).size:
            raise ValueError("features and targets must be disjoint sets of columns")
        out = RidgeStats(f.numel(), t.numel(), fit_intercept=self.fit_intercept, dual=False, device=self.device,
                         accumulate_dtype=self.accumulate_dtype)
        full = torch.cat([f, t, torch.tensor([D])]).to(self.device)
        sub = self._folded_M()[full][:, full]  # a lower triangle, permuted: one of (a, b), (b, a) is zero
        sym = sub + sub.T
        sym.diagonal().mul_(0.5)
        out.M.copy_(torch.tril(sym))
        out.n_rows = self.n_rows
        return out

    @staticmethod
    def _check_index(name: str, idx: object, size: int) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.int64).reshape(-1).cpu()
        if idx.numel() == 0:
            raise ValueError(f"{name} must select at least one column, got an empty selection")
        if int(idx.min()) < 0 or int(idx.max()) >= size:
            raise ValueError(f"{name} must index columns 0..{size - 1}, got values from {int(idx.min())} to "
                             f"{int(idx.max())}")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError(f"{name} must not repeat a column")
        return idx

    def all_reduce(self, group: object | None = None) -> "RidgeStats":
        """Sum the statistics of every rank of ``torch.distributed`` (one collective), in place.

        Afterwards every rank holds the statistics of the union of all shards and solves the
        identical system. Use gloo for CPU statistics and NCCL for CUDA ones.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("all_reduce needs torch.distributed to be initialized (dist.init_process_group)")
        self._flush_rows()
        count = torch.tensor([float(self.n_rows)], dtype=_F64, device=self.device)
        flat = torch.cat([self.M.reshape(-1), count])
        if group is None:  # CPU statistics under a NCCL-only group go through the current CUDA device
            from ..distributed import all_reduce_sum_

            all_reduce_sum_(flat)
        else:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        self.M.copy_(flat[:-1].view_as(self.M))
        self.n_rows = int(round(float(flat[-1])))
        return self

    # ------------------------------------------------------------------ solving
    def _check_nonempty(self) -> None:
        if self.n_rows == 0 or self.n <= 0:
            raise ValueError("RidgeStats holds no data (n_rows=0 or total weight 0); call update() first")
        # a sum is finite only if every term is: one pass without a D × D boolean temporary, exact check on failure
        if self._rows is None and not math.isfinite(float(self.M.sum())) and not bool(torch.isfinite(self.M).all()):
            raise ValueError("RidgeStats holds NaN or infinite statistics: a batch passed with check_finite=False "
                             "had non-finite features or targets (e.g. an overflowing feature map)")

    def centered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The centred statistics (G̃, C̃, ‖Ỹ‖² per column): full symmetric G̃ = HᵀDH − n h̄h̄ᵀ, etc."""
        return self._centered(full=True)

    def _centered(self, full: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`centered`; with ``full=False`` only G̃'s lower triangle is valid — what :func:`spd_solve` reads —
        from one plain copy: the full matrix costs a strided transpose pass over d² entries the solve never reads.
        The lower triangle is the same bit for bit either way."""
        self._check_nonempty()
        if self._rows is not None:
            stats = self.copy()
            stats._flush_rows()
            return stats._centered(full)
        G = self.G.clone(memory_format=torch.contiguous_format)
        C = self.C.clone()
        h_sum, y_sum, yy, n = self._sums()
        yy = yy.clone()
        if self.fit_intercept:
            h_mean, y_mean = h_sum / n, y_sum / n
            G.addr_(h_mean, h_mean, alpha=-n)  # G − n · h̄h̄ᵀ in one pass, no d × d temporary
            C -= n * torch.outer(h_mean, y_mean)
            yy -= n * y_mean * y_mean
        if full:  # mirror the lower triangle: exactly symmetric (addr_ may round h̄ᵢh̄ⱼ and h̄ⱼh̄ᵢ apart)
            G = symmetrize(G.tril_())
        return G, C, yy

    def _intercept(self, coef: torch.Tensor) -> torch.Tensor:
        if not self.fit_intercept:
            return torch.zeros(self.n_targets, dtype=_F64, device=self.device)
        h_sum, y_sum, _, n = self._sums()
        return (y_sum - h_sum @ coef) / n

    @staticmethod
    def _check_lam(lam: object, name: str = "lam") -> float:
        if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a non-negative float, got {lam!r}")
        lam = float(lam)
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"{name} must be a finite float >= 0, got {lam!r}")
        return lam

    def solve(self, lam: float) -> RidgeSolution:
        """Solve the ridge problem for one λ.

        Primal: W = (G̃ + λI)⁻¹C̃ by Cholesky in float64, falling back to an eigendecomposition
        pseudo-inverse (with :class:`~pilearn.solvers.IllConditionedWarning`) when G̃ + λI is singular
        or its condition number exceeds 1e12. Dual, while the rows are kept (n < d):
        W = H̃ᵀD½(D½H̃H̃ᵀD½ + λI)⁻¹D½Ỹ, an n × n system.

        Returns:
            A :class:`RidgeSolution`; the weights are always finite.
        """
        lam = self._check_lam(lam)
        self._check_nonempty()
        if self._rows is not None and self.n_rows < self.n_features:
            return self._solve_dual(lam)
        return self._solve_primal(lam)

    def _solve_primal(self, lam: float, centred: tuple[torch.Tensor, torch.Tensor] | None = None) -> RidgeSolution:
        """(G̃ + λI)⁻¹C̃, factoring a fresh copy of G̃ in place (:func:`cholesky_solve_`); when the Cholesky is
        rejected the copy is formed again for the eigendecomposition fallback (:func:`pinv_solve`). ``centred``:
        the (lower-triangle G̃, C̃) to copy instead of forming them from M."""
        def system() -> tuple[torch.Tensor, torch.Tensor]:
            if centred is None:
                G, C, _ = self._centered(full=False)
            else:
                G, C = centred[0].clone(), centred[1]
            G.diagonal().add_(lam)
            return G, C

        G, C = system()
        coef = cholesky_solve_(G, C)
        method = "cholesky"
        if coef is None:  # the factorization destroyed G: form it again for the eigendecomposition
            del G
            coef, method = pinv_solve(*system(), stacklevel=4), "eigh"  # the warning points at solve()'s caller
        return RidgeSolution(coef, self._intercept(coef), lam, method)

    def solve_many(self, lams: Iterable[float]) -> Iterator[RidgeSolution]:
        """Solutions for several λ, lazily, forming the centred statistics once (one Cholesky per λ).

        Equals ``(self.solve(lam) for lam in lams)``; for large d it saves the d × d centring and
        symmetrizing of every :meth:`solve`. Consume it before changing the statistics.
        """
        if self._rows is not None and self.n_rows < self.n_features:
            for lam in lams:
                yield self.solve(lam)
            return
        G, C, _ = self._centered(full=False)
        for lam in lams:
            yield self._solve_primal(self._check_lam(lam), (G, C))

    def _solve_dual(self, lam: float) -> RidgeSolution:
        A, Yw = self._kept_rows()
        K = A @ A.T
        K.diagonal().add_(lam)
        alpha, method = spd_solve(K, Yw)
        coef = A.T @ alpha
        return RidgeSolution(coef, self._intercept(coef), lam, "dual" if method == "cholesky" else method)

    def solve_path(
        self,
        lams: Sequence[float] | torch.Tensor,
        *,
        holdout: "RidgeStats | None" = None,
        return_coefs: bool = False,
    ) -> RidgePath:
        """Evaluate a λ grid from one eigendecomposition G̃ = V diag(s) Vᵀ.

        With z = VᵀC̃ (the rotated cross-products):

            W(λ)   = V diag(1/(s+λ)) z
            RSS(λ) = ‖Ỹ‖² − Σᵢ ‖zᵢ‖² (2/(sᵢ+λ) − sᵢ/(sᵢ+λ)²)
            df(λ)  = Σᵢ sᵢ/(sᵢ+λ)  (+1 for the intercept)
            GCV(λ) = (RSS/(n·k)) / (1 − df/n)²

        all from the statistics alone (Golub, Heath & Wahba 1979). With ``holdout`` (statistics of
        held-out rows), the hold-out mean squared error of each W(λ) is computed from its G, C and
        sums too, and picks ``best_lam``.
        """
        lam_t = torch.as_tensor(lams, dtype=_F64).reshape(-1)
        if lam_t.numel() == 0:
            raise ValueError("lams must hold at least one value, got an empty sequence")
        for v in lam_t.tolist():
            self._check_lam(v, "lams")
        if holdout is not None:
            self._check_compatible(holdout)
            holdout._check_nonempty()
        s, z, to_coef, yy, q2 = self._spectrum()
        z2 = (z * z).sum(1)  # (m,)
        lam_d = lam_t.to(self.device)
        tol = s.numel() * torch.finfo(_F64).eps * float(s.max())
        s = torch.where(s > tol, s, torch.zeros_like(s))  # round-off in a null space is zero
        denom = s[None, :] + lam_d[:, None]  # (L, m)
        # λ = 0 on a null direction: the pseudo-inverse drops it
        inv = torch.where(denom > tol, 1.0 / denom.clamp_min(tol), torch.zeros_like(denom))
        if q2 is None:
            rss = (yy.sum() - ((2 * inv - s[None, :] * inv * inv) * z2[None, :]).sum(1)).clamp_min(0.0)
        else:  # dual: U spans all of Rⁿ, so the residual D½Ỹ − ŷ = U diag(λ/(s+λ)) q exactly
            rss = (((1.0 - s[None, :] * inv) ** 2) * q2[None, :]).sum(1)
        df = (s[None, :] * inv).sum(1) + (1.0 if self.fit_intercept else 0.0)
        n, k = self.n, self.n_targets
        train_mse = rss / (n * k)
        gcv = train_mse / (1.0 - df / n).clamp_min(1e-12) ** 2
        gcv = torch.where(df < n, gcv, torch.full_like(gcv, float("inf")))
        coefs = None
        holdout_mse = None
        if holdout is not None or return_coefs:
            coef_list = [to_coef(inv[i]) for i in range(lam_t.numel())]
            if return_coefs:
                coefs = torch.stack(coef_list)
            if holdout is not None:
                holdout_mse = torch.stack([holdout._sse(W, self._intercept(W)) for W in coef_list]) / (
                    holdout.n * k
                )
        crit = holdout_mse if holdout_mse is not None else gcv
        best = int(torch.argmin(crit))
        return RidgePath(lam_t, gcv.cpu(), df.cpu(), train_mse.cpu(),
                         None if holdout_mse is None else holdout_mse.cpu(), float(lam_t[best]), best,
                         None if coefs is None else coefs)

    def _kept_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept rows, centred and scaled by √w: (A = D½H̃ (n, d), D½Ỹ (n, k))."""
        H = torch.cat([r[0] for r in self._rows])
        Y = torch.cat([r[1] for r in self._rows])
        w = torch.cat([r[2] if r[2] is not None else torch.ones(r[0].shape[0], dtype=_F64, device=self.device)
                       for r in self._rows])
        if self.fit_intercept:
            h_sum, y_sum, _, n = self._sums()
            H = H - h_sum / n
            Y = Y - y_sum / n
        sw = w.sqrt()[:, None]
        return H * sw, Y * sw

    def _spectrum(self):
        """Eigen-pairs of the centred problem: (s (m,), z (m, k), coef(inv) -> (d, k), ‖Ỹ‖² (k,), q² or None).

        Primal: G̃ = V diag(s) Vᵀ, z = VᵀC̃, W = V diag(inv) z. Dual (rows kept, n < d):
        K = AAᵀ = U diag(s) Uᵀ with A = D½H̃; G̃ has the same non-zero eigenvalues, z = diag(√s) UᵀD½Ỹ,
        and W = AᵀU diag(inv) UᵀD½Ỹ: an n × n eigendecomposition instead of d × d.
        """
        self._check_nonempty()
        if self._rows is not None and self.n_rows < self.n_features:
            A, Yw = self._kept_rows()
            s, U = torch.linalg.eigh(A @ A.T)
            s = s.clamp_min(0.0)
            q = U.T @ Yw
            coef = lambda inv: A.T @ (U @ (inv[:, None] * q))  # noqa: E731
            return s, s.sqrt()[:, None] * q, coef, (Yw * Yw).sum(0), (q * q).sum(1)
        G, C, yy = self.centered()
        s, V = torch.linalg.eigh(G)
        s = s.clamp_min(0.0)
        z = V.T @ C
        return s, z, lambda inv: V @ (inv[:, None] * z), yy, None

    def gram_trace(self) -> float:
        """tr(G̃), the sum of the centred Gram's eigenvalues (a scale for relative λ grids)."""
        self._check_nonempty()
        if self._rows is not None:
            A, _ = self._kept_rows()
            return float((A * A).sum())
        h_sum, _, _, n = self._sums()
        tr = float(self.G.diagonal().sum())
        if self.fit_intercept:
            tr -= float(h_sum @ h_sum) / n
        return tr

    def mse(self, coef: torch.Tensor, intercept: torch.Tensor) -> float:
        """Mean squared error Σᵢwᵢ‖yᵢ − hᵢW − b‖² / (n·k) of a solution on the rows of these statistics."""
        self._check_nonempty()
        return float(self._sse(coef.to(_F64), intercept.to(_F64))) / (self.n * self.n_targets)

    def _sse(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Weighted Σ‖y − hW − b‖² over the rows of these statistics, from M alone.

        Expanding the square, with G = HᵀDH, C = HᵀDY, s_h = HᵀD1, s_y = YᵀD1, n = 1ᵀD1:

            Σ‖y‖² − 2 tr(WᵀC) − 2 bᵀs_y + tr(WᵀGW) + 2 bᵀWᵀs_h + n‖b‖²,

        which costs O(d²k), not the O((d + k)²k) of tr(AᵀMA): it matters when the targets are wide
        (an auto-encoder reconstructing its d-dimensional input).
        """
        d, k = self.n_features, self.n_targets
        L = self._folded_M()
        G = L[:d, :d]  # lower triangle: tr(WᵀGW) = 2·Σ W∘(G W) − Σ W∘(diag(G) W)
        C = L[d : d + k, :d].T
        h_sum, y_sum, n = L[-1, :d], L[-1, d : d + k], L[-1, -1]
        yy = L[d : d + k, d : d + k].diagonal().sum()
        GW = G @ W
        quad = 2 * (W * GW).sum() - (W * (G.diagonal()[:, None] * W)).sum()
        return (yy - 2 * (W * C).sum() - 2 * (b @ y_sum) + quad + 2 * (b @ (W.T @ h_sum)) + n * (b @ b))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that fully describe the statistics (kept rows are folded into M first)."""
        return self._state(clone=True)

    def _state(self, clone: bool) -> dict[str, torch.Tensor]:
        """:meth:`state_dict`, with M itself instead of a copy when ``clone`` is False (a checkpoint writer that
        must not hold a second d × d matrix)."""
        self._flush_rows()
        return {
            "M": self.M.clone() if clone else self.M,
            "n_rows": torch.tensor(self.n_rows, dtype=torch.int64),
            "shape": torch.tensor([self.n_features, self.n_targets], dtype=torch.int64),
            "fit_intercept": torch.tensor(self.fit_intercept),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "RidgeStats":
        """Restore statistics written by :meth:`state_dict` (shapes must match)."""
        for key in ("M", "n_rows", "shape", "fit_intercept"):
            if key not in state:
                raise KeyError(f"state_dict lacks {key!r}")
        shape = tuple(int(v) for v in state["shape"])
        if shape != (self.n_features, self.n_targets):
            raise ValueError(f"state_dict holds statistics of (n_features, n_targets) = {shape}, "
                             f"these have {(self.n_features, self.n_targets)}")
        if tuple(state["M"].shape) != tuple(self.M.shape):
            raise ValueError(f"state_dict['M'] must have shape {tuple(self.M.shape)}, got {tuple(state['M'].shape)}")
        if bool(state["fit_intercept"]) != self.fit_intercept:
            raise ValueError(f"state_dict has fit_intercept={bool(state['fit_intercept'])}, "
                             f"these statistics have {self.fit_intercept}")
        self.M.copy_(state["M"])
        self.n_rows = int(state["n_rows"])
        self._rows = None
        return self

    @classmethod
    def from_batches(cls, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n_features: int, n_targets: int,
                     **kwargs: object) -> "RidgeStats":
        """Accumulate an iterable of ``(H, Y)`` or ``(H, Y, sample_weight)`` batches."""
        stats = cls(n_features, n_targets, **kwargs)
        for batch in batches:
            stats.update(*batch)
        return stats

    def __repr__(self) -> str:
        extra = "" if self.accumulate_dtype == _F64 else f", accumulate_dtype={self.accumulate_dtype}"
        return (f"RidgeStats(n_features={self.n_features}, n_targets={self.n_targets}, "
                f"n_rows={self.n_rows}, fit_intercept={self.fit_intercept}, device={str(self.device)!r}{extra})")
