"""The fitting engine shared by every PIL-LoRA target: run batches, capture layer inputs and outputs with forward
hooks, stream (H, Y) into one :class:`~pilearn.solvers.RidgeStats` per layer, solve.

The target functions (:mod:`._distill`, :mod:`._task`) only say what Y is. Layers are fitted in groups (the
``schedule``): every layer of a group is fitted from the same pass, with the groups before it already fitted
and active. ``"sequential"`` is one group per layer (the seed's layer-by-layer fit, one pass per layer);
``"parallel"`` is one group (one pass; every layer sees the base model's activations); an int k splits the
layers, in forward order, into k contiguous groups.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import nn

from ..distributed import all_reduce_stats, rank_and_world
from ..solvers import RidgeStats, lam_scale
from ._layer import PILLoraLinear
from ._model import PILModel

__all__ = ["FitReport", "LayerReport", "Schedule"]

logger = logging.getLogger(__name__)

Schedule = Union[Literal["sequential", "parallel"], int]


@dataclass
class LayerReport:
    """How one adapter was solved.

    Attributes:
        n_rows: rows (token positions) streamed into its statistics.
        lam: the absolute λ used; ``lam_rel`` = λ / (tr(G̃)/rank).
        target_rms: root-mean-square of its targets (after dividing by ``scaling``).
        r2: 1 − SSE/SST of the ridge fit on its own targets (SST centred when ``fit_bias``): the share of the
            target the rank-``rank`` random features could reproduce.
        pushback_residual: task fits through attention only: mean over sequences of ‖J δ − δs‖/‖δs‖, how much of
            the desired change at the stream the pulled-back target δ fails to produce through the linearised
            attention (0 when δs is reachable and CG converged).
    """

    n_rows: int
    lam: float
    lam_rel: float
    target_rms: float
    r2: float
    pushback_residual: float | None = None


@dataclass
class FitReport:
    """What a fit did: per-layer reports, the groups in order, passes over the data, seconds; task fits add the step
    search: ``newton_step`` (step group -> its Newton step cₖ), ``step`` (the line-search multiplier t of c),
    ``layer_steps`` (layer -> its final step t·cₖ), ``step_losses`` (loss per t tried), ``loss_before``/``loss_after``
    (on the step-search batches)."""

    layers: dict[str, LayerReport] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)
    n_passes: int = 0
    seconds: float = 0.0
    step: float | None = None
    newton_step: dict[str, float] | None = None
    layer_steps: dict[str, float] | None = None
    step_losses: dict[float, float] | None = None
    loss_before: float | None = None
    loss_after: float | None = None


class _StopForward(Exception):
    """Raised by a capture hook once the last layer a pass needs has run: the rest of the forward is skipped."""


# --------------------------------------------------------------------------------------------------- batches


def check_batches(batches: object, name: str = "batches") -> Sequence[Any] | Iterable[Any]:
    """Refuse one-shot iterators (a fit makes several passes) and empty collections."""
    if isinstance(batches, (str, bytes, torch.Tensor, Mapping)) or not isinstance(batches, Iterable):
        raise TypeError(f"{name} must be a re-iterable collection of batches (a list or a DataLoader), "
                        f"got {type(batches).__name__}")
    if iter(batches) is batches:
        raise TypeError(f"{name} is a one-shot iterator ({type(batches).__name__}); a fit makes one pass per layer "
                        "group, so pass a list or a DataLoader")
    if isinstance(batches, Sequence) and len(batches) == 0:
        raise ValueError(f"{name} is empty")
    return batches


def _tensors(obj: object, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path or "input", obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]")


def check_finite_batch(batch: object, index: int, name: str = "batch") -> None:
    """ValueError naming the batch and the entry when a floating input holds NaN or Inf."""
    for path, t in _tensors(batch):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{name} {index}: input {path!r} contains {bad} NaN or infinite values")


def call_model(model: nn.Module, inputs: object) -> Any:
    """``model(**inputs)`` for a dict, ``model(*inputs)`` for a tuple or list, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def attention_mask_of(inputs: object) -> torch.Tensor | None:
    if isinstance(inputs, Mapping) and isinstance(inputs.get("attention_mask"), torch.Tensor):
        return inputs["attention_mask"]
    return None


def select_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(…, c) -> (n, c): every leading position, or those where ``mask`` (the leading shape) is true."""
    flat = t.reshape(-1, t.shape[-1])
    if mask is None or mask.numel() != flat.shape[0]:
        return flat
    return flat[mask.reshape(-1).to(device=flat.device, dtype=torch.bool)]


# --------------------------------------------------------------------------------------------------- hooks


class Capture:
    """Forward hooks recording ``(input, output)`` of named modules, optionally stopping the forward after one.

    ``records[name]`` is a list with one ``(x, y)`` per call (detached). With ``stop_after``, the hook of that
    module raises :class:`_StopForward` after recording, so :meth:`run` skips the rest of the model.
    """

    def __init__(self, modules: Mapping[str, nn.Module], stop_after: str | None = None) -> None:
        self.modules = dict(modules)
        self.stop_after = stop_after
        self.records: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in self.modules}
        self._handles: list[Any] = []

    def __enter__(self) -> "Capture":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"module {name!r} returned {type(output).__name__}, expected a tensor")
            self.records[name].append((args[0].detach(), output.detach()))
            if name == self.stop_after:
                raise _StopForward

        return hook

    def clear(self) -> None:
        for v in self.records.values():
            v.clear()

    def run(self, model: nn.Module, inputs: object) -> Any:
        """Call the model; None when the forward was stopped early."""
        self.clear()
        try:
            return call_model(model, inputs)
        except _StopForward:
            return None

    def one(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) of ``name``'s calls in this forward, concatenated along the rows."""
        recs = self.records[name]
        if not recs:
            raise RuntimeError(f"layer {name!r} was not called in the forward pass")
        if len(recs) == 1:
            return recs[0]
        xs = [x.reshape(-1, x.shape[-1]) for x, _ in recs]
        ys = [y.reshape(-1, y.shape[-1]) for _, y in recs]
        return torch.cat(xs), torch.cat(ys)


def forward_order(model: nn.Module, layers: Mapping[str, nn.Module], inputs: object) -> tuple[list[str], bool]:
    """(layer names in the order of their first call, whether any layer was called more than once) from one forward."""
    seen: list[str] = []
    calls: dict[str, int] = {n: 0 for n in layers}
    handles = []
    for name, module in layers.items():
        def hook(module: nn.Module, args: tuple, output: Any, name: str = name) -> None:
            calls[name] += 1
            if name not in seen:
                seen.append(name)
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in seen]
    if missing:
        raise ValueError(f"adapted layer(s) {missing[:5]} were not called by the model's forward on the first batch; "
                         "they cannot be fitted")
    return seen, any(c > 1 for c in calls.values())


def make_groups(order: list[str], schedule: Schedule) -> list[list[str]]:
    if schedule == "sequential":
        return [[n] for n in order]
    if schedule == "parallel":
        return [list(order)]
    if isinstance(schedule, bool) or not isinstance(schedule, numbers.Integral) or schedule < 1:
        raise ValueError(f'schedule must be "sequential", "parallel" or an int >= 1, got {schedule!r}')
    k = min(int(schedule), len(order))
    bounds = [round(i * len(order) / k) for i in range(k + 1)]
    return [order[bounds[i]:bounds[i + 1]] for i in range(k)]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class Recorder:
    """Forward hooks by key: mode "io" keeps (first input, output tensor); "attn" keeps (attention probabilities,
    the ``position_embeddings`` keyword or None)."""

    def __init__(self) -> None:
        self.specs: dict[str, tuple[nn.Module, str]] = {}
        self.data: dict[str, Any] = {}
        self._handles: list[Any] = []

    def add(self, key: str, module: nn.Module, mode: str) -> None:
        self.specs.setdefault(key, (module, mode))

    def __enter__(self) -> "Recorder":
        for key, (module, mode) in self.specs.items():
            self._handles.append(module.register_forward_hook(self._hook(key, mode), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, key: str, mode: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if mode == "io":
                x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
                y = output if isinstance(output, torch.Tensor) else output[0]
                self.data[key] = (x.detach(), y.detach())
            else:
                probs = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
                if probs is None:
                    raise RuntimeError(f"attention module {key!r} returned no attention probabilities; task residuals "
                                       "through attention need the eager attention implementation")
                self.data[key] = (probs.detach(), kwargs.get("position_embeddings"))

        return hook

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise RuntimeError(f"{key!r} was not called in the forward pass")
        return self.data[key]


@contextlib.contextmanager
def eager_attention(model: nn.Module, needed: bool) -> Iterator[None]:
    """Hugging Face models: switch to eager attention (which returns its probabilities) for the fitting passes."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if not needed or current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


# --------------------------------------------------------------------------------------------------- solving


class LayerSolver:
    """One adapter's ridge problem: rows H = σ(x̂ W_down) (n, rank) — or x̂ itself (n, in) for ``down="rrr"`` —,
    targets Y = r / scaling (n, out).

    The first rows calibrate the layer's input statistics (μ, s) when it has none yet. With ``distributed``, the
    first rows of rank 0 calibrate it on every rank (one broadcast, at every rank's first :meth:`update`), and
    :meth:`solve` sums the statistics over the ranks (one all-reduce) before it solves.
    """

    def __init__(self, layer: PILLoraLinear, lam: float | str, lam_grid: Sequence[float],
                 distributed: bool = False) -> None:
        self.layer = layer
        self.lam = lam
        self.lam_grid = tuple(lam_grid)
        self.distributed = distributed
        # down="rrr": regress on x̂ itself (in columns); W_down is chosen at the solve (see PILLoraConfig.down)
        self.rrr = layer.down == "rrr"
        if self.rrr and bool(layer.fitted):
            raise ValueError(f'layer {layer.name!r}: a down="rrr" adapter chooses its W_down in its one fit and is '
                             "already fitted; reset it first (reset=True) to refit")
        width = layer.in_features if self.rrr else layer.rank
        self.stats = RidgeStats(width, layer.out_features, fit_intercept=layer.fit_bias, device=layer.W_up.device)

    def update(self, x: torch.Tensor, target: torch.Tensor, batch_index: int) -> None:
        name = self.layer.name
        if x.shape[0] != target.shape[0]:
            raise ValueError(f"layer {name!r}: {x.shape[0]} input rows but {target.shape[0]} target rows")
        if target.shape[-1] != self.layer.out_features:
            raise ValueError(f"layer {name!r}: targets must have {self.layer.out_features} columns, got shape "
                             f"{tuple(target.shape)}")
        for what, t in (("inputs", x), ("targets", target)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"layer {name!r}: its {what} in batch {batch_index} contain "
                                 f"{int((~torch.isfinite(t)).sum())} NaN or infinite values")
        if not bool(self.layer.calibrated) and self.distributed:
            calibrate_from_rank0(self.layer, x)
        if x.shape[0] == 0:
            return
        if not bool(self.layer.calibrated):
            self.layer.calibrate(x)
        x = x.to(self.layer.W_down.dtype)
        H = self.layer.standardized(x) if self.rrr else self.layer.features(x)
        self.stats.update(H, target / self.layer.scaling, check_finite=False)

    def solve(self, step: float = 1.0) -> tuple[LayerReport, torch.Tensor, torch.Tensor]:
        """Solve, add ``step`` × the solution to the layer, and return (report, coef, intercept)."""
        stats = self.stats
        all_reduce_stats(stats, distributed=self.distributed)
        if stats.n_rows == 0:
            raise ValueError(f"layer {self.layer.name!r} received no rows (every position was masked out)")
        scale = lam_scale(stats)
        if self.lam == "auto":
            path = stats.solve_path([rel * scale for rel in self.lam_grid])
            lam_rel = self.lam_grid[path.best_index]
        else:
            lam_rel = float(self.lam)
        sol = stats.solve(lam_rel * scale)
        coef, intercept, fitted_coef = sol.coef, sol.intercept, sol.coef
        G_c, _, yy_c = stats.centered()
        if self.rrr:
            W_down, coef, fitted_coef = reduced_rank(G_c, sol.coef, sol.lam, self.layer.rank)
            intercept = stats._intercept(fitted_coef)
            self.layer.set_down(W_down)
        self.layer.add_solution(coef, intercept if self.layer.fit_bias else None, step)
        sse = stats.mse(fitted_coef, intercept) * stats.n * stats.n_targets
        sst = float(yy_c.sum()) if stats.fit_intercept else float(stats.yy.sum())
        r2 = 1.0 - sse / sst if sst > 0 else 1.0
        rms = math.sqrt(max(float(stats.yy.sum()), 0.0) / (stats.n * stats.n_targets))
        report = LayerReport(stats.n_rows, float(sol.lam), lam_rel, rms, r2)
        self.stats = None  # type: ignore[assignment]  # free O((rank + out)²) memory (O((in + out)²) for rrr)
        return report, coef, intercept


def reduced_rank(G: torch.Tensor, B: torch.Tensor, lam: float,
                 rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduced-rank ridge regression from the statistics: (W_down (in, rank), W_up (rank, out), B_r = W_down W_up).

    B is the full-rank ridge solution (G̃ + λI)⁻¹C̃. Written as least squares on the augmented rows [X̂; √λ I] with
    targets [Y; 0], the rank-r problem min ‖Y − X̂B‖² + λ‖B‖² s.t. rank B ≤ r is a reduced-rank regression, solved
    by projecting B onto the top-r eigenvectors V_r of its fitted values' covariance Bᵀ(G̃ + λI)B: B_r = B V_r V_rᵀ,
    and its loss exceeds the full-rank loss by exactly the eigenvalues left out. Columns past the number of
    non-zero directions (rank > out) are zero. G is the full centred Gram G̃ (``RidgeStats.centered``); it is
    overwritten with G̃ + λI.
    """
    G.diagonal().add_(lam)
    S = B.T @ G @ B
    S = (S + S.T) / 2
    _, V = torch.linalg.eigh(S)  # ascending
    k = min(rank, V.shape[1])
    Vr = V[:, -k:].flip(-1)  # (out, k), largest first
    W_down = torch.zeros(B.shape[0], rank, dtype=B.dtype, device=B.device)
    W_up = torch.zeros(rank, B.shape[1], dtype=B.dtype, device=B.device)
    W_down[:, :k] = B @ Vr
    W_up[:k] = Vr.T
    return W_down, W_up, W_down @ W_up


def calibrate_from_rank0(layer: PILLoraLinear, x: torch.Tensor) -> None:
    """Distributed fits: rank 0 calibrates ``layer`` on its rows ``x`` and broadcasts (μ, s) to every rank.

    So the input standardization is the one a single process gets from the first batch of the ranks' batch lists
    concatenated in rank order. Every rank must call this once per layer (at its first batch, even one with no
    rows); rank 0's first batch must have rows.
    """
    import torch.distributed as dist

    if not layer.standardize:
        layer.calibrate(x)
        return
    rank, _ = rank_and_world(True)
    packed = torch.zeros(layer.in_features + 2, dtype=torch.float64, device=layer.input_shift.device)
    if rank == 0 and x.shape[0] > 0:
        layer.calibrate(x)
        packed[0] = 1.0
        packed[1] = layer.input_scale.to(torch.float64)
        packed[2:] = layer.input_shift.to(torch.float64)
    dist.broadcast(packed, src=0)
    if float(packed[0]) != 1.0:
        raise ValueError(f"layer {layer.name!r}: rank 0's first batch has no rows (every position masked out); a "
                         "distributed fit calibrates each adapter's input standardization on it")
    layer.input_scale.fill_(float(packed[1]))
    layer.input_shift.copy_(packed[2:])
    layer.calibrated.fill_(True)


def adapted_layers(pil_model: PILModel) -> dict[str, PILLoraLinear]:
    if not isinstance(pil_model, PILModel):
        raise TypeError(f"pil_model must be a PILModel (from get_pil_model), got {type(pil_model).__name__}")
    return pil_model.adapters


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
