"""Gradient training of a :class:`~pilearn.lm.model.PILLM` with AdamW: the baseline, and PIL-LM (+Attn)'s phase 2."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch

from ._metrics import evaluate
from .model import PILLM

__all__ = ["TrainConfig", "TrainReport", "train_adamw", "trainable_parameters"]


@dataclass
class TrainConfig:
    """AdamW with linear warm-up and cosine decay (nanoGPT's recipe), on random windows of the stream.

    One epoch is ``len(train) / (batch_size · block_size)`` steps. Training stops after ``epochs`` epochs or
    ``max_seconds`` of wall-clock, whichever comes first; the cosine schedule is laid over the epochs, or over
    ``max_seconds`` when ``schedule_by_time`` (so a time-matched run still anneals).
    """

    epochs: float = 5.0
    max_seconds: float | None = None
    schedule_by_time: bool = False
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every_epoch: bool = True
    eval_tokens: int | None = None  # validation tokens per evaluation (None: all)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) or not self.epochs > 0:
            raise ValueError(f"epochs must be a number > 0, got {self.epochs!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        for name in ("epochs", "lr", "weight_decay", "min_lr_ratio", "grad_clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")


@dataclass
class TrainReport:
    seconds: float = 0.0
    steps: int = 0
    epochs: float = 0.0
    curve: list[dict[str, float]] = field(default_factory=list)  # step, seconds, epoch, train_loss, valid_ppl
    trainable_parameters: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainable_parameters(model: PILLM, which: Literal["all", "attention"]) -> list[torch.nn.Parameter]:
    """``"all"``: every parameter. ``"attention"`` (PIL-LM +Attn): everything but the FFNs, which stay frozen.

    The +Attn phase trains the attention, the LayerNorms, the embeddings and the head; the solved FFN output
    maps (and the FFNs' fixed random projections, which are buffers) are left as the closed form set them.
    """
    if which == "all":
        params = list(model.parameters())
    elif which == "attention":
        ffn = {id(p) for block in model.h for p in block.mlp.parameters()}
        params = [p for p in model.parameters() if id(p) not in ffn]
    else:
        raise ValueError(f"which must be 'all' or 'attention', got {which!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def train_adamw(model: PILLM, train_ids: np.ndarray, valid_ids: np.ndarray | None = None, *,
                config: TrainConfig | None = None, which: Literal["all", "attention"] = "all",
                progress: Callable[[int, int, float], None] | None = None) -> TrainReport:
    """Train ``model`` in place with AdamW on next-token cross-entropy; returns the learning curve.

    ``which="attention"`` trains all but the FFNs (PIL-LM +Attn). Every parameter's ``requires_grad`` is
    restored afterwards, also when training fails.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        return _train(model, train_ids, valid_ids, config or TrainConfig(), which, progress)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _train(model: PILLM, train_ids: np.ndarray, valid_ids: np.ndarray | None, cfg: TrainConfig,
           which: Literal["all", "attention"], progress: Callable[[int, int, float], None] | None) -> TrainReport:
    T = model.config.block_size
    train = torch.as_tensor(np.asarray(train_ids)).long()
    if train.numel() < T + 2:
        raise ValueError(f"train_ids must hold more than block_size + 1 = {T + 1} tokens, got {train.numel()}")
    params = trainable_parameters(model, which)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    device = next(model.parameters()).device
    steps_per_epoch = max(1, train.numel() // (cfg.batch_size * T))
    total_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))
    g = torch.Generator().manual_seed(cfg.seed)
    report = TrainReport(trainable_parameters=sum(p.numel() for p in params))
    valid = None
    if valid_ids is not None:
        valid = np.asarray(valid_ids)[: cfg.eval_tokens] if cfg.eval_tokens else np.asarray(valid_ids)

    def lr_at(step: int, elapsed: float) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = step / total_steps
        if cfg.schedule_by_time and cfg.max_seconds:
            frac = max(frac, elapsed / cfg.max_seconds)
        frac = min(1.0, frac)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    t0 = time.perf_counter()
    train_time = 0.0  # wall-clock spent training, evaluations excluded
    step, running = 0, 0.0
    while step < total_steps:
        t_step = time.perf_counter()
        starts = torch.randint(0, train.numel() - T, (cfg.batch_size,), generator=g)  # last start: N − T − 1
        offs = starts[:, None] + torch.arange(T)[None, :]
        x, y = train[offs].to(device), train[offs + 1].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, train_time)
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        running += float(loss.detach())
        train_time += time.perf_counter() - t_step
        out_of_time = cfg.max_seconds is not None and train_time >= cfg.max_seconds
        end_of_epoch = step % steps_per_epoch == 0 or step == total_steps or out_of_time
        if end_of_epoch and (cfg.eval_every_epoch or step == total_steps or out_of_time):
            n = step - (report.curve[-1]["step"] if report.curve else 0)
            point = {"step": step, "seconds": train_time, "epoch": step / steps_per_epoch,
                     "train_loss": running / max(1, n)}
            running = 0.0
            if valid is not None:
                point["valid_ppl"] = evaluate(model, valid).perplexity
                model.train()
            report.curve.append(point)
        if progress is not None:
            progress(step, total_steps, float(loss.detach()))
        if out_of_time:
            break
    model.eval()
    report.seconds = train_time
    report.steps = step
    report.epochs = step / steps_per_epoch
    return report
