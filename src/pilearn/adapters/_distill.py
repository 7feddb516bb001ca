"""Distillation targets: each adapter regresses onto the gap between a teacher's layer output and its own.

Target of layer ℓ (math)::

    H_ℓ = σ(x̂_ℓ W_down)             x_ℓ: the student's input to layer ℓ, earlier layers already fitted and active
    Y_ℓ = (y*_ℓ − y_ℓ) / scaling      y_ℓ: the student's current output of ℓ; y*_ℓ: the teacher's output of the
                                      module with the same name, at the aligned positions
    [W_up; b] = argmin ‖Y_ℓ − H_ℓ W_up − b‖² + λ‖W_up‖²

so after the fit y_ℓ + Δ(x_ℓ) ≈ y*_ℓ in least squares. The teacher may be the unadapted model (``teacher=None``),
another module with the same layer names (a perturbed or larger copy), or the same frozen model reading more
context: with :func:`context_distillation_batches` the teacher reads ``[document; text]`` and the student
``[text]``, positions aligned on the text tokens, so the adapters write the document into the weights.

Cost (``schedule="sequential"``): one pass per layer, and each pass stops the student's and the teacher's forward
right after the layer it fits (later layers are never run), so a model with L evenly spread adapted layers costs
about (L + 1)/2 full student + teacher forwards per batch; ``schedule="parallel"`` costs one (every layer then
sees the unadapted student's inputs).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..distributed import check_distributed
from ._fit import (
    Capture,
    FitReport,
    LayerSolver,
    Schedule,
    Timer,
    adapted_layers,
    attention_mask_of,
    check_batches,
    check_finite_batch,
    eval_mode,
    forward_order,
    make_groups,
)
from ._model import PILModel

__all__ = ["DistillBatch", "fit_distill", "context_distillation_batches"]

logger = logging.getLogger(__name__)


@dataclass
class DistillBatch:
    """One student/teacher pair of inputs and the positions that correspond.

    Attributes:
        student: the student's model input (a dict of keyword arguments, a tuple of positional ones, or a tensor).
        teacher: the teacher's input; None means the same as ``student``.
        student_positions: bool (B, T) mask over the leading dimensions of the student's layer activations (the
            token positions); default: the student's ``attention_mask`` if it has one, else every position.
        teacher_positions: the same for the teacher; the i-th selected teacher position (row-major order) is
            matched to the i-th selected student position, so both must select equally many.
    """

    student: Any
    teacher: Any = None
    student_positions: torch.Tensor | None = None
    teacher_positions: torch.Tensor | None = None

    def teacher_inputs(self) -> Any:
        return self.student if self.teacher is None else self.teacher


def _as_pair(batch: object) -> DistillBatch:
    return batch if isinstance(batch, DistillBatch) else DistillBatch(student=batch)


def _positions(explicit: torch.Tensor | None, inputs: object, lead: torch.Size, who: str, index: int) -> torch.Tensor:
    """Flat row indices into the (prod(lead), c) activation rows."""
    n = 1
    for s in lead:
        n *= s
    mask = explicit if explicit is not None else attention_mask_of(inputs)
    if mask is None:
        return torch.arange(n)
    if mask.numel() != n:
        raise ValueError(f"batch {index}: {who} positions mask has shape {tuple(mask.shape)}, but the layer's "
                         f"activations have leading shape {tuple(lead)}")
    return mask.reshape(-1).to(torch.bool).nonzero().squeeze(1).cpu()


def _aligned_rows(pair: DistillBatch, x: torch.Tensor, y: torch.Tensor, y_t: torch.Tensor, name: str,
                  index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(student input rows, target rows y* − y) at the aligned positions."""
    if y_t.shape[-1] != y.shape[-1]:
        raise ValueError(f"batch {index}, layer {name!r}: teacher output has shape {tuple(y_t.shape)} and student "
                         f"output {tuple(y.shape)}: their last dimensions must agree")
    explicit = pair.student_positions is not None or pair.teacher_positions is not None
    if not explicit and pair.teacher is not None and y_t.shape != y.shape:
        raise ValueError(f"batch {index}, layer {name!r}: teacher output {tuple(y_t.shape)} and student output "
                         f"{tuple(y.shape)} differ in shape; give DistillBatch(student_positions=..., "
                         "teacher_positions=...) to align them")
    s_idx = _positions(pair.student_positions, pair.student, y.shape[:-1], "student", index)
    t_idx = _positions(pair.teacher_positions, pair.teacher_inputs(), y_t.shape[:-1], "teacher", index)
    if s_idx.numel() != t_idx.numel():
        raise ValueError(f"batch {index}, layer {name!r}: the student selects {s_idx.numel()} positions (activations "
                         f"{tuple(y.shape)}) and the teacher {t_idx.numel()} (activations {tuple(y_t.shape)}); they "
                         "must select equally many")
    xs = x.reshape(-1, x.shape[-1])[s_idx.to(x.device)]
    ys = y.reshape(-1, y.shape[-1])[s_idx.to(y.device)]
    yt = y_t.reshape(-1, y_t.shape[-1])[t_idx.to(y_t.device)]
    return xs, (yt.to(ys.dtype) - ys)


def _teacher_modules(pil_model: PILModel, teacher: nn.Module | None, names: list[str]) -> tuple[nn.Module, dict, bool]:
    """(the module to run, name -> module hooked for y*, whether to run it with the student's adapters off)."""
    if teacher is None or teacher is pil_model or teacher is pil_model.base_model:
        return pil_model, {n: pil_model.base_model.get_submodule(n) for n in names}, True
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module or None, got {type(teacher).__name__}")
    root = teacher.base_model if isinstance(teacher, PILModel) else teacher
    modules = dict(root.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"teacher ({type(root).__name__}) has no module named {missing[0]!r}, an adapted layer of the "
                         "student; the teacher must have the student's layer names")
    return teacher, {n: modules[n] for n in names}, False


@torch.no_grad()
def fit_distill(
    pil_model: PILModel,
    batches: Iterable[Any],
    teacher: nn.Module | None = None,
    *,
    schedule: Schedule = "sequential",
    reset: bool = True,
    distributed: bool = False,
) -> FitReport:
    """Fit every adapter to close the gap between the teacher's layer outputs and the student's (module docstring).

    Args:
        pil_model: the student, from :func:`get_pil_model`.
        batches: re-iterable collection of student inputs or :class:`DistillBatch` pairs.
        teacher: a module with the student's layer names (hooked at the same names), or None: the student's own
            base model with every adapter off (then a plain batch gives zero targets, and a ``DistillBatch`` with
            ``teacher`` inputs distils extra context).
        schedule: ``"sequential"`` (layer by layer, earlier layers fitted and active), ``"parallel"`` (one pass), or
            an int number of layer groups.
        reset: zero the adapters first. With False, existing adapters stay active and each solve adds a correction.
        distributed: data parallelism under ``torch.distributed`` (gloo on CPU, NCCL on GPU; user shards): each
            rank passes its own ``batches`` (any number, at least one) and runs its own local pass per layer group;
            then every layer's :class:`~pilearn.solvers.RidgeStats` is summed over the ranks (one all-reduce per
            layer, after the pass) and every rank solves the identical system. Each adapter's input
            standardization (μ, s) is measured on rank 0's first batch and broadcast. The result is the fit one
            process makes on the ranks' batch lists concatenated in rank order, up to the rounding of the float sums
            (a distributed fit always solves the primal ridge problem, as one process does once a layer has
            more rows than ``rank``). Student, teacher and adapters must start identical on every rank.

    Returns:
        A :class:`FitReport`.

    Raises:
        ValueError: teacher and student activations that do not align, NaN or Inf in inputs or activations.
        RuntimeError: ``distributed=True`` without an initialized ``torch.distributed`` process group.
    """
    distributed = check_distributed(distributed)
    layers = adapted_layers(pil_model)
    batches = check_batches(batches)
    cfg = pil_model.pil_config
    timer = Timer()
    if reset:
        pil_model.reset_adapters()
    first = _as_pair(next(iter(batches)))
    report = FitReport()
    with eval_mode(pil_model), eval_mode(teacher) if isinstance(teacher, nn.Module) else nullcontext():
        order, repeated = forward_order(pil_model, layers, first.student)
        report.groups = make_groups(order, schedule)
        t_model, t_modules, t_disabled = _teacher_modules(pil_model, teacher, order)
        for group in report.groups:
            solvers = {n: LayerSolver(layers[n], cfg.lam, cfg.lam_grid, distributed) for n in group}
            stop = None if repeated else group[-1]
            for index, raw in enumerate(batches):
                pair = _as_pair(raw)
                check_finite_batch(pair.student, index)
                check_finite_batch(pair.teacher_inputs(), index, "teacher batch")
                with Capture({n: layers[n] for n in group}, stop_after=stop) as cap:
                    cap.run(pil_model, pair.student)
                    student = {n: cap.one(n) for n in group}
                with Capture({n: t_modules[n] for n in group}, stop_after=stop) as tcap:
                    if t_disabled:
                        with pil_model.disable_adapters():
                            tcap.run(t_model, pair.teacher_inputs())
                    else:
                        tcap.run(t_model, pair.teacher_inputs())
                    for n in group:
                        x, y = student[n]
                        xs, target = _aligned_rows(pair, x, y, tcap.one(n)[1], n, index)
                        solvers[n].update(xs, target, index)
            report.n_passes += 1
            for n in group:
                report.layers[n] = solvers[n].solve()[0]
    report.seconds = timer.seconds
    logger.info("fit_distill: %d layers in %d passes, %.1f s", len(layers), report.n_passes, report.seconds)
    return report


def context_distillation_batches(
    tokenizer: Any,
    documents: str | Sequence[str],
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int = 256,
    separator: str = "\n\n",
) -> list[DistillBatch]:
    """Student/teacher pairs that write documents into the weights (context distillation).

    For text i the teacher reads ``[document_i + separator ; text_i]`` and the student ``[text_i]``; the token ids of
    the two parts are tokenized separately (no special tokens) and concatenated, so the text's tokens are identical
    in both, and the positions are aligned on them: the student's i-th text token ↔ the teacher's
    ``len(document tokens) + i``-th token. Rows are right-padded with the tokenizer's pad token (else its
    end-of-sequence token, else 0) and carry an ``attention_mask``.

    Args:
        tokenizer: a Hugging Face tokenizer (called as ``tokenizer(text, add_special_tokens=False)["input_ids"]``).
        documents: one document for every text, or one per text.
        texts: the texts the student reads (the distillation data).
        batch_size: texts per batch.
        max_length: texts are cut to this many tokens (documents are not cut).
        separator: appended to each document before its tokens are taken.

    Returns:
        A list of :class:`DistillBatch` for :func:`fit_distill` (with ``teacher=None``: the frozen base model).
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of str")
    if not texts:
        raise ValueError("texts is empty")
    if isinstance(documents, str):
        docs = [documents] * len(texts)
    else:
        docs = list(documents)
        if len(docs) != len(texts) or not all(isinstance(d, str) for d in docs):
            raise ValueError(f"documents must be one str or one str per text; got {len(docs)} documents for "
                             f"{len(texts)} texts")
    for name, v in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    pad = next((p for p in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
                if p is not None), 0)

    def ids(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"])

    out = []
    for start in range(0, len(texts), batch_size):
        t_ids = [ids(t)[:max_length] for t in texts[start:start + batch_size]]
        d_ids = [ids(d + separator) for d in docs[start:start + batch_size]]
        if any(len(t) == 0 for t in t_ids):
            raise ValueError(f"a text in batch {start // batch_size} tokenizes to no tokens")
        student, s_mask = _pad(t_ids, pad)
        teacher, t_mask = _pad([d + t for d, t in zip(d_ids, t_ids)], pad)
        t_pos = torch.zeros_like(t_mask, dtype=torch.bool)
        for row, (d, t) in enumerate(zip(d_ids, t_ids)):
            t_pos[row, len(d):len(d) + len(t)] = True
        out.append(DistillBatch(student={"input_ids": student, "attention_mask": s_mask},
                                teacher={"input_ids": teacher, "attention_mask": t_mask},
                                student_positions=s_mask.bool(), teacher_positions=t_pos))
    return out


def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask
