"""Deep PIL and Bi-PIL: multilayer networks trained without gradients, layer by layer, in closed form.

**Deep PIL** (Guo & Lyu's stacked PIL auto-encoders, "PILAE"). The network grows one layer at a time.
Layer l reads A_{l−1} (n × d) — A₀ is the standardized input or a fixed front-end such as random
convolutional features — and is built as an auto-encoder (paper notation in brackets, columns = samples):

    Z  = f(A_{l−1} E)                      [H = f(W_e X)]          E: seeded random (orthogonal) d × p
    D  = argmin ‖A_{l−1} − Z D‖² + λ_ae‖D‖²   [W_d = X Hᵀ(HHᵀ + λI)⁻¹]  ridge through RidgeStats
    W  = Dᵀ                                 [tied weights: W_e ← W_dᵀ]
    A_l = f((A_{l−1} W − m) / s)            [H_l = f(W_dᵀ H_{l−1})]

where m, s are the per-unit mean and standard deviation of the pre-activations on the training rows
(read off the auto-encoder's own statistics, no extra pass), folded into the layer:
A_l = f(A_{l−1} W_l + b_l). A ridge classifier Y ≈ A_l β + β₀ is solved on every layer, and the depth is
the one with the best validation accuracy (growth stops after ``patience`` layers without a gain).

**Bi-PIL** (Wang, Liu, Liu, Shi, Guo, Li & Xu, IEEE TNNLS 2025; predecessor: Liu et al., "two-way
PIL", arXiv 2406.18931) adds a backward twin. Targets are propagated *down* the forward network in
closed form, with the pre-activations Z_l = A_{l−1}W_l + b_l as the propagated quantity (the paper's
H_l = f⁻¹(Wᵀ(WWᵀ + μI)⁻¹H_{l+1}), our rows-as-samples transpose):

    A_L* = (Y − β₀)(βᵀβ + μI)⁻¹βᵀ                       target of the top layer's output
    Z_l* = f⁻¹(A_l*)                                    target of layer l's pre-activation
    A_{l−1}* = (Z_l* − b_l)(W_lᵀW_l + μI)⁻¹W_lᵀ          pushed through layer l (ridge inverse)

(f⁻¹ after clipping into f's range). Then, bottom-up, every layer of the twin is re-solved by ridge
from its *real* input, the twin's own previous output B_{l−1} (B₀ = A₀):

    W'_l, b'_l = argmin ‖Z_l* − B_{l−1}W − b‖² + λ_l‖W‖²,     B_l = f(B_{l−1}W'_l + b'_l).

The targets depend on a sample only through its label, Z_l* = Y K_l with a code table K_l (c × p_l),
and the ridge solution is linear in its targets, so W'_l = W_Y K_l exactly, where W_Y is the ridge
regression of the one-hot Y on B_{l−1}: one RidgeStats of (B_{l−1}, Y) per layer solves the layer.
Finally features of a forward layer l₁ and a backward layer l₂ are concatenated, standardized and read
by a ridge classifier (optionally through a random hidden layer, as the paper's fusion SHLNN).

Every hyper-parameter — depth, the width of each layer (when given candidates), λ of every
auto-encoder and every head, μ, the fused pair (l₁, l₂), the fusion head — is chosen on a validation
split carved from the training data (``validation_fraction``, stratified, seeded). The published MATLAB
picks its fused layers by test accuracy; nothing here reads test data. The fitted model is trained on
the remaining rows; ``selection_`` records every choice and every candidate's validation score.
"""

from __future__ import annotations

import logging
import numbers
import time
from typing import Any, Iterator, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..features import FeatureMap, derive_seed, feature_map_from_config, get_activation, random_matrix
from ..distributed import all_reduce_floats, all_reduce_stats, all_reduce_sum_, check_distributed, union_labels
from ..solvers import RidgeStats
from ._common import DEFAULT_HOLDOUT_GRID, check_common_params, holdout_scan
from ._conv import conv_features

__all__ = ["DeepPILClassifier", "BiPILClassifier", "INVERTIBLE_ACTIVATIONS", "back_project"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: relative μ candidates for the backward pass (× mean eigenvalue of WᵀW)
DEFAULT_MU_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
_CLIP = 1e-3  # targets are clipped this far inside an activation's range before f⁻¹


def _atanh(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh(x.clamp(-1 + _CLIP, 1 - _CLIP))


def _logit(x: torch.Tensor) -> torch.Tensor:
    return torch.logit(x.clamp(_CLIP, 1 - _CLIP))


def _leaky_inv(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, x / 0.01)


#: activations whose inverse the backward pass needs: name → f⁻¹ (clipping into f's range first)
INVERTIBLE_ACTIVATIONS = {"tanh": _atanh, "sigmoid": _logit, "leaky_relu": _leaky_inv, "identity": lambda x: x}


def back_project(target: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, mu: float) -> torch.Tensor:
    """The ridge inverse of a linear layer: argmin_A ‖T − (A W + b)‖² + μ‖A‖², row by row.

    Returns (T − b)(WᵀW + μI)⁻¹Wᵀ for W of shape (d_in, d_out), computed as (T − b)Wᵀ(WWᵀ + μI)⁻¹ when
    d_in < d_out (the push-through identity), so the system solved is min(d_in, d_out) square; float64. With μ = 0 this is the Moore–Penrose pseudo-inverse map.
    """
    W = W.to(torch.float64)
    T = target.to(torch.float64)
    if b is not None:
        T = T - b.to(torch.float64)
    d_in, d_out = W.shape
    if d_out <= d_in:
        K = W.T @ W
        K.diagonal().add_(mu)
        return torch.linalg.solve(K, T.T).T @ W.T
    K = W @ W.T
    K.diagonal().add_(mu)
    return torch.linalg.solve(K, W @ T.T).T


def _check_int(name: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return int(v)


def _check_grid(name: str, grid: Any) -> tuple[float, ...]:
    g = np.asarray(grid, dtype=float).ravel() if grid is not None else np.zeros(0)
    if g.size == 0 or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError(f"{name} must be a non-empty sequence of positive floats, got {grid!r}")
    return tuple(float(v) for v in g)


class _Layer:
    """A_out = f(A_in W + b)."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        self.W, self.b = W, b

    def __call__(self, A: torch.Tensor, f) -> torch.Tensor:
        return f(torch.addmm(self.b, A, self.W))


class _CodeLayer:
    """A twin layer in factored form: B_out = f((B_in W_Y + b_Y) K) = f(B_in W + b), W = W_Y K, b = b_Y K.

    W_Y, b_Y is the ridge regression of the one-hot labels on B_in, K the layer's target code table;
    the product is rank ≤ n_classes, so applying the factors costs d_in·c + c·p instead of d_in·p.
    """

    def __init__(self, scores: "_Head", K: torch.Tensor, dtype: torch.dtype) -> None:
        self.scores, self.K, self.dtype = scores, K, dtype

    @property
    def W(self) -> torch.Tensor:
        return (self.scores.coef @ self.K).to(self.dtype)

    @property
    def b(self) -> torch.Tensor:
        return (self.scores.intercept @ self.K).to(self.dtype)

    def from_scores(self, S: torch.Tensor, f) -> torch.Tensor:
        return f((S @ self.K).to(self.dtype))

    def __call__(self, A: torch.Tensor, f) -> torch.Tensor:
        return self.from_scores(self.scores(A), f)


class _Head:
    """A ridge readout S = A coef + intercept (float64), with its λ."""

    def __init__(self, coef: torch.Tensor, intercept: torch.Tensor, lam: float) -> None:
        self.coef, self.intercept, self.lam = coef, intercept, lam

    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        return A.to(torch.float64) @ self.coef + self.intercept


class DeepPILClassifier(ClassifierMixin, BaseEstimator):
    """Deep PIL: stacked PIL auto-encoders with tied weights and a ridge classifier, depth chosen on validation.

    See the module docstring for the equations. Fitting is gradient-free: every weight matrix comes
    from one :class:`~pilearn.solvers.RidgeStats` accumulated over streamed batches and one solve.

    Parameters:
        hidden_layers: the widths of layers 1, 2, …, the most the network may grow to. An entry may be a
            tuple of candidate widths: each is fitted and the best on validation kept.
        activation: an invertible activation (``tanh``, ``sigmoid``, ``leaky_relu``, ``identity``).
        features: the input representation A₀: ``'standardize'`` (the pixels), ``'conv'`` (seeded random
            convolutional features, :func:`~pilearn.estimators.conv_features`), or any
            :class:`~pilearn.features.FeatureMap` or its config dict. A₀ is then centred per column and
            scaled by its overall standard deviation, both from the training rows.
        kind: random encoder kind (``orthogonal`` as in PILAE, ``gaussian``, ``rademacher``, ``sparse``).
        lam_grid: relative λ candidates for every auto-encoder and head (× tr(G̃)/d); each solve picks its
            own on validation (auto-encoders by reconstruction error, heads by squared error).
        patience: stop growing after this many layers without a validation-accuracy gain.
        validation_fraction: share of the rows held out (stratified) for every selection.
        batch_size: rows per streamed batch.
        cache_input: keep A₀ of the training rows in memory (n × d₀) instead of recomputing the
            front-end on every pass (each layer is one or two passes).
        distributed: data parallelism under ``torch.distributed`` (gloo on CPU, NCCL on GPU): each rank
            passes its own shard to ``fit`` and every statistic — the front-end's standardization, each
            auto-encoder's and head's RidgeStats, the validation accuracies — is summed over the ranks
            before it is used, so every rank solves the same systems and ends with the same model.
            Needs ``random_state``.
        dtype: feature dtype; statistics and solves are float64.
        device: torch device.
        random_state: seed of every random matrix and of the split; None draws one (``seed_``).

    Attributes:
        classes_, layers_ (the chosen layers, A_l = f(A_{l−1} W + b), each with ``.W``, ``.b``), head_
        (the ridge classifier on the top layer, ``.coef``, ``.intercept``, ``.lam``), depth_, selection_
        (every choice and every candidate's validation score), train_index_ / validation_index_ (the
        rows of X each side of the split), front_ (the front-end FeatureMap or None), timings_ (seconds
        per phase), seed_, n_features_in_.
    """

    def __init__(
        self,
        *,
        hidden_layers: tuple = (2000, 1500, 500),
        activation: str = "tanh",
        features: str | dict | FeatureMap = "standardize",
        kind: str = "orthogonal",
        lam_grid: tuple[float, ...] | None = None,
        patience: int = 1,
        validation_fraction: float = 0.1,
        batch_size: int = 4096,
        cache_input: bool = True,
        distributed: bool = False,
        dtype: Literal["float32", "float64"] = "float32",
        device: str = "cpu",
        random_state: int | None = None,
    ) -> None:
        self.hidden_layers = hidden_layers
        self.activation = activation
        self.features = features
        self.kind = kind
        self.lam_grid = lam_grid
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.batch_size = batch_size
        self.cache_input = cache_input
        self.distributed = distributed
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> None:
        hl = self.hidden_layers
        if isinstance(hl, numbers.Integral) and not isinstance(hl, bool):
            hl = (hl,)
        if not isinstance(hl, (tuple, list)) or len(hl) == 0:
            raise ValueError(f"hidden_layers must be a non-empty sequence of widths, got {self.hidden_layers!r}")
        widths = []
        for i, spec in enumerate(hl):
            cands = tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)
            if len(cands) == 0:
                raise ValueError(f"hidden_layers[{i}] must be a width or a non-empty tuple of widths, got {spec!r}")
            widths.append(tuple(_check_int(f"hidden_layers[{i}]", c) for c in cands))
        self._widths = widths
        if self.activation not in INVERTIBLE_ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(INVERTIBLE_ACTIVATIONS)} (the backward pass "
                             f"needs f⁻¹), got {self.activation!r}")
        if not (isinstance(self.features, (dict, FeatureMap)) or self.features in ("standardize", "conv")):
            raise ValueError(f"features must be 'standardize', 'conv', a FeatureMap or its config dict, "
                             f"got {self.features!r}")
        if self.kind not in ("orthogonal", "gaussian", "rademacher", "sparse"):
            raise ValueError(f"kind must be 'orthogonal', 'gaussian', 'rademacher' or 'sparse', got {self.kind!r}")
        self._lam_grid = _check_grid("lam_grid", self.lam_grid if self.lam_grid is not None else DEFAULT_HOLDOUT_GRID)
        _check_int("patience", self.patience)
        check_common_params(self, tuple(_DTYPES))

    def _validate_xy(self, X: Any, y: Any):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        X, y = validate_data(self, X, y, reset=True, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        return X, y

    # ------------------------------------------------------------------ front-end
    @property
    def _f(self):
        return get_activation(self.activation)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=torch.device(self.device),
                                                            dtype=_DTYPES[self.dtype])

    def _build_front(self, n_in: int) -> FeatureMap | None:
        dev, dt = torch.device(self.device), _DTYPES[self.dtype]
        spec = self.features
        if isinstance(spec, FeatureMap):
            fmap = feature_map_from_config(spec.get_config(), device=dev)
        elif isinstance(spec, dict):
            fmap = feature_map_from_config(spec, device=dev)
        elif spec == "conv":
            side = int(round(n_in ** 0.5))
            if side * side != n_in:
                raise ValueError(f"features='conv' needs square single-channel images; got {n_in} features per row")
            fmap = conv_features((1, side, side), seed=derive_seed(self.seed_, "front"), dtype=dt, device=dev)
        else:
            return None
        if fmap.in_features != n_in:
            raise ValueError(f"the feature map takes {fmap.in_features} input features, X has {n_in}")
        return fmap

    def _front_raw(self, xb: torch.Tensor) -> torch.Tensor:
        return xb if self.front_ is None else self.front_(xb)

    def _front(self, xb: torch.Tensor) -> torch.Tensor:
        """A₀ of a batch: the front-end, centred per column and scaled by the training std."""
        return (self._front_raw(xb) - self.front_mean_) * self.front_scale_

    def _fit_front(self, X: np.ndarray) -> torch.Tensor | None:
        """Build the front-end and its standardization from the training rows; with ``cache_input``,
        return A₀ of those rows, computed once (the statistics are gathered on the same pass)."""
        self.front_ = self._build_front(X.shape[1])
        s1, s2, n = None, 0.0, 0
        cache = None
        with torch.no_grad():
            for i in range(0, X.shape[0], self.batch_size):
                A = self._front_raw(self._tensor(X[i : i + self.batch_size]))
                if self.cache_input:
                    if cache is None:
                        cache = torch.empty(X.shape[0], A.shape[1], dtype=A.dtype, device=A.device)
                    cache[i : i + A.shape[0]] = A
                A = A.to(torch.float64)
                s1 = A.sum(0) if s1 is None else s1 + A.sum(0)
                s2 += float((A * A).sum())
                n += A.shape[0]
        if self.distributed:
            packed = all_reduce_sum_(torch.cat([s1.cpu(), torch.tensor([s2, float(n)], dtype=torch.float64)]))
            s1, s2, n = packed[:-2].to(s1.device), float(packed[-2]), float(packed[-1])
        mean = s1 / n
        var = s2 / (n * mean.numel()) - float((mean * mean).mean())
        self.front_mean_ = mean.to(_DTYPES[self.dtype])
        self.front_scale_ = float(1.0 / np.sqrt(max(var, 1e-12)))
        if cache is not None:
            for i in range(0, cache.shape[0], self.batch_size):  # standardize in place, batch by batch
                cache[i : i + self.batch_size].sub_(self.front_mean_).mul_(self.front_scale_)
        return cache

    # ------------------------------------------------------------------ streaming
    def _input_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(A₀, one-hot Y) batches of the training rows."""
        X, T = self._Xtr, self._Ttr
        with torch.no_grad():
            for i in range(0, X.shape[0], self.batch_size):
                sl = slice(i, i + self.batch_size)
                if self._A0_cache is not None:
                    A0 = self._A0_cache[sl]
                else:
                    A0 = self._front(self._tensor(X[sl]))
                yield A0, torch.from_numpy(T[sl]).to(torch.device(self.device))

    def _transform(self, X: np.ndarray, fn) -> torch.Tensor:
        """fn(A₀) over X in batches, concatenated."""
        with torch.no_grad():
            return torch.cat([fn(self._front(self._tensor(X[i : i + self.batch_size])))
                              for i in range(0, X.shape[0], self.batch_size)])

    def _forward(self, A: torch.Tensor, layers: list[_Layer]) -> list[torch.Tensor]:
        out = []
        for layer in layers:
            A = layer(A, self._f)
            out.append(A)
        return out

    # ------------------------------------------------------------------ solves
    def _select_lam(self, tr: RidgeStats, va: RidgeStats) -> tuple[float, Any, dict]:
        """λ minimizing the validation squared error over ``lam_grid`` × tr(G̃)/d (a hold-out scan)."""
        return holdout_scan(tr, va, self._lam_grid)

    def _fit_head(self, feats, A_val: torch.Tensor, width: int) -> tuple[_Head, float, float, dict]:
        """Ridge readout on features streamed by ``feats()`` (yields (A, Y)); λ and accuracy on validation."""
        tr = RidgeStats(width, self._n_classes, dual=False, device=self.device)
        for A, Y in feats():
            tr.update(A, Y, check_finite=False)
        tr.release_workspace()
        va = RidgeStats(width, self._n_classes, dual=False, device=self.device).update(A_val, self._Tva,
                                                                                         check_finite=False)
        self._reduce(tr, va)
        return self._head_from_stats(tr, va, A_val)

    def _head_from_stats(self, tr: RidgeStats, va: RidgeStats, A_val: torch.Tensor) -> tuple[_Head, float, float, dict]:
        rel, sol, path = self._select_lam(tr, va)
        head = _Head(sol.coef, sol.intercept, sol.lam)
        return head, self._accuracy(head(A_val)), rel, path

    def _accuracy(self, scores: torch.Tensor) -> float:
        correct, total = self._reduce_sum([float((scores.argmax(1).cpu().numpy() == self._yva_idx).sum()),
                                           float(len(self._yva_idx))])
        return correct / total

    # ------------------------------------------------------------------ forward growth
    def _grow_layer(self, l: int, p: int, layers: list[_Layer], A_val_in: torch.Tensor, rms_in: float) -> dict:
        """Fit layer l (0-based) of width p on top of ``layers`` as a tied-weight PIL auto-encoder."""
        d_in = A_val_in.shape[1]
        dev, dt = torch.device(self.device), _DTYPES[self.dtype]
        E = random_matrix((d_in, p), kind=self.kind, seed=derive_seed(self.seed_, "encoder", l, p), dtype=dt,
                          device=dev) * (1.0 / (np.sqrt(d_in) * rms_in))
        f = self._f
        # the first auto-encoder of a Bi-PIL fit also streams the labels as extra targets: its statistics
        # then hold the regression of Y on A₀ that the twin's first layer needs (no second pass over A₀)
        joint = l == 0 and self._joint_first
        k = d_in + (self._n_classes if joint else 0)
        ae_tr = RidgeStats(p, k, dual=False, device=self.device)
        for A0, Y in self._input_batches():
            A = self._forward(A0, layers)[-1] if layers else A0
            ae_tr.update(f(A @ E), torch.cat([A, Y.to(A.dtype)], 1) if joint else A, check_finite=False)
        ae_tr.release_workspace()
        ae_va = RidgeStats(p, k, dual=False, device=self.device).update(
            f(A_val_in @ E), torch.cat([A_val_in, self._Tva.to(A_val_in.dtype)], 1) if joint else A_val_in,
            check_finite=False)
        self._reduce(ae_tr, ae_va)
        first_stats = None
        if joint:
            a_cols, y_cols = torch.arange(p, p + d_in), torch.arange(p + d_in, p + k)
            first_stats = (ae_tr.subproblem(a_cols, y_cols), ae_va.subproblem(a_cols, y_cols))
            ae_tr, ae_va = ae_tr.select(targets=torch.arange(d_in)), ae_va.select(targets=torch.arange(d_in))
        rel_ae, sol, _ = self._select_lam(ae_tr, ae_va)
        W = sol.coef.T.contiguous()  # tied: encoder = decoderᵀ, (d_in, p)
        # per-unit standardization of the pre-activations, from the auto-encoder's own statistics:
        # the targets of the AE are A_{l-1}, so M's target block holds Σ a aᵀ and Σ a
        n = ae_tr.n
        Myy = ae_tr.M[p : p + d_in, p : p + d_in]
        S = Myy + Myy.tril(-1).T
        mean_a = ae_tr.y_sum / n
        cov = S / n - torch.outer(mean_a, mean_a)
        m = mean_a @ W
        sd = ((cov @ W) * W).sum(0).clamp_min(1e-12).sqrt()
        layer = _Layer((W / sd).to(dt), (-m / sd).to(dt))
        stack = layers + [layer]
        A_val = layer(A_val_in, f)
        ms = [0.0, 0]

        def feats():
            for A0, Y in self._input_batches():
                A = self._forward(A0, stack)[-1]
                ms[0] += float((A.to(torch.float64) ** 2).sum())
                ms[1] += A.numel()
                yield A, Y

        head, acc, rel_head, _ = self._fit_head(feats, A_val, p)
        ms = self._reduce_sum(ms)
        return {"layer": layer, "head": head, "val_acc": acc, "width": p, "lam_ae_rel": rel_ae,
                "lam_ae": float(sol.lam), "lam_head_rel": rel_head, "lam_head": head.lam, "A_val": A_val,
                "rms": float(np.sqrt(ms[0] / max(ms[1], 1))), "first_stats": first_stats}

    def _fit_forward(self) -> None:
        layers: list[_Layer] = []
        records, heads, vals = [], [], []
        A_val, rms = self._A0_val, 1.0
        best_acc, best_depth, since = -1.0, 0, 0
        for l, cands in enumerate(self._widths):
            tried = [self._grow_layer(l, p, layers, A_val, rms) for p in cands]
            pick = max(tried, key=lambda r: r["val_acc"])
            log.info("forward layer %d: width %d, validation accuracy %.4f", l + 1, pick["width"], pick["val_acc"])
            records.append({"depth": l + 1, "width": pick["width"], "val_acc": pick["val_acc"],
                            "lam_ae": pick["lam_ae"], "lam_ae_rel": pick["lam_ae_rel"], "lam_head": pick["lam_head"],
                            "lam_head_rel": pick["lam_head_rel"],
                            "candidates": {int(r["width"]): r["val_acc"] for r in tried}})
            if l == 0:
                self._first_stats = pick["first_stats"]
            layers.append(pick["layer"])
            heads.append(pick["head"])
            vals.append(pick["A_val"])
            A_val, rms = pick["A_val"], pick["rms"]
            if pick["val_acc"] > best_acc:
                best_acc, best_depth, since = pick["val_acc"], l + 1, 0
            else:
                since += 1
                if since >= self.patience:
                    break
        self.depth_ = best_depth
        self.layers_ = layers[:best_depth]
        self.head_ = heads[best_depth - 1]
        self._A_val_fw = vals[:best_depth]
        self.selection_ = {"forward": records, "depth": best_depth,
                           "widths": [r["width"] for r in records[:best_depth]],
                           "forward_val_acc": best_acc}

    # ------------------------------------------------------------------ fit / predict
    _joint_first = False  # Bi-PIL sets it: see _grow_layer

    def _prepare(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> None:
        self._check_params()
        check_distributed(self.distributed)
        X, y = self._validate_xy(X, y)
        labels = np.unique(y)
        if self.distributed:  # every rank must binarize the same classes: the union over the shards
            if self.random_state is None:
                raise ValueError("distributed=True needs random_state: every rank must draw the same random matrices")
            labels = union_labels(labels)
        self._binarizer = LabelBinarizer().fit(labels)
        self.classes_ = self._binarizer.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in y; "
                             f"got 1 class: {self.classes_[0]!r}")
        self._n_classes = len(self.classes_)
        self.seed_ = (int(np.random.default_rng().integers(0, 2**31 - 1)) if self.random_state is None
                      else int(self.random_state))
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val and y_val must be given together, got only one of them")
        if X_val is not None:
            X_val = validate_data(self, X_val, reset=False, dtype=[np.float32, np.float64])
            y_val = np.asarray(y_val)
            if y_val.ndim != 1 or len(y_val) != X_val.shape[0] or len(y_val) == 0:
                raise ValueError(f"y_val must be a non-empty 1-D array with one label per row of X_val "
                                 f"({X_val.shape[0]} rows), got shape {y_val.shape}")
            unknown = np.setdiff1d(np.unique(y_val), self.classes_)
            if unknown.size:
                raise ValueError(f"y_val holds labels {unknown.tolist()} absent from y")
            tr_idx, va_idx = np.arange(X.shape[0]), None
            self._Xtr, X_va, y_va, y_tr = X, X_val, y_val, y
        else:
            idx = np.arange(X.shape[0])
            counts = np.unique(y, return_counts=True)[1]
            n_val = max(int(np.ceil(self.validation_fraction * X.shape[0])), self._n_classes)
            if X.shape[0] - n_val < self._n_classes:
                raise ValueError(f"validation_fraction={self.validation_fraction} of {X.shape[0]} samples leaves too "
                                 f"few rows on one side for {self._n_classes} classes; give more data or another "
                                 "fraction")
            strat = y if counts.min() >= 2 else None
            tr_idx, va_idx = train_test_split(idx, test_size=n_val, random_state=self.seed_ % (2**32), stratify=strat)
            tr_idx.sort()
            va_idx.sort()
            self._Xtr, X_va, y_va, y_tr = X[tr_idx], X[va_idx], y[va_idx], y[tr_idx]
        self._Ttr = self._onehot(y_tr)
        self._Tva = torch.from_numpy(self._onehot(y_va)).to(torch.device(self.device))
        self._yva_idx = np.searchsorted(self.classes_, y_va)
        self.train_index_, self.validation_index_ = tr_idx, va_idx
        self._A0_cache = self._fit_front(self._Xtr)
        self._A0_val = self._transform(X_va, lambda a: a)

    # ------------------------------------------------------------------ data parallelism
    def _reduce(self, *stats: RidgeStats) -> None:
        """With ``distributed=True``: sum each rank's statistics (one collective each) before a solve."""
        all_reduce_stats(*stats, distributed=bool(self.distributed))

    def _reduce_sum(self, values: list[float]) -> list[float]:
        return all_reduce_floats(values, distributed=bool(self.distributed))

    def _onehot(self, y: np.ndarray) -> np.ndarray:
        T = self._binarizer.transform(y).astype(np.float64)
        return np.hstack([1.0 - T, T]) if T.shape[1] == 1 else T

    def _cleanup(self) -> None:
        for name in ("_Xtr", "_Ttr", "_A0_cache", "_A0_val", "_A_val_fw", "_A_val_bw", "_first_stats"):
            if hasattr(self, name):
                delattr(self, name)

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> "DeepPILClassifier":
        """Grow the network layer by layer on the training rows, choosing everything on the validation rows.

        The validation rows are carved from (X, y) (``validation_fraction``), or given as (X_val, y_val),
        in which case every row of X is trained on.
        """
        t0 = time.perf_counter()
        self._prepare(X, y, X_val, y_val)
        try:
            self._fit_forward()
        finally:
            self._cleanup()
        self.timings_ = {"forward": time.perf_counter() - t0}
        return self

    def _check_X(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "layers_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        if X.shape[0] == 0:
            raise ValueError("X is empty (0 samples); predict needs at least one sample")
        return X

    def decision_function(self, X: Any) -> np.ndarray:
        """Ridge class scores (n, n_classes); for two classes, score(class 1) − score(class 0)."""
        S = self._scores(self._check_X(X)).cpu().numpy()
        return S[:, 1] - S[:, 0] if S.shape[1] == 2 else S

    def _scores(self, X: np.ndarray) -> torch.Tensor:
        return self._transform(X, lambda a: self.head_(self._forward(a, self.layers_)[-1]))

    def predict(self, X: Any) -> np.ndarray:
        """The class of highest score."""
        S = self._scores(self._check_X(X))
        return self.classes_[S.argmax(1).cpu().numpy()]

    def hidden_features(self, X: Any) -> np.ndarray:
        """The forward network's top-layer features A_L (n, width)."""
        X = self._check_X(X)
        return self._transform(X, lambda a: self._forward(a, self.layers_)[-1]).cpu().numpy()

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


class BiPILClassifier(DeepPILClassifier):
    """Bi-PIL: the Deep PIL forward network, a backward twin re-solved from closed-form targets, fused.

    See the module docstring for the equations. On top of :class:`DeepPILClassifier`'s parameters:

    Parameters:
        mu_grid: relative μ candidates of the backward target propagation (× the mean eigenvalue of
            WᵀW of each layer); the one whose backward network scores best on validation is kept.
        fusion_hidden: width(s) of the random hidden layer of the fusion classifier (the paper's fusion
            SHLNN). 0 reads the fused features linearly; a tuple is a set of candidates, all compared
            on validation (0 included if listed).
        fusion_activation: activation of that hidden layer.
        output: what ``predict`` reads: ``'fused'`` (the paper's output), ``'backward'`` (the twin alone),
            ``'forward'`` (the Deep PIL network alone), or ``'auto'``: the one of the three with the best
            validation accuracy (a fused pair is one more hyper-parameter; fusing nothing is a candidate).

    Attributes (besides DeepPILClassifier's):
        backward_layers_, backward_head_, fusion_pair_ (forward layer, backward layer, 1-based),
        output_ (the part ``predict`` reads), mu_, selection_ (with the backward and fusion choices and their validation scores).
    """

    def __init__(
        self,
        *,
        hidden_layers: tuple = (2000, 1500, 500),
        activation: str = "tanh",
        features: str | dict | FeatureMap = "standardize",
        kind: str = "orthogonal",
        lam_grid: tuple[float, ...] | None = None,
        mu_grid: tuple[float, ...] | None = None,
        fusion_hidden: int | tuple[int, ...] = 0,
        fusion_activation: str = "tanh",
        output: Literal["auto", "fused", "backward", "forward"] = "auto",
        patience: int = 1,
        validation_fraction: float = 0.1,
        batch_size: int = 4096,
        cache_input: bool = True,
        distributed: bool = False,
        dtype: Literal["float32", "float64"] = "float32",
        device: str = "cpu",
        random_state: int | None = None,
    ) -> None:
        super().__init__(hidden_layers=hidden_layers, activation=activation, features=features, kind=kind,
                         lam_grid=lam_grid, patience=patience, validation_fraction=validation_fraction,
                         batch_size=batch_size, cache_input=cache_input, distributed=distributed, dtype=dtype,
                         device=device, random_state=random_state)
        self.mu_grid = mu_grid
        self.fusion_hidden = fusion_hidden
        self.fusion_activation = fusion_activation
        self.output = output

    _joint_first = True

    def _check_params(self) -> None:
        super()._check_params()
        self._mu_grid = _check_grid("mu_grid", self.mu_grid if self.mu_grid is not None else DEFAULT_MU_GRID)
        fh = self.fusion_hidden
        cands = tuple(fh) if isinstance(fh, (tuple, list)) else (fh,)
        if len(cands) == 0:
            raise ValueError(f"fusion_hidden must be an int >= 0 or a non-empty tuple of them, got {fh!r}")
        self._fusion_widths = tuple(_check_int("fusion_hidden", c, low=0) for c in cands)
        get_activation(self.fusion_activation)
        if self.output not in ("auto", "fused", "backward", "forward"):
            raise ValueError(f"output must be 'auto', 'fused', 'backward' or 'forward', got {self.output!r}")

    # ------------------------------------------------------------------ backward pass
    def target_codes(self, mu: float) -> list[torch.Tensor]:
        """The backward targets of every layer as code tables K_l (n_classes × width_l), for relative μ.

        Row k of K_l is the pre-activation target Z_l* of a sample of class k: the one-hot e_k pushed
        down from the head through (βᵀβ + μI)⁻¹βᵀ, then f⁻¹, then each layer's ridge inverse (see the
        module docstring). μ is relative: μ·tr(WᵀW)/min(d_in, d_out) for each matrix W.
        """
        finv = INVERTIBLE_ACTIVATIONS[self.activation]
        eye = torch.eye(self._n_classes if hasattr(self, "_n_classes") else len(self.classes_), dtype=torch.float64,
                        device=torch.device(self.device))

        def mu_abs(W: torch.Tensor) -> float:
            W = W.to(torch.float64)
            return mu * float((W * W).sum()) / min(W.shape)

        A_t = back_project(eye, self.head_.coef, self.head_.intercept, mu_abs(self.head_.coef))
        codes: list[torch.Tensor] = [None] * len(self.layers_)  # type: ignore[list-item]
        for l in range(len(self.layers_) - 1, -1, -1):
            codes[l] = finv(A_t)
            if l > 0:
                layer = self.layers_[l]
                A_t = back_project(codes[l], layer.W, layer.b, mu_abs(layer.W))
        return codes

    def _fit_backward(self) -> None:
        """Re-solve each layer of the twin, bottom-up, from its real inputs, for every μ; keep the best.

        Twin layer l is B_l = f(S_{l−1} K_l) with S_{l−1} = B_{l−1}W_Y + b_Y the ridge class scores of its
        input (see the module docstring), so one pass over A₀ gives S₀ (n × c, kept in memory), and every
        μ and every layer above runs on those scores without touching A₀ again.
        """
        f, dt = self._f, _DTYPES[self.dtype]
        widths = [layer.W.shape[1] for layer in self.layers_]
        if self._first_stats is not None:  # streamed with the first auto-encoder
            first, _, rel0, _ = self._head_from_stats(*self._first_stats, self._A0_val)
            self._first_stats = None
        else:
            first, rel0 = self._class_regression(lambda: self._input_batches(), self._A0_val)
        with torch.no_grad():
            S0 = torch.cat([first(A0) for A0, _ in self._input_batches()])
        S0_val = first(self._A0_val)
        bs = self.batch_size

        def twin_batches(layers: list[_CodeLayer]):
            """(B_top, Y) over the training rows, from the cached first-layer scores."""
            for (_, Y), i in zip(self._label_batches(), range(0, S0.shape[0], bs)):
                B = layers[0].from_scores(S0[i : i + bs], f)
                for layer in layers[1:]:
                    B = layer(B, f)
                yield B, Y

        results = []
        for mu in self._mu_grid:
            codes = self.target_codes(mu)
            layers = [_CodeLayer(first, codes[0], dt)]
            lams = [{"lam": first.lam, "lam_rel": rel0}]
            vals = [layers[0].from_scores(S0_val, f)]
            for l in range(1, len(widths)):
                stack = list(layers)
                head, rel = self._class_regression(lambda stack=stack: twin_batches(stack), vals[-1])
                layers.append(_CodeLayer(head, codes[l], dt))
                lams.append({"lam": head.lam, "lam_rel": rel})
                vals.append(layers[-1](vals[-1], f))
            stack = list(layers)
            top, acc, _, _ = self._fit_head(lambda: twin_batches(stack), vals[-1], widths[-1])
            results.append({"mu": mu, "layers": layers, "head": top, "val_acc": acc, "vals": vals, "lams": lams})
            log.info("backward twin, mu=%g: validation accuracy %.4f", mu, acc)
        best = max(results, key=lambda r: r["val_acc"])
        self.mu_ = best["mu"]
        self.backward_layers_ = best["layers"]
        self.backward_head_ = best["head"]
        self._A_val_bw = best["vals"]
        self.selection_["backward"] = {"mu": best["mu"], "val_acc": best["val_acc"],
                                       "candidates": {r["mu"]: r["val_acc"] for r in results},
                                       "layers": best["lams"]}

    def _label_batches(self) -> Iterator[tuple[None, torch.Tensor]]:
        T = self._Ttr
        for i in range(0, T.shape[0], self.batch_size):
            yield None, torch.from_numpy(T[i : i + self.batch_size]).to(torch.device(self.device))

    def _class_regression(self, batches, B_val: torch.Tensor) -> tuple[_Head, float]:
        """Ridge regression of the one-hot Y on streamed inputs, λ on validation: (W_Y, b_Y), relative λ."""
        head, _, rel, _ = self._fit_head(batches, B_val, B_val.shape[1])
        return head, rel

    # ------------------------------------------------------------------ fusion
    def _all_features(self, A0: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self._forward(A0, self.layers_), self._forward(A0, self.backward_layers_)

    def _fused(self, A0: torch.Tensor, pair: tuple[int, int]) -> torch.Tensor:
        fw, bw = self._all_features(A0)
        F = torch.cat([fw[pair[0] - 1], bw[pair[1] - 1]], 1)
        return (F - self.fusion_mean_) * self.fusion_scale_

    def _fit_fusion(self) -> None:
        """Choose the fused pair (forward l₁, backward l₂) and the fusion head on validation."""
        L = len(self.layers_)
        widths = [layer.W.shape[1] for layer in self.layers_]
        offsets = np.concatenate([[0], np.cumsum(widths + widths)])
        total = int(offsets[-1])
        tr = RidgeStats(total, self._n_classes, dual=False, device=self.device)
        cache = None
        if self.cache_input:  # keep the layer features of the training rows for the fusion heads below
            cache = torch.empty(self._Xtr.shape[0], total, dtype=_DTYPES[self.dtype], device=torch.device(self.device))
        i = 0
        for A0, Y in self._input_batches():
            fw, bw = self._all_features(A0)
            F = torch.cat(fw + bw, 1)
            tr.update(F, Y, check_finite=False)
            if cache is not None:
                cache[i : i + F.shape[0]] = F
            i += F.shape[0]
        tr.release_workspace()
        V = torch.cat(self._A_val_fw + self._A_val_bw, 1)
        va = RidgeStats(total, self._n_classes, dual=False, device=self.device).update(V, self._Tva,
                                                                                       check_finite=False)
        self._reduce(tr, va)
        scores = {}
        for l1 in range(1, L + 1):
            for l2 in range(1, L + 1):
                cols = np.r_[offsets[l1 - 1] : offsets[l1], offsets[L + l2 - 1] : offsets[L + l2]]
                rel, sol, _ = self._select_lam(tr.select(cols), va.select(cols))
                acc = self._accuracy(V[:, cols].to(torch.float64) @ sol.coef + sol.intercept)
                scores[(l1, l2)] = (acc, rel, sol)
        pair = max(scores, key=lambda k: scores[k][0])
        self.fusion_pair_ = pair
        # standardization of the fused features (per column mean, overall scale), from the training stats
        cols = np.r_[offsets[pair[0] - 1] : offsets[pair[0]], offsets[L + pair[1] - 1] : offsets[L + pair[1]]]
        idx = torch.as_tensor(cols, device=tr.M.device)
        mean = tr.h_sum[idx] / tr.n
        var = float(tr.G.diagonal()[idx].sum()) / (tr.n * len(cols)) - float((mean * mean).mean())
        dt = _DTYPES[self.dtype]
        self.fusion_mean_ = mean.to(dt)
        self.fusion_scale_ = float(1.0 / np.sqrt(max(var, 1e-12)))
        V_pair = (V[:, cols] - self.fusion_mean_) * self.fusion_scale_
        cols_t = torch.as_tensor(cols, device=V.device)

        def fused_batches():
            if cache is None:
                yield from ((self._fused(A0, pair), Y) for A0, Y in self._input_batches())
                return
            for (_, Y), j in zip(self._label_batches(), range(0, cache.shape[0], self.batch_size)):
                yield (cache[j : j + self.batch_size, cols_t] - self.fusion_mean_) * self.fusion_scale_, Y

        head_cands = {}
        for width in self._fusion_widths:
            if width == 0:
                # the linear head on standardized features is the pair's ridge fit, re-expressed: centring is
                # absorbed by the intercept and λ is relative to the trace, so no refit is needed:
                # (F − m)s · (W/s) + (b + m·W) = F·W + b
                acc, rel, sol = scores[pair]
                m64 = self.fusion_mean_.to(torch.float64)
                head = _Head(sol.coef / self.fusion_scale_, sol.intercept + m64 @ sol.coef,
                             sol.lam * self.fusion_scale_**2)
                head_cands[0] = (acc, None, head, rel)
            else:
                proj = self._fusion_projection(len(cols), width)
                g = get_activation(self.fusion_activation)
                head, acc, rel, _ = self._fit_head(lambda: ((g(F @ proj), Y) for F, Y in fused_batches()),
                                                   g(V_pair @ proj), width)
                head_cands[width] = (acc, proj, head, rel)
        width = max(head_cands, key=lambda w: head_cands[w][0])
        log.info("fusion: pair %s, hidden %d, validation accuracy %.4f", pair, width, head_cands[width][0])
        acc, proj, head, rel = head_cands[width]
        self.fusion_width_ = width
        self._fusion_proj = proj
        self.fusion_head_ = head
        self.selection_["fusion"] = {
            "pair": list(pair), "val_acc": acc, "hidden": width, "lam": head.lam, "lam_rel": rel,
            "pair_candidates": {f"{a},{b}": v[0] for (a, b), v in scores.items()},
            "hidden_candidates": {int(w): v[0] for w, v in head_cands.items()},
        }

    def _fusion_projection(self, d: int, width: int) -> torch.Tensor:
        return random_matrix((d, width), kind="gaussian", seed=derive_seed(self.seed_, "fusion", width),
                             dtype=_DTYPES[self.dtype], device=torch.device(self.device)) * (1.0 / np.sqrt(d))

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> "BiPILClassifier":
        """Forward growth, backward re-solve and fusion, every choice made on the validation rows
        (carved from (X, y), or given as (X_val, y_val))."""
        clock = [time.perf_counter()]

        def lap() -> float:
            clock.append(time.perf_counter())
            return clock[-1] - clock[-2]

        self._prepare(X, y, X_val, y_val)
        try:
            self._fit_forward()
            timings = {"forward": lap()}  # includes the split and the front-end
            self._fit_backward()
            timings["backward"] = lap()
            self._fit_fusion()
            timings["fusion"] = lap()
            val = {"forward": self.selection_["forward_val_acc"], "backward": self.selection_["backward"]["val_acc"],
                   "fused": self.selection_["fusion"]["val_acc"]}
            self.output_ = max(val, key=val.get) if self.output == "auto" else self.output
            self.selection_["output"] = {"chosen": self.output_, "val_acc": val}
        finally:
            self._cleanup()
        self.timings_ = timings
        return self

    def _fusion_scores(self, A0: torch.Tensor) -> torch.Tensor:
        F = self._fused(A0, self.fusion_pair_)
        if self._fusion_proj is not None:
            F = get_activation(self.fusion_activation)(F @ self._fusion_proj)
        return self.fusion_head_(F)

    def _parts(self) -> dict:
        return {
            "forward": lambda a: self.head_(self._forward(a, self.layers_)[-1]),
            "backward": lambda a: self.backward_head_(self._forward(a, self.backward_layers_)[-1]),
            "fused": self._fusion_scores,
        }

    def _scores(self, X: np.ndarray) -> torch.Tensor:
        return self._transform(X, self._parts()[self.output_])

    def decision_parts(self, X: Any) -> dict[str, np.ndarray]:
        """Class scores of each part, for ablations: ``forward`` (Deep PIL alone), ``backward`` (the twin
        alone, its own head on B_L) and ``fused`` (the fusion classifier); ``predict`` reads ``output_``."""
        X = self._check_X(X)
        return {k: self._transform(X, fn).cpu().numpy() for k, fn in self._parts().items()}
