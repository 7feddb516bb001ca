"""``pilearn bench solver``: how close a pilearn fit comes to this machine's floor, its memory, and its precision.

Row groups (``--only``):

* ``floor``: for every (N, d) fitted below, the fastest symmetric Gram HᵀH of an N × d float64 matrix — the
  minimum of :func:`~pilearn.solvers.gram_update_` (BLAS ``dsyrk`` on the CPU) on the whole matrix, the same over
  slices of ``batch_size`` rows (a streamed fit's batches), and torch ``H.T @ H`` — and a general
  product AᵀB of the same shape (GEMM). Seconds and GFLOP/s: a Gram counts its N·d·(d+1) useful flops whichever
  routine forms it, a GEMM its 2·N·d². Operands larger than ``floor_max_bytes`` are processed in row blocks (the
  same flops; recorded as ``block_rows``).
* ``fit``: the library path a user runs, for every N in ``ns`` and d in ``ds``: seeded random features
  (:class:`~pilearn.features.RandomProjection`, 784 → d, GELU, float32) of MNIST training images (``pilearn.data``;
  a fixed seeded input matrix when MNIST is not installed — ``results["data"]`` says which), streamed in batches
  (:func:`~pilearn.solvers.array_batches`; features into one reused buffer, :func:`~pilearn.features.stream_features`,
  as the estimators do) into :class:`~pilearn.solvers.RidgeStats` by
  :func:`~pilearn.solvers.fit_stream`, then one solve. Data, features, accumulation and solve are timed apart, and
  the fit is reported as a ratio to the floor of the same run (with ``fit_repeats`` > 1 the fastest of that many
  fresh-process fits, as the floor is the fastest of its repeats; with the floor group on, each repeat also
  re-times the floor's dsyrk right before it, and the bar reports the median of those paired ratios, which a
  drifting machine speed does not bias). Each fit runs in a fresh process whose peak
  resident memory is measured above its level after imports and data loading (the kernel's high-water mark is
  reset there), since torch allocations are invisible to tracemalloc; it is compared with 8·d² bytes (the
  statistics) plus one batch.
* ``flat``: the fits at d = ``flat_d`` for N in ``flat_ns`` (the largest streams ⌈N/60,000⌉ passes over the images,
  never materialized): the peak memory must not grow with N (each ×10 in N changes it by < 10 %).
* ``precision``: float32 Gram accumulation (``RidgeStats(accumulate_dtype=torch.float32)``; on CUDA also with
  TF32) against float64 on the same features: relative error of W and of test-set predictions, and time.

Runtime of ``--scale small`` (N ∈ {6,000, 60,000} × d ∈ {1,024 … 8,192}, and N = 600,000 at d = 1,024), from flops:
the Grams total T = Σ N·d² ≈ 6.5·10¹². The floor group forms each Gram three times (syrk: T; ``H.T @ H`` and the
GEMM: 2T each), the fits ≈ 1.2 T plus 2.6·10¹² float32 feature flops, the precision group 1.5·10¹² more. At R = 15–30
GFLOP/s for both dsyrk and dgemm that is ≈ 50–25 min on a quiet 2-core machine, about 70 % of it in the floor group;
≈ 10 min if dsyrk runs at the ≈ 80 GFLOP/s that ``_gram.py``'s 16,384 × 4,096 figure implies. Each fit also pays
≈ 4 s of process start-up. ``--only fit flat precision`` skips the floor (the ratios then read "—").

``--scale full`` adds d = 16,384 and is meant for ``--device cuda``: floors are torch Grams (``gram_update_`` is a
matmul there), batches are staged in pinned memory, the precision group adds a TF32 arm.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..features import RandomProjection, get_activation_, stream_features
from ..solvers import RidgeStats, array_batches, fit_stream, gram_update_, lam_scale
from ._results import Stopwatch, default_out_dir, environment, markdown_table, write_results

__all__ = ["SolverConfig", "SCALES", "GROUPS", "make_config", "run_solver", "render"]

Scale = Literal["smoke", "small", "full"]
GROUPS = ("floor", "fit", "flat", "precision")
D_IN, N_CLASSES = 784, 10
_F64 = torch.float64


@dataclass
class SolverConfig:
    """One run of the solver suite. ``scale`` picks the sizes below; fields override them."""

    scale: Scale = "small"
    groups: tuple[str, ...] | None = None  # None: every group of GROUPS
    ns: tuple[int, ...] = (6_000, 60_000)  # rows of the fits (and floors)
    ds: tuple[int, ...] = (1_024, 2_048, 4_096, 8_192)  # features
    flat_ns: tuple[int, ...] = (6_000, 60_000, 600_000)  # rows of the memory-flatness fits at d = flat_d
    flat_d: int = 1_024
    batch_size: int = 4_096  # rows per streamed batch (the estimators' default)
    lam_rel: float = 1e-3  # λ of the solve, relative to tr(G̃)/d
    precision_n: int = 60_000
    precision_d: int = 4_096
    data: Literal["auto", "mnist", "synthetic"] = "auto"  # auto: MNIST if installed, else a seeded input matrix
    floor_max_bytes: int = 2**31  # larger floor operands are processed in row blocks
    floor_min_seconds: float = 2.0  # repeat a floor measurement until this much time is spent (the minimum is kept)
    floor_max_repeats: int = 3
    # run each fit this many times (fresh processes) and keep the fastest, as the floor keeps its fastest repeat: on a
    # shared machine one run's time moves by a few per cent; every repeat's seconds are recorded (fit_seconds_all)
    fit_repeats: int = 1
    subprocess: bool = True  # each fit in a fresh process (honest peak memory); False: in this process
    # "NAME=VALUE" environment settings for the fit subprocesses, as a user would export them before starting Python:
    # e.g. ("OMP_WAIT_POLICY=PASSIVE", "OPENBLAS_THREAD_TIMEOUT=4") stop torch's OpenMP threads and scipy's OpenBLAS
    # threads from spinning after each call, where they take the cores the other library's next product needs.
    fit_env: tuple[str, ...] = ()
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None


SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(ns=(500, 2_000), ds=(32, 96), flat_ns=(500, 5_000), flat_d=32, batch_size=256, precision_n=2_000,
                  precision_d=96, floor_min_seconds=0.0, floor_max_repeats=1),
    "small": {},
    "full": dict(ds=(1_024, 2_048, 4_096, 8_192, 16_384), device="cuda"),
}
# thread-pool and allocator settings that change a fit's time or memory: each fit row records what its process saw
# (pilearn sets OPENBLAS_THREAD_TIMEOUT=16 when it is not exported; see pilearn/__init__.py)
_RECORDED_ENV = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_")

_TUPLE_FIELDS = ("groups", "ns", "ds", "flat_ns", "fit_env")


def make_config(scale: Scale = "small", **overrides: Any) -> SolverConfig:
    """The config of a scale, with ``overrides``; unknown keys raise ``TypeError``, bad values ``ValueError``."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    known = {f.name for f in fields(SolverConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown SolverConfig field(s) {unknown}; valid fields: {sorted(known)}")
    values = {**SCALES[scale], **overrides}
    for name in _TUPLE_FIELDS:
        v = values.get(name)
        if v is not None and not isinstance(v, (tuple, list)):
            values[name] = (v,)
        elif isinstance(v, list):
            values[name] = tuple(v)
    cfg = replace(SolverConfig(scale=scale), **values)
    _validate(cfg)
    return cfg


def _validate(cfg: SolverConfig) -> None:
    def positive_int(name: str, v: object, low: int = 1) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")

    if cfg.groups is not None:
        bad = sorted(set(cfg.groups) - set(GROUPS))
        if bad:
            raise ValueError(f"groups must be among {GROUPS}, got unknown {bad}")
    for name in ("ns", "ds", "flat_ns"):
        if not getattr(cfg, name):
            raise ValueError(f"{name} must be a non-empty tuple, got {getattr(cfg, name)!r}")
        for v in getattr(cfg, name):
            positive_int(f"{name} entries", v)
    for name in ("flat_d", "batch_size", "precision_n", "precision_d", "floor_max_bytes", "floor_max_repeats",
                 "fit_repeats"):
        positive_int(name, getattr(cfg, name))
    positive_int("seed", cfg.seed, 0)
    for item in cfg.fit_env:
        if not (isinstance(item, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item)):
            raise ValueError(f"fit_env entries must be 'NAME=VALUE' strings, got {item!r}")
    if cfg.fit_env and not cfg.subprocess:
        raise ValueError("fit_env applies to the fit subprocesses: it needs subprocess=True")
    if not (isinstance(cfg.lam_rel, (int, float)) and math.isfinite(cfg.lam_rel) and cfg.lam_rel > 0):
        raise ValueError(f"lam_rel must be a number > 0, got {cfg.lam_rel!r}")
    if not (isinstance(cfg.floor_min_seconds, (int, float)) and cfg.floor_min_seconds >= 0):
        raise ValueError(f"floor_min_seconds must be a number >= 0, got {cfg.floor_min_seconds!r}")
    if cfg.data not in ("auto", "mnist", "synthetic"):
        raise ValueError(f"data must be 'auto', 'mnist' or 'synthetic', got {cfg.data!r}")
    if not isinstance(cfg.device, str) or not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {cfg.device!r}")


def _on(cfg: SolverConfig, group: str) -> bool:
    return cfg.groups is None or group in cfg.groups


def _progress(msg: str) -> None:
    print(f"[solver {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- data
def _load_data(cfg: SolverConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(info, X (60000, 784) float32, y, X_test, y_test): MNIST pixels in [0, 1], or a seeded stand-in."""
    if cfg.data in ("auto", "mnist"):
        from ..data import load_mnist

        try:
            X, y = load_mnist("train")
            Xt, yt = load_mnist("test")
            flat = lambda a: np.ascontiguousarray(a.reshape(len(a), D_IN), dtype=np.float32)  # noqa: E731
            return {"source": "mnist", "rows": len(X), "d_in": D_IN}, flat(X), y, flat(Xt), yt
        except (ImportError, OSError) as err:  # DatasetNotFoundError is a FileNotFoundError
            if cfg.data == "mnist":
                raise
            reason = f"{type(err).__name__}: {err}"
    else:
        reason = "data='synthetic'"
    g = torch.Generator().manual_seed(cfg.seed)
    X = torch.rand(70_000, D_IN, generator=g)
    teacher = torch.randn(D_IN, N_CLASSES, generator=g)
    y = (X - 0.5).matmul(teacher).argmax(1)  # labels a linear teacher assigns: a learnable task
    info = {"source": "synthetic", "rows": 60_000, "d_in": D_IN,
            "note": f"U(0,1) inputs from torch.Generator seed {cfg.seed}, labels argmax of a Gaussian teacher ({reason})"}
    return info, X[:60_000].numpy(), y[:60_000].numpy(), X[60_000:].numpy(), y[60_000:].numpy()


def _row_batches(X: np.ndarray, y: np.ndarray, n: int, batch_size: int, device: str) -> Iterator[tuple]:
    """n rows of X, X, X, … (X repeated end to end) in batches of batch_size, the last one shorter: the stream a
    dataset of n rows gives, whatever len(X). Every batch is a fresh copy, as rows read from a file or a data loader
    are (a view into X would cost nothing up to N = len(X) and a copy past it, and bias the memory-flatness test)."""
    m = len(X)
    for i in range(0, n, batch_size):
        rows = np.arange(i, min(i + batch_size, n)) % m
        xb, yb = X[rows], y[rows]
        batch = (next(array_batches(xb, len(xb), device=device)), next(array_batches(yb, len(yb), device=device)))
        del xb, yb  # held while suspended, they would outlive the batch: the next copy is made before they go
        yield batch
        del batch


# ---------------------------------------------------------------------------------------------- floor
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best_time(fn: Callable[[], Any], cfg: SolverConfig) -> tuple[float, int]:
    """Minimum wall-clock seconds of ``fn`` over repeats (until floor_min_seconds or floor_max_repeats)."""
    times: list[float] = []
    while not times or (sum(times) < cfg.floor_min_seconds and len(times) < cfg.floor_max_repeats):
        _sync(cfg.device)
        t = time.perf_counter()
        fn()
        _sync(cfg.device)
        times.append(time.perf_counter() - t)
    return min(times), len(times)


def _gram_operands(n: int, d: int, cfg: SolverConfig) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(H, G, blocks): a seeded float64 operand of at most ``floor_max_bytes`` (rows × d), a d × d accumulator, and
    the row blocks that make up an n-row Gram; thread pools and code paths warmed by one small update."""
    rows = min(n, max(1, cfg.floor_max_bytes // (8 * d)))
    g = torch.Generator().manual_seed(cfg.seed)
    H = torch.rand(rows, d, generator=g, dtype=_F64).to(cfg.device)  # values do not change BLAS time
    G = torch.zeros(d, d, dtype=_F64, device=cfg.device)
    gram_update_(G, H[: min(rows, 256)])
    return H, G, [rows] * (n // rows) + ([n % rows] if n % rows else [])


def _syrk_run(G: torch.Tensor, H: torch.Tensor, blocks: list[int], step: int | None = None) -> Callable[[], None]:
    """gram_update_ over the row blocks, or over slices of ``step`` rows (the fits' batches) of each."""
    def run() -> None:
        for r in blocks:
            for i in range(0, r, step or r):
                gram_update_(G, H[i : min(r, i + (step or r))])
    return run


def measure_floor(n: int, d: int, cfg: SolverConfig) -> dict[str, Any]:
    """Seconds and GFLOP/s of the fastest Gram of an n × d float64 matrix, and of a GEMM of the same shape."""
    H, G, blocks = _gram_operands(n, d, cfg)
    rows = H.shape[0]

    def product(right: torch.Tensor) -> Callable[[], None]:
        """Hᵀ·right over the row blocks: the Gram torch would form (right = H), or a GEMM (right = B)."""
        def run() -> None:
            if len(blocks) == 1:
                H.T @ right
            else:
                for r in blocks:
                    G.addmm_(H[:r].T, right[:r])
        return run

    t_syrk, rep_syrk = _best_time(_syrk_run(G, H, blocks), cfg)
    # the same Gram as a sum of batch-sized syrks, the way a streamed fit forms it: BLAS blocks a short operand
    # differently and can be faster; the floor is the fastest way, so it is a candidate
    batched = cfg.batch_size < rows
    t_batch, rep_batch = _best_time(_syrk_run(G, H, blocks, cfg.batch_size), cfg) if batched else (t_syrk, 0)
    t_torch, rep_torch = _best_time(product(H), cfg)
    B = torch.rand(rows, d, generator=torch.Generator().manual_seed(cfg.seed + 1), dtype=_F64).to(cfg.device)
    t_gemm, rep_gemm = _best_time(product(B), cfg)
    gram_flops, gemm_flops = n * d * (d + 1), 2 * n * d * d
    candidates = {"gram_update_": t_syrk, f"gram_update_ in {cfg.batch_size}-row batches": t_batch,
                  "torch H.T @ H": t_torch}
    method = min(candidates, key=candidates.__getitem__)
    floor = candidates[method]
    return {"n": n, "d": d, "block_rows": rows, "syrk_seconds": t_syrk, "syrk_batched_seconds": t_batch,
            "torch_gram_seconds": t_torch, "gemm_seconds": t_gemm, "repeats": [rep_syrk, rep_batch, rep_torch, rep_gemm],
            "floor_seconds": floor, "floor_method": method,
            "syrk_gflops": gram_flops / t_syrk / 1e9, "syrk_batched_gflops": gram_flops / t_batch / 1e9,
            "torch_gram_gflops": gram_flops / t_torch / 1e9,
            "floor_gflops": gram_flops / floor / 1e9, "gemm_gflops": gemm_flops / t_gemm / 1e9}


def _paired_floor(n: int, d: int, cfg: SolverConfig) -> float:
    """The floor's Gram timed once more right before one repeat of a fit (``fit_repeats`` > 1): the faster of
    gram_update_ on the whole matrix and in batch-sized slices (``H.T @ H`` is never the faster on a CPU; on CUDA it
    is what gram_update_ runs). A shared machine's speed drifts by several per cent over minutes; a fit compared
    with a floor measured seconds before it sees the same machine."""
    one = replace(cfg, floor_min_seconds=0.0, floor_max_repeats=1)
    H, G, blocks = _gram_operands(n, d, cfg)
    steps = {H.shape[0], min(H.shape[0], cfg.batch_size)}
    return min(_best_time(_syrk_run(G, H, blocks, step), one)[0] for step in steps)


# ---------------------------------------------------------------------------------------------- one fit
def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> tuple[int, str]:
    """Reset the kernel's peak-RSS mark to the current RSS if it can; return (baseline bytes, method)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss = _status_kb("VmRSS")
        if rss is not None:
            return rss * 1024, "VmHWM reset at the baseline (/proc/self/clear_refs)"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss minus its value at the baseline"


def _peak() -> int:
    hwm = _status_kb("VmHWM")
    return hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fit_once(spec: dict[str, Any], X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """One timed fit, the way a user streams one: features → fit_stream → solve. Memory is measured from here."""
    n, d, bs, dev = spec["n"], spec["d"], spec["batch_size"], spec["device"]
    cuda = dev.startswith("cuda")
    base, method = _reset_peak()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    t = {"data": 0.0, "features": 0.0}
    with Stopwatch(dev) as sw_init:
        fmap = RandomProjection(D_IN, d, activation="gelu", seed=spec["seed"], dtype=torch.float32, device=dev)
        stats = RidgeStats(d, N_CLASSES, dual=False, device=dev)  # the Gram path at every N (no kept rows)

    def timed_rows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = _row_batches(X, y, n, bs, dev)
        while True:
            t0 = time.perf_counter()
            batch = next(rows, None)
            t["data"] += time.perf_counter() - t0
            if batch is None:
                return
            yield batch
            del batch

    def timed_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the estimators' path: every batch's features written into one reused buffer (stream_features)
        feats = stream_features(fmap, timed_rows())
        while True:
            _sync(dev)  # the previous batch's queued GPU accumulation belongs to "accumulate", not to this batch
            t1, data_before = time.perf_counter(), t["data"]
            item = next(feats, None)
            if item is None:
                return
            H, labels = item
            Y = F.one_hot(labels, N_CLASSES).to(torch.float32)
            _sync(dev)
            t["features"] += time.perf_counter() - t1 - (t["data"] - data_before)
            yield H, Y
            del item, H, labels, Y  # a suspended generator's locals stay alive: drop them before the next batch

    with Stopwatch(dev) as sw_stream:
        fit_stream(stats, timed_batches(), check_finite=False)
    peak_accumulate = _peak() - base
    with Stopwatch(dev) as sw_solve:
        sol = stats.solve(spec["lam_rel"] * lam_scale(stats))
    peak_fit = _peak() - base
    accumulate = sw_stream.seconds - t["data"] - t["features"]
    D = d + N_CLASSES + 1
    batch_bytes = bs * (D_IN * 4 + 2 * d * 4 + D * 8)  # input, pre-activation and features (float32), float64 rows
    out = {"n": n, "d": d, "batch_size": bs, "n_rows": stats.n_rows, "init_seconds": sw_init.seconds,
           "data_seconds": t["data"], "features_seconds": t["features"], "accumulate_seconds": accumulate,
           "solve_seconds": sw_solve.seconds, "solve_method": sol.method,
           "fit_seconds": sw_init.seconds + sw_stream.seconds + sw_solve.seconds,
           "peak_accumulate_mb": peak_accumulate / 2**20, "peak_fit_mb": peak_fit / 2**20,
           "stats_mb": 8 * D * D / 2**20, "batch_mb": batch_bytes / 2**20, "memory_method": method,
           "per_batch": _anatomy(stats, fmap, X, bs, dev)}
    if cuda:
        out["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - cuda_base) / 2**20
    return out


def _anatomy(stats: RidgeStats, fmap: RandomProjection, X: np.ndarray, bs: int, dev: str) -> dict[str, float]:
    """Seconds of one full batch's parts, into buffers already touched (as in the stream, where they are reused):
    feature GEMM, activation, float32 → float64 copy into the rows, syrk."""
    x = torch.from_numpy(X[:bs]).to(dev)
    res: dict[str, float] = {}
    with torch.no_grad():
        z = torch.zeros(x.shape[0], fmap.out_features, dtype=fmap.weight.dtype, device=x.device)
        A = torch.zeros(x.shape[0], stats.M.shape[0], dtype=_F64, device=x.device)
        M = torch.zeros_like(stats.M)
        with Stopwatch(dev) as sw:
            torch.addmm(fmap.bias, x, fmap.weight, alpha=fmap.scale, out=z)
        res["feature_gemm"] = sw.seconds
        with Stopwatch(dev) as sw:
            get_activation_(fmap.activation)(z)
        res["activation"] = sw.seconds
        with Stopwatch(dev) as sw:
            A[:, : z.shape[1]] = z
        res["copy_to_float64"] = sw.seconds
        with Stopwatch(dev) as sw:
            gram_update_(M, A)
        res["syrk"] = sw.seconds
    res["rows"] = x.shape[0]
    return res


def _worker_main() -> None:
    """Entry of a fit subprocess: ``python -c "...; _worker_main()" SPEC_JSON``; prints one JSON line."""
    spec = json.loads(sys.argv[1])
    X, y = np.load(spec["x_path"]), np.load(spec["y_path"])  # read straight into memory: no transient copy
    row = fit_once(spec, X, y)
    row["env"] = {name: os.environ.get(name) for name in spec.get("env_names", [])}  # what the fit process saw
    print(json.dumps(row))


def _run_fit(spec: dict[str, Any], cfg: SolverConfig, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if not cfg.subprocess:
        return fit_once(spec, X, y)
    code = "from pilearn.experiments.solver import _worker_main; _worker_main()"
    env = dict(os.environ)
    env.update(item.split("=", 1) for item in cfg.fit_env)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"fit subprocess for n={spec['n']}, d={spec['d']} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- precision
def _precision(cfg: SolverConfig, X: np.ndarray, y: np.ndarray, Xt: np.ndarray) -> list[dict[str, Any]]:
    """float32 (and TF32 on CUDA) Gram accumulation against float64 on the same feature batches."""
    dev, d = cfg.device, cfg.precision_d
    fmap = RandomProjection(D_IN, d, activation="gelu", seed=cfg.seed, dtype=torch.float32, device=dev)
    arms = {"float64": (RidgeStats(d, N_CLASSES, dual=False, device=dev), False),
            "float32": (RidgeStats(d, N_CLASSES, dual=False, device=dev, accumulate_dtype=torch.float32), False)}
    if dev.startswith("cuda"):
        arms["tf32"] = (RidgeStats(d, N_CLASSES, dual=False, device=dev, accumulate_dtype=torch.float32), True)
    seconds = dict.fromkeys(arms, 0.0)
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    with torch.no_grad():
        for xb, yb in _row_batches(X, y, cfg.precision_n, cfg.batch_size, dev):
            H, Y = fmap(xb), F.one_hot(yb, N_CLASSES).to(torch.float32)
            for name, (stats, tf32) in arms.items():
                torch.backends.cuda.matmul.allow_tf32 = tf32
                try:
                    with Stopwatch(dev) as sw:
                        stats.update(H, Y, check_finite=False)
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = tf32_before
                seconds[name] += sw.seconds
        lam = cfg.lam_rel * lam_scale(arms["float64"][0])
        sols = {name: stats.solve(lam) for name, (stats, _) in arms.items()}
        Ht = [fmap(xb).to(_F64) for xb in array_batches(Xt, cfg.batch_size, device=dev)]
        preds = {name: torch.cat([h @ s.coef + s.intercept for h in Ht]) for name, s in sols.items()}
    ref, ref_pred = sols["float64"], preds["float64"]
    rows = []
    for name, sol in sols.items():
        rows.append({"accumulate": name, "n": cfg.precision_n, "d": d, "accumulate_seconds": seconds[name],
                     "coef_rel_error": float((sol.coef - ref.coef).norm() / ref.coef.norm()),
                     "pred_rel_error": float((preds[name] - ref_pred).norm() / ref_pred.norm()),
                     "argmax_agreement": float((preds[name].argmax(1) == ref_pred.argmax(1)).double().mean()),
                     "solve_method": sol.method})
    return rows


# ---------------------------------------------------------------------------------------------- suite
def _fit_sizes(cfg: SolverConfig) -> list[tuple[int, int, str]]:
    sizes: list[tuple[int, int, str]] = []
    if _on(cfg, "fit"):
        sizes += [(n, d, "fit") for d in cfg.ds for n in cfg.ns]
    if _on(cfg, "flat"):
        sizes += [(n, cfg.flat_d, "flat") for n in cfg.flat_ns if (n, cfg.flat_d, "fit") not in sizes]
    return sizes


def run_solver(cfg: SolverConfig, command: str = "pilearn bench solver") -> dict:
    """Run the suite; write ``results.json``, ``results.md`` and the plots; return the results."""
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("solver")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"suite": "solver", "command": command, "config": asdict(cfg),
                               "environment": environment(cfg.device), "floor": [], "fits": [], "precision": [],
                               "group_seconds": {}}
    t_start = time.perf_counter()
    sizes = _fit_sizes(cfg)
    need_data = bool(sizes) or _on(cfg, "precision")
    if need_data:
        info, X, y, Xt, yt = _load_data(cfg)
        results["data"] = info
    if _on(cfg, "floor"):
        with Stopwatch(cfg.device) as sw:
            for n, d in sorted({(n, d) for n, d, _ in sizes} or {(n, d) for n in cfg.ns for d in cfg.ds},
                               key=lambda s: (s[1], s[0])):
                row = measure_floor(n, d, cfg)
                results["floor"].append(row)
                write_results(out, results)
                _progress(f"floor n={n:,} d={d:,}: {row['floor_seconds']:.3g} s ({row['floor_method']}, "
                          f"{row['floor_gflops']:.1f} GFLOP/s); GEMM {row['gemm_gflops']:.1f} GFLOP/s")
        results["group_seconds"]["floor"] = sw.seconds
    if sizes:
        with tempfile.TemporaryDirectory(prefix="pilearn-solver-") as tmp, Stopwatch(cfg.device) as sw:
            np.save(Path(tmp) / "x.npy", X)
            np.save(Path(tmp) / "y.npy", y)
            for n, d, group in sizes:
                spec = {"n": n, "d": d, "batch_size": cfg.batch_size, "device": cfg.device, "seed": cfg.seed,
                        "lam_rel": cfg.lam_rel, "x_path": str(Path(tmp) / "x.npy"), "y_path": str(Path(tmp) / "y.npy"),
                        "env_names": list(dict.fromkeys([*_RECORDED_ENV, *(e.split("=", 1)[0] for e in cfg.fit_env)]))}
                runs, pairs = [], []
                for _ in range(cfg.fit_repeats):
                    paired = cfg.fit_repeats > 1 and _on(cfg, "floor")
                    floor_now = _paired_floor(n, d, cfg) if paired else None
                    runs.append(_run_fit(spec, cfg, X, y))
                    if floor_now is not None:
                        pairs.append({"floor_seconds": floor_now, "fit_seconds": runs[-1]["fit_seconds"],
                                      "ratio": runs[-1]["fit_seconds"] / floor_now})
                best = min(runs, key=lambda r: r["fit_seconds"])
                row = {"group": group, **best, "fit_seconds_all": [r["fit_seconds"] for r in runs],
                       "peak_fit_mb_all": [r["peak_fit_mb"] for r in runs]}
                if pairs:
                    row["pairs"] = pairs
                results["fits"].append(row)
                write_results(out, results)
                _progress(f"fit n={n:,} d={d:,}: {row['fit_seconds']:.3g} s (features {row['features_seconds']:.3g}, "
                          f"accumulate {row['accumulate_seconds']:.3g}, solve {row['solve_seconds']:.3g}), peak "
                          f"{row['peak_fit_mb']:.0f} MB")
        results["group_seconds"]["fit+flat"] = sw.seconds
    if _on(cfg, "precision"):
        with Stopwatch(cfg.device) as sw:
            results["precision"] = _precision(cfg, X, y, Xt)
        results["group_seconds"]["precision"] = sw.seconds
        for r in results["precision"]:
            _progress(f"precision {r['accumulate']}: W rel. error {r['coef_rel_error']:.2e}, predictions "
                      f"{r['pred_rel_error']:.2e}, accumulate {r['accumulate_seconds']:.3g} s")
    results["total_seconds"] = time.perf_counter() - t_start
    write_results(out, results)
    render(out)
    _progress(f"wrote {out / 'results.json'}, results.md and plots")
    return results


# ---------------------------------------------------------------------------------------------- report
def _floor_of(results: dict, n: int, d: int) -> dict | None:
    return next((f for f in results["floor"] if f["n"] == n and f["d"] == d), None)


def fit_rows(results: dict) -> list[dict[str, Any]]:
    """The fit rows with their floor and ratios (derived from results.json only)."""
    rows = []
    for r in sorted(results["fits"], key=lambda r: (r["d"], r["n"])):
        f = _floor_of(results, r["n"], r["d"])
        floor = f["floor_seconds"] if f else None
        budget_mb = r["stats_mb"] * (r["d"] / (r["d"] + N_CLASSES + 1)) ** 2 + r["batch_mb"]  # 8d² + one batch
        rows.append({**r, "floor_seconds": floor,
                     "ratio": r["fit_seconds"] / floor if floor else None,
                     "accumulate_ratio": r["accumulate_seconds"] / floor if floor else None,
                     "features_ratio": r["features_seconds"] / floor if floor else None,
                     "budget_mb": budget_mb, "peak_ratio": r["peak_fit_mb"] / budget_mb,
                     "accumulate_peak_ratio": r["peak_accumulate_mb"] / budget_mb})
    return rows


def bars(results: dict) -> list[str]:
    """The issue's bars from the numbers: fit ≤ 1.3× floor at N = 60,000, d = 4,096; peak memory flat in N."""
    out = []
    rows = fit_rows(results)
    at = next((r for r in rows if r["n"] == 60_000 and r["d"] == 4_096 and r["ratio"] is not None), None)
    if at:
        env = "".join(f", {item}" for item in results["config"].get("fit_env", ()))
        out.append(f"fit at N=60,000, d=4,096: {at['fit_seconds']:.3g} s = {at['ratio']:.2f}× the floor "
                   f"({at['floor_seconds']:.3g} s) ≤ 1.3×: {'met' if at['ratio'] <= 1.3 else 'NOT met'} "
                   f"(accumulation alone {at['accumulate_ratio']:.2f}×, features {at['features_ratio']:.2f}×"
                   f"{env})")
        if at.get("pairs"):
            ratios = sorted(p["ratio"] for p in at["pairs"])
            med = float(np.median(ratios))
            out.append(f"the same, each of {len(ratios)} fits against the floor timed right before it: median "
                       f"{med:.2f}× (" + ", ".join(f"{p['fit_seconds']:.3g}/{p['floor_seconds']:.3g} s"
                                                   for p in at["pairs"]) + f") ≤ 1.3×: {'met' if med <= 1.3 else 'NOT met'}")
    else:
        out.append("fit ≤ 1.3× floor at N=60,000, d=4,096: not run")
    flat_d = results["config"]["flat_d"]
    flat = sorted((r for r in rows if r["d"] == flat_d), key=lambda r: r["n"])
    if len(flat) >= 2:
        steps = [(a, b, abs(b["peak_fit_mb"] - a["peak_fit_mb"]) / a["peak_fit_mb"]) for a, b in zip(flat, flat[1:])]
        worst = max(s[2] for s in steps)
        desc = ", ".join(f"{r['n']:,}: {r['peak_fit_mb']:.0f} MB" for r in flat)
        alloc = "the allocator's default settings" + "".join(f", {item}" for item in results["config"].get("fit_env", ()))
        out.append(f"peak memory flat in N at d={flat_d:,} ({desc}; {alloc}): largest change between neighbours "
                   f"{100 * worst:.1f} % < 10 %: {'met' if worst < 0.10 else 'NOT met'}")
    else:
        out.append("memory flatness: not run")
    return out


FLOOR_COLUMNS = [("n", "N"), ("d", "d"), ("syrk_seconds", "gram_update_ s"), ("syrk_gflops", "GFLOP/s"),
                 ("syrk_batched_seconds", "in batches s"), ("syrk_batched_gflops", "GFLOP/s  "),
                 ("torch_gram_seconds", "H.T @ H s"), ("torch_gram_gflops", "GFLOP/s "),
                 ("gemm_seconds", "GEMM s"), ("gemm_gflops", "GEMM GFLOP/s"), ("floor_seconds", "floor s")]
FIT_COLUMNS = [("n", "N"), ("d", "d"), ("solve_method", "solve"), ("data_seconds", "data s"),
               ("features_seconds", "features s"),
               ("accumulate_seconds", "accumulate s"), ("solve_seconds", "solve s"), ("fit_seconds", "fit s"),
               ("floor_seconds", "floor s"), ("ratio", "fit / floor"), ("accumulate_ratio", "accumulate / floor"),
               ("peak_fit_mb", "peak MB"), ("peak_accumulate_mb", "peak MB (accumulate)"),
               ("budget_mb", "8d² + batch MB"), ("peak_ratio", "peak / (8d² + batch)")]
PRECISION_COLUMNS = [("accumulate", "Gram accumulated in"), ("accumulate_seconds", "accumulate s"),
                     ("coef_rel_error", "‖ΔW‖/‖W‖"), ("pred_rel_error", "‖ΔŶ‖/‖Ŷ‖ (test)"),
                     ("argmax_agreement", "same argmax"), ("solve_method", "solve")]


def render_markdown(results: dict) -> str:
    """The Markdown report of a results dict (tables only from results files)."""
    env, cfg = results["environment"], results["config"]
    parts = [f"# solver benchmark ({cfg['scale']})", "", f"Command: `{results['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} threads), "
             f"device {env['device']}" + (f" ({env['gpu']})" if env.get("gpu") else "") + "  ",
             f"Revision: {env['git_revision']}, {env['time_utc']}, seed {cfg['seed']}", ""]
    if "data" in results:
        data = results["data"]
        parts += [f"Inputs: {data['source']} ({data['rows']:,} rows × {data['d_in']}"
                  + (f"; {data['note']}" if data.get("note") else "") + f"), batches of {cfg['batch_size']:,} rows, "
                  f"features RandomProjection 784 → d (GELU, float32), 10 one-hot targets, λ = {cfg['lam_rel']:g}·tr(G̃)/d.",
                  ""]
    parts += ["## Bars", ""] + [f"- {b}" for b in bars(results)] + [""]
    if results["floor"]:
        parts += ["## Floor: the fastest float64 Gram HᵀH of an N × d matrix, and a GEMM of the same shape", "",
                  markdown_table(results["floor"], FLOOR_COLUMNS), "",
                  "Gram GFLOP/s count the N·d·(d+1) flops of one triangle whichever routine forms it; GEMM GFLOP/s "
                  "count 2·N·d². 'in batches': gram_update_ over slices of the fits' batch size. The floor is the fastest "
                  "of the three Grams (floor_method in results.json).", ""]
    if results["fits"]:
        parts += ["## Fit: features → RidgeStats (fit_stream) → solve, each in a fresh process", "",
                  markdown_table(fit_rows(results), FIT_COLUMNS), "",
                  "fit = feature-map and statistics set-up + data + features (into one reused buffer) + accumulate + "
                  "solve. Peak memory is the "
                  "resident high-water mark above the process's level after imports and data loading "
                  f"({results['fits'][0]['memory_method']}); 'accumulate' is the peak before the solve. "
                  "8d² + batch: the float64 statistics plus one batch (input, pre-activation and features in "
                  "float32, augmented rows in float64).", ""]
        parts += ["Time of one full batch's parts (s): feature GEMM, GELU, float32 → float64 copy, syrk:", ""]
        parts += [markdown_table([{**r["per_batch"], "n": r["n"], "d": r["d"]} for r in results["fits"]
                                  if r["group"] == "fit"],
                                 [("n", "N"), ("d", "d"), ("rows", "rows"), ("feature_gemm", "feature GEMM"),
                                  ("activation", "GELU"), ("copy_to_float64", "copy"), ("syrk", "syrk")]), ""]
    if results["precision"]:
        p = results["precision"][0]
        parts += [f"## Precision policy: Gram accumulated in float32 vs float64 (N = {p['n']:,}, d = {p['d']:,})", "",
                  markdown_table(results["precision"], PRECISION_COLUMNS), "",
                  "Same feature batches for every arm; M and the solve are float64 in all of them. Errors are "
                  "relative to the float64 arm (Frobenius norms; predictions on the test split).", ""]
    if results.get("group_seconds"):
        per_group = [{"group": g, "s": s} for g, s in results["group_seconds"].items()]
        parts += ["## Wall-clock per group", "", markdown_table(per_group, [("group", "group"), ("s", "seconds")]),
                  "", f"Total: {results.get('total_seconds', float('nan')):.0f} s", ""]
    return "\n".join(parts)


def plot(results: dict, out: Path) -> list[Path]:
    """time_vs_n.png and time_vs_d.png (fit vs floor, log-log) and memory_vs_n.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, env = fit_rows(results), results["environment"]
    title = f"solver ({results['config']['scale']}): {env['cpu']}, {env['cpu_count']} cores, {env['device']}"
    written = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def finish(fig: Any, ax: Any, name: str, xlabel: str, ylabel: str) -> None:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=130)
        plt.close(fig)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, d in enumerate(sorted({r["d"] for r in rows})):
        pts = sorted((r["n"], r["fit_seconds"], r["floor_seconds"]) for r in rows if r["d"] == d)
        c = colors[i % len(colors)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=f"fit d={d:,}")
        fl = [(p[0], p[2]) for p in pts if p[2] is not None]
        if fl:
            ax.plot(*zip(*fl), "s--", color=c, alpha=0.6, label=f"floor d={d:,}")
    finish(fig, ax, "time_vs_n.png", "rows N", "seconds")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, n in enumerate(sorted({r["n"] for r in rows if r["group"] == "fit"})):
        pts = sorted((r["d"], r["fit_seconds"], r["floor_seconds"]) for r in rows if r["n"] == n and r["group"] == "fit")
        c = colors[i % len(colors)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=f"fit N={n:,}")
        fl = [(p[0], p[2]) for p in pts if p[2] is not None]
        if fl:
            ax.plot(*zip(*fl), "s--", color=c, alpha=0.6, label=f"floor N={n:,}")
    finish(fig, ax, "time_vs_d.png", "features d", "seconds")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, d in enumerate(sorted({r["d"] for r in rows})):
        pts = sorted((r["n"], r["peak_fit_mb"], r["budget_mb"]) for r in rows if r["d"] == d)
        c = colors[i % len(colors)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=f"peak d={d:,}")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], ":", color=c, alpha=0.6, label=f"8d² + batch, d={d:,}")
    finish(fig, ax, "memory_vs_n.png", "rows N", "MB")
    return written


def render(out: Path) -> None:
    """Rebuild ``results.md`` and the plots in ``out`` from its ``results.json``."""
    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(render_markdown(results) + "\n")
    if results["fits"]:
        plot(results, out)
