"""Sample-quality metrics for generative models: Fréchet distance, nearest neighbours, W2, MMD.

Notation (used in every docstring below): ``a (m, d)`` and ``b (n, d)`` are two point clouds, one row a
point; ``μ`` and ``Σ`` are a cloud's mean and unbiased covariance; ``‖·‖`` is the Euclidean norm.

All inputs may be ``torch.Tensor`` or ``numpy.ndarray``; the arithmetic that decides a figure runs in
float64 on the CPU unless a docstring says otherwise, and every figure comes back as a Python ``float`` (or a
float64 CPU tensor for per-point distances), so results files can store it as it is.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:  # pragma: no cover
    from ._lenet import LeNet

__all__ = [
    "class_accuracy",
    "fd_lenet",
    "frechet_distance",
    "memorization_report",
    "mmd_rbf",
    "nearest_neighbour_distance",
    "wasserstein2",
]

logger = logging.getLogger(__name__)

ArrayLike = Union[torch.Tensor, np.ndarray]

# Candidates per query kept by each screen of nearest_neighbour_distance and rechecked from differences.
_NN_CANDIDATES = 4
# Unit roundoffs of float32 and float64.
_U32 = 2.0**-24
_U64 = 2.0**-53
# Rows of the pooled sample whose pairwise distances set mmd_rbf's default bandwidth.
_MEDIAN_ROWS = 2048


# --------------------------------------------------------------------------------------------- validation
def _as_tensor(name: str, x: object) -> torch.Tensor:
    """``x`` as a real-valued tensor (NumPy arrays are wrapped without copying when possible)."""
    if isinstance(x, np.ndarray):
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise TypeError(f"{name} must hold numbers, got a numpy array of dtype {x.dtype}")
        x = np.ascontiguousarray(x)
        if not x.flags.writeable:  # torch.from_numpy warns on read-only memory
            x = x.copy()
        x = torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}")
    return x


def _check_finite(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {n_bad} NaN or inf value(s)")


def _as_matrix(name: str, x: object, *, min_rows: int = 1, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = "cpu") -> torch.Tensor:
    """Validate a point cloud ``(n, d)`` (finite, ``n >= min_rows``, ``d >= 1``) and cast it to ``dtype``."""
    x = _as_tensor(name, x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} needs at least one column, got shape {tuple(x.shape)}")
    _check_finite(name, x)
    return x.to(device=device, dtype=dtype)


def _check_same_dim(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of columns, got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return int(seed)


def _as_labels(name: str, y: object, n: int) -> torch.Tensor:
    """Validate integer class labels ``(n,)``; return them as int64 on the CPU."""
    y = _as_tensor(name, y)
    if y.is_floating_point():
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise ValueError(f"{name} must be >= 0, got min {int(y.min())}")
    return y.to(device="cpu", dtype=torch.int64)


def _as_images(name: str, x: object) -> torch.Tensor:
    """Validate a batch of images, flat ``(n, D)`` or ``(n, C, H, W)``, finite; the net checks ``D``."""
    x = _as_tensor(name, x)
    if x.ndim not in (2, 4):
        raise ValueError(f"{name} must be (n, D) or (n, C, H, W) images, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating-point images in [0, 1], got dtype {x.dtype}")
    _check_finite(name, x)
    return x


# ------------------------------------------------------------------------------------------ Fréchet distance
def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root ``V diag(sqrt(max(λ, 0))) Vᵀ`` of a symmetric PSD matrix ``(d, d)``."""
    lam, v = torch.linalg.eigh(s)
    return (v * lam.clamp_min(0.0).sqrt()) @ v.T


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` (divisor ``n - 1``) of float64 rows ``(n, d)``."""
    mu = x.mean(dim=0)
    xc = x - mu
    return mu, (xc.T @ xc) / (x.shape[0] - 1)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Dowson & Landau, 1982).

    ``FD = ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^{1/2})`` with unbiased covariances (divisor ``n − 1``).
    ``Σa Σb`` is not symmetric; its square root's trace is taken from a similar, symmetric PSD matrix:
    ``tr((Σa Σb)^{1/2}) = Σᵢ sqrt(λᵢ)``, ``λᵢ`` the eigenvalues of ``Σa^{1/2} Σb Σa^{1/2}`` (``eigh``; tiny
    negative eigenvalues from rounding are set to 0). This is the formula behind FID (Heusel et al., 2017);
    in pilearn the features come from :class:`~pilearn.metrics.LeNet` (see :func:`fd_lenet`).

    Args:
        feats_a: ``(m, d)`` features, ``m >= 2``, finite.
        feats_b: ``(n, d)`` features, ``n >= 2``, finite.

    Returns:
        The distance (float64 arithmetic), clamped at 0 against rounding: identical sets give ``0.0``.

    Raises:
        TypeError: an input is not a tensor or array of real numbers.
        ValueError: an input is not 2-D, has fewer than 2 rows or a NaN/inf, or the column counts differ.
    """
    a = _as_matrix("feats_a", feats_a, min_rows=2)
    b = _as_matrix("feats_b", feats_b, min_rows=2)
    _check_same_dim("feats_a", a, "feats_b", b)
    mu_a, cov_a = _mean_cov(a)
    mu_b, cov_b = _mean_cov(b)
    root_a = _psd_sqrt(cov_a)
    m = root_a @ cov_b @ root_a
    m = 0.5 * (m + m.T)  # symmetric in exact arithmetic; remove the rounding asymmetry before eigh
    tr_sqrt = torch.linalg.eigvalsh(m).clamp_min(0.0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * tr_sqrt
    return max(float(fd), 0.0)


# --------------------------------------------------------------------------------------- LeNet-based metrics
@torch.inference_mode()
def _net_outputs(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` applied to ``x`` in row batches, concatenated as float64 on the CPU."""
    outs = [fn(x[i:i + batch_size]).to(device="cpu", dtype=torch.float64) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs)


def _check_net(net: object) -> None:
    if not (callable(net) and callable(getattr(net, "features", None))):
        raise TypeError(f"net must be a LeNet (callable with a .features method), got {type(net).__name__}")


def fd_lenet(samples: ArrayLike, reference: ArrayLike, net: "LeNet", *, batch_size: int = 2048) -> float:
    """FD-LeNet: :func:`frechet_distance` between ``net.features`` of generated and reference images.

    The FID recipe (Heusel et al., 2017) with the 84-d penultimate layer of a LeNet the project trains itself
    (:func:`~pilearn.metrics.lenet_for`) in place of Inception: report it as "FD-LeNet", never as FID. Figures
    are comparable only under the same ``net`` (same data set, seed and epochs) and similar sample counts
    (the estimate is biased upwards for small ``n``).

    Pixels are fed as they are: samples outside ``[0, 1]`` are **not** clipped here. Whether to clip is the
    caller's choice and should be recorded with the figure.

    Args:
        samples: ``(n, D)`` or ``(n, C, H, W)`` generated images, ``D = C·H·W = prod(net.in_shape)``,
            ``n >= 2``, finite.
        reference: real images, same layout, ``>= 2`` rows.
        net: a trained :class:`~pilearn.metrics.LeNet`; its mode is left as it is (LeNet has no dropout or
            batch norm, so train and eval mode give the same features).
        batch_size: rows per forward pass.

    Returns:
        The Fréchet distance of the two ``(·, 84)`` feature sets.
    """
    _check_net(net)
    batch_size = _check_positive_int("batch_size", batch_size)
    x = _as_images("samples", samples)
    r = _as_images("reference", reference)
    return frechet_distance(_net_outputs(net.features, x, batch_size), _net_outputs(net.features, r, batch_size))


def class_accuracy(samples: ArrayLike, labels: ArrayLike, net: "LeNet", *, batch_size: int = 2048) -> float:
    """Fraction of class-conditional samples that ``net`` classifies as the class they were asked for.

    ``acc = (1/n) Σᵢ [argmax_k net(xᵢ)_k = yᵢ]``. Samples are not clipped (see :func:`fd_lenet`).

    Args:
        samples: ``(n, D)`` or ``(n, C, H, W)`` images, ``n >= 1``, finite.
        labels: ``(n,)`` integer labels in ``[0, net.n_classes)``: the class each sample was generated for.
        net: a trained :class:`~pilearn.metrics.LeNet`.
        batch_size: rows per forward pass.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    _check_net(net)
    batch_size = _check_positive_int("batch_size", batch_size)
    x = _as_images("samples", samples)
    if x.shape[0] < 1:
        raise ValueError(f"samples needs at least 1 row, got shape {tuple(x.shape)}")
    y = _as_labels("labels", labels, x.shape[0])
    n_classes = getattr(net, "n_classes", None)
    if n_classes is not None and int(y.max()) >= n_classes:
        raise ValueError(f"labels must be < net.n_classes={n_classes}, got max {int(y.max())}")
    pred = _net_outputs(net, x, batch_size).argmax(dim=1)
    return float((pred == y).double().mean())


# ------------------------------------------------------------------------------------------ nearest neighbours
def _fp32_matmul_is_ieee() -> bool:
    """True unless a TF32/BF16 float32-matmul mode is switched on (it would void the screen's error bound)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    for holder in (torch.backends, getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)):
        if getattr(holder, "fp32_precision", "ieee") not in ("none", "ieee"):
            return False
    return True


def _sq_dists(q: torch.Tensor, r: torch.Tensor, q_sq: torch.Tensor, r_sq: torch.Tensor) -> torch.Tensor:
    """``‖qᵢ‖² + ‖rⱼ‖² − 2 qᵢ·rⱼ`` as ``(b, m)``, in the dtype of the inputs (no clamping)."""
    return torch.addmm(q_sq[:, None] + r_sq[None, :], q, r.T, alpha=-2.0)


def _exact_min(q: torch.Tensor, ref: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``minⱼ ‖qᵢ − ref[idx[i, j]]‖²`` from explicit differences, float64 ``(b,)``."""
    return (q[:, None, :] - ref[idx]).square().sum(dim=-1).min(dim=1).values


def _mask_self(d2: torch.Tensor, self_idx: torch.Tensor | None) -> torch.Tensor:
    if self_idx is not None:
        d2[torch.arange(d2.shape[0], device=d2.device), self_idx] = math.inf
    return d2


def _screen(q: torch.Tensor, ref: torch.Tensor, ref_lo: torch.Tensor, r_sq: torch.Tensor,
            self_idx: torch.Tensor | None, u: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared NN distances of float64 queries ``(b, d)``, and the rows whose answer is not certified.

    The expansion ``‖q‖² + ‖r‖² − 2 q·r`` in ``ref_lo.dtype`` (unit roundoff ``u``) picks the
    ``_NN_CANDIDATES`` closest rows, whose squared distances are recomputed from float64 differences.
    Its error is at most ``e = (1.1 γ_d + 8u)(‖q‖² + max‖r‖²)``, ``γ_d = d u / (1 − d u)`` (dot-product
    rounding, Higham 2002, §3.1, plus rounding of the inputs and of the additions). A row is certified when
    the k-th smallest screened value minus ``e`` is still ``>=`` its best exact candidate: no row outside
    the candidates can then be closer.
    """
    q_sq = q.square().sum(dim=1)
    lo = ref_lo.dtype
    approx = _mask_self(_sq_dists(q.to(lo), ref_lo, q_sq.to(lo), r_sq.to(lo)), self_idx)
    n_admissible = ref.shape[0] - (self_idx is not None)
    k = min(_NN_CANDIDATES, n_admissible)
    vals, idx = approx.topk(k, dim=1, largest=False)  # ascending
    best = _exact_min(q, ref, idx)
    if k == n_admissible:  # every admissible row was rechecked
        return best, torch.zeros_like(best, dtype=torch.bool)
    d = q.shape[1]
    gamma = d * u / (1.0 - d * u)
    err = (1.1 * gamma + 8.0 * u) * (q_sq + r_sq.max())
    return best, ~(vals[:, -1].double() - err >= best)


def _nn_direct(q: torch.Tensor, ref: torch.Tensor, self_idx: torch.Tensor | None) -> torch.Tensor:
    """Squared NN distances from explicit differences against every reference row (slow, always exact)."""
    d2 = torch.cdist(q, ref, compute_mode="donot_use_mm_for_euclid_dist").square()
    return _mask_self(d2, self_idx).min(dim=1).values


def _nn_chunk(q: torch.Tensor, ref: torch.Tensor, screens: list[tuple[torch.Tensor, float]],
              r_sq: torch.Tensor, self_idx: torch.Tensor | None) -> torch.Tensor:
    """Squared NN distances of a chunk: each screen settles what it can certify, the rest goes on."""
    best = torch.empty(q.shape[0], dtype=torch.float64, device=q.device)
    rows = torch.arange(q.shape[0], device=q.device)
    for ref_lo, u in screens:
        sub_self = None if self_idx is None else self_idx[rows]
        found, bad = _screen(q[rows], ref, ref_lo, r_sq, sub_self, u)
        best[rows] = found
        rows = rows[bad]
        if rows.numel() == 0:
            return best
        logger.debug("nearest_neighbour_distance: %d of %d rows not certified by the %s screen",
                     rows.numel(), q.shape[0], ref_lo.dtype)
    best[rows] = _nn_direct(q[rows], ref, None if self_idx is None else self_idx[rows])
    return best


def nearest_neighbour_distance(queries: ArrayLike, reference: ArrayLike, *, batch_size: int = 1024,
                               exclude_self: bool = False) -> torch.Tensor:
    """Euclidean distance from each query to its nearest reference row: ``dᵢ = minⱼ ‖qᵢ − rⱼ‖``.

    Both sets are first centred on the reference mean (distances do not change; a large common offset
    would ruin the expansion below). Chunks of ``batch_size`` queries are then compared with the whole
    reference set (memory ``batch_size × m`` floats) by the expansion ``‖q‖² + ‖r‖² − 2 q·r``: on the CPU
    with IEEE float32 matmuls (the default) in float32, then, for rows a rigorous rounding bound cannot
    settle, in float64, and for rows still unsettled (near-ties far from the origin) from explicit
    differences. Each screen keeps a few candidates whose distances are recomputed from float64
    differences, so the result is the brute-force ``min`` of exact distances up to float64 rounding (exact
    copies give 0). On other devices, or under TF32/BF16 matmul modes, the float32 screen is skipped.

    Args:
        queries: ``(n_q, d)`` points.
        reference: ``(m, d)`` points; the computation runs on its device when it is a tensor.
        batch_size: queries per chunk.
        exclude_self: queries and reference are the same set, row for row (``n_q == m``): skip the pair
            ``(i, i)``, so each point's distance is to its nearest *other* point (duplicates still give 0).

    Returns:
        ``(n_q,)`` float64 CPU tensor of distances.

    Raises:
        ValueError: bad shapes, NaN/inf, mismatched columns, or ``exclude_self`` with ``n_q != m`` or
            ``m < 2``.
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be a bool, got {exclude_self!r}")
    device = reference.device if isinstance(reference, torch.Tensor) else torch.device("cpu")
    q = _as_matrix("queries", queries, device=device)
    ref = _as_matrix("reference", reference, min_rows=2 if exclude_self else 1, device=device)
    _check_same_dim("queries", q, "reference", ref)
    if exclude_self and q.shape[0] != ref.shape[0]:
        raise ValueError(
            f"exclude_self=True needs queries and reference to be the same set, got {q.shape[0]} and "
            f"{ref.shape[0]} rows"
        )
    centre = ref.mean(dim=0)
    q, ref = q - centre, ref - centre  # equal rows stay exactly equal
    r_sq = ref.square().sum(dim=1)
    screens = [(ref, _U64)]
    if device.type == "cpu" and _fp32_matmul_is_ieee() and q.shape[1] * _U32 < 0.01:
        screens.insert(0, (ref.float(), _U32))
    out = []
    for start in range(0, q.shape[0], batch_size):
        qb = q[start:start + batch_size]
        self_idx = torch.arange(start, start + qb.shape[0], device=device) if exclude_self else None
        out.append(_nn_chunk(qb, ref, screens, r_sq, self_idx))
    return torch.cat(out).sqrt().cpu()


def _median(x: torch.Tensor) -> float:
    """Median of a 1-D tensor as ``numpy.median`` defines it: the mean of the two middle values when even."""
    s = x.flatten().sort().values
    n = s.numel()
    return float((s[(n - 1) // 2] + s[n // 2]) / 2)


def _subsample(x: torch.Tensor, n: int | None, generator: torch.Generator) -> torch.Tensor:
    if n is None or x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:n]]


def memorization_report(samples: ArrayLike, train: ArrayLike, test: ArrayLike, *, n: int | None = None,
                        seed: int = 0) -> dict[str, Any]:
    """Are generated images new, or copies of training images? Nearest-neighbour distances to ``train``.

    ``d_s`` = distances from each sample to its nearest training row, ``d_t`` = the same for held-out test
    rows (:func:`nearest_neighbour_distance`); medians as ``numpy.median``. A model that makes new images
    puts its samples as far from ``train`` as unseen real images are: ``ratio = median(d_s) / median(d_t) ≈ 1``;
    the project's bar is
    ``ratio >= 0.9``. A model that memorizes gives ``ratio ≪ 1``. ``near_copy_fraction`` is the share of
    samples closer to ``train`` than the 1st percentile of ``d_t`` (``near_copy_threshold``), i.e. closer
    than 99% of real unseen images ever get.

    Compare in the same pixel space for all three sets (e.g. flat ``[0, 1]`` pixels, samples clipped or
    not, as recorded by the caller).

    Args:
        samples: ``(n_s, d)`` generated points (flatten images first).
        train: ``(n_train, d)`` the model's training set.
        test: ``(n_test, d)`` held-out real points from the same distribution, ``>= 1`` row.
        n: if given, ``samples`` and ``test`` are each subsampled (without replacement) to at most ``n``
            rows, drawn with ``torch.Generator().manual_seed(seed)``.
        seed: seed of the subsampling.

    Returns:
        JSON-ready dict: ``median_samples_to_train``, ``mean_samples_to_train``, ``median_test_to_train``,
        ``mean_test_to_train``, ``ratio`` (NaN when ``median_test_to_train`` is 0), ``near_copy_threshold``,
        ``near_copy_fraction``, and the row counts ``n_samples``, ``n_test``, ``n_train``.
    """
    if n is not None:
        n = _check_positive_int("n", n)
    seed = _check_seed(seed)
    s = _as_matrix("samples", samples)
    tr = _as_matrix("train", train)
    te = _as_matrix("test", test)
    _check_same_dim("samples", s, "train", tr)
    _check_same_dim("test", te, "train", tr)
    gen = torch.Generator().manual_seed(seed)
    s, te = _subsample(s, n, gen), _subsample(te, n, gen)
    d_s = nearest_neighbour_distance(s, tr)
    d_t = nearest_neighbour_distance(te, tr)
    med_s, med_t = _median(d_s), _median(d_t)
    threshold = float(torch.quantile(d_t, 0.01))
    return {
        "median_samples_to_train": med_s,
        "mean_samples_to_train": float(d_s.mean()),
        "median_test_to_train": med_t,
        "mean_test_to_train": float(d_t.mean()),
        "ratio": med_s / med_t if med_t > 0 else math.nan,
        "near_copy_threshold": threshold,
        "near_copy_fraction": float((d_s < threshold).double().mean()),
        "n_samples": int(s.shape[0]),
        "n_test": int(te.shape[0]),
        "n_train": int(tr.shape[0]),
    }


# ------------------------------------------------------------------------------------- distribution distances
def wasserstein2(a: ArrayLike, b: ArrayLike) -> float:
    """Exact 2-Wasserstein distance between two empirical clouds of equal size.

    ``W2(a, b) = sqrt( min_σ (1/n) Σᵢ ‖aᵢ − b_σ(i)‖² )`` over permutations ``σ``: with equal uniform weights
    the optimal plan is a permutation (Birkhoff), found by ``scipy.optimize.linear_sum_assignment`` on the
    ``(n, n)`` squared-distance cost. Cost ``O(n³)`` time and ``O(n²)`` memory: a few thousand points at most.

    Args:
        a: ``(n, d)`` points.
        b: ``(n, d)`` points, the same ``n``.

    Returns:
        The distance; the matched squared distances are recomputed from explicit differences in float64.

    Raises:
        ValueError: different row counts (subsample the larger cloud to the smaller one's size), bad
            shapes, NaN/inf.
    """
    x = _as_matrix("a", a)
    y = _as_matrix("b", b)
    _check_same_dim("a", x, "b", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"a and b must have the same number of rows for the exact assignment, got {x.shape[0]} and "
            f"{y.shape[0]}; subsample the larger one to {min(x.shape[0], y.shape[0])} rows"
        )
    cost = _sq_dists(x, y, x.square().sum(dim=1), y.square().sum(dim=1)).clamp_min(0.0)
    rows, cols = linear_sum_assignment(cost.numpy())
    matched = (x[torch.from_numpy(rows)] - y[torch.from_numpy(cols)]).square().sum(dim=1)
    return math.sqrt(float(matched.mean()))


def _check_bandwidths(bandwidths: object) -> torch.Tensor:
    if isinstance(bandwidths, numbers.Real) and not isinstance(bandwidths, bool):
        bandwidths = [bandwidths]
    if isinstance(bandwidths, (str, bytes)) or not isinstance(bandwidths, (Sequence, np.ndarray, torch.Tensor)):
        raise TypeError(f"bandwidths must be None, a float or a sequence of floats, got {bandwidths!r}")
    h = torch.as_tensor(np.asarray(bandwidths, dtype=np.float64).ravel())
    if h.numel() == 0 or not bool(torch.isfinite(h).all()) or not bool((h > 0).all()):
        raise ValueError(f"bandwidths must be finite and > 0 (at least one), got {bandwidths!r}")
    return h


def _median_pairwise_distance(pooled: torch.Tensor) -> float:
    """Median of ``‖xᵢ − xⱼ‖``, ``i < j``, over at most ``_MEDIAN_ROWS`` rows (a seeded subset beyond that)."""
    if pooled.shape[0] > _MEDIAN_ROWS:
        gen = torch.Generator().manual_seed(0)
        pooled = pooled[torch.randperm(pooled.shape[0], generator=gen)[:_MEDIAN_ROWS]]
    iu = torch.triu_indices(pooled.shape[0], pooled.shape[0], offset=1)
    dist = torch.cdist(pooled, pooled, compute_mode="donot_use_mm_for_euclid_dist")[iu[0], iu[1]]
    return _median(dist)


def _kernel_sum(x: torch.Tensor, y: torch.Tensor, inv_two_h2: torch.Tensor, block: int = 1024) -> float:
    """``Σᵢⱼ Σ_h exp(−‖xᵢ − yⱼ‖² / (2h²))`` in float64, ``x`` in row blocks."""
    y_sq = y.square().sum(dim=1)
    total = 0.0
    for i in range(0, x.shape[0], block):
        xb = x[i:i + block]
        d2 = _sq_dists(xb, y, xb.square().sum(dim=1), y_sq).clamp_min(0.0)  # (b, n)
        total += sum(float(torch.exp(-c * d2).sum()) for c in inv_two_h2.tolist())
    return total


def mmd_rbf(a: ArrayLike, b: ArrayLike, *, bandwidths: float | Sequence[float] | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with a sum of Gaussian kernels (Gretton et al., JMLR 2012).

    ``k(x, y) = Σ_h exp(−‖x − y‖² / (2h²))`` and, for ``a (m, d)``, ``b (n, d)``::

        MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(aᵢ, aⱼ) + 1/(n(n−1)) Σ_{i≠j} k(bᵢ, bⱼ) − 2/(mn) Σ_{i,j} k(aᵢ, bⱼ)

    The estimator is unbiased, so it can be slightly negative when the two distributions agree.
    Default ``bandwidths``: ``med × (0.5, 1, 2)``, ``med`` the median pairwise distance of the pooled
    sample ``[a; b]`` (over a seeded subset of 2048 rows when it is larger), the median heuristic of
    Gretton et al. widened to three scales. Pass fixed bandwidths to compare figures across runs.

    Args:
        a: ``(m, d)`` points, ``m >= 2``.
        b: ``(n, d)`` points, ``n >= 2``.
        bandwidths: one or more kernel widths ``h > 0``, or None for the default above.

    Returns:
        ``MMD²_u`` (float64 arithmetic, ``O((m + n)²)`` kernel evaluations in blocks).

    Raises:
        ValueError: bad shapes, NaN/inf, fewer than 2 rows, non-positive bandwidths, or a zero median
            distance (all points equal) when ``bandwidths`` is None.
    """
    x = _as_matrix("a", a, min_rows=2)
    y = _as_matrix("b", b, min_rows=2)
    _check_same_dim("a", x, "b", y)
    if bandwidths is None:
        med = _median_pairwise_distance(torch.cat([x, y]))
        if med <= 0.0:
            raise ValueError("the median pairwise distance of a and b is 0; pass bandwidths explicitly")
        h = med * torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    else:
        h = _check_bandwidths(bandwidths)
    inv_two_h2 = 1.0 / (2.0 * h.square())
    m, n, n_h = x.shape[0], y.shape[0], h.numel()
    # k(x, x) = n_h exactly on the diagonal: remove it from the full sums.
    k_xx = (_kernel_sum(x, x, inv_two_h2) - m * n_h) / (m * (m - 1))
    k_yy = (_kernel_sum(y, y, inv_two_h2) - n * n_h) / (n * (n - 1))
    k_xy = _kernel_sum(x, y, inv_two_h2) / (m * n)
    return k_xx + k_yy - 2.0 * k_xy
