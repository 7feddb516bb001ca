"""Interpolated modified Kneser-Ney n-gram language model (Chen & Goodman, 1998), NumPy only.

The model is the one KenLM's ``lmplz`` and SRILM's ``ngram-count -kndiscount -interpolate`` estimate, fitted on one
continuous token stream: sentence ends are an ordinary token of the vocabulary and there is no ``<s>`` padding.
N-grams are stored as sorted int64 keys packed hierarchically, ``key = id(context) * V + w``, where ``id(context)``
is the context's row in the table one order down, so the keys fit in 63 bits for any order and a vocabulary of
10,000 (plain base-V packing of a 5-gram would need 10,000⁵ = 1e20 > 2⁶³). Counting is ``np.unique``; lookup is
``np.searchsorted``, vectorised over a whole stream per order.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["KneserNeyLM", "DiscountFallbackWarning"]

MAX_ORDER = 10
FALLBACK_DISCOUNT = 0.75  # the classic absolute discount (Ney et al., 1994), used when count-of-counts are degenerate
_INT63 = 2**63 - 1


class DiscountFallbackWarning(RuntimeWarning):
    """The count-of-counts of some order are too degenerate (a zero, or a discount outside ``(0, k)``) to estimate
    the discounts from; a fallback discount is used instead (usual on tiny training streams)."""


class KneserNeyLM:
    """Interpolated modified Kneser-Ney n-gram language model over a token stream.

    Notation (Chen & Goodman 1998, §3.5; the formulas KenLM implements)::

        V            vocabulary size; p_0(w) = 1 / V, the uniform base every order finally interpolates with
        N            the order (``order``); h a context of n - 1 tokens, h' = h without its first (oldest) token
        c_n(h w)     the count used at order n: the raw count in the stream for n = N, and for n < N the
                     continuation count N1+(• h w), the number of distinct tokens seen just before ``h w``
                     (the start of the stream counts as one extra left context of the stream's first n-gram)
        c_n(h •)     = Σ_w c_n(h w), summed over the n-grams that follow h
        N_k(h •)     the number of distinct w with c_n(h w) = k (k = 1, 2), N_3+(h •) those with c_n(h w) >= 3
        D_n(c)       D_n,1, D_n,2 or D_n,3+ for c = 1, 2, >= 3; D_n(0) = 0

        p_n(w | h) = (c_n(h w) - D_n(c_n(h w))) / c_n(h •)  +  γ_n(h) p_{n-1}(w | h')     if c_n(h •) > 0
                   = p_{n-1}(w | h')                                                     otherwise (h unseen)
        γ_n(h)     = (D_n,1 N_1(h •) + D_n,2 N_2(h •) + D_n,3+ N_3+(h •)) / c_n(h •)

    so every ``p_n(· | h)`` sums to 1 and, the discounts being positive, every token of the vocabulary gets
    probability > 0. A token is scored with the longest history the stream offers, at most N - 1 tokens: the
    first tokens of a stream are scored by the lower orders.

    Discounts (``discount="modified"``) come per order from the count-of-counts n_k = #{n-grams with c_n = k}::

        Y = n_1 / (n_1 + 2 n_2),   D_1 = 1 - 2 Y n_2 / n_1,   D_2 = 2 - 3 Y n_3 / n_2,   D_3+ = 3 - 4 Y n_4 / n_3

    ``"single"`` uses one absolute discount per order, D = Y (Ney et al., 1994), for every count; a float in
    ``(0, 1]`` fixes D for every order and count. On tiny data the count-of-counts can be degenerate (some n_k = 0,
    or an estimate outside ``(0, k)``); that order then falls back to D = Y for all three counts if Y lies in
    ``(0, 1)``, else to D = 0.75, with a :class:`DiscountFallbackWarning` giving the count-of-counts.

    Parameters
    ----------
    order : int, default 5
        N, from 1 to 10. ``order=1`` is the unigram of raw counts interpolated with the uniform distribution.
    discount : {"modified", "single"} or float, default "modified"

    Attributes
    ----------
    order_ : int
    vocab_size_ : int
    discounts_ : ndarray of shape (order, 3)
        Row n - 1 holds (D_n,1, D_n,2, D_n,3+) of order n.
    n_params_ : int
        The number of stored n-gram entries, all orders.
    count_of_counts_ : ndarray of shape (order, 4)
        Row n - 1 holds n_1..n_4 of order n (of the counts c_n the discounts are estimated from).
    """

    def __init__(self, order: int = 5, *, discount: Literal["modified", "single"] | float = "modified") -> None:
        self.order = order
        self.discount = discount

    # ----------------------------------------------------------------------------------------------- fitting

    def fit(self, ids: np.ndarray | Sequence[int], vocab_size: int) -> KneserNeyLM:
        """Count the n-grams of one continuous stream ``ids`` (1-D, each in ``[0, vocab_size)``) and estimate the
        model; returns ``self``. Every window of the stream is an n-gram: a stream of L tokens has L - n + 1."""
        order = _check_order(self.order)
        discount = _check_discount(self.discount)
        V = _check_vocab_size(vocab_size)
        stream = _check_ids(ids, V, "ids", allow_empty=False)
        if stream.size < order:
            raise ValueError(f"ids must hold at least order={order} tokens to give one {order}-gram, got {stream.size}")
        if stream.size * V > _INT63:
            raise ValueError(f"len(ids) * vocab_size must be < 2**63 to pack n-gram keys, got {stream.size} * {V}")

        keys, windows, firsts = _index_windows(stream, order, V)
        tables = [_estimate_order(n, order, V, keys, windows, firsts, discount) for n in range(1, order + 1)]
        self.keys_ = keys  # per order n: sorted keys id(h) * V + w of the n-grams seen
        self.alpha_ = [t[0] for t in tables]  # per n-gram: (c_n(hw) - D_n(c_n(hw))) / c_n(h•)
        self.gamma_ = [t[1] for t in tables]  # per context row of order n - 1: γ_n(h), or 1 where c_n(h•) = 0
        degenerate = [f"order {n}: n1..n4 = {t[3].tolist()}" for n, t in enumerate(tables, start=1) if not t[4]]
        if degenerate:
            warnings.warn(
                f"count-of-counts too degenerate to estimate Kneser-Ney discounts ({'; '.join(degenerate)}); "
                f"using D = Y = n1 / (n1 + 2 n2), or {FALLBACK_DISCOUNT} where Y is undefined, for those orders",
                DiscountFallbackWarning,
                stacklevel=2,
            )
        self.order_ = order
        self.vocab_size_ = V
        self.discounts_ = np.array([t[2] for t in tables], dtype=np.float64)
        self.count_of_counts_ = np.array([t[3] for t in tables], dtype=np.int64)
        self.n_params_ = int(sum(k.size for k in self.keys_))
        return self

    # ----------------------------------------------------------------------------------------------- scoring

    def score(self, ids: np.ndarray | Sequence[int], *, context: Sequence[int] = ()) -> np.ndarray:
        """Natural-log probability of every token of ``ids`` given the up to ``order - 1`` tokens before it.

        ``context`` supplies history before ``ids[0]`` (only its last ``order - 1`` tokens are used); without it
        the first tokens are scored by the lower orders. Returns an array of shape ``(len(ids),)``, float64.
        Vectorised: one ``searchsorted`` over the stream per order.
        """
        self._check_fitted()
        V, N = self.vocab_size_, self.order_
        x = _check_ids(ids, V, "ids", allow_empty=True)
        history = _check_ids(context, V, "context", allow_empty=True)
        full = np.concatenate([history[max(history.size - (N - 1), 0) :], x])
        t = np.arange(full.size - x.size, full.size)  # positions in `full` of the tokens scored
        p = np.full(x.size, 1.0 / V)  # p_0
        prev = np.zeros(full.size, dtype=np.int64)  # row of the (n-1)-gram starting at each position; order 0: 0
        for n in range(1, N + 1):
            m = full.size - n + 1  # number of n-grams (windows) in `full`
            if m <= 0:
                break
            cur = _lookup(self.keys_[n - 1], prev[:m], full[n - 1 : n - 1 + m], V)
            s = t - n + 1  # start of the n-gram ending at each scored token
            use = s >= 0  # a token with fewer than n - 1 tokens before it stops at a lower order
            ctx, gram = prev[s[use]], cur[s[use]]
            gamma = np.where(ctx >= 0, self.gamma_[n - 1][np.maximum(ctx, 0)], 1.0)
            alpha = np.where(gram >= 0, self.alpha_[n - 1][np.maximum(gram, 0)], 0.0)
            p[use] = alpha + gamma * p[use]
            prev = cur
        return np.log(p)

    def next_token_probs(self, context: Sequence[int]) -> np.ndarray:
        """The distribution ``p(· | context)`` over the vocabulary: shape ``(vocab_size,)``, float64, sums to 1,
        every entry > 0. Only the last ``order - 1`` tokens of ``context`` are used; it may be shorter or empty."""
        self._check_fitted()
        V, N = self.vocab_size_, self.order_
        ctx = _check_ids(context, V, "context", allow_empty=True)
        ctx = ctx[max(ctx.size - (N - 1), 0) :]
        p = np.full(V, 1.0 / V)
        for n in range(1, ctx.size + 2):
            row = self._context_row(ctx[ctx.size - (n - 1) :])
            if row < 0:  # h never seen: order n adds nothing, γ = 1
                continue
            keys = self.keys_[n - 1]
            lo, hi = np.searchsorted(keys, [row * V, (row + 1) * V])
            p *= self.gamma_[n - 1][row]
            p[keys[lo:hi] - row * V] += self.alpha_[n - 1][lo:hi]
        return p

    def log_prob(self, context: Sequence[int], token: int) -> float:
        """Natural log of ``p(token | context)`` (the last ``order - 1`` tokens of ``context``)."""
        self._check_fitted()
        if isinstance(token, bool) or not isinstance(token, numbers.Integral):
            raise ValueError(f"token must be an integer token id, got {token!r}")
        if not 0 <= token < self.vocab_size_:
            raise ValueError(f"token must lie in [0, vocab_size={self.vocab_size_}), got {token}")
        return float(self.score(np.array([token], dtype=np.int64), context=context)[0])

    def perplexity(self, ids: np.ndarray | Sequence[int], *, context: Sequence[int] = ()) -> float:
        """``exp(-mean(score(ids)))``: the per-token perplexity of the stream ``ids``."""
        lp = self.score(ids, context=context)
        if lp.size == 0:
            raise ValueError("ids must be non-empty to have a perplexity, got 0 tokens")
        return float(math.exp(-lp.mean()))

    # ----------------------------------------------------------------------------------------------- I/O

    def to_dict(self) -> dict[str, Any]:
        """The fitted model as plain values and NumPy arrays (``np.savez``-able); inverse of :meth:`from_dict`."""
        self._check_fitted()
        d: dict[str, Any] = {
            "order": self.order_,
            "discount": self.discount,
            "vocab_size": self.vocab_size_,
            "discounts": self.discounts_,
            "count_of_counts": self.count_of_counts_,
        }
        for n in range(1, self.order_ + 1):
            d[f"keys_{n}"], d[f"alpha_{n}"], d[f"gamma_{n}"] = self.keys_[n - 1], self.alpha_[n - 1], self.gamma_[n - 1]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KneserNeyLM:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or not {"order", "discount", "vocab_size"} <= d.keys():
            raise ValueError(f"d must be a dict from KneserNeyLM.to_dict, got {d!r:.100}")
        discount = d["discount"]
        discount = discount.item() if isinstance(discount, np.ndarray) else discount  # np.savez stores 0-d arrays
        lm = cls(int(d["order"]), discount=discount)
        lm.order_ = _check_order(lm.order)
        lm.vocab_size_ = int(d["vocab_size"])
        lm.discounts_ = np.asarray(d["discounts"], dtype=np.float64)
        lm.count_of_counts_ = np.asarray(d["count_of_counts"], dtype=np.int64)
        n = range(1, lm.order_ + 1)
        lm.keys_ = [np.asarray(d[f"keys_{i}"], dtype=np.int64) for i in n]
        lm.alpha_ = [np.asarray(d[f"alpha_{i}"], dtype=np.float64) for i in n]
        lm.gamma_ = [np.asarray(d[f"gamma_{i}"], dtype=np.float64) for i in n]
        lm.n_params_ = int(sum(k.size for k in lm.keys_))
        return lm

    # ----------------------------------------------------------------------------------------------- helpers

    def _context_row(self, h: np.ndarray) -> int:
        """Row of the (len(h))-gram ``h`` in its order's table (0 for the empty context), or -1 if unseen."""
        row = 0
        for j, w in enumerate(h.tolist()):
            keys = self.keys_[j]
            key = row * self.vocab_size_ + w
            i = int(np.searchsorted(keys, key))
            if i == keys.size or keys[i] != key:
                return -1
            row = i
        return row

    def _check_fitted(self) -> None:
        if not hasattr(self, "keys_"):
            raise RuntimeError("this KneserNeyLM is not fitted yet; call fit(ids, vocab_size) first")

    def __repr__(self) -> str:
        return f"KneserNeyLM(order={self.order!r}, discount={self.discount!r})"


# --------------------------------------------------------------------------------------------------- counting


def _index_windows(stream: np.ndarray, order: int, V: int) -> tuple[list[np.ndarray], ...]:
    """For n = 1..order: the sorted unique keys of the n-grams of ``stream``, the row of the n-gram starting at every
    position (length L - n + 1), and one start position of each unique n-gram."""
    keys, windows, firsts = [], [], []
    prev = np.zeros(stream.size, dtype=np.int64)  # order 0: every position starts the empty context, row 0
    for n in range(1, order + 1):
        m = stream.size - n + 1
        packed = prev[:m] * V + stream[n - 1 : n - 1 + m]  # id(prefix (n-1)-gram) * V + last token
        uniq, first, rows = np.unique(packed, return_index=True, return_inverse=True)
        keys.append(uniq)
        windows.append(rows.reshape(-1))
        firsts.append(first)
        prev = windows[-1]
    return keys, windows, firsts


def _estimate_order(
    n: int, order: int, V: int, keys: list, windows: list, firsts: list, discount: str | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Order n's (alpha per n-gram, γ per context, discounts, count-of-counts n_1..n_4, estimated without fallback)."""
    if n == order:
        counts = np.bincount(windows[n - 1], minlength=keys[n - 1].size)  # raw counts
    else:
        counts = _continuation_counts(windows[n - 1], firsts[n], keys[n - 1].size)
    coc = np.bincount(np.minimum(counts, 5), minlength=6)[1:5]
    D, ok = _discounts(coc, discount)
    n_contexts = 1 if n == 1 else keys[n - 2].size
    alpha, gamma = _interpolation_weights(keys[n - 1] // V, counts, D, n_contexts)
    return alpha, gamma, D, coc, ok


def _continuation_counts(rows_n: np.ndarray, first_up: np.ndarray, size: int) -> np.ndarray:
    """N1+(• g) for every n-gram g: the number of distinct (n+1)-grams x g. Each unique (n+1)-gram, taken at one of
    its occurrences, contributes its suffix (the n-gram one position later); the stream start is one more left
    context of the stream's first n-gram."""
    counts = np.bincount(rows_n[first_up + 1], minlength=size)
    counts[rows_n[0]] += 1
    return counts


def _discounts(coc: np.ndarray, discount: str | float) -> tuple[np.ndarray, bool]:
    """(D_1, D_2, D_3+) from the count-of-counts n_1..n_4, and whether they were estimated without falling back."""
    if not isinstance(discount, str):
        return np.full(3, float(discount)), True
    n1, n2, n3, n4 = (float(c) for c in coc)
    Y = n1 / (n1 + 2 * n2) if n1 > 0 and n2 > 0 else math.nan
    single_ok = 0 < Y < 1
    if discount == "modified" and min(n1, n2, n3, n4) > 0:
        D = np.array([1 - 2 * Y * n2 / n1, 2 - 3 * Y * n3 / n2, 3 - 4 * Y * n4 / n3])
        if np.all((D > 0) & (D < [1, 2, 3])):
            return D, True
    elif discount == "single" and single_ok:
        return np.full(3, Y), True
    return np.full(3, Y if single_ok else FALLBACK_DISCOUNT), False


def _interpolation_weights(
    ctx: np.ndarray, counts: np.ndarray, D: np.ndarray, n_contexts: int
) -> tuple[np.ndarray, np.ndarray]:
    """alpha = (c(hw) - D(c(hw))) / c(h•) per n-gram and γ(h) = Σ_w D(c(hw)) / c(h•) per context (1 if unseen)."""
    d = D[np.minimum(counts, 3) - 1]  # every stored n-gram has c >= 1
    total = np.bincount(ctx, weights=counts, minlength=n_contexts)
    mass = np.bincount(ctx, weights=d, minlength=n_contexts)
    seen = total > 0
    gamma = np.ones(n_contexts)
    gamma[seen] = mass[seen] / total[seen]
    alpha = (counts - d) / total[ctx]
    return alpha, gamma


def _lookup(keys: np.ndarray, prefix_rows: np.ndarray, last: np.ndarray, V: int) -> np.ndarray:
    """Row in ``keys`` of each n-gram (prefix row, last token), or -1 where it (or its prefix) was never seen."""
    query = np.where(prefix_rows >= 0, prefix_rows * V + last, -1)
    i = np.searchsorted(keys, query)
    i_clipped = np.minimum(i, keys.size - 1)
    return np.where(keys[i_clipped] == query, i_clipped, -1)


# --------------------------------------------------------------------------------------------------- validation


def _check_order(order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be an integer in [1, {MAX_ORDER}], got {order!r}")
    return int(order)


def _check_discount(discount: Any) -> str | float:
    if isinstance(discount, str):
        if discount not in ("modified", "single"):
            raise ValueError(f"discount must be 'modified', 'single' or a float in (0, 1], got {discount!r}")
        return discount
    if isinstance(discount, bool) or not isinstance(discount, numbers.Real) or not 0 < discount <= 1:
        raise ValueError(f"discount must be 'modified', 'single' or a float in (0, 1], got {discount!r}")
    return float(discount)


def _check_vocab_size(vocab_size: Any) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    return int(vocab_size)


def _check_ids(ids: Any, V: int, name: str, *, allow_empty: bool) -> np.ndarray:
    """A 1-D int64 array of token ids, each in ``[0, V)``."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        if not allow_empty:
            raise ValueError(f"{name} must be a non-empty stream of token ids, got 0 tokens")
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi >= V:
        raise ValueError(f"{name} must lie in [0, vocab_size={V}), got values in [{lo}, {hi}]")
    return arr.astype(np.int64, copy=False)
