"""scikit-learn estimators for single-hidden-layer PIL networks.

A PIL network maps inputs through a fixed, seeded random feature map ``H = φ(X)`` and solves the
output layer in closed form: ``W = (H̃ᵀH̃ + λI)⁻¹H̃ᵀỸ`` (Guo & Lyu's pseudoinverse learning; the
extreme learning machine of Huang et al. 2006 is the same model). Training is one streaming pass
that accumulates :class:`~pilearn.solvers.RidgeStats`, then one solve; ``partial_fit`` adds rows,
``forget`` removes them exactly; ``distributed=True`` sums the statistics of every rank's shard.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterator, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ..distributed import all_reduce_floats, check_distributed, union_labels
from ..features import (
    BiPILFeatures,
    FeatureMap,
    RandomProjection,
    feature_map_from_config,
    stream_features,
)
from ..solvers import RidgeStats
from ._common import DEFAULT_HOLDOUT_GRID, check_common_params, holdout_scan, lam_scale
from ._conv import conv_features

__all__ = ["PILClassifier", "PILRegressor", "DEFAULT_LAM_GRID"]

#: λ/(tr(G̃)/d) candidates for ``lam="auto"``: λ relative to the mean eigenvalue of the centred Gram.
DEFAULT_LAM_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-8, 2, 21))

FeatureKind = Literal["dense", "bipil", "conv"]
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor over ``a``'s memory, copying only a read-only array (a memmap, say)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class _BasePIL(BaseEstimator):
    """Shared fitting machinery: features → RidgeStats → solve."""

    def __init__(
        self,
        *,
        n_hidden: int = 1000,
        activation: str = "gelu",
        features: FeatureKind | dict | FeatureMap = "dense",
        kind: str = "gaussian",
        fusion: Literal["concat", "add", "single"] = "concat",
        image_shape: tuple[int, int, int] | None = None,
        input_scale: float | Literal["auto"] = "auto",
        lam: float | Literal["auto", "holdout"] = "auto",
        lam_grid: tuple[float, ...] | None = None,
        validation_fraction: float = 0.1,
        batch_size: int = 4096,
        distributed: bool = False,
        device: str = "cpu",
        dtype: Literal["float32", "float64"] = "float32",
        random_state: int | None = None,
    ) -> None:
        self.n_hidden = n_hidden
        self.activation = activation
        self.features = features
        self.kind = kind
        self.fusion = fusion
        self.image_shape = image_shape
        self.input_scale = input_scale
        self.lam = lam
        self.lam_grid = lam_grid
        self.validation_fraction = validation_fraction
        self.batch_size = batch_size
        self.distributed = distributed
        self.device = device
        self.dtype = dtype
        self.random_state = random_state

    # ------------------------------------------------------------------ validation
    def _validate_params(self) -> None:
        if isinstance(self.n_hidden, bool) or not isinstance(self.n_hidden, numbers.Integral) or self.n_hidden < 1:
            raise ValueError(f"n_hidden must be a positive int, got {self.n_hidden!r}")
        if isinstance(self.lam, str):
            if self.lam not in ("auto", "holdout"):
                raise ValueError(f"lam must be a float >= 0, 'auto' or 'holdout', got {self.lam!r}")
        elif isinstance(self.lam, bool) or not isinstance(self.lam, numbers.Real) or not (
            np.isfinite(self.lam) and self.lam >= 0
        ):
            raise ValueError(f"lam must be a float >= 0, 'auto' or 'holdout', got {self.lam!r}")
        if not (isinstance(self.input_scale, str) and self.input_scale == "auto"):
            if isinstance(self.input_scale, bool) or not isinstance(self.input_scale, numbers.Real) or not (
                np.isfinite(self.input_scale) and self.input_scale > 0
            ):
                raise ValueError(f"input_scale must be a float > 0 or 'auto', got {self.input_scale!r}")
        if self.lam_grid is not None:
            grid = np.asarray(self.lam_grid, dtype=float).ravel()
            if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
                raise ValueError(f"lam_grid must be a non-empty sequence of positive floats, got {self.lam_grid!r}")
        if not (isinstance(self.features, (dict, FeatureMap)) or self.features in ("dense", "bipil", "conv")):
            raise ValueError(
                f"features must be 'dense', 'bipil', 'conv', a FeatureMap or its config dict, got {self.features!r}"
            )
        check_common_params(self, tuple(_DTYPES))
        if check_distributed(self.distributed) and self.random_state is None:
            raise ValueError("distributed=True needs random_state (an int): every rank must draw the same random "
                             "features, got random_state=None")

    @property
    def _torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def _resolve_seed(self) -> int:
        if self.random_state is None:
            return int(np.random.default_rng().integers(0, 2**31 - 1))
        return int(self.random_state)

    def _resolve_input_scale(self, X: np.ndarray, sample_weight: np.ndarray | None) -> float:
        """``input_scale='auto'``: 1/RMS(X) (sample-weighted), so random pre-activations have unit variance."""
        if not isinstance(self.input_scale, str):
            return float(self.input_scale)
        if self.distributed:
            return self._reduced_input_scale(X, sample_weight)
        row_ms = np.einsum("ij,ij->i", X, X, dtype=np.float64) / X.shape[1]  # no float64 copy of X
        total = 0.0 if sample_weight is None else float(np.sum(sample_weight))
        rms = float(np.sqrt(np.average(row_ms, weights=sample_weight if total > 0 else None)))
        return 1.0 / rms if rms > 0 else 1.0

    def _reduced_input_scale(self, X: np.ndarray, sample_weight: np.ndarray | None) -> float:
        """``input_scale='auto'`` over every rank's rows: the (weighted) mean square summed over the ranks."""
        row_ms = np.einsum("ij,ij->i", X, X, dtype=np.float64) / X.shape[1]
        w = np.ones(len(row_ms)) if sample_weight is None else sample_weight
        wms, wsum, ms, n = all_reduce_floats([row_ms @ w, w.sum(), row_ms.sum(), len(row_ms)])
        rms = float(np.sqrt(wms / wsum if wsum > 0 else ms / n))
        return 1.0 / rms if rms > 0 else 1.0

    def _build_feature_map(self, n_in: int, seed: int) -> FeatureMap:
        dev, dt = torch.device(self.device), self._torch_dtype
        scale = self.input_scale_ / np.sqrt(n_in)  # pre-activation variance ≈ 1 for unit-RMS inputs
        spec = self.features
        if isinstance(spec, FeatureMap):
            fmap = feature_map_from_config(spec.get_config(), device=dev)
        elif isinstance(spec, dict):
            fmap = feature_map_from_config(spec, device=dev)
        elif spec == "dense":
            fmap = RandomProjection(n_in, self.n_hidden, kind=self.kind, activation=self.activation, scale=scale,
                                    seed=seed, dtype=dt, device=dev)
        elif spec == "bipil":
            width = self.n_hidden // 2 if self.fusion == "concat" else self.n_hidden
            if width < 1:
                raise ValueError(f"n_hidden must be >= 2 for features='bipil' with fusion='concat', got {self.n_hidden}")
            fmap = BiPILFeatures(n_in, width, fusion=self.fusion, kind=self.kind, activation=self.activation,
                                 scale=scale, seed=seed, dtype=dt, device=dev)
        else:  # conv
            fmap = conv_features(self._image_shape(n_in), seed=seed, dtype=dt, device=dev)
        if fmap.in_features != n_in:
            raise ValueError(f"the feature map takes {fmap.in_features} input features, X has {n_in}")
        return fmap

    def _image_shape(self, n_in: int) -> tuple[int, int, int]:
        if self.image_shape is not None:
            shape = tuple(int(v) for v in self.image_shape)
            if len(shape) != 3 or int(np.prod(shape)) != n_in:
                raise ValueError(f"image_shape must be (C, H, W) with C*H*W == n_features ({n_in}), "
                                 f"got {self.image_shape!r}")
            return shape  # type: ignore[return-value]
        for c in (1, 3):
            side = int(round((n_in / c) ** 0.5))
            if c * side * side == n_in:
                return (c, side, side)
        raise ValueError(f"features='conv' needs image_shape=(C, H, W); could not infer it from {n_in} features")

    # ------------------------------------------------------------------ fitting core
    def _batches(self, X: np.ndarray, *arrays: np.ndarray | None) -> Iterator[tuple[torch.Tensor, ...]]:
        dev, dt = torch.device(self.device), self._torch_dtype
        for i in range(0, X.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            xb = _to_tensor(X[sl]).to(device=dev, dtype=dt)
            rest = tuple(None if a is None else _to_tensor(a[sl]).to(device=dev, dtype=torch.float64)
                         for a in arrays)
            yield (xb, *rest)

    def _transform_batches(self, X: np.ndarray, *arrays: np.ndarray | None,
                           reuse: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """(features, *arrays) per batch; with ``reuse`` every batch's features overwrite one buffer
        (:func:`~pilearn.features.stream_features`), for loops that consume a batch before the next."""
        if reuse:
            yield from stream_features(self.feature_map_, self._batches(X, *arrays))
            return
        with torch.no_grad():
            for xb, *rest in self._batches(X, *arrays):
                yield (self.feature_map_(xb), *rest)

    def _init_fit(self, X: np.ndarray, n_targets: int, sample_weight: np.ndarray | None) -> None:
        self.seed_ = self._resolve_seed()
        self.input_scale_ = self._resolve_input_scale(X, sample_weight)
        self.feature_map_ = self._build_feature_map(X.shape[1], self.seed_)
        self.stats_ = RidgeStats(self.feature_map_.out_features, n_targets, device=self.device)

    def _fit_stats(self, X: np.ndarray, T: np.ndarray, sample_weight: np.ndarray | None) -> None:
        """Accumulate all rows and solve; with ``lam='holdout'`` a seeded ``validation_fraction`` of
        the rows is also accumulated apart, to choose λ, before the final solve on every row."""
        if self.lam != "holdout":
            self._accumulate(X, T, sample_weight)
            self._solve()
            return
        hold = np.random.default_rng(self.seed_).random(X.shape[0]) < self.validation_fraction
        n_hold, n_kept, n_all = all_reduce_floats([hold.sum(), (~hold).sum(), X.shape[0]], self.distributed)
        if n_hold < 1 or n_kept < 1:  # the summed counts: every rank raises together
            raise ValueError(f"lam='holdout' needs rows on both sides of the split; with {int(n_all)} samples and "
                             f"validation_fraction={self.validation_fraction} one side is empty")
        d, k = self.stats_.n_features, self.stats_.n_targets
        held = RidgeStats(d, k, dual=False, device=self.device)
        kept = self.stats_
        # one pass over the data: each feature batch is split by the mask (no copies of X)
        starts = range(0, X.shape[0], self.batch_size)
        for i, (H, Tb, wb) in zip(starts, self._transform_batches(X, T, sample_weight, reuse=True)):
            m = torch.as_tensor(hold[i : i + self.batch_size], device=H.device)
            for stats, sel in ((held, m), (kept, ~m)):
                if bool(sel.any()):
                    stats.update(H[sel], Tb[sel], None if wb is None else wb[sel], check_finite=False)
        held.release_workspace()
        kept.release_workspace()
        if self.distributed:  # both sides of every rank's split, summed
            held.all_reduce()
            kept.all_reduce()
        kept += held
        self._solve(holdout=held)

    def _accumulate(self, X: np.ndarray, T: np.ndarray, sample_weight: np.ndarray | None, sign: int = 1) -> None:
        """Add (``sign`` > 0) or remove the rows' statistics; with ``distributed``, those of every rank's rows."""
        if sign > 0 and not self.distributed:
            for H, Tb, wb in self._transform_batches(X, T, sample_weight, reuse=True):
                self.stats_.update(H, Tb, wb, check_finite=False)  # X and y passed validate_data
            self.stats_.release_workspace()
            return
        delta = RidgeStats(self.stats_.n_features, self.stats_.n_targets, dual=False, device=self.device)
        for H, Tb, wb in self._transform_batches(X, T, sample_weight, reuse=True):
            delta.update(H, Tb, wb, check_finite=False)
        delta.release_workspace()
        if self.distributed:
            delta.all_reduce()
        if sign > 0:
            self.stats_ += delta
        else:
            self.stats_ -= delta

    def _select_holdout(self, train: RidgeStats, hold: RidgeStats) -> float:
        """Relative λ minimizing the hold-out MSE (see :func:`~pilearn.estimators._common.holdout_scan`)."""
        grid = self.lam_grid if self.lam_grid is not None else DEFAULT_HOLDOUT_GRID
        best, _, self.lam_path_ = holdout_scan(train, hold, grid)
        return best

    def _solve(self, holdout: RidgeStats | None = None) -> None:
        """Solve for λ: given, by GCV (``'auto'``), or by hold-out (``'holdout'``, λ kept relative to tr(G̃)/d)."""
        stats = self.stats_
        if self.lam == "auto":  # GCV over λ relative to the mean eigenvalue of G̃
            scale = lam_scale(stats)
            grid = np.asarray(self.lam_grid if self.lam_grid is not None else DEFAULT_LAM_GRID, dtype=float)
            path = stats.solve_path(torch.as_tensor(grid * scale))
            self.lam_path_ = path
            lam = path.best_lam
        elif self.lam == "holdout":
            if holdout is not None:
                self.lam_relative_ = self._select_holdout(stats - holdout, holdout)
            lam = self.lam_relative_ * lam_scale(stats)
        else:
            lam = float(self.lam)
        sol = stats.solve(lam)
        self.lam_ = float(lam)
        self.coef_ = sol.coef.cpu().numpy()
        self.intercept_ = sol.intercept.cpu().numpy()
        self.solver_ = sol.method
        self._cache_weights()

    def _cache_weights(self) -> None:
        # the readout is cheap (n·d·k) and runs in float64, so a score does not depend on batch size
        dev = torch.device(self.device)
        self._W = torch.as_tensor(self.coef_).to(device=dev, dtype=torch.float64)
        self._b = torch.as_tensor(self.intercept_).to(device=dev, dtype=torch.float64)

    def _validate_xy(self, X: Any, y: Any, sample_weight: Any, reset: bool):
        """(X, y, sample weights or None), validated the scikit-learn way."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        classifier = isinstance(self, ClassifierMixin)
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32], multi_output=not classifier,
                             y_numeric=not classifier)
        if X.shape[0] == 0:
            raise ValueError("X is empty (0 samples); fit needs at least one sample")
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=np.float64)
        return X, y, sw

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """The regression targets T (n, k) in float64 for labels or values y."""
        raise NotImplementedError

    def forget(self, X: Any, y: Any, sample_weight: Any = None):
        """Exact unlearning: remove rows that were fitted before and re-solve.

        The result equals a fit without those rows (same seed, same ``input_scale_``), up to float64
        round-off; λ is re-chosen by GCV for ``lam='auto'`` and kept relative for ``'holdout'``.
        """
        check_is_fitted(self, "stats_")
        check_distributed(self.distributed)
        X, y, sw = self._validate_xy(X, y, sample_weight, reset=False)
        self._accumulate(X, self._targets(y), sw, sign=-1)
        self._solve()
        return self

    def _raw_predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        if X.shape[0] == 0:
            raise ValueError("X is empty (0 samples); predict needs at least one sample")
        if not hasattr(self, "_W"):
            self._cache_weights()
        out = [(H.to(torch.float64) @ self._W + self._b).cpu() for (H,) in self._transform_batches(X)]
        return torch.cat(out).numpy()

    def hidden_features(self, X: Any) -> np.ndarray:
        """The hidden features ``H = φ(X)``: (n_samples, n_features_out)."""
        check_is_fitted(self, "feature_map_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return torch.cat([H.cpu() for (H,) in self._transform_batches(X)]).numpy()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_W", None)
        state.pop("_b", None)
        return state

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

    # ------------------------------------------------------------------ persistence
    def save(self, path: str, *, include_stats: bool = False) -> None:
        """Write the fitted model to ``path`` (safetensors: solved weights + JSON config; no pickle).

        The random feature map is stored as its seed and configuration, not as a matrix.
        ``include_stats=True`` also stores the sufficient statistics (d² floats), so that
        ``partial_fit`` and ``forget`` can continue after :meth:`load`.
        """
        from ._io import save_estimator

        save_estimator(self, path, include_stats=include_stats)

    @classmethod
    def load(cls, path: str, *, device: str | None = None):
        """Read a model written by :meth:`save`."""
        from ._io import load_estimator

        return load_estimator(cls, path, device=device)


def _no_holdout_streaming(est: _BasePIL) -> None:
    if est.lam == "holdout":
        raise ValueError("lam='holdout' chooses λ inside fit; partial_fit needs lam to be a float or 'auto' (GCV)")


class PILClassifier(ClassifierMixin, _BasePIL):
    """Pseudoinverse-learning classifier: seeded random features and a closed-form ridge readout.

    The readout regresses one-hot targets (0/1): ``W = (H̃ᵀH̃ + λI)⁻¹H̃ᵀỸ`` with ``H = φ(X)``.
    Least squares on one-hot targets estimates class probabilities (a linear probability model);
    ``predict_proba`` clips those scores to ``[1e-6, 1]`` and renormalizes them.

    Parameters:
        n_hidden: width of the random hidden layer (the total width for ``features='bipil'``).
        activation: ``gelu``, ``relu``, ``tanh``, ``sigmoid``, ``sine``, ``identity``.
        features: ``'dense'`` (one random projection), ``'bipil'`` (two projections fused by
            ``fusion``, the seed notes' Bi-PIL), ``'conv'`` (random convolutional features for images,
            see :func:`~pilearn.estimators.conv_features`), or any :class:`~pilearn.features.FeatureMap`
            (or its config dict).
        kind: random matrix kind: ``gaussian``, ``orthogonal``, ``rademacher``, ``sparse``.
        fusion: Bi-PIL fusion: ``concat``, ``add``, ``single``.
        image_shape: ``(C, H, W)`` of the flattened rows, for ``features='conv'`` (inferred for square
            1- or 3-channel images).
        input_scale: factor applied to the inputs before the ``1/√n_features``-scaled random
            projection; ``'auto'`` uses 1/RMS(X) of the data given to ``fit`` (or to the first
            ``partial_fit`` call; ``forget`` keeps it), stored in ``input_scale_``, so the pre-activations
            have unit variance. Not used by ``'conv'`` or a given FeatureMap. Fix it to a float to make
            ``partial_fit`` over batches equal ``fit`` on their union.
        lam: ridge λ (absolute, like scikit-learn's ``alpha``); ``'auto'``: generalized
            cross-validation over ``lam_grid · tr(G̃)/d`` from one eigendecomposition (O(d³), about 13 s at
            d = 4,096 on 2 cores); ``'holdout'``: a seeded ``validation_fraction`` of the rows is held out
            in a second RidgeStats and λ minimizes its error, one Cholesky per candidate (for large d),
            then the final solve uses every row. ``forget`` keeps the relative λ chosen by ``fit``.
        lam_grid: relative λ candidates (defaults ``DEFAULT_LAM_GRID`` for ``'auto'``,
            ``DEFAULT_HOLDOUT_GRID`` for ``'holdout'``).
        validation_fraction: share of rows held out by ``lam='holdout'``.
        batch_size: rows per streamed batch (bounds memory: O(d² + batch_size·d)).
        distributed: data parallelism under ``torch.distributed`` with *user shards*: each rank passes its own
            rows to ``fit``, and everything fitted from data is summed over the ranks before it is used — the
            classes (their union), ``input_scale='auto'``'s mean square, the RidgeStats (so GCV for
            ``lam='auto'`` sees every row) — so every rank solves the same system and holds the same model.
            ``lam='holdout'``: each rank holds out a seeded ``validation_fraction`` of its own shard and both
            sides' statistics are summed, so the split is not the one a single process draws on the
            concatenated rows. ``partial_fit`` and ``forget`` become collectives (each call's new statistics
            are summed): every rank must call them equally often, each with its own rows (at least one).
            Needs ``random_state``. Under ``torchrun``: ``dist.init_process_group("gloo")`` (``"nccl"`` on
            GPUs), then ``PILClassifier(distributed=True, random_state=0).fit(X_shard, y_shard)``.
        device: torch device for features and statistics.
        dtype: feature dtype (the Gram and the solve are float64 regardless).
        random_state: seed of the feature map; None draws one (stored in ``seed_``).

    Attributes:
        classes_, coef_ (d, n_classes), intercept_, lam_, seed_, feature_map_, stats_
        (the sufficient statistics, for ``partial_fit`` and ``forget``), solver_, n_features_in_.
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "PILClassifier":
        """Fit on (X, y) in one streaming pass and one solve."""
        self._validate_params()
        X, y, sw = self._validate_xy(X, y, sample_weight, reset=True)
        check_classification_targets(y)
        # distributed: every rank binarizes the union of the shards' classes
        self._binarizer = LabelBinarizer().fit(union_labels(y) if self.distributed else y)
        self.classes_ = self._binarizer.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"PILClassifier needs samples of at least 2 classes in y; got 1 class: {self.classes_[0]!r}")
        self._init_fit(X, len(self.classes_), sw)
        self._fit_stats(X, self._targets(y), sw)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> "PILClassifier":
        """Add a batch to the statistics and re-solve. ``classes`` is required on the first call."""
        first = not hasattr(self, "stats_")
        if first:
            self._validate_params()
            _no_holdout_streaming(self)
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit, got None")
            classes = union_labels(np.asarray(classes), bool(self.distributed))
            if len(classes) < 2:
                raise ValueError(f"classes must hold at least 2 classes, got {classes!r}")
            self._binarizer = LabelBinarizer().fit(classes)
            self.classes_ = self._binarizer.classes_
        else:
            check_distributed(self.distributed)
            if classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
                raise ValueError(f"classes={classes!r} differs from the classes of the first call {self.classes_!r}")
        X, y, sw = self._validate_xy(X, y, sample_weight, reset=first)
        check_classification_targets(y)
        if first:
            self._init_fit(X, len(self.classes_), sw)
        self._fit_stats(X, self._targets(y), sw)
        return self

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """One-hot (0/1) targets; labels outside ``classes_`` are an error."""
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y holds labels {unknown.tolist()} that were never fitted (classes {self.classes_.tolist()})")
        T = self._binarizer.transform(y).astype(np.float64)
        if T.shape[1] == 1:  # binary: LabelBinarizer gives one column; use both one-hot columns
            T = np.hstack([1.0 - T, T])
        return T

    def decision_function(self, X: Any) -> np.ndarray:
        """Ridge scores (n, n_classes); for two classes, score(class 1) − score(class 0) of shape (n,)."""
        S = self._raw_predict(X)
        return S[:, 1] - S[:, 0] if S.shape[1] == 2 else S

    def predict(self, X: Any) -> np.ndarray:
        """The class of highest score."""
        scores = self._raw_predict(X)
        return self.classes_[np.argmax(scores, axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Clipped, renormalized least-squares class-probability estimates (n, n_classes)."""
        P = np.clip(self._raw_predict(X), 1e-6, 1.0)
        return P / P.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """log of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))


class PILRegressor(RegressorMixin, _BasePIL):
    """Pseudoinverse-learning regressor: seeded random features and a closed-form ridge readout.

    ``W = (H̃ᵀH̃ + λI)⁻¹H̃ᵀỸ`` with ``H = φ(X)``; single or multi-output ``y``. Parameters and attributes
    as :class:`PILClassifier` (no classes).

    ``distributed=True`` (user shards): each rank passes its own rows; ``input_scale='auto'``'s mean square, the
    RidgeStats (GCV) and, for ``lam='holdout'``, both sides of each rank's own split are summed over the ranks
    before the solve; ``partial_fit`` and ``forget`` are then collectives. Needs ``random_state``. Under
    ``torchrun``: ``dist.init_process_group("gloo")``, then
    ``PILRegressor(distributed=True, random_state=0).fit(X_shard, y_shard)``.
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "PILRegressor":
        """Fit on (X, y) in one streaming pass and one solve."""
        self._validate_params()
        X, y, sw = self._validate_xy(X, y, sample_weight, reset=True)
        self._y_ndim = y.ndim
        Y = self._targets(y)
        self._init_fit(X, Y.shape[1], sw)
        self._fit_stats(X, Y, sw)
        return self

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> "PILRegressor":
        """Add a batch to the statistics and re-solve."""
        first = not hasattr(self, "stats_")
        if first:
            self._validate_params()
            _no_holdout_streaming(self)
        else:
            check_distributed(self.distributed)
        X, y, sw = self._validate_xy(X, y, sample_weight, reset=first)
        Y = self._targets(y)
        if first:
            self._y_ndim = y.ndim
            self._init_fit(X, Y.shape[1], sw)
        elif Y.shape[1] != self.stats_.n_targets:
            raise ValueError(f"y must have {self.stats_.n_targets} target columns as in the first call, got {Y.shape[1]}")
        self._fit_stats(X, Y, sw)
        return self

    def _targets(self, y: np.ndarray) -> np.ndarray:
        return y.reshape(len(y), -1).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions (n,) or (n, n_targets)."""
        P = self._raw_predict(X)
        return P[:, 0] if self._y_ndim == 1 else P

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
