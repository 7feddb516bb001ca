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

import math
import numbers
from typing import Any, Callable, Literal

import torch

from ..features import BiPILFeatures, derive_seed, make_generator
from ._paths import OTPath, check_time
from ._readout import (ReadoutModel, as_data, check_int, check_positive_real, embed_time, fourier_frequencies)
from ._samplers import ODEResult, integrate

__all__ = ["PILFlowMatching"]

TimeEmbedding = Literal["sinusoidal", "fourier", "none"]


class PILFlowMatching(ReadoutModel):
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
        distributed: data parallelism under ``torch.distributed`` with *library shards*: every rank passes the
            same ``X`` (and ``y``) and computes the features and Gram of every ``world_size``-th batch of each
            head's draws (the random draws stay those of one process); each head's statistics (train and
            hold-out) and ``n_draws_`` are summed over the ranks, and every rank solves the same heads. Under
            ``torchrun``: ``dist.init_process_group("gloo")`` (``"nccl"`` on GPUs), then
            ``PILFlowMatching(distributed=True).fit(X)`` on every rank.
        dtype: feature dtype (statistics and solves are float64).
        device: where features are computed.
        random_state: the seed of every random map and every draw.
    """

    def __init__(self, *, width: int = 1024, fusion: Literal["single", "concat", "add"] = "single",
                 activation: str = "tanh", time_embedding: TimeEmbedding = "sinusoidal", time_dim: int = 32,
                 time_buckets: int = 4, conditioning: Literal["separate", "features"] = "separate", draws: int = 2,
                 input_scale: float = 1.0, sigma: float = 0.0, num_layers: int = 1, lam: float | Literal["holdout"] = 1.0,
                 lam_grid: tuple[float, ...] | None = None, validation_fraction: float = 0.1,
                 batch_size: int = 2048, distributed: bool = False, dtype: str = "float32", device: str = "cpu",
                 random_state: int = 0) -> None:
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
        self.distributed = distributed
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    _PARAMS = ("width", "fusion", "activation", "time_embedding", "time_dim", "time_buckets", "conditioning",
               "draws", "input_scale", "sigma", "num_layers", "lam", "lam_grid", "validation_fraction", "batch_size",
               "distributed", "dtype", "device", "random_state")
    _FORMAT = "pilearn.flow.v1"

    # ------------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        self._check_common_params()
        for name in ("width", "time_dim", "time_buckets"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        for name, allowed in {"fusion": ("single", "concat", "add"),
                              "time_embedding": ("sinusoidal", "fourier", "none")}.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        OTPath(self.sigma)  # checks sigma
        check_positive_real("input_scale", self.input_scale)

    # ------------------------------------------------------------------ features
    def _build_maps(self) -> None:
        """The fixed random maps of every layer (seeded; rebuilt identically from the parameters)."""
        D, E = self.dim_, self._time_width()
        n_label = self.n_classes_ if self._label_in_features() else 0
        self._maps = []
        for layer in range(self.num_layers):
            z_width = D + E + n_label + (D if layer else 0)
            self._maps.append(BiPILFeatures(z_width, self.width, fusion=self.fusion, activation=self.activation,
                                            scale=1.0, seed=derive_seed(self.random_state, "flow", layer),
                                            dtype=self._dt, device=self._dev))
        self._fourier = None
        if self.time_embedding == "fourier":
            self._fourier = fourier_frequencies(derive_seed(self.random_state, "flow", "fourier"), self.time_dim,
                                                self._dev)
        self._path = OTPath(self.sigma)

    def _time_width(self) -> int:
        return 0 if self.time_embedding == "none" else self.time_dim

    def _n_cells(self) -> int:
        return self.time_buckets

    def _cell_of(self, t: torch.Tensor) -> torch.Tensor:
        return (t * self.time_buckets).long().clamp_(max=self.time_buckets - 1)

    def _draw(self, g: torch.Generator, x1: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x₀, then t uniform in bucket k, then ε (σ > 0): ``(x_t, t, u)``."""
        lo, width = k / self.time_buckets, 1.0 / self.time_buckets
        x0 = torch.randn(x1.shape, generator=g, dtype=self._dt).to(self._dev)
        t = (lo + width * torch.rand(len(x1), generator=g, dtype=torch.float64)).to(self._dev)
        eps = torch.randn(x1.shape, generator=g, dtype=self._dt).to(self._dev) if self.sigma > 0 else None
        xt, u = self._path.sample(x0, x1, t.to(self._dt), eps)
        return xt, t, u

    def _phi(self, layer: int, x: torch.Tensor, t: torch.Tensor, onehot: torch.Tensor | None,
             prev: torch.Tensor | None) -> torch.Tensor:
        """φ of ``layer``: ``[x, (one-hot), (v̂_<ℓ), act(W z + b)]``, (n, d_ℓ)."""
        D = self.dim_
        z = [x * (self.input_scale / math.sqrt(D))]
        if self.time_embedding != "none":
            z.append(embed_time(t, self.time_embedding, self.time_dim, self._fourier, self._dt))
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
        self._fit(as_data("X", X), y)
        return self

    # ------------------------------------------------------------------ predict
    def velocity(self, x: torch.Tensor, t: torch.Tensor | float, y: Any = None) -> torch.Tensor:
        """v̂(x, t | y): ``x (n, D)``, ``t`` a float or ``(n,)`` in [0, 1], ``y (n,)`` labels (conditional fits)."""
        self._check_fitted()
        x = self._check_query(x)
        n = x.shape[0]
        if not isinstance(t, torch.Tensor):
            if isinstance(t, bool) or not isinstance(t, numbers.Real):
                raise TypeError(f"t must be a float or a tensor of shape ({n},), got {type(t).__name__}")
            t = torch.full((n,), float(t), dtype=torch.float64)
        t = check_time(t.to(torch.float64), n).to(self._dev)
        return self._predict(x, t, self._labels_for(y, n))

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
        n, labels = self._sample_labels(n, y)
        g = make_generator(check_int("seed", seed, 0))
        x0 = torch.randn(n, self.dim_, generator=g, dtype=self._dt).to(self._dev)
        y_req = None if labels is None else self.classes_[labels]
        # adaptive solvers may probe a hair past t = 1 (dopri5 overshoots by ~1e-3 before it interpolates back)
        field: Callable = lambda x, t: self.velocity(x, t.clamp(0.0, 1.0), y_req)
        res = integrate(field, x0, method=method, steps=steps, **ode_kwargs)
        return res if return_result else res.x
