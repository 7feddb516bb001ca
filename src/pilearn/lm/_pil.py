"""PIL-LM (pure): every weight of the transformer obtained without a gradient.

A transformer language model is ``p(w_{t+1} | w_{≤t}) = head(x_L)``, with the residual stream ``x`` built by
embeddings, attention and FFNs. Here each part is set in closed form, in this order (one pass over the
training stream for the embeddings, one per layer for the FFNs, one for the head):

**Layout of the residual stream.** ``x = Q z`` where ``Q`` (``C × (C−1)``) is a seeded orthonormal basis of the
vectors orthogonal to ``1`` (so LayerNorm's mean subtraction is the identity and it only rescales) and ``z`` is
split into named blocks: ``tok`` (the current token, ``d_tok``), ``pos`` (its position, ``2F``), one ``slot`` per
shift head (the token ``o`` places back, ``d_tok`` each), ``bow`` (an average of all earlier tokens, ``d_bow``) and
``pred`` (``d_pred``), the block the FFNs write their predictions into.

**Embeddings** (``wte``). Spectral: with ``M_o`` the positive PMI matrix of (token ``w_t``, token ``w_{t+1+o}``)
over the training stream, ``[M_0 M_1 … M_{S}] ≈ U Σ Vᵀ`` (truncated SVD); ``wte[w] = Q_tok · U_w Σ^½``, rows
rescaled to a common norm. A token's input vector is thus its best rank-``d_tok`` summary of *what follows it*
at every distance the attention can see. The output embedding ``u(w)`` (``d_pred``) is the same construction
read from the other side (``V Σ^½`` of ``M_0``): a token's summary of *what precedes it*. ``wpe[i] = Q_pos·p_i``
with ``p_i = (cos ω_f i, sin ω_f i)_f``.

**Attention** (layer 1; later layers' attention outputs are zero). Head ``o`` (``o = 1 … n_head−1``) is a *shift
head*: its query is the position code rotated by ``−ω_f o``, its key the position code, so its score
``β Σ_f cos ω_f (i − o − j)`` peaks at ``j = i − o`` and, with ``β`` set from the score gap, the softmax puts
≥ 99 % of its weight there; its value is the ``tok`` block, written by ``c_proj`` into slot ``o``. The last head
has zero query and key, so it averages the ``tok`` blocks of all earlier positions (a bag of words of the whole
context) into ``bow``. (At positions ``i < o`` there is no token ``o`` places back; the softmax then falls on the
nearest positions and slot ``o`` holds a copy of an early token: a window's first ``o`` positions see a shorter
n-gram.) After layer 1 the stream holds ``[e(w_t), e(w_{t−1}), …, e(w_{t−S}), mean_{j≤t} e(w_j)]``:
an n-gram window plus a long-range summary, built by ordinary softmax attention with fixed weights.

**FFNs** (the seed's Bi-PIL block, layer by layer, earlier layers fixed). Layer ``ℓ`` sees ``H_ℓ = φ(LN(x_ℓ))``
(fixed random features) and regresses onto the part of the next token's output embedding that the stream
does not yet hold::

    Y_ℓ = u(w_{t+1}) − Q_predᵀ x_ℓ ,   W_ℓ = (H̃ᵀH̃ + λI)⁻¹ H̃ᵀỸ   (centred; intercept unpenalized)

and writes ``Q_pred (H_ℓ W_ℓ + b_ℓ)`` back: each FFN is one step of least-squares boosting of the stream
towards ``u(w_{t+1})``, the vector the head reads best (its nearest neighbours are the tokens that follow the same
contexts). Solved through :class:`~pilearn.solvers.RidgeStats`, with the condition number of ``G̃ + λI``
recorded and an eigendecomposition pseudo-inverse when it exceeds ``max_condition`` (seed ``001`` §3.5).

**Head.** ``s(x) = LN(x_L) A + c`` by ridge onto the one-hot next token, which estimates ``E[onehot(w_{t+1}) | x] =
p(w_{t+1} | x)`` itself. A softmax of such scores is badly calibrated (a softmax wants log-probabilities), so
the head is the clipped, normalized estimate mixed with the unigram distribution,
``p = (1−α) relu(s)/Σ relu(s) + α p_uni``; ``α`` (and the softmax alternative with a temperature, kept if it
is better) is chosen on held-out text by a grid, not a gradient.

No ``.backward()`` is ever called: the whole fit runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import all_reduce_floats, all_reduce_stats, all_reduce_sum_, check_distributed
from ..features import derive_seed, make_generator
from ..solvers import RidgeStats, lam_scale, spd_solve
from ._ngram import _check_ids as _check_token_ids
from .model import PILLM, PILFeedForward

__all__ = ["PILFitConfig", "PILFitReport", "fit_pil", "spectral_embeddings", "stream_layout"]

logger = logging.getLogger(__name__)


@dataclass
class PILFitConfig:
    """How :func:`fit_pil` sets a :class:`PILLM` in closed form; see the module docstring for the math.

    ``lam`` and ``head_lam`` are *relative*: the ridge penalty is ``lam · tr(G̃)/d``, so one value means the same
    across widths and data sizes; ``lam="gcv"`` picks each FFN's by generalized cross-validation from the
    statistics alone. ``d_pred`` is a minimum: the width left over by the layout also goes to the prediction block.

    ``distributed=True``: data parallelism under ``torch.distributed`` (see :func:`fit_pil`): each rank passes its
    own segments and every data-dependent sum is added over the ranks before it is used.
    """

    lam: float | Literal["gcv"] = 1e-4
    head_lam: float | Literal["gcv"] = 1e-4
    pos_freqs: int = 8
    d_pred: int | None = None  # default n_embd // 4
    bow_fraction: float = 0.5  # d_bow = bow_fraction · d_tok
    attention: Literal["shift", "random"] = "shift"
    head: Literal["ridge", "lda"] = "ridge"  # least squares, or Gaussian discriminant (softmax of linear logits)
    lda_shrink: float = 1.0  # pseudo-counts pulling rare tokens' class means towards the global mean (LDA head)  # "random": seeded random q, k, v (the naive alternative)
    batch_windows: int = 256
    max_condition: float = 1e10
    alpha_grid: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    temperature_grid: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
    gcv_grid: tuple[float, ...] = tuple(float(v) for v in np.logspace(-8, 0, 9))
    seed: int = 0
    distributed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.distributed, (bool, np.bool_)):
            raise ValueError(f"distributed must be a bool, got {self.distributed!r}")
        v = self.lam
        if v != "gcv" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v)):
            raise ValueError(f"lam must be a finite float >= 0 or 'gcv', got {v!r}")
        v = self.head_lam
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
            raise ValueError(f"head_lam must be a finite float >= 0 (the head has no GCV path), got {v!r}")
        if self.head not in ("ridge", "lda"):
            raise ValueError(f"head must be 'ridge' or 'lda', got {self.head!r}")
        if not all(0.0 < a <= 1.0 for a in self.alpha_grid) or not self.alpha_grid:
            raise ValueError(f"alpha_grid must hold values in (0, 1], got {self.alpha_grid!r}")
        if not all(t > 0 for t in self.temperature_grid) or not self.temperature_grid:
            raise ValueError(f"temperature_grid must hold values > 0, got {self.temperature_grid!r}")
        if not self.max_condition > 1:
            raise ValueError(f"max_condition must be > 1, got {self.max_condition!r}")
        if self.attention not in ("shift", "random"):
            raise ValueError(f"attention must be 'shift' or 'random', got {self.attention!r}")
        for name in ("pos_freqs", "batch_windows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 < self.bow_fraction <= 1.0:
            raise ValueError(f"bow_fraction must be in (0, 1], got {self.bow_fraction!r}")


@dataclass
class PILFitReport:
    """What a closed-form fit did: timings, the λ of every solve, condition numbers, the head chosen."""

    seconds: float = 0.0
    layout: dict[str, int] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    head: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- layout
def stream_layout(n_embd: int, n_head: int, *, pos_freqs: int = 8, d_pred: int | None = None,
                  bow_fraction: float = 0.5) -> dict[str, slice]:
    """Blocks of the design coordinates ``z`` (``C − 1`` of them): tok, pos, slot1…slotS, bow, pred."""
    n_shift = n_head - 1
    d_pred = n_embd // 4 if d_pred is None else d_pred
    free = n_embd - 1 - 2 * pos_freqs - d_pred
    d_tok = int(free // (1 + n_shift + bow_fraction))
    hs = n_embd // n_head
    d_tok = min(d_tok, hs)
    d_bow = max(1, int(bow_fraction * d_tok))
    if d_tok < 2 or d_pred < 1 or 2 * pos_freqs > hs:
        raise ValueError(f"n_embd={n_embd}, n_head={n_head} leave no room for the stream layout "
                         f"(d_tok={d_tok}, d_pred={d_pred}, 2·pos_freqs={2 * pos_freqs}, head size {hs})")
    blocks: dict[str, slice] = {}
    at = 0
    for name, size in [("tok", d_tok), ("pos", 2 * pos_freqs), *[(f"slot{o}", d_tok) for o in range(1, n_shift + 1)],
                       ("bow", d_bow)]:
        blocks[name] = slice(at, at + size)
        at += size
    blocks["pred"] = slice(at, n_embd - 1)  # everything left over goes to the predictions
    return blocks


def _basis(n_embd: int, seed: int) -> torch.Tensor:
    """Seeded orthonormal ``Q`` (C × (C−1)) whose columns are orthogonal to the all-ones vector."""
    g = make_generator(derive_seed(seed, "lm-basis"))
    A = torch.randn(n_embd, n_embd, generator=g, dtype=torch.float64)
    A[:, 0] = 1.0
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R))[None, :]
    return Q[:, 1:]


def _frequencies(F_: int, block_size: int) -> tuple[torch.Tensor, float]:
    """Angular frequencies of the position code and the smallest score gap ``1 − max_{0<|Δ|<T} S(Δ)``."""
    # geometric from π·0.9 down to one period over twice the context: sharp locally, unaliased globally
    omega = torch.from_numpy(np.geomspace(0.9 * math.pi, math.pi / block_size, F_)).to(torch.float64)
    delta = torch.arange(1, max(block_size, 2), dtype=torch.float64)
    S = torch.cos(omega[None, :] * delta[:, None]).mean(1)
    return omega, float(1.0 - S.max())


# ---------------------------------------------------------------------------------------------- embeddings
def _pair_counts(segments: Sequence[np.ndarray], V: int, offset: int):
    """``V × V`` counts of the pairs (``w_t``, ``w_{t+1+offset}``) inside each segment (canonical CSR)."""
    import scipy.sparse as sp

    a = np.concatenate([seg[: max(len(seg) - 1 - offset, 0)] for seg in segments])
    b = np.concatenate([seg[1 + offset:] for seg in segments])
    C = sp.coo_matrix((np.ones(len(a), dtype=np.float64), (a, b)), shape=(V, V)).tocsr()
    C.sum_duplicates()
    return C


def _all_reduce_counts(mats: list, V: int, distributed: bool) -> list:
    """Sum sparse count matrices over the ranks (one ``all_gather_object`` of their nonzeros).

    The counts are integers, so the sum is exact and every rank ends with the bit-identical canonical CSR matrix
    that one process counting all the segments would have built.
    """
    if not distributed:
        return mats
    import scipy.sparse as sp
    import torch.distributed as dist

    local = []
    for C in mats:
        coo = C.tocoo()
        local.append((coo.row, coo.col, coo.data))
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    out = []
    for o in range(len(mats)):
        parts = [g[o] for g in gathered]
        rows, cols, data = (np.concatenate([p[i] for p in parts]) for i in range(3))
        C = sp.coo_matrix((data, (rows, cols)), shape=(V, V)).tocsr()
        C.sum_duplicates()
        out.append(C)
    return out


def _ppmi(C, V: int, alpha: float = 0.75):
    """Positive PMI of a canonical CSR count matrix, with context distribution smoothing ``alpha``."""
    import scipy.sparse as sp

    C = C.tocoo()
    rows = np.asarray(np.bincount(C.row, weights=C.data, minlength=V), dtype=np.float64)
    ctx = np.bincount(C.col, weights=C.data, minlength=V) ** alpha  # context distribution smoothing
    ctx = ctx / ctx.sum()
    pmi = np.log(C.data / rows[C.row] / ctx[C.col])
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (C.row[keep], C.col[keep])), shape=(V, V))


def spectral_embeddings(ids: np.ndarray | Sequence[np.ndarray], vocab_size: int, dim: int, *, offsets: int = 1,
                        out_dim: int | None = None,
                        distributed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Input (and output) token embeddings from the truncated SVD of positive-PMI next-token matrices.

    ``[M_0 … M_{offsets−1}] ≈ U Σ Vᵀ`` with ``M_o[a, b] = max(0, log p(w_{t+1+o}=b | w_t=a) / p_α(b))``; the
    input embedding is ``U Σ^½`` (``V × dim``). With ``out_dim``, the output embedding is ``V' Σ'^½`` of ``M_0``
    alone (``V × out_dim``): row ``b`` summarizes which tokens precede ``b``. Deterministic (ARPACK started from
    a fixed vector).

    ``ids`` is one stream or a list of segments (documents) whose pairs are counted separately (no pair straddles
    two segments). With ``distributed=True`` the pair counts are summed over the ranks first (exact: they are
    integers), so every rank computes the embeddings of the union of the shards.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    segments = _as_segments(ids)
    counts = _all_reduce_counts([_pair_counts(segments, vocab_size, o) for o in range(offsets)], vocab_size,
                                distributed)
    mats = [_ppmi(C, vocab_size) for C in counts]
    M = sp.hstack(mats).tocsr()
    k = min(dim, min(M.shape) - 1)
    U, S, _ = svds(M, k=k, v0=np.ones(min(M.shape)) / math.sqrt(min(M.shape)))
    order = np.argsort(-S)
    emb_in = U[:, order] * np.sqrt(S[order])
    if k < dim:
        emb_in = np.pad(emb_in, ((0, 0), (0, dim - k)))
    emb_out = None
    if out_dim is not None:
        k2 = min(out_dim, vocab_size - 1)
        _, S2, Vt2 = svds(mats[0], k=k2, v0=np.ones(vocab_size) / math.sqrt(vocab_size))
        o2 = np.argsort(-S2)
        emb_out = Vt2[o2].T * np.sqrt(S2[o2])
        if k2 < out_dim:
            emb_out = np.pad(emb_out, ((0, 0), (0, out_dim - k2)))
    return emb_in, emb_out


def _unit_rows(E: np.ndarray, norm: float, seed: int) -> torch.Tensor:
    """Rows rescaled to ``norm``; an all-zero row (a token never seen) gets a seeded random direction."""
    E = torch.from_numpy(np.ascontiguousarray(E)).to(torch.float64)
    n = E.norm(dim=1, keepdim=True)
    zero = n[:, 0] < 1e-12
    if zero.any():
        g = make_generator(derive_seed(seed, "unseen-token"))
        E[zero] = torch.randn(int(zero.sum()), E.shape[1], generator=g, dtype=torch.float64)
        n = E.norm(dim=1, keepdim=True)
    return E / n * norm


# ---------------------------------------------------------------------------------------------- data
def _is_segment_list(ids: object) -> bool:
    """A list or tuple of 1-D arrays (segments), as opposed to one stream given as a list of ints."""
    return isinstance(ids, (list, tuple)) and len(ids) > 0 and np.ndim(ids[0]) >= 1


def _as_segments(ids: object) -> list[np.ndarray]:
    """One stream, or a list of segments, as a list of int64 arrays (unchecked: for :func:`spectral_embeddings`)."""
    if _is_segment_list(ids):
        return [np.asarray(seg, dtype=np.int64) for seg in ids]  # type: ignore[union-attr]
    return [np.asarray(ids, dtype=np.int64)]


def _windows(segments: Sequence[np.ndarray], T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping training windows of each segment in turn: inputs ``(N, T)`` and next-token targets ``(N, T)``."""
    xs, ys = [], []
    for ids in segments:
        n = (len(ids) - 1) // T
        xs.append(torch.from_numpy(np.ascontiguousarray(ids[: n * T])).view(n, T))
        ys.append(torch.from_numpy(np.ascontiguousarray(ids[1: n * T + 1])).view(n, T))
    if len(segments) == 1:
        return xs[0], ys[0]
    return torch.cat(xs), torch.cat(ys)


def _check_ids(ids: object, vocab_size: int, name: str, min_len: int) -> np.ndarray:
    """A 1-D int64 stream of at least ``min_len`` ids in ``[0, vocab_size)`` (the n-gram model's check, plus a length)."""
    arr = np.asarray(ids)
    if arr.ndim == 1 and len(arr) < min_len:
        raise ValueError(f"{name} must hold at least {min_len} tokens, got {len(arr)}")
    return _check_token_ids(arr, vocab_size, name, allow_empty=False)


def _check_segments(ids: object, vocab_size: int, name: str, min_len: int) -> list[np.ndarray]:
    """One stream or a non-empty list of segments, each checked by :func:`_check_ids`."""
    if isinstance(ids, (list, tuple)) and len(ids) == 0:
        raise ValueError(f"{name} must be a token stream or a non-empty list of segments, got an empty "
                         f"{type(ids).__name__}")
    if not _is_segment_list(ids):
        return [_check_ids(ids, vocab_size, name, min_len)]
    return [_check_ids(seg, vocab_size, f"{name}[{i}]", min_len) for i, seg in enumerate(ids)]  # type: ignore[arg-type]


def _hold_out_tails(segments: list[np.ndarray], T: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each segment split into (head, tail): the tail is 2 % of it, at least ``T + 1`` tokens."""
    train, valid = [], []
    for ids in segments:
        cut = len(ids) - max(T + 1, len(ids) // 50)
        train.append(ids[:cut])
        valid.append(ids[cut:])
    return train, valid


# ---------------------------------------------------------------------------------------------- the fit
@torch.no_grad()
def fit_pil(model: PILLM, train_ids: np.ndarray | Sequence[np.ndarray], *,
            valid_ids: np.ndarray | Sequence[np.ndarray] | None = None, config: PILFitConfig | None = None,
            progress: Any = None) -> PILFitReport:
    """Set every weight of ``model`` (a :class:`PILLM` with ``ffn="pil"``) in closed form; see the module doc.

    Args:
        model: the transformer to fit, in place.
        train_ids: the training token stream (1-D ints), or a list of segments (documents, each 1-D): each
            segment is counted and cut into windows on its own, so no co-occurrence pair and no window straddles
            two segments. A single stream is the one-segment list. Each segment needs ``2·block_size + 2`` tokens
            when ``valid_ids`` is None, else ``block_size + 1`` (one window).
        valid_ids: held-out stream, or list of segments, on which the head's calibration (α or temperature) is
            chosen; each segment is scored on its own and the log-likelihoods of all of them are pooled. When
            None, the tail of every training segment (2 %, at least ``block_size + 1`` tokens) is held out.
        config: :class:`PILFitConfig`.
        progress: optional callable ``progress(stage: str, done: int, total: int)``.

    Returns:
        A :class:`PILFitReport`.

    ``config.distributed=True`` (data parallelism under ``torch.distributed``, gloo on CPU or NCCL on GPU; user
    shards): each rank passes its own training and held-out segments, and every data-dependent sum is added over
    the ranks before it is used: the co-occurrence counts behind the spectral embeddings (exact: they are
    integers), each FFN layer's :class:`~pilearn.solvers.RidgeStats`, the head's Gram and per-token sums (hence
    the unigram), and the held-out log-likelihood and token count of every calibration grid value. Every rank then
    solves the identical systems and ends with the same model: the model one process fits on the ranks' segment
    lists concatenated in rank order, up to the rounding of the float sums (their order differs). The model's
    initial weights need not agree across ranks (the fit sets every weight). Each rank passes at least one segment.
    """
    cfg = config or PILFitConfig()
    if not isinstance(model, PILLM):
        raise TypeError(f"model must be a PILLM, got {type(model).__name__}")
    distributed = check_distributed(cfg.distributed)
    mc = model.config
    if mc.ffn != "pil":
        raise ValueError(f"fit_pil needs a model with ffn='pil', got ffn={mc.ffn!r}")
    if mc.tie_weights:
        raise ValueError("fit_pil needs an untied head (LMConfig(tie_weights=False)): the solved head is not wte")
    T = mc.block_size
    segments = _check_segments(train_ids, mc.vocab_size, "train_ids", 2 * T + 2 if valid_ids is None else T + 1)
    if valid_ids is None:
        segments, valid = _hold_out_tails(segments, T)
    else:
        valid = _check_segments(valid_ids, mc.vocab_size, "valid_ids", T + 1)
    report = PILFitReport()
    t_start = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    blocks = stream_layout(mc.n_embd, mc.n_head, pos_freqs=cfg.pos_freqs, d_pred=cfg.d_pred,
                           bow_fraction=cfg.bow_fraction)
    report.layout = {k: v.stop - v.start for k, v in blocks.items()}
    Q = _basis(mc.n_embd, cfg.seed)

    t = time.perf_counter()
    u, norms = _set_embeddings(model, segments, blocks, Q, cfg)
    report.timings["embeddings"] = time.perf_counter() - t
    _set_attention(model, blocks, Q, cfg, norms)

    X, Y = _windows(segments, T)
    # the stream of every training window, kept in memory and advanced one layer at a time
    stream = torch.empty(X.shape[0], T, mc.n_embd, dtype=torch.float32)
    bs = cfg.batch_windows
    pos = torch.arange(T, device=device)
    for i in range(0, X.shape[0], bs):
        xb = X[i:i + bs].to(device)
        stream[i:i + bs] = (model.wte(xb) + model.wpe(pos)).cpu()
    Qp = Q[:, blocks["pred"]].to(torch.float32).to(device)  # (C, d_pred)
    for layer, block in enumerate(model.h):
        t = time.perf_counter()
        ffn = block.mlp
        assert isinstance(ffn, PILFeedForward)
        stats = RidgeStats(ffn.width, Qp.shape[1], dual=False, device=device)
        for i in range(0, X.shape[0], bs):
            x = stream[i:i + bs].to(device)
            x = x + block.attn(block.ln_1(x))
            stream[i:i + bs] = x.cpu()
            H = ffn.features(block.ln_2(x)).reshape(-1, ffn.width)
            target = u[Y[i:i + bs].to(device)].reshape(-1, Qp.shape[1]) - x.reshape(-1, mc.n_embd) @ Qp
            stats.update(H, target, check_finite=False)
            if progress is not None:
                progress(f"layer {layer + 1}", min(i + bs, X.shape[0]), X.shape[0])
        all_reduce_stats(stats, distributed=distributed)
        info = _solve(stats, cfg.lam, cfg)
        W, b = info.pop("coef"), info.pop("intercept")
        ffn.out.weight.copy_((Qp.double() @ W.T.to(device)).to(ffn.out.weight.dtype))
        ffn.out.bias.copy_((Qp.double() @ b.to(device)).to(ffn.out.bias.dtype))
        for i in range(0, X.shape[0], bs):  # add this layer's FFN to the stored stream
            x = stream[i:i + bs].to(device)
            stream[i:i + bs] = (x + ffn(block.ln_2(x))).cpu()
        info["seconds"] = time.perf_counter() - t
        report.layers.append(info)
        logger.info("PIL-LM layer %d: %s", layer + 1, info)

    t = time.perf_counter()
    report.head = _fit_head(model, stream, Y, valid, cfg)
    report.timings["head"] = time.perf_counter() - t
    report.seconds = time.perf_counter() - t_start
    return report


def _set_embeddings(model: PILLM, segments: list[np.ndarray], blocks: dict[str, slice], Q: torch.Tensor,
                    cfg: PILFitConfig) -> tuple[torch.Tensor, tuple[float, float, torch.Tensor]]:
    """Set ``wte`` and ``wpe``; return the output embedding ``u`` (V × d_pred) and the norms the attention needs."""
    mc = model.config
    d_tok = blocks["tok"].stop - blocks["tok"].start
    d_pred = blocks["pred"].stop - blocks["pred"].start
    n_shift = mc.n_head - 1
    E_in, E_out = spectral_embeddings(segments, mc.vocab_size, d_tok, offsets=n_shift + 1, out_dim=d_pred,
                                      distributed=cfg.distributed)
    r_tok = math.sqrt(d_tok)
    E = _unit_rows(E_in, r_tok, cfg.seed)
    model.wte.weight.copy_((E @ Q[:, blocks["tok"]].T).to(model.wte.weight.dtype))
    u = _unit_rows(E_out, math.sqrt(d_pred), cfg.seed + 1).to(torch.float32).to(model.wte.weight.device)
    omega, _ = _frequencies(cfg.pos_freqs, mc.block_size)
    i = torch.arange(mc.block_size, dtype=torch.float64)[:, None]
    P = torch.cat([torch.cos(omega * i), torch.sin(omega * i)], 1) / math.sqrt(cfg.pos_freqs)  # (T, 2F), norm 1
    r_pos = math.sqrt(2 * cfg.pos_freqs)
    model.wpe.weight.copy_((r_pos * P @ Q[:, blocks["pos"]].T).to(model.wpe.weight.dtype))
    return u, (r_tok, r_pos, omega)


def _set_attention(model: PILLM, blocks: dict[str, slice], Q: torch.Tensor, cfg: PILFitConfig,
                   norms: tuple[float, float, torch.Tensor]) -> None:
    mc = model.config
    C, nh = mc.n_embd, mc.n_head
    hs = C // nh
    r_tok, r_pos, omega = norms
    s = math.sqrt(C) / math.sqrt(r_tok ** 2 + r_pos ** 2)  # LayerNorm's scale on the layer-1 input
    F_ = cfg.pos_freqs
    _, gap = _frequencies(F_, mc.block_size)
    beta = math.log(99.0 * mc.block_size) / gap  # ≥ 99 % of each shift head's weight on its target position
    Qpos, Qtok = Q[:, blocks["pos"]].T, Q[:, blocks["tok"]].T  # (2F, C), (d_tok, C)
    d_tok = Qtok.shape[0]
    for block in model.h:
        for ln in (block.ln_1, block.ln_2):
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        block.attn.c_attn.weight.zero_()
        block.attn.c_attn.bias.zero_()
        block.attn.c_proj.weight.zero_()
        block.attn.c_proj.bias.zero_()
    model.ln_f.weight.fill_(1.0)
    model.ln_f.bias.zero_()
    attn = model.h[0].attn
    Wq, Wk, Wv = attn.c_attn.weight[:C], attn.c_attn.weight[C:2 * C], attn.c_attn.weight[2 * C:]
    if cfg.attention == "random":  # the naive alternative: seeded random q, k, v and output
        g = make_generator(derive_seed(cfg.seed, "random-attention"))
        attn.c_attn.weight.copy_(torch.randn(3 * C, C, generator=g) / math.sqrt(C))
        attn.c_proj.weight.copy_(torch.randn(C, C, generator=g) / math.sqrt(C))
        return
    # scores: (a s² r_pos²/√hs)·S(Δ) with S the mean of cos ω_f Δ; want β S(Δ)
    a = beta * math.sqrt(hs) / (s * s * r_pos * r_pos)
    for h in range(nh - 1):
        o = h + 1
        c, sn = torch.cos(omega * o), torch.sin(omega * o)
        R = torch.zeros(2 * F_, 2 * F_, dtype=torch.float64)  # p_i ↦ p_{i−o}: rotate every pair by −ω o
        idx = torch.arange(F_)
        R[idx, idx], R[idx, F_ + idx] = c, sn
        R[F_ + idx, idx], R[F_ + idx, F_ + idx] = -sn, c
        rows = slice(h * hs, h * hs + 2 * F_)
        Wq[rows] = (a * R @ Qpos).to(Wq.dtype)
        Wk[rows] = Qpos.to(Wk.dtype)
        Wv[h * hs: h * hs + d_tok] = (Qtok / s).to(Wv.dtype)
        attn.c_proj.weight[:, h * hs: h * hs + d_tok] = Q[:, blocks[f"slot{o}"]].to(attn.c_proj.weight.dtype)
    h = nh - 1  # the bag-of-words head: zero query and key, so a uniform average over j ≤ i
    d_bow = blocks["bow"].stop - blocks["bow"].start
    Wv[h * hs: h * hs + d_bow] = (Qtok[:d_bow] / s).to(Wv.dtype)
    attn.c_proj.weight[:, h * hs: h * hs + d_bow] = Q[:, blocks["bow"]].to(attn.c_proj.weight.dtype)


def _solve(stats: RidgeStats, lam: float | str, cfg: PILFitConfig) -> dict[str, Any]:
    """Ridge solve with condition monitoring; ``lam`` relative to ``tr(G̃)/d`` or ``"gcv"``."""
    scale = lam_scale(stats)
    gcv = None
    if lam == "gcv":
        path = stats.solve_path([g * scale for g in cfg.gcv_grid])
        rel = float(path.best_lam) / scale
        gcv = {f"{g:g}": float(v) for g, v in zip(cfg.gcv_grid, path.gcv)}
    else:
        rel = float(lam)
    G, C, _ = stats.centered()
    G.diagonal().add_(rel * scale)
    evals = torch.linalg.eigvalsh(G)
    cond = float(evals[-1] / evals[0].clamp_min(torch.finfo(torch.float64).tiny))
    coef, method = spd_solve(G, C, max_condition=cfg.max_condition)
    return {"coef": coef, "intercept": stats._intercept(coef), "lam_relative": rel, "lam": rel * scale,
            "condition": cond, "method": method, "rows": int(stats.n)} | ({"gcv": gcv} if gcv else {})


def _fit_head(model: PILLM, stream: torch.Tensor, Y: torch.Tensor, valid: list[np.ndarray],
              cfg: PILFitConfig) -> dict[str, Any]:
    """Ridge from ``LN(x_L)`` onto the one-hot next token, then its calibration on held-out text."""
    mc = model.config
    device = model.lm_head.weight.device
    C, V = mc.n_embd, mc.vocab_size
    G = torch.zeros(C + 1, C + 1, dtype=torch.float64, device=device)
    HY = torch.zeros(V, C + 1, dtype=torch.float64, device=device)  # row v: Σ of [h, 1] over rows with target v
    bs = cfg.batch_windows
    for i in range(0, stream.shape[0], bs):
        h = model.ln_f(stream[i:i + bs].to(device)).reshape(-1, C).double()
        h = torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype, device=device)], 1)
        G += h.T @ h
        HY.index_add_(0, Y[i:i + bs].reshape(-1).to(device), h)
    all_reduce_sum_(G, cfg.distributed)  # the head's statistics of every rank's windows
    all_reduce_sum_(HY, cfg.distributed)
    n = float(G[-1, -1])
    counts = HY[:, -1]  # (V,) how often each token is the target
    model.log_unigram.copy_(torch.log(((counts + 1.0) / (n + V)).to(model.log_unigram.dtype)))
    mean = G[-1, :C] / n
    if cfg.head == "lda":
        coef, intercept, method = _lda_head(G, HY, n, cfg)
    else:
        # least squares onto the one-hot target; the intercept column is unpenalized (= centring H and Y)
        Gc = G[:C, :C] - n * torch.outer(mean, mean)
        y_mean = counts / n
        Cc = HY[:, :C].T - n * torch.outer(mean, y_mean)  # (C, V)
        Gc.diagonal().add_(cfg.head_lam * float(torch.diagonal(Gc).mean()))
        coef, method = spd_solve(Gc, Cc, max_condition=cfg.max_condition)
        intercept = y_mean - mean @ coef
    model.lm_head.weight.copy_(coef.T.to(model.lm_head.weight.dtype))
    model.lm_head.bias.copy_(intercept.to(model.lm_head.bias.dtype))
    return _calibrate(model, valid, cfg) | {"kind": cfg.head, "lam_relative": cfg.head_lam, "method": method}


def _lda_head(G: torch.Tensor, HY: torch.Tensor, n: float, cfg: PILFitConfig) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Gaussian class-conditional head (linear discriminant analysis) from the same statistics.

    With class means μ_v (shrunk towards the global mean by ``lda_shrink`` pseudo-counts) and the pooled
    within-class covariance Σ, Bayes' rule gives a softmax of linear logits,
    ``log p(v | h) = h·Σ⁻¹μ_v − ½ μ_vᵀΣ⁻¹μ_v + log π_v + const``: a calibrated probabilistic read-out in closed form.
    """
    C = G.shape[0] - 1
    counts, sums = HY[:, -1], HY[:, :C]
    mean = G[-1, :C] / n
    k = cfg.lda_shrink
    mu = (sums + k * mean[None, :]) / (counts[:, None] + k)  # (V, C)
    seen = counts > 0
    scatter = G[:C, :C] - (sums[seen] / counts[seen, None]).T @ sums[seen]  # within-class scatter
    Sigma = scatter / n
    Sigma.diagonal().add_(cfg.head_lam * float(torch.diagonal(Sigma).mean()))
    A, method = spd_solve(Sigma, mu.T.contiguous(), max_condition=cfg.max_condition)  # (C, V)
    prior = torch.log((counts + 1.0) / (n + counts.numel()))
    intercept = -0.5 * (mu * A.T).sum(1) + prior
    return A, intercept, method


def _calibrate(model: PILLM, valid: list[np.ndarray], cfg: PILFitConfig) -> dict[str, Any]:
    """Pick the head's softmax temperature, or the mixture weight α, by held-out perplexity (a grid, no gradient).

    The blocks run once over each held-out segment (:func:`~pilearn.lm.scored_hidden`); each grid value then costs
    only the head, and scores exactly what :func:`~pilearn.lm.evaluate` would on every segment, pooled. With
    ``distributed``, every grid value's summed log-likelihood and the token count are added over the ranks (one
    all-reduce for the whole grid) and the perplexity is that of the pooled mean.
    """
    from ._metrics import perplexity, scored_hidden

    parts = [scored_hidden(model, ids) for ids in valid]
    H, y = (parts[0] if len(parts) == 1 else (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    device = model.lm_head.weight.device

    def held_out_log_probs() -> torch.Tensor:
        lps = [model.log_probs_from_hidden(H[i:i + 4096].to(device)).cpu().gather(-1, y[i:i + 4096, None])[:, 0]
               for i in range(0, H.shape[0], 4096)]
        return torch.cat(lps)

    # per grid value: the perplexity, or (distributed) the local sum of log-probabilities, pooled below
    results: dict[str, float] = {}
    grids = [("softmax", "temperature", cfg.temperature_grid, model.temperature)]
    if cfg.head == "ridge":
        grids.append(("mixture", "alpha", cfg.alpha_grid, model.mix_alpha))
    for kind, name, grid, buf in grids:
        model.head = kind
        for v in grid:
            buf.fill_(v)
            lp = held_out_log_probs()
            results[f"{kind} {name}={v:g}"] = float(lp.double().sum()) if cfg.distributed else perplexity(lp)
    if cfg.distributed:  # the perplexity of the mean log-probability over every rank's held-out tokens
        sums = all_reduce_floats([*results.values(), float(H.shape[0])])
        results = {k: perplexity(torch.tensor([s / sums[-1]], dtype=torch.float64)) for k, s in zip(results, sums)}
    best = min(results, key=results.get)
    kind, value = best.split(" ")[0], float(best.split("=")[1])
    model.head = kind
    (model.mix_alpha if kind == "mixture" else model.temperature).fill_(value)
    return {"choice": best, "held_out_perplexity": results[best], "grid": results}
