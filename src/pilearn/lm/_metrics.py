"""Language-model metrics: exact perplexity and top-1 accuracy of a token stream under a model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LMEval", "evaluate", "perplexity", "scored_hidden", "sliding_windows", "token_log_probs"]


@dataclass(frozen=True)
class LMEval:
    """``perplexity = exp(nll)``, ``nll`` the mean negative log-likelihood (nats) of the ``n_tokens`` scored."""

    perplexity: float
    nll: float
    accuracy: float
    n_tokens: int

    def to_dict(self) -> dict[str, float]:
        return {"perplexity": self.perplexity, "nll": self.nll, "accuracy": self.accuracy, "n_tokens": self.n_tokens}


def perplexity(log_probs: torch.Tensor | np.ndarray) -> float:
    """``exp(−mean(log_probs))`` of per-token natural-log probabilities, computed in float64."""
    lp = torch.as_tensor(np.asarray(log_probs) if not isinstance(log_probs, torch.Tensor) else log_probs)
    if lp.numel() == 0:
        raise ValueError("log_probs is empty: perplexity needs at least one scored token")
    nll = -float(lp.double().mean())
    return math.exp(nll) if nll < 709.0 else math.inf  # a hopeless model's perplexity overflows a float


def sliding_windows(n: int, block_size: int, stride: int) -> list[tuple[int, int]]:
    """Windows ``(start, first)`` covering the targets ``1 … n−1`` of an ``n``-token stream exactly once.

    Window ``start`` reads ``ids[start : start+T]`` and predicts ``ids[start+1 : start+T+1]``; it scores the
    targets from absolute index ``first`` on, so every target after the first window sees at least
    ``T − stride`` tokens of context.
    """
    for name, v, low in (("n", n, 2), ("block_size", block_size, 1), ("stride", stride, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    T = min(block_size, n - 1)
    out: list[tuple[int, int]] = []
    covered = 0  # targets 1 … covered are scored
    start = 0
    while covered < n - 1:
        start = min(start, n - 1 - T)
        out.append((start, covered + 1))
        covered = start + T
        start += stride
    return out


def _scored_windows(n: int, T: int, stride: int, batch_size: int):
    """Batches of windows over a stream of ``n`` tokens: ``(offs (B, Tw), places)``, where ``offs`` are the input
    positions and each ``(row, dst, src)`` of ``places`` scores window ``row``'s positions ``src`` as targets ``dst``
    (target ``t`` is token ``t + 1``): every target once, as :func:`sliding_windows` assigns it."""
    wins = sliding_windows(n, T, stride)
    Tw = min(T, n - 1)
    for b in range(0, len(wins), batch_size):
        chunk = wins[b:b + batch_size]
        starts = torch.tensor([st for st, _ in chunk])
        offs = starts[:, None] + torch.arange(Tw)[None, :]
        # window position p predicts target st + p + 1
        yield offs, [(row, slice(first - 1, st + Tw), slice(first - st - 1, Tw)) for row, (st, first) in enumerate(chunk)]


def _check_stream(model: torch.nn.Module, ids: np.ndarray | torch.Tensor, stride: int | None) -> tuple[torch.Tensor, int, int]:
    ids_t = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids).long().reshape(-1).cpu()
    if ids_t.numel() < 2:
        raise ValueError(f"ids must hold at least 2 tokens (one to condition on, one to predict), got {ids_t.numel()}")
    V = model.config.vocab_size
    if int(ids_t.min()) < 0 or int(ids_t.max()) >= V:
        raise ValueError(f"ids holds token ids outside [0, {V}): min {int(ids_t.min())}, max {int(ids_t.max())}")
    T = model.config.block_size
    stride = max(1, T // 2) if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= T:
        raise ValueError(f"stride must be an int in [1, block_size={T}], got {stride!r}")
    return ids_t, T, stride


@torch.no_grad()
def token_log_probs(model: torch.nn.Module, ids: np.ndarray | torch.Tensor, *, stride: int | None = None,
                    batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target log-probabilities (targets ``1 … n−1``, float64, on the CPU) and whether each was the argmax.

    ``model(idx)`` must return next-token log-probabilities ``(B, T, V)`` and have ``config.block_size``.
    Windows of ``block_size`` tokens slide by ``stride`` (default ``block_size // 2``); each target is scored
    once, in the first window where it has the most context the stride allows (see :func:`sliding_windows`).
    """
    ids_t, T, stride = _check_stream(model, ids, stride)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = ids_t.numel()
    out_lp = torch.empty(n - 1, dtype=torch.float64)
    out_hit = torch.empty(n - 1, dtype=torch.bool)
    try:
        for offs, places in _scored_windows(n, T, stride, batch_size):
            y = ids_t[offs + 1]
            logp = model(ids_t[offs].to(device)).cpu()  # (B, T, V)
            lp = logp.gather(-1, y[..., None])[..., 0].double()
            hit = logp.argmax(-1) == y
            for row, dst, src in places:
                out_lp[dst] = lp[row, src]
                out_hit[dst] = hit[row, src]
    finally:
        model.train(was_training)
    return out_lp, out_hit


@torch.no_grad()
def scored_hidden(model: torch.nn.Module, ids: np.ndarray | torch.Tensor, *, stride: int | None = None,
                  batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The final residual stream ``model.hidden(idx)`` at every target position of :func:`token_log_probs`, and
    the targets: ``(n − 1, C)`` float32 and ``(n − 1,)`` int64, on the CPU.

    ``model.log_probs_from_hidden(h)`` then gives exactly the log-probabilities ``token_log_probs`` scores, so a
    grid over the head (a temperature, a mixture weight) costs one pass through the blocks, not one per value.
    """
    ids_t, T, stride = _check_stream(model, ids, stride)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = ids_t.numel()
    out = torch.empty(n - 1, model.config.n_embd, dtype=torch.float32)
    try:
        for offs, places in _scored_windows(n, T, stride, batch_size):
            h = model.hidden(ids_t[offs].to(device)).float().cpu()  # (B, Tw, C)
            for row, dst, src in places:
                out[dst] = h[row, src]
    finally:
        model.train(was_training)
    return out, ids_t[1:].clone()


def evaluate(model: torch.nn.Module, ids: np.ndarray | torch.Tensor, *, stride: int | None = None,
             batch_size: int = 64) -> LMEval:
    """Perplexity and top-1 accuracy of ``model`` on the stream ``ids``, predicting every token but the first.

    The targets and windows are those of :func:`token_log_probs`.
    """
    lp, hit = token_log_probs(model, ids, stride=stride, batch_size=batch_size)
    return LMEval(perplexity(lp), -float(lp.mean()), float(hit.double().mean()), int(lp.numel()))
