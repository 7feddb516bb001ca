"""PIL flow matching: a velocity field fitted by ridge regression on seeded random features, sampled with an ODE.

Notation (seed ``000`` §2; Lipman et al. 2023; Liu et al. 2023, rectified flow):

    x₀ ~ N(0, I) noise,  x₁ = a data point,  t ∈ [0, 1],  ε ~ N(0, I)
    x_t = (1 − t)·x₀ + t·x₁ + σ·ε         (the path, :class:`OTPath`)
    u   = x₁ − x₀                          (the regression target)

The marginal velocity v*(x, t) = E[u | x_t = x] is the least-squares optimum of E‖v(x_t, t) − u‖², and
integrating dx/dt = v*(x, t) from x(0) ~ N(0, I) carries noise to the data. PIL replaces the network trained by
gradient descent with a ridge regression on fixed features:

    φ(x, t)   = [ x  |  act(W·z + b) ]        z = [s·x/√D, τ(t)/‖τ‖, e_y]   (e_y: the one-hot label, "features")
    v̂(x, t)  = φ(x, t)·B_k + c_k           k = the time bucket of t (and the class y, "separate")
    B_k, c_k = argmin Σ ‖φ(x_t, t)·B + c − u‖² + λ‖B‖²   over the draws falling in head k

W (Gaussian, seeded) and b ~ U(−1, 1) are fixed; only B is solved, once, through :class:`RidgeStats`.

Design, and why:

* **Heads.** ``time_buckets = K`` splits [0, 1] into K equal intervals, each with its own B_k: the marginal
  velocity changes character along t (near t = 0 it is close to E[x₁] − x, near t = 1 a denoiser), and one
  linear read-out of fixed features cannot follow it. With labels and ``conditioning="separate"`` each class has
  its own heads too: the class-conditional Gaussian flow (x ↦ A_{k,y}x + c_{k,y}) is then exactly inside the model
  class, and the random features add what is not Gaussian. ``conditioning="features"`` instead feeds the one-hot
  label into z and into φ (one set of heads for all classes; the ablation shows what that costs).
* **Stratified draws, one head at a time.** Every head sees ``draws`` draws (x₀, t, ε) per data point of its
  class, t uniform within its bucket. Heads share no rows, so each is accumulated, its λ chosen, solved, and its
  statistics dropped before the next: the statistics never take more than one head's Gram, O((d + D)²),
  independent of n and of the draws. The fitted model itself is (layers · buckets · classes) solved (d + 1) × D
  read-outs (227 MB in float32 for the MNIST bench's 40 heads at d = 1808).
* **λ** is a float used as it is (absolute), or chosen per head on held-out data points (``lam="holdout"``: a
  seeded ``validation_fraction`` of the points of that head, with their own draws; relative grid × tr(G̃)/d,
  :func:`holdout_scan`), then the head is re-solved on all points with that relative λ. The velocity error
  is a poor guide to sample quality here (see ``lam``), so the default is a small fixed λ.
* **Stack (``num_layers = L > 1``).** Layer ℓ is a fresh random map whose input z also holds the current
  prediction v̂_{<ℓ} = Σ_{j<ℓ} v̂_j, and whose φ holds v̂_{<ℓ} linearly; it is solved, on fresh draws, onto the
  residual u − v̂_{<ℓ}. Each layer is a ridge regression, so the stack stays closed-form (stagewise least squares,
  as in boosting); the prediction is the sum of the layers.

The closed-form optimum over a *finite* training set, with unlimited capacity, is the empirical velocity field
that reproduces training points (:class:`EmpiricalVelocityField`): report nearest-training-point distances with
any quality figure.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__
from ..features import BiPILFeatures, derive_seed, make_generator, sinusoidal_embedding
from ..solvers import DEFAULT_HOLDOUT_GRID, RidgeStats, holdout_scan, lam_scale
from ._paths import OTPath, check_time
from ._samplers import ODEResult, integrate

__all__ = ["PILFlowMatching"]

TimeEmbedding = Literal["sinusoidal", "fourier", "none"]
_FORMAT = "pilearn.flow.v1"


@dataclass
class _Head:
    """The solved read-out of one (layer, time bucket, class): ``v = φ @ coef + intercept``."""

    coef: torch.Tensor  # (d, D)
    intercept: torch.Tensor  # (D,)
    lam: float
    lam_relative: float | None


def _check_int(name: str, v: object, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return int(v)


class PILFlowMatching:
    """Flow matching whose velocity field is solved in closed form (see the module docstring for the math).

    Args:
        width: random features per branch (``fusion="concat"`` gives ``2·width``).
        fusion: Bi-PIL fusion of two random projections as the seed notes describe it: ``"single"`` (one
            projection), ``"concat"`` or ``"add"`` (:class:`~pilearn.features.BiPILFeatures`).
        activation: the random features' activation.
        time_embedding: τ(t): ``"sinusoidal"`` (DDPM's, of 1000·t), ``"fourier"`` (seeded Gaussian Fourier
            features, Tancik et al. 2020) or ``"none"`` (time enters through the buckets only).
        time_dim: width of τ(t).
        time_buckets: K, the number of equal time intervals with their own read-out (1: shared over t).
        conditioning: with labels, ``"separate"`` heads per class or the label as a ``"features"`` input.
        draws: (x₀, t, ε) draws per data point and time bucket.
        input_scale: s in z = [s·x/√D, …]: the spatial frequency of the random features. 1 suits images (each
            pre-activation then varies with the mean squared pixel); low-dimensional data such as 2-D toys need a
            few times more to resolve structure at the scale of the data.
        sigma: the path's σ (0: the straight path).
        num_layers: L, the closed-form stack depth.
        lam: an absolute λ ≥ 0, or ``"holdout"`` (per head, the relative λ of ``lam_grid`` with the least
            held-out velocity error). The default 1.0 is small against the Gram's scale (≈ 10³–10⁴ per head on
            MNIST): held-out velocity error is nearly flat in λ — most of u = x₁ − x₀ is unpredictable noise —
            and the hold-out choice lands 10²–10³× higher with visibly worse samples (``pilearn ablate flow
            --study lambda``).
        lam_grid: relative λ candidates of the hold-out scan (× tr(G̃)/d).
        validation_fraction: fraction of each head's points held out to choose λ.
        batch_size: data points per feature batch.
        dtype: feature dtype (statistics and solves are float64).
        device: where features are computed.
        random_state: the seed of every random map and every draw.
    """

    def __init__(self, *, width: int = 1024, fusion: Literal["single", "concat", "add"] = "single",
                 activation: str = "tanh", time_embedding: TimeEmbedding = "sinusoidal", time_dim: int = 32,
                 time_buckets: int = 4, conditioning: Literal["separate", "features"] = "separate", draws: int = 2,
                 input_scale: float = 1.0, sigma: float = 0.0, num_layers: int = 1, lam: float | Literal["holdout"] = 1.0,
                 lam_grid: tuple[float, ...] | None = None, validation_fraction: float = 0.1,
                 batch_size: int = 2048, dtype: str = "float32", device: str = "cpu", random_state: int = 0) -> None:
        self.width = width
        self.fusion = fusion
        self.activation = activation
        self.time_embedding = time_embedding
        self.time_dim = time_dim
        self.time_buckets = time_buckets
        self.conditioning = conditioning
        self.draws = draws
        self.input_scale = input_scale
        self.sigma = sigma
        self.num_layers = num_layers
        self.lam = lam
        self.lam_grid = lam_grid
        self.validation_fraction = validation_fraction
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _PARAMS}

    def _check_params(self) -> None:
        for name, low in (("width", 1), ("time_dim", 1), ("time_buckets", 1), ("draws", 1), ("num_layers", 1),
                          ("batch_size", 1), ("random_state", 0)):
            setattr(self, name, _check_int(name, getattr(self, name), low))  # NumPy ints become ints (JSON)
        choices = {"fusion": ("single", "concat", "add"), "time_embedding": ("sinusoidal", "fourier", "none"),
                   "conditioning": ("separate", "features"), "dtype": ("float32", "float64")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if isinstance(self.lam, str):
            if self.lam != "holdout":
                raise ValueError(f"lam must be a float >= 0 or 'holdout', got {self.lam!r}")
        elif isinstance(self.lam, bool) or not isinstance(self.lam, numbers.Real) or not 0 <= self.lam < math.inf:
            raise ValueError(f"lam must be a float >= 0 or 'holdout', got {self.lam!r}")
        if self.lam_grid is not None:
            grid = np.asarray(self.lam_grid, dtype=float).ravel()
            if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
                raise ValueError(f"lam_grid must be a non-empty sequence of positive floats, got {self.lam_grid!r}")
        vf = self.validation_fraction
        if isinstance(vf, bool) or not isinstance(vf, numbers.Real) or not 0 < vf < 1:
            raise ValueError(f"validation_fraction must be a float in (0, 1), got {vf!r}")
        OTPath(self.sigma)  # checks sigma
        s = self.input_scale
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0 < s < math.inf:
            raise ValueError(f"input_scale must be a finite float > 0, got {s!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {self.device!r}") from err

    # ------------------------------------------------------------------ features
    def _build_maps(self) -> None:
        """The fixed random maps of every layer (seeded; rebuilt identically from the parameters)."""
        dt = getattr(torch, self.dtype)
        dev = torch.device(self.device)
        self._dt, self._dev = dt, dev
        D, E = self.dim_, self._time_width()
        n_label = self.n_classes_ if self._label_in_features() else 0
        self._maps = []
        for layer in range(self.num_layers):
            z_width = D + E + n_label + (D if layer else 0)
            self._maps.append(BiPILFeatures(z_width, self.width, fusion=self.fusion, activation=self.activation,
                                            scale=1.0, seed=derive_seed(self.random_state, "flow", layer),
                                            dtype=dt, device=dev))
        self._fourier = None
        if self.time_embedding == "fourier":
            g = make_generator(derive_seed(self.random_state, "flow", "fourier"))
            self._fourier = (4.0 * torch.randn(self.time_dim // 2 + self.time_dim % 2, generator=g,
                                               dtype=torch.float64)).to(dev)

    def _time_width(self) -> int:
        return 0 if self.time_embedding == "none" else self.time_dim

    def _label_in_features(self) -> bool:
        return self.n_classes_ > 0 and self.conditioning == "features"

    def _embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """τ(t) / ‖τ‖-scale: (n, time_dim), entries of mean square 1/time_dim."""
        if self.time_embedding == "sinusoidal":
            emb = sinusoidal_embedding(1000.0 * t.to(torch.float64), self.time_dim)
        else:
            args = 2 * math.pi * t.to(torch.float64)[:, None] * self._fourier[None, :]
            emb = torch.cat([torch.cos(args), torch.sin(args)], 1)[:, : self.time_dim]
        return (emb * math.sqrt(2.0 / self.time_dim)).to(self._dt)

    def _phi(self, layer: int, x: torch.Tensor, t: torch.Tensor, onehot: torch.Tensor | None,
             prev: torch.Tensor | None) -> torch.Tensor:
        """φ of ``layer``: ``[x, (one-hot), (v̂_<ℓ), act(W z + b)]``, (n, d_ℓ)."""
        D = self.dim_
        z = [x * (self.input_scale / math.sqrt(D))]
        if self.time_embedding != "none":
            z.append(self._embed_time(t))
        lin = [x]
        if onehot is not None:
            z.append(onehot)
            lin.append(onehot)
        if prev is not None:
            z.append(prev / math.sqrt(2 * D))
            lin.append(prev)
        return torch.cat(lin + [self._maps[layer](torch.cat(z, 1))], 1)

    def _n_phi(self, layer: int) -> int:
        n = self.dim_ + (self.n_classes_ if self._label_in_features() else 0) + (self.dim_ if layer else 0)
        return n + self._maps[layer].out_features

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None) -> "PILFlowMatching":
        """Solve the velocity field for data ``X`` (n, D) (optionally with integer class labels ``y`` (n,)).

        The data are used at the scale given (images are usually mapped to [−1, 1] first).
        """
        self._check_params()
        X = _as_data("X", X)
        self.dim_ = X.shape[1]
        if y is None:
            self.classes_, labels = None, None
            self.n_classes_ = 0
        else:
            labels = _as_labels(y, X.shape[0])
            self.classes_ = np.unique(labels)
            self.n_classes_ = len(self.classes_)
            labels = np.searchsorted(self.classes_, labels)
        self._build_maps()
        self._path = OTPath(self.sigma)
        groups = self._groups(labels, X.shape[0])
        self.heads_: dict[tuple[int, int, int], _Head] = {}
        self.n_draws_ = 0
        for layer in range(self.num_layers):
            for k in range(self.time_buckets):
                for c, idx in groups:
                    self.heads_[(layer, k, c)] = self._fit_head(layer, k, c, X, labels, idx)
        return self

    def _groups(self, labels: np.ndarray | None, n: int) -> list[tuple[int, np.ndarray]]:
        """(class index or −1, the row indices it owns): one group per class with ``"separate"``, else one."""
        if labels is None or self.conditioning == "features":
            return [(-1, np.arange(n))]
        return [(c, np.flatnonzero(labels == c)) for c in range(self.n_classes_)]

    def _draws(self, layer: int, k: int, c: int, X: torch.Tensor, labels: np.ndarray | None, idx: np.ndarray,
               stream: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """Seeded batches (x_t, t, one-hot or None, u) of head (layer, k, c): ``draws`` per point, t in bucket k."""
        g = make_generator(derive_seed(self.random_state, "draws", stream, layer, k, c))
        lo, width = k / self.time_buckets, 1.0 / self.time_buckets
        for _ in range(self.draws):
            for s in range(0, len(idx), self.batch_size):
                rows = torch.from_numpy(idx[s: s + self.batch_size])
                x1 = X[rows].to(self._dev, self._dt)
                x0 = torch.randn(x1.shape, generator=g, dtype=self._dt).to(self._dev)
                t = (lo + width * torch.rand(len(rows), generator=g, dtype=torch.float64)).to(self._dev)
                eps = torch.randn(x1.shape, generator=g, dtype=self._dt).to(self._dev) if self.sigma > 0 else None
                xt, u = self._path.sample(x0, x1, t.to(self._dt), eps)
                onehot = None
                if self._label_in_features():
                    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels[rows.numpy()]),
                                                         self.n_classes_).to(self._dev, self._dt)
                yield xt, t, onehot, u

    def _accumulate(self, layer: int, k: int, c: int, X, labels, idx, stream: str) -> RidgeStats:
        stats = RidgeStats(self._n_phi(layer), self.dim_, dual=False, device=self._dev)
        for xt, t, onehot, u in self._draws(layer, k, c, X, labels, idx, stream):
            prev = self._predict_layers(layer, k, c, xt, t, onehot) if layer else None
            target = u - prev if prev is not None else u
            stats.update(self._phi(layer, xt, t, onehot, prev), target, check_finite=False)
            self.n_draws_ += len(xt)
        stats.release_workspace()
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
            raise ValueError(f"lam='holdout' needs points on both sides of the split; head (bucket {k}, class "
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
            raise RuntimeError("this PILFlowMatching is not fitted yet; call fit(X) or PILFlowMatching.load(path)")

    def _predict_layers(self, upto: int, k: int, c: int, x, t, onehot) -> torch.Tensor:
        """Σ_{ℓ < upto} v̂_ℓ(x, t) with every row in bucket k and class group c."""
        prev = None
        for layer in range(upto):
            head = self.heads_[(layer, k, c)]
            v = torch.addmm(head.intercept, self._phi(layer, x, t, onehot, prev), head.coef)
            prev = v if prev is None else prev + v
        return prev

    def velocity(self, x: torch.Tensor, t: torch.Tensor | float, y: Any = None) -> torch.Tensor:
        """v̂(x, t | y): ``x (n, D)``, ``t`` a float or ``(n,)`` in [0, 1], ``y (n,)`` labels (conditional fits)."""
        self._check_fitted()
        x = _as_data("x", x, allow_empty=True).to(self._dev, self._dt)
        if x.shape[1] != self.dim_:
            raise ValueError(f"x must have shape (n, {self.dim_}), got {tuple(x.shape)}")
        n = x.shape[0]
        if not isinstance(t, torch.Tensor):
            if isinstance(t, bool) or not isinstance(t, numbers.Real):
                raise TypeError(f"t must be a float or a tensor of shape ({n},), got {type(t).__name__}")
            t = torch.full((n,), float(t), dtype=torch.float64)
        t = check_time(t.to(torch.float64), n).to(self._dev)
        labels = self._labels_for(y, n)
        bucket = (t * self.time_buckets).long().clamp_(max=self.time_buckets - 1)
        out = torch.empty_like(x)
        for k in torch.unique(bucket).tolist():
            for c in (range(self.n_classes_) if self._separate() else [-1]):
                m = bucket == k
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

    def _separate(self) -> bool:
        return self.n_classes_ > 0 and self.conditioning == "separate"

    def _labels_for(self, y: Any, n: int) -> np.ndarray | None:
        if self.n_classes_ == 0:
            if y is not None:
                raise ValueError("y was given but this model was fitted without labels (unconditional)")
            return None
        if y is None:
            raise ValueError(f"this model is class-conditional: y must hold one of {self.classes_.tolist()} per row")
        labels = _as_labels(y, n)
        pos = np.searchsorted(self.classes_, labels).clip(max=self.n_classes_ - 1)
        bad = self.classes_[pos] != labels
        if bad.any():
            raise ValueError(f"y holds labels not seen in fit: {np.unique(labels[bad]).tolist()}; "
                             f"known: {self.classes_.tolist()}")
        return pos

    def sample(self, n: int | None = None, y: Any = None, *, method: str = "heun", steps: int = 50,
               seed: int = 0, return_result: bool = False, **ode_kwargs: Any) -> torch.Tensor | ODEResult:
        """Draw samples by integrating dx/dt = v̂(x, t | y) from x(0) ~ N(0, I) (seeded) to t = 1.

        Args:
            n: number of samples (unconditional; with ``y`` it must equal ``len(y)`` or be None).
            y: ``(n,)`` requested classes (conditional fits).
            method, steps, ode_kwargs: see :func:`integrate` (``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"``,
                ``"dopri5"``).
            seed: the seed of x(0).
            return_result: return the :class:`ODEResult` (with ``nfe`` and the trajectory if asked) instead
                of the samples.
        Returns:
            ``(n, D)`` samples, or the :class:`ODEResult`.
        """
        self._check_fitted()
        if y is not None:
            y = np.asarray(y)
            if y.ndim != 1:
                raise ValueError(f"y must be a sequence of class labels of shape (n,), got shape {y.shape}")
            if n is not None and n != len(y):
                raise ValueError(f"n must equal len(y) = {len(y)} when y is given, got {n!r}")
            n = len(y)
        n = _check_int("n", n, 1)
        labels = self._labels_for(y, n)
        g = make_generator(_check_int("seed", seed, 0))
        x0 = torch.randn(n, self.dim_, generator=g, dtype=self._dt).to(self._dev)
        y_req = None if labels is None else self.classes_[labels]
        # adaptive solvers may probe a hair past t = 1 (dopri5 overshoots by ~1e-3 before it interpolates back)
        field: Callable = lambda x, t: self.velocity(x, t.clamp(0.0, 1.0), y_req)
        res = integrate(field, x0, method=method, steps=steps, **ode_kwargs)
        return res if return_result else res.x

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
        meta = {"format": _FORMAT, "pilearn": __version__, "params": self.get_params(), "dim": self.dim_,
                "classes": None if self.classes_ is None else self.classes_.tolist(), "heads": heads}
        save_file(tensors, os.fspath(path), metadata={"pilearn": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None) -> "PILFlowMatching":
        """Read a model written by :meth:`save` (no pickle)."""
        with safe_open(os.fspath(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("pilearn")
            if raw is None or json.loads(raw).get("format") != _FORMAT:
                raise ValueError(f"{os.fspath(path)!r} is not a PILFlowMatching file (format {_FORMAT})")
            meta = json.loads(raw)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        missing = [f"coef.{'.'.join(map(str, h['key']))}" for h in meta["heads"]
                   if f"coef.{'.'.join(map(str, h['key']))}" not in tensors]
        if missing:
            raise ValueError(f"{os.fspath(path)!r} is truncated or altered: tensors {missing[:3]} are missing")
        params = dict(meta["params"])
        if params.get("lam_grid") is not None:
            params["lam_grid"] = tuple(params["lam_grid"])
        if device is not None:
            params["device"] = device
        model = cls(**params)
        model._check_params()
        model.dim_ = int(meta["dim"])
        model.classes_ = None if meta["classes"] is None else np.asarray(meta["classes"])
        model.n_classes_ = 0 if model.classes_ is None else len(model.classes_)
        model._build_maps()
        model._path = OTPath(model.sigma)
        model.heads_ = {}
        for h in meta["heads"]:
            layer, k, c = h["key"]
            key = f"{layer}.{k}.{c}"
            model.heads_[(layer, k, c)] = _Head(tensors[f"coef.{key}"].to(model._dev, model._dt),
                                                tensors[f"intercept.{key}"].to(model._dev, model._dt),
                                                h["lam"], h["lam_relative"])
        return model

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items() if v != _DEFAULTS[k]}
        return f"PILFlowMatching({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


_PARAMS = ("width", "fusion", "activation", "time_embedding", "time_dim", "time_buckets", "conditioning", "draws",
           "input_scale", "sigma", "num_layers", "lam", "lam_grid", "validation_fraction", "batch_size", "dtype", "device",
           "random_state")
_DEFAULTS = {k: PILFlowMatching.__init__.__kwdefaults__[k] for k in _PARAMS}


def _as_data(name: str, X: Any, *, allow_empty: bool = False) -> torch.Tensor:
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


def _as_labels(y: Any, n: int) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    return y
