"""Task residuals: the change the loss asks for at the output, pulled back to every adapted layer in closed form.

The seed (§3.6) answers "what are residuals?" with "the task loss's gradient direction". Here that direction is
turned into a least-squares target for each adapter in three steps (notation: one position, a causal LM)::

    1. output:  δz = e_y − softmax(z)                 (−∂CE/∂z; "mse": δz = y − z, the regression residual)
    2. stream:  δu = argmin ‖W_head δu − δz‖² + μ‖δu‖² = (W_headᵀW_head + μI)⁻¹ W_headᵀ δz
                δh = pull of δu through the final norm, linearised at h (exact constrained least squares,
                     :class:`~._pushback.NormLinearization`); an encoder + head inserts the mean pool
                     (δu_t = δf at every token, the minimum-norm split)
    3. layer:   Y_ℓ = η · argmin_δ ‖J_ℓ δ − δh‖² + μ‖δ‖²,    J_ℓ = the linearised map from the layer's output to
                the residual stream inside its own block:
                  o_proj, down_proj, BERT *.output.dense       J = I (the layer writes the stream)
                  v_proj / value                               J = attention with A fixed, then W_o (exact)
                  q_proj, k_proj / query, key                  J = softmax Jacobian (RoPE included), then A·V, W_o
                  gate_proj, up_proj; BERT intermediate.dense  J = elementwise gate/derivative, then down/output.dense
                attention maps are solved by CGLS (``cg_iters``), the others in closed form; nn.Sequential models
                pull back through every later child (Linear: ridge pseudo-inverse; activation: its derivative).
                ``pushback="downstream"`` (the simplest variant): J = the layer's own downstream Linear alone
                (v -> o_proj, up/gate -> down_proj), attention mixing, gates and activations neglected.

Each adapter then solves the ridge regression of Y_ℓ on H_ℓ = σ(x̂_ℓ W_down). What is neglected: (i) the blocks
after layer ℓ's block (a change written to the residual stream is assumed to reach the final norm unchanged; in a
post-LN encoder the LayerNorms between are ignored too); (ii) second-order terms (every map is linearised at the
current forward pass); (iii) the other adapters of the same group (each is asked for the whole change
independently; together they overshoot or, when each reproduces little of it, undershoot). η = ``"auto"`` fixes
the steps afterwards: every adapter's solution is linear in its targets, so scaling a layer's increment by s is
the same as fitting it with η = s (exactly so in one group), and the steps (one per step group) come from a
subspace Newton step on the loss of ``valid_batches``, then a line search (see :func:`_step_search`).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from ..distributed import all_reduce_floats, all_reduce_sum_, check_distributed
from ._fit import (
    FitReport,
    LayerSolver,
    Recorder,
    Schedule,
    Timer,
    adapted_layers,
    call_model,
    check_batches,
    check_finite_batch,
    eager_attention,
    eval_mode,
    make_groups,
    select_rows,
)
from ._layer import PILLoraLinear
from ._model import PILModel
from ._paths import AttnPath, make_path
from ._readout import loss_sum, make_readout, newton_terms, probe

__all__ = ["fit_task_residuals"]

logger = logging.getLogger(__name__)

Loss = Literal["auto", "ce", "mse"]


def _check_args(eta: object, mu: object, cg_iters: object, loss: object) -> None:
    if eta != "auto" and (isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta)
                          or eta <= 0):
        raise ValueError(f'eta must be a finite float > 0 or "auto", got {eta!r}')
    if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not math.isfinite(mu) or mu <= 0:
        raise ValueError(f"mu must be a finite float > 0, got {mu!r}")
    if isinstance(cg_iters, bool) or not isinstance(cg_iters, numbers.Integral) or cg_iters < 1:
        raise ValueError(f"cg_iters must be an int >= 1, got {cg_iters!r}")
    if loss not in ("auto", "ce", "mse"):
        raise ValueError(f'loss must be "auto", "ce" or "mse", got {loss!r}')


def _mean_loss(model: nn.Module, readout: Any, batches: Iterable[Any], distributed: bool = False) -> float:
    """The mean loss per row over ``batches`` (with ``distributed``: the loss sum and row count of every rank)."""
    total, count = 0.0, 0
    for batch in batches:
        scores, y = readout.scores(batch, call_model(model, readout.inputs(batch)))
        total, count = total + loss_sum(scores, y, readout.loss_kind), count + scores.shape[0]
    total, count = all_reduce_floats([total, count], distributed)
    return total / max(count, 1)


def step_groups(order: list[str], n_groups: int) -> list[list[str]]:
    """``n_groups`` contiguous chunks of the layers (forward order), each split by the layer's kind, its leaf name
    (q_proj, v_proj, ...; not the index of an nn.Sequential child): the sets of adapters that share one step."""
    out: list[list[str]] = []
    for chunk in make_groups(order, n_groups):
        by_leaf: dict[str, list[str]] = {}
        for name in chunk:
            leaf = name.rpartition(".")[2]
            by_leaf.setdefault("" if leaf.isdigit() else leaf, []).append(name)
        out.extend(by_leaf.values())
    return out


def _step_search(pil_model: PILModel, readout: Any, batches: Iterable[Any], start: dict[str, tuple],
                 increments: dict[str, tuple], groups: list[list[str]], report: FitReport,
                 distributed: bool = False) -> None:
    """Choose the step of every group of adapters (adapter = start + t·cₖ · increment) by the loss on ``batches``.

    The adapters each reproduce only part of their targets, and many of them the same change over again, so the
    right step can be anywhere from ≪ 1 to ≫ 1, and differ between groups (deep layers, whose change reaches the
    output almost unchanged, against early ones, where neglecting the later blocks is a worse approximation).
    Subspace Newton: with z₀ the scores of the unadapted model and Δzₖ the change when only group k is on at step 1,
    the second-order model L(c) ≈ L(0) − gᵀc + cᵀHc/2 (:func:`newton_terms`; K + 1 forwards per batch) gives
    c = (H + εI)⁻¹g. Then a line search on t (the multiplier of c) over powers of two from t = 1: halved until the
    loss beats t = 0 (at most 12 times), then doubled while it falls, else halved while it falls; t = 0 (no change)
    wins when nothing beats it.

    With ``distributed``, g, H, the loss sums and the row counts are summed over the ranks (one all-reduce for
    g and H, one per loss evaluated), so every rank takes the same steps.
    """
    layers = pil_model.adapters
    K = len(groups)
    index = {n: k for k, group in enumerate(groups) for n in group}

    def set_steps(c: torch.Tensor) -> None:
        for n, (coef, b) in increments.items():
            s = float(c[index[n]])
            W0, b0 = start[n]
            layers[n].W_up.copy_(W0 + s * coef.to(W0.dtype))
            if layers[n].bias is not None and b is not None:
                layers[n].bias.copy_(b0 + s * b.to(b0.dtype))

    def scores(c: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        set_steps(c)
        return readout.scores(batch, call_model(pil_model, readout.inputs(batch)))

    g, H = torch.zeros(K, dtype=torch.float64), torch.zeros(K, K, dtype=torch.float64)
    total, count = 0.0, 0
    for batch in batches:
        z0, y = scores(torch.zeros(K), batch)
        dzs = [scores(torch.eye(K)[k], batch)[0].float() - z0.float() for k in range(K)]
        gb, Hb = newton_terms(z0, dzs, y, readout.loss_kind)
        g, H = g + gb, H + Hb
        total, count = total + loss_sum(z0, y, readout.loss_kind), count + z0.shape[0]
        del dzs
    if distributed:  # g, H, the loss sum and the row count of every rank, in one all-reduce
        sums = torch.tensor([total, float(count)], dtype=torch.float64)
        packed = all_reduce_sum_(torch.cat([g, H.reshape(-1), sums]))
        g, H, total, count = packed[:K], packed[K:K + K * K].view(K, K), float(packed[-2]), float(packed[-1])
    ridge = 1e-9 * float(H.diagonal().abs().max()) + 1e-300
    c = torch.linalg.lstsq(H + ridge * torch.eye(K, dtype=torch.float64), g[:, None]).solution[:, 0]
    losses = {0.0: total / max(count, 1)}

    def loss_at(t: float) -> float:
        if t not in losses:
            set_steps(t * c)
            losses[t] = _mean_loss(pil_model, readout, batches, distributed)
        return losses[t]

    t = 1.0
    for _ in range(12):  # the quadratic model overshot: shrink until the step helps
        if loss_at(t) < losses[0.0]:
            break
        t /= 2
    if loss_at(t) < losses[0.0]:
        for factor in (2.0, 0.5):
            while 2.0 ** -20 <= t * factor <= 2.0 ** 20 and loss_at(t * factor) < loss_at(t):
                t *= factor
    best = min(losses, key=losses.__getitem__)
    set_steps(best * c)
    report.step, report.step_losses = best, dict(sorted(losses.items()))
    report.newton_step = {",".join(group) if len(group) <= 2 else f"{group[0]} .. {group[-1]} ({len(group)})":
                          float(c[k]) for k, group in enumerate(groups)}
    report.layer_steps = {n: best * float(c[index[n]]) for n in increments}
    report.loss_before, report.loss_after = losses[0.0], losses[best]


@torch.no_grad()
def fit_task_residuals(
    pil_model: PILModel,
    batches: Iterable[Any],
    *,
    head: nn.Module | None = None,
    loss: Loss = "auto",
    eta: float | Literal["auto"] = "auto",
    mu: float = 1e-3,
    schedule: Schedule = "sequential",
    cg_iters: int = 8,
    pushback: Literal["attention", "downstream"] = "attention",
    n_step_groups: int = 1,
    valid_batches: Iterable[Any] | None = None,
    reset: bool = True,
    distributed: bool = False,
) -> FitReport:
    """Fit every adapter to the output change the task asks for, pulled back to it (math in the module docstring).

    Three kinds of model, told apart by the arguments and the first batch:

    * a Hugging Face causal LM (``get_output_embeddings()`` is its head), batches ``{"input_ids", "attention_mask"
      (optional), "labels" (optional, -100 ignored)}``: next-token cross-entropy;
    * an encoder returning ``last_hidden_state`` with ``head`` (a :class:`ClosedFormHead` or an ``nn.Linear``) on
      its mean-pooled states, batches ``(inputs, labels)``: ``loss`` "mse" (default for a ClosedFormHead, which was
      solved on one-hot targets) or "ce";
    * an ``nn.Sequential`` whose output is the score, batches ``(x, y)``: "ce" for int labels, "mse" for float
      targets.

    Args:
        pil_model: from :func:`get_pil_model`.
        batches: re-iterable collection of training batches.
        head: the classifier of an encoder (kept fixed).
        loss: "auto", "ce" or "mse".
        eta: the step η along the residual direction, or "auto" (line search of the total step on
            ``valid_batches``; the targets are fitted at η = 1).
        mu: relative ridge of every pull-back (head, Linear and elementwise inverses, CGLS damping).
        schedule: "sequential" (one full pass per layer, earlier layers fitted and active: their effect is in the
            next targets), "parallel" (one pass) or an int number of layer groups.
        cg_iters: CGLS iterations of attention pull-backs (1: the transposed map, optimally scaled).
        pushback: "attention" (the rules above) or "downstream", the simplest variant: each layer's target is the
            least-squares change of its output through its own downstream Linear alone (v_proj -> o_proj,
            up/gate_proj -> down_proj, BERT value -> attention.output.dense), neglecting the attention mixing, gates
            and activations between; closed form, no CG; q/k projections have no such rule.
        n_step_groups: with ``eta="auto"``, the layers (in forward order) are cut into this many contiguous chunks,
            each split by layer kind (q_proj, v_proj, ...), and every such group gets its own step from a subspace
            Newton step (K + 1 forwards per step-search batch for K groups). 1 and one kind: one global step.
        valid_batches: batches for the step search; default the training batches.
        reset: zero the adapters first (else the new solution adds to them: a further Gauss-Newton-like step).
        distributed: data parallelism under ``torch.distributed`` (gloo on CPU, NCCL on GPU; user shards): each
            rank passes its own ``batches`` and ``valid_batches`` (any number, at least one each) and runs its own
            local passes; every data sum is added over the ranks before it is used, with the same number of
            collectives on every rank: each layer's :class:`~pilearn.solvers.RidgeStats` (one all-reduce per layer,
            after its group's pass), the pull-back residuals and their batch count (one per group), and in the step
            search the Newton terms g, H and the loss sums and row counts (one per loss evaluated). Each adapter's
            input standardization is measured on rank 0's first batch and broadcast. The result is the fit one
            process makes on the ranks' batch lists concatenated in rank order (training and step-search batches
            alike), up to the rounding of the float sums. Model, head and adapters must start identical on every
            rank.

    Returns:
        A :class:`FitReport` (``step``, ``step_losses``, ``loss_before``/``loss_after`` with ``eta="auto"``).
    """
    distributed = check_distributed(distributed)
    layers = adapted_layers(pil_model)
    batches = check_batches(batches)
    if valid_batches is not None:
        valid_batches = check_batches(valid_batches, "valid_batches")
    _check_args(eta, mu, cg_iters, loss)
    if isinstance(n_step_groups, bool) or not isinstance(n_step_groups, numbers.Integral) or n_step_groups < 1:
        raise ValueError(f"n_step_groups must be an int >= 1, got {n_step_groups!r}")
    if pushback not in ("attention", "downstream"):
        raise ValueError(f'pushback must be "attention" or "downstream", got {pushback!r}')
    cfg = pil_model.pil_config
    timer = Timer()
    if reset:
        pil_model.reset_adapters()
    start = {n: (l.W_up.detach().clone(), None if l.bias is None else l.bias.detach().clone())
             for n, l in layers.items()}
    base = pil_model.base_model
    report = FitReport()
    increments: dict[str, tuple] = {}
    with eval_mode(pil_model):
        first = next(iter(batches))
        readout = make_readout(base, head, first, loss, float(mu))
        check_finite_batch(readout.inputs(first), 0)
        order = probe(pil_model, readout.inputs(first), layers, readout)
        report.groups = make_groups(order, schedule)
        paths = {n: make_path(base, n, layers[n], readout, int(cg_iters), float(mu), pushback) for n in order}
        share = 1.0 if eta == "auto" else float(eta)
        with eager_attention(base, any(isinstance(p, AttnPath) for p in paths.values())):
            for group in report.groups:
                _fit_group(pil_model, readout, batches, group, layers, paths, share, cfg, report, increments,
                           distributed)
        if eta == "auto":
            _step_search(pil_model, readout, batches if valid_batches is None else valid_batches, start, increments,
                         step_groups(order, n_step_groups), report, distributed)
    report.seconds = timer.seconds
    logger.info("fit_task_residuals: %d layers, %d passes, step %s, %.1f s", len(order), report.n_passes,
                report.step, report.seconds)
    return report


def _fit_group(pil_model: PILModel, readout: Any, batches: Iterable[Any], group: list[str],
               layers: dict[str, PILLoraLinear], paths: dict[str, Any], share: float, cfg: Any, report: FitReport,
               increments: dict[str, tuple], distributed: bool = False) -> None:
    solvers = {n: LayerSolver(layers[n], cfg.lam, cfg.lam_grid, distributed) for n in group}
    residuals: dict[str, list[float]] = {n: [] for n in group}
    for index, batch in enumerate(batches):
        inputs = readout.inputs(batch)
        check_finite_batch(inputs, index)
        rec = Recorder()
        readout.register(rec)
        for n in group:
            rec.add(f"layer:{n}", layers[n], "io")
            paths[n].register(rec)
        with rec:
            output = call_model(pil_model, inputs)
        dh = readout.stream_target(batch, output, rec) * share
        mask = readout.row_mask(batch)
        for n in group:
            x = rec.get(f"layer:{n}")[0]
            target, rel = paths[n].pull(dh, rec)
            if rel is not None:
                residuals[n].append(rel)
            solvers[n].update(select_rows(x, mask), select_rows(target, mask), index)
        del rec, output, dh
    report.n_passes += 1
    # each layer's summed pull-back residual and batch count (of every rank: one all-reduce for the group)
    sums = all_reduce_floats([v for n in group for v in (sum(residuals[n]), len(residuals[n]))], distributed)
    for i, n in enumerate(group):
        rep, coef, intercept = solvers[n].solve()
        total, count = sums[2 * i], sums[2 * i + 1]
        if count:
            rep.pushback_residual = total / count
        report.layers[n] = rep
        increments[n] = (coef, intercept if layers[n].fit_bias else None)
