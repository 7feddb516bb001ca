"""The machinery every closed-form generative model here shares: fixed seeded features, one ridge head per
(layer, time cell, class), streamed one head at a time through :class:`~pilearn.solvers.RidgeStats`.

A model built on :class:`ReadoutModel` is

    f̂(x, t | y) = Σ_ℓ φ_ℓ(x, t, …)·B_{ℓ,k,c} + c_{ℓ,k,c}       k = the time cell of t,  c = the class (or −1)

where φ_ℓ are fixed random features and every (B, c) is the ridge solution of its own draws. The subclass says
what a draw is (the path or the forward process: x_t, the time and the regression target), what φ is, and how
times map to cells; this module holds the fit loop, the hold-out λ choice, the routing of a query to its heads,
label handling, and save/load (safetensors: solved heads plus parameters; every random map is rebuilt from
the seed).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import save_file

from .. import __version__
from .._safetensors import read_safetensors
from ..distributed import all_reduce_floats, check_distributed, owns_batch
from ..features import derive_seed, make_generator, sinusoidal_embedding
from ..solvers import DEFAULT_HOLDOUT_GRID, RidgeStats, holdout_scan, lam_scale

__all__ = ["ReadoutModel"]


@dataclass
class _Head:
    """The solved read-out of one (layer, time cell, class): ``f = φ @ coef + intercept``."""

    coef: torch.Tensor  # (d, D)
    intercept: torch.Tensor  # (D,)
    lam: float
    lam_relative: float | None


def check_int(name: str, v: object, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return int(v)


def check_positive_real(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < math.inf:
        raise ValueError(f"{name} must be a finite float > 0, got {v!r}")
    return float(v)


def as_data(name: str, X: Any, *, allow_empty: bool = False) -> torch.Tensor:
    """X as a 2-D finite floating tensor (NumPy arrays are converted; the data are never modified)."""
    if isinstance(X, np.ndarray):
        if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
            raise ValueError(f"{name} must hold real numbers, got dtype {X.dtype}")
        X = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64 if X.dtype == np.float64 else np.float32))
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape (n, D), got {type(X).__name__}")
    if X.ndim != 2:
        raise ValueError(f"{name} must have shape (n, D) (flatten images first), got {tuple(X.shape)}")
    if not X.is_floating_point():
        X = X.to(torch.float32)
    if X.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: got shape {tuple(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        rows = torch.nonzero(~torch.isfinite(X).all(1)).flatten()
        raise ValueError(f"{name} has NaN or infinite values in {len(rows)} row(s), first row {int(rows[0])}")
    return X


def as_labels(y: Any, n: int) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    return y


def check_lam(lam: object, lam_grid: object, validation_fraction: object) -> None:
    """The λ parameters every model shares: a float ≥ 0 or ``"holdout"``, a positive grid, a fraction in (0, 1)."""
    if isinstance(lam, str):
        if lam != "holdout":
            raise ValueError(f"lam must be a float >= 0 or 'holdout', got {lam!r}")
    elif isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not 0 <= lam < math.inf:
        raise ValueError(f"lam must be a float >= 0 or 'holdout', got {lam!r}")
    if lam_grid is not None:
        grid = np.asarray(lam_grid, dtype=float).ravel()
        if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            raise ValueError(f"lam_grid must be a non-empty sequence of positive floats, got {lam_grid!r}")
    vf = validation_fraction
    if isinstance(vf, bool) or not isinstance(vf, numbers.Real) or not 0 < vf < 1:
        raise ValueError(f"validation_fraction must be a float in (0, 1), got {vf!r}")


def check_device(device: object) -> None:
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}") from err


def fourier_frequencies(seed: int, time_dim: int, device: torch.device) -> torch.Tensor:
    """Seeded Gaussian Fourier frequencies (std 4) for :func:`embed_time` (Tancik et al. 2020)."""
    g = make_generator(seed)
    return (4.0 * torch.randn(time_dim // 2 + time_dim % 2, generator=g, dtype=torch.float64)).to(device)


def embed_time(s: torch.Tensor, kind: str, time_dim: int, freqs: torch.Tensor | None, dtype: torch.dtype
               ) -> torch.Tensor:
    """τ(s) for a time ``s (n,)`` in [0, 1]: ``(n, time_dim)`` with entries of mean square 1/time_dim.

    ``"sinusoidal"``: DDPM's embedding of 1000·s; ``"fourier"``: cos/sin of 2π·s·ω for the seeded ``freqs`` ω.
    """
    if kind == "sinusoidal":
        emb = sinusoidal_embedding(1000.0 * s.to(torch.float64), time_dim)
    else:
        args = 2 * math.pi * s.to(torch.float64)[:, None] * freqs[None, :]
        emb = torch.cat([torch.cos(args), torch.sin(args)], 1)[:, :time_dim]
    return (emb * math.sqrt(2.0 / time_dim)).to(dtype)


class ReadoutModel:
    """Base of the closed-form generative models (see the module docstring).

    Subclasses set ``_PARAMS`` (constructor parameters, in order), ``_FORMAT`` (the file tag) and ``_NAME``, and
    implement ``_check_params``, ``_build_maps``, ``_phi``, ``_n_phi``, ``_n_cells``, ``_cell_of`` and ``_draw``.
    Parameters every subclass has: ``conditioning``, ``draws``, ``lam``, ``lam_grid``, ``validation_fraction``,
    ``batch_size``, ``distributed``, ``dtype``, ``device``, ``random_state``; ``num_layers`` defaults to 1.

    ``distributed=True`` (library shards, :mod:`pilearn.distributed`): every rank passes the same data; within a
    head, the batches of the draws are numbered b = 0, 1, … over (draw, batch) and rank r computes features and
    Gram only for the b it owns (``b % world_size == r``). The head's generator is still advanced through every
    batch (a skipped batch is drawn and discarded), so each draw is the one a single process makes, and each
    head's statistics (train and hold-out) and ``n_draws_`` are summed over the ranks before the solve: the
    model equals the one-process fit up to the order of floating-point sums.
    """

    _PARAMS: tuple[str, ...] = ()
    _FORMAT = ""
    _NAME = ""
    num_layers = 1

    # ------------------------------------------------------------------ subclass hooks
    def _check_params(self) -> None:
        raise NotImplementedError

    def _build_maps(self) -> None:
        raise NotImplementedError

    def _phi(self, layer: int, x: torch.Tensor, t: torch.Tensor, onehot: torch.Tensor | None,
             prev: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _n_phi(self, layer: int) -> int:
        raise NotImplementedError

    def _n_cells(self) -> int:
        raise NotImplementedError

    def _cell_of(self, t: torch.Tensor) -> torch.Tensor:
        """The time cell ``(n,)`` long of each time in ``t (n,)``."""
        raise NotImplementedError

    def _draw(self, g: torch.Generator, x1: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of draws for the data rows ``x1 (b, D)`` in time cell ``k``: ``(x_t, t (b,), target)``."""
        raise NotImplementedError

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def _restore_meta(self, meta: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._PARAMS}

    def _check_common_params(self) -> None:
        for name, low in (("draws", 1), ("num_layers", 1), ("batch_size", 1), ("random_state", 0)):
            setattr(self, name, check_int(name, getattr(self, name), low))  # NumPy ints become ints (JSON)
        for name, allowed in {"conditioning": ("separate", "features"), "dtype": ("float32", "float64")}.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        check_lam(self.lam, self.lam_grid, self.validation_fraction)
        check_device(self.device)

    def _set_device(self) -> None:
        self._dt, self._dev = getattr(torch, self.dtype), torch.device(self.device)

    def _label_in_features(self) -> bool:
        return self.n_classes_ > 0 and self.conditioning == "features"

    def _separate(self) -> bool:
        return self.n_classes_ > 0 and self.conditioning == "separate"

    # ------------------------------------------------------------------ fit
    def _fit(self, X: torch.Tensor, y: Any) -> None:
        """Solve every head for data ``X (n, D)`` (checked) and optional labels ``y``."""
        distributed = check_distributed(self.distributed)
        self.dim_ = X.shape[1]
        labels = None if y is None else as_labels(y, X.shape[0])
        if distributed:
            _check_same_data(X, None if labels is None else np.asarray(labels))
        if labels is None:
            self.classes_ = None
            self.n_classes_ = 0
        else:
            self.classes_ = np.unique(labels)
            self.n_classes_ = len(self.classes_)
            labels = np.searchsorted(self.classes_, labels)
        self._set_device()
        self._build_maps()
        groups = self._groups(labels, X.shape[0])
        self.heads_: dict[tuple[int, int, int], _Head] = {}
        self.n_draws_ = 0
        for layer in range(self.num_layers):
            for k in range(self._n_cells()):
                for c, idx in groups:
                    self.heads_[(layer, k, c)] = self._fit_head(layer, k, c, X, labels, idx)
        if distributed:
            self.n_draws_ = int(round(all_reduce_floats([self.n_draws_])[0]))

    def _groups(self, labels: np.ndarray | None, n: int) -> list[tuple[int, np.ndarray]]:
        """(class index or −1, the row indices it owns): one group per class with ``"separate"``, else one."""
        if labels is None or self.conditioning == "features":
            return [(-1, np.arange(n))]
        return [(c, np.flatnonzero(labels == c)) for c in range(self.n_classes_)]

    def _draws(self, layer: int, k: int, c: int, X: torch.Tensor, labels: np.ndarray | None, idx: np.ndarray,
               stream: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """Seeded batches (x_t, t, one-hot or None, target) of head (layer, k, c): ``draws`` per point.

        With ``distributed``, only the batches this rank owns; the others are drawn too (a few random tensors of
        the batch's shape, cheap next to its features and Gram) so that the generator stays in step.
        """
        g = make_generator(derive_seed(self.random_state, "draws", stream, layer, k, c))
        batch = 0  # the global batch number within this head and stream: (draw, batch) in order
        for _ in range(self.draws):
            for s in range(0, len(idx), self.batch_size):
                rows = torch.from_numpy(idx[s: s + self.batch_size])
                owned = owns_batch(batch, self.distributed)
                batch += 1
                xt, t, target = self._draw(g, X[rows].to(self._dev, self._dt), k)
                if not owned:
                    continue
                onehot = None
                if self._label_in_features():
                    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels[rows.numpy()]),
                                                         self.n_classes_).to(self._dev, self._dt)
                yield xt, t, onehot, target

    def _accumulate(self, layer: int, k: int, c: int, X, labels, idx, stream: str) -> RidgeStats:
        stats = RidgeStats(self._n_phi(layer), self.dim_, dual=False, device=self._dev)
        for xt, t, onehot, target in self._draws(layer, k, c, X, labels, idx, stream):
            prev = self._predict_layers(layer, k, c, xt, t, onehot) if layer else None
            if prev is not None:
                target = target - prev
            stats.update(self._phi(layer, xt, t, onehot, prev), target, check_finite=False)
            self.n_draws_ += len(xt)
        stats.release_workspace()
        if self.distributed:  # every rank then holds the statistics of all the head's draws
            stats.all_reduce()
        return stats

    def _fit_head(self, layer: int, k: int, c: int, X, labels, idx: np.ndarray) -> _Head:
        if self.lam != "holdout":
            stats = self._accumulate(layer, k, c, X, labels, idx, "all")
            sol = stats.solve(float(self.lam))
            return _Head(sol.coef.to(self._dt), sol.intercept.to(self._dt), sol.lam, None)
        g = np.random.default_rng(derive_seed(self.random_state, "holdout", layer, k, c))
        perm = g.permutation(idx)
        n_hold = int(round(self.validation_fraction * len(idx)))
        if n_hold < 1 or n_hold >= len(idx):
            raise ValueError(f"lam='holdout' needs points on both sides of the split; head (time cell {k}, class "
                             f"{c}) has {len(idx)} points and validation_fraction={self.validation_fraction}")
        hold = self._accumulate(layer, k, c, X, labels, np.sort(perm[:n_hold]), "hold")
        train = self._accumulate(layer, k, c, X, labels, np.sort(perm[n_hold:]), "train")
        grid = self.lam_grid if self.lam_grid is not None else DEFAULT_HOLDOUT_GRID
        rel, _, _ = holdout_scan(train, hold, grid)
        train += hold
        del hold
        lam = rel * lam_scale(train)
        sol = train.solve(lam)
        return _Head(sol.coef.to(self._dt), sol.intercept.to(self._dt), lam, rel)

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "heads_"):
            name = type(self).__name__
            raise RuntimeError(f"this {name} is not fitted yet; call fit(X) or {name}.load(path)")

    def _predict_layers(self, upto: int, k: int, c: int, x, t, onehot) -> torch.Tensor:
        """Σ_{ℓ < upto} f̂_ℓ(x, t) with every row in time cell k and class group c."""
        prev = None
        for layer in range(upto):
            head = self.heads_[(layer, k, c)]
            v = torch.addmm(head.intercept, self._phi(layer, x, t, onehot, prev), head.coef)
            prev = v if prev is None else prev + v
        return prev

    def _check_query(self, x: Any) -> torch.Tensor:
        x = as_data("x", x, allow_empty=True).to(self._dev, self._dt)
        if x.shape[1] != self.dim_:
            raise ValueError(f"x must have shape (n, {self.dim_}), got {tuple(x.shape)}")
        return x

    def _predict(self, x: torch.Tensor, t: torch.Tensor, labels: np.ndarray | None) -> torch.Tensor:
        """Route each row of ``x (n, D)`` (checked) at time ``t (n,)`` to its heads and sum the layers."""
        cell = self._cell_of(t)
        out = torch.empty_like(x)
        for k in torch.unique(cell).tolist():
            for c in (range(self.n_classes_) if self._separate() else [-1]):
                m = cell == k
                if c >= 0:
                    m &= torch.from_numpy(labels == c).to(self._dev)
                if not bool(m.any()):
                    continue
                onehot = None
                if self._label_in_features():
                    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels).to(self._dev)[m],
                                                         self.n_classes_).to(self._dt)
                out[m] = self._predict_layers(self.num_layers, k, c, x[m], t[m], onehot)
        return out

    def _labels_for(self, y: Any, n: int) -> np.ndarray | None:
        if self.n_classes_ == 0:
            if y is not None:
                raise ValueError("y was given but this model was fitted without labels (unconditional)")
            return None
        if y is None:
            raise ValueError(f"this model is class-conditional: y must hold one of {self.classes_.tolist()} per row")
        labels = as_labels(y, n)
        pos = np.searchsorted(self.classes_, labels).clip(max=self.n_classes_ - 1)
        bad = self.classes_[pos] != labels
        if bad.any():
            raise ValueError(f"y holds labels not seen in fit: {np.unique(labels[bad]).tolist()}; "
                             f"known: {self.classes_.tolist()}")
        return pos

    def _sample_labels(self, n: int | None, y: Any) -> tuple[int, np.ndarray | None]:
        """``(n, label positions or None)`` for a sampling call given ``n`` and/or requested classes ``y``."""
        if y is not None:
            y = np.asarray(y)
            if y.ndim != 1:
                raise ValueError(f"y must be a sequence of class labels of shape (n,), got shape {y.shape}")
            if n is not None and n != len(y):
                raise ValueError(f"n must equal len(y) = {len(y)} when y is given, got {n!r}")
            n = len(y)
        n = check_int("n", n, 1)
        return n, self._labels_for(y, n)

    def n_stored_parameters(self) -> int:
        """Solved numbers the model stores (every head's read-out and intercept; the random maps are a seed)."""
        self._check_fitted()
        return sum(h.coef.numel() + h.intercept.numel() for h in self.heads_.values())

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> None:
        """Write the solved heads and the parameters (the random maps are rebuilt from the seed) to safetensors."""
        self._check_fitted()
        tensors, heads = {}, []
        for (layer, k, c), h in self.heads_.items():
            key = f"{layer}.{k}.{c}"
            tensors[f"coef.{key}"] = h.coef.contiguous().cpu()
            tensors[f"intercept.{key}"] = h.intercept.contiguous().cpu()
            heads.append({"key": [layer, k, c], "lam": h.lam, "lam_relative": h.lam_relative})
        meta = {"format": self._FORMAT, "pilearn": __version__, "params": self.get_params(), "dim": self.dim_,
                "classes": None if self.classes_ is None else self.classes_.tolist(), "heads": heads,
                **self._extra_meta()}
        save_file(tensors, os.fspath(path), metadata={"pilearn": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None):
        """Read a model written by :meth:`save` (no pickle)."""
        meta, tensors = read_safetensors(path, f"{cls.__name__} file")
        raw = meta.get("pilearn")
        if raw is None or json.loads(raw).get("format") != cls._FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a {cls.__name__} file (format {cls._FORMAT})")
        meta = json.loads(raw)
        keys = [".".join(map(str, h["key"])) for h in meta["heads"]]
        missing = [f"coef.{k}" for k in keys if f"coef.{k}" not in tensors or f"intercept.{k}" not in tensors]
        if missing:
            raise ValueError(f"{os.fspath(path)!r} is truncated or altered: tensors {missing[:3]} are missing")
        params = dict(meta["params"])
        for name, value in params.items():
            if isinstance(value, list):  # JSON has no tuples
                params[name] = tuple(value)
        if device is not None:
            params["device"] = device
        model = cls(**params)
        model._check_params()
        model.dim_ = int(meta["dim"])
        model.classes_ = None if meta["classes"] is None else np.asarray(meta["classes"])
        model.n_classes_ = 0 if model.classes_ is None else len(model.classes_)
        model._restore_meta(meta)
        model._set_device()
        model._build_maps()
        model.heads_ = {}
        for h, key in zip(meta["heads"], keys):
            model.heads_[tuple(h["key"])] = _Head(tensors[f"coef.{key}"].to(model._dev, model._dt),
                                                  tensors[f"intercept.{key}"].to(model._dev, model._dt),
                                                  h["lam"], h["lam_relative"])
        return model

    def __repr__(self) -> str:
        defaults = type(self).__init__.__kwdefaults__
        changed = {k: v for k, v in self.get_params().items() if not _equal(v, defaults[k])}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def _check_same_data(X: torch.Tensor, labels: np.ndarray | None) -> None:
    """Library shards: every rank must pass the same data; compare shapes and position-weighted checksums (one
    collective). ``labels`` are the checked integer labels (or None). Weighting row i by i + 1 makes a reordering
    of the rows, not only a change of values, show; the sums are taken in chunks (no full float64 copy of X)."""
    import torch.distributed as dist

    s1 = s2 = 0.0
    for start in range(0, X.shape[0], 4096):
        block = X[start:start + 4096].to(torch.float64).reshape(min(4096, X.shape[0] - start), -1)
        w = torch.arange(start + 1, start + 1 + block.shape[0], dtype=torch.float64, device=block.device)
        s1 += float(w @ block.sum(1))
        s2 += float((block * block).sum())
    lab = None if labels is None else float(np.arange(1, len(labels) + 1, dtype=np.float64) @ labels.astype(np.float64))
    mine = (tuple(X.shape), s1, s2, lab)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if any(g != gathered[0] for g in gathered):
        raise ValueError("distributed=True shards the draws, not the data: every rank must pass the same X (and "
                         "y), in the same order; got (shape, row-weighted sum, sum of squares, row-weighted label "
                         f"sum) per rank {gathered}")


def _equal(a: Any, b: Any) -> bool:
    """``a == b`` for parameter values, arrays and tensors included (compared element by element)."""
    if isinstance(a, (np.ndarray, torch.Tensor)) or isinstance(b, (np.ndarray, torch.Tensor)):
        return a is not None and b is not None and np.array_equal(np.asarray(a), np.asarray(b))
    return bool(a == b)
