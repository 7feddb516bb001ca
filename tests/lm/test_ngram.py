import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from pilearn.lm._ngram import DiscountFallbackWarning, KneserNeyLM

IGNORE_FALLBACK = pytest.mark.filterwarnings("ignore::pilearn.lm._ngram.DiscountFallbackWarning")


# ---------------------------------------------------------------- oracle: the formulas, with dicts and loops
class ReferenceKN:
    """Interpolated (modified) Kneser-Ney written straight from Chen & Goodman (1998), slowly."""

    def __init__(self, stream, V, N, discount="modified"):
        self.V, self.N = V, N
        stream = [int(w) for w in stream]
        grams = {n: Counter(tuple(stream[i : i + n]) for i in range(len(stream) - n + 1)) for n in range(1, N + 1)}
        self.counts = {N: dict(grams[N])}  # highest order: raw counts
        for n in range(1, N):  # lower orders: number of distinct left extensions N1+(• g)
            left = defaultdict(set)
            for g in grams[n + 1]:
                left[g[1:]].add(g[0])
            left[tuple(stream[:n])].add("<stream start>")
            self.counts[n] = {g: len(left[g]) for g in grams[n]}
        self.D = {n: self._discounts(self.counts[n], discount) for n in range(1, N + 1)}

    @staticmethod
    def _discounts(counts, discount):
        if not isinstance(discount, str):
            return (discount,) * 3
        n1, n2, n3, n4 = (sum(1 for c in counts.values() if c == k) for k in (1, 2, 3, 4))
        Y = n1 / (n1 + 2 * n2) if n1 and n2 else None
        if discount == "modified" and n1 and n2 and n3 and n4:
            D = (1 - 2 * Y * n2 / n1, 2 - 3 * Y * n3 / n2, 3 - 4 * Y * n4 / n3)
            if 0 < D[0] < 1 and 0 < D[1] < 2 and 0 < D[2] < 3:
                return D
        fallback = Y if Y is not None and 0 < Y < 1 else 0.75
        return (fallback,) * 3

    def d(self, n, c):
        return 0.0 if c == 0 else self.D[n][min(c, 3) - 1]

    def p(self, n, h, w):
        if n == 0:
            return 1 / self.V
        follows = {g[-1]: c for g, c in self.counts[n].items() if g[:-1] == h}
        c_h = sum(follows.values())
        if c_h == 0:
            return self.p(n - 1, h[1:], w)
        gamma = sum(self.d(n, c) for c in follows.values()) / c_h
        c = follows.get(w, 0)
        return (c - self.d(n, c)) / c_h + gamma * self.p(n - 1, h[1:], w)

    def score(self, ids, context=()):
        full = [int(w) for w in context] + [int(w) for w in ids]
        out = []
        for t in range(len(context), len(full)):
            h = tuple(full[max(0, t - self.N + 1) : t])
            out.append(math.log(self.p(len(h) + 1, h, full[t])))
        return np.array(out)


def markov_stream(rng, n, V):
    """A skewed first-order Markov chain over V tokens, so n-gram counts vary."""
    T = rng.dirichlet(np.full(V, 0.4), size=V)
    x = [int(rng.integers(V))]
    for _ in range(n - 1):
        x.append(int(rng.choice(V, p=T[x[-1]])))
    return np.array(x)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def tiny(rng):
    """200 training tokens using ids 0..5 of V = 7 (so id 6 is never seen), and a test stream using all 7."""
    return markov_stream(rng, 200, 6), rng.integers(0, 7, size=60), 7


# ---------------------------------------------------------------- against the reference
@IGNORE_FALLBACK
@pytest.mark.parametrize("order", [1, 2, 3, 5])
@pytest.mark.parametrize("discount", ["modified", "single", 0.6])
def test_log_probs_equal_reference(tiny, order, discount):
    train, test, V = tiny
    lm = KneserNeyLM(order, discount=discount).fit(train, V)
    ref = ReferenceKN(train, V, order, discount)
    np.testing.assert_allclose(lm.discounts_, [ref.D[n] for n in range(1, order + 1)], rtol=1e-14)
    np.testing.assert_allclose(lm.score(test), ref.score(test), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lm.score(train[:80]), ref.score(train[:80]), rtol=1e-12, atol=1e-12)
    ctx = [6, 1, 2, 3, 0, 5]
    np.testing.assert_allclose(lm.score(test, context=ctx), ref.score(test, context=ctx), rtol=1e-12, atol=1e-12)
    assert lm.n_params_ == sum(len(ref.counts[n]) for n in range(1, order + 1))


@IGNORE_FALLBACK
def test_large_vocabulary_keys_do_not_overflow(tiny):
    """V = 100,000 and order 5: plain base-V packing would need V^5 = 1e25 > 2^63; the hierarchical keys do not."""
    train, test, _ = tiny
    V, spread = 100_000, 14_285  # ids 0..6 mapped to 0..85,710
    lm = KneserNeyLM(5).fit(train * spread, V)
    ref = ReferenceKN(train * spread, V, 5)
    np.testing.assert_allclose(lm.score(test * spread), ref.score(test * spread), rtol=1e-12, atol=1e-12)


def test_modified_discounts_from_count_of_counts(rng):
    """On a Zipfian stream no order falls back (a warning would fail the test): D is the count-of-counts formula."""
    V = 300
    zipf = 1 / np.arange(1, V + 1)
    train = rng.choice(V, size=4000, p=zipf / zipf.sum())
    lm = KneserNeyLM(3).fit(train, V)
    assert lm.count_of_counts_.shape == (3, 4)
    for n, (n1, n2, n3, n4) in enumerate(lm.count_of_counts_, start=1):
        Y = n1 / (n1 + 2 * n2)
        expected = [1 - 2 * Y * n2 / n1, 2 - 3 * Y * n3 / n2, 3 - 4 * Y * n4 / n3]
        np.testing.assert_allclose(lm.discounts_[n - 1], expected, rtol=1e-14)


# ---------------------------------------------------------------- by hand
def test_hand_computed_bigram():
    # stream 0 1 0 2 0 1, V = 3, order 2, D = 0.5 for every count.
    # bigrams (raw): (0,1)=2 (1,0)=1 (0,2)=1 (2,0)=1.
    # unigram continuation counts: 0 follows 1 and 2, and starts the stream -> 3; 1 follows 0 -> 1; 2 follows 0 -> 1.
    # p1(w) = (c1(w) - 0.5) / 5 + γ1 / 3 with γ1 = 0.5 * 3 / 5 = 0.3:  p1 = (0.6, 0.2, 0.2).
    # p2(1 | 0) = (2 - 0.5) / 3 + γ(0) p1(1),  γ(0) = 0.5 * 2 / 3 = 1/3:  = 0.5 + 0.2 / 3 = 17/30.
    lm = KneserNeyLM(2, discount=0.5).fit([0, 1, 0, 2, 0, 1], 3)
    assert lm.log_prob([0], 1) == pytest.approx(math.log(17 / 30), rel=1e-14)
    np.testing.assert_allclose(lm.next_token_probs([0]), [6 / 30, 17 / 30, 7 / 30], rtol=1e-14)
    # p2(· | 1): one bigram (1,0): 0.5 / 1 + 0.5 * p1 = (0.8, 0.1, 0.1).
    np.testing.assert_allclose(lm.next_token_probs([1]), [0.8, 0.1, 0.1], rtol=1e-14)
    np.testing.assert_allclose(lm.next_token_probs([]), [0.6, 0.2, 0.2], rtol=1e-14)
    np.testing.assert_allclose(lm.discounts_, np.full((2, 3), 0.5))
    assert lm.n_params_ == 3 + 4


# ---------------------------------------------------------------- consistency of the three ways in
@IGNORE_FALLBACK
@pytest.mark.parametrize("order", [1, 3, 5])
def test_next_token_probs_is_a_distribution_equal_to_log_prob(tiny, rng, order):
    train, _, V = tiny
    lm = KneserNeyLM(order).fit(train, V)
    contexts = [[], [6], [6, 6, 6, 6, 6, 6, 6]] + [list(rng.integers(0, V, size=k)) for k in range(8) for _ in range(3)]
    contexts += [list(train[i : i + 4]) for i in (0, 50, 196)]  # seen contexts, one at the end of the stream
    for ctx in contexts:
        p = lm.next_token_probs(ctx)
        assert p.shape == (V,) and p.dtype == np.float64
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert (p > 0).all()
        lp = np.array([lm.log_prob(ctx, w) for w in range(V)])
        np.testing.assert_allclose(np.exp(lp), p, rtol=1e-13)
        np.testing.assert_allclose(lm.score(np.arange(V)[:1], context=ctx), np.log(p[:1]), rtol=1e-13)


@IGNORE_FALLBACK
def test_score_equals_log_prob_token_by_token(tiny):
    train, test, V = tiny
    lm = KneserNeyLM(4).fit(train, V)
    ctx = [3, 6]
    lp = lm.score(test, context=ctx)
    full = ctx + test.tolist()
    for i, w in enumerate(test.tolist()):
        assert lp[i] == pytest.approx(lm.log_prob(full[: len(ctx) + i], w), rel=1e-13, abs=1e-15)
    assert lm.score(np.array([], dtype=np.int64)).shape == (0,)


def test_order_one_is_the_discounted_unigram_interpolated_with_uniform(rng):
    train = markov_stream(rng, 400, 9)
    lm = KneserNeyLM(1, discount=0.4).fit(train, 10)  # token 9 never seen
    c = np.bincount(train, minlength=10)
    expected = np.where(c > 0, c - 0.4, 0) / c.sum() + 0.4 * (c > 0).sum() / c.sum() / 10
    np.testing.assert_allclose(lm.next_token_probs([]), expected, rtol=1e-13)
    np.testing.assert_allclose(lm.next_token_probs([1, 2, 9]), expected, rtol=1e-13)  # context is ignored
    np.testing.assert_allclose(lm.score(train[:50]), np.log(expected[train[:50]]), rtol=1e-13)


@IGNORE_FALLBACK
def test_perplexity_is_exp_of_minus_mean_log_prob(tiny):
    train, test, V = tiny
    lm = KneserNeyLM(3).fit(train, V)
    assert lm.perplexity(test) == pytest.approx(math.exp(-lm.score(test).mean()), rel=1e-14)
    assert lm.perplexity(train) < lm.perplexity(test)  # the training stream is better predicted
    with pytest.raises(ValueError, match="ids must be non-empty"):
        lm.perplexity([])


# ---------------------------------------------------------------- warnings, errors, round trip
def test_degenerate_count_of_counts_fall_back_with_a_warning():
    with pytest.warns(DiscountFallbackWarning, match=r"order 2: n1..n4 = \[3, 0, 0, 0\]"):
        lm = KneserNeyLM(2).fit([0, 1, 2, 3], 4)
    np.testing.assert_allclose(lm.discounts_[1], [0.75, 0.75, 0.75])
    assert np.all(lm.next_token_probs([3]) > 0)


@pytest.mark.parametrize(
    "kwargs,ids,V,match",
    [
        ({}, [0, 1, 7, 2, 3, 4], 7, r"ids must lie in \[0, vocab_size=7\), got values in \[0, 7\]"),
        ({}, [0, -1, 2, 3, 4, 5], 7, r"ids must lie in \[0, vocab_size=7\), got values in \[-1, 5\]"),
        ({}, [], 7, "ids must be a non-empty stream of token ids, got 0 tokens"),
        ({}, [0.0, 1.0, 2.0, 3.0, 4.0], 7, "ids must hold integer token ids, got dtype float64"),
        ({}, [[0, 1], [2, 3]], 7, r"ids must be a 1-D sequence of token ids, got shape \(2, 2\)"),
        ({}, [0, 1, 2, 3], 7, "ids must hold at least order=5 tokens to give one 5-gram, got 4"),
        ({"order": 0}, [0, 1, 2], 7, r"order must be an integer in \[1, 10\], got 0"),
        ({"order": 11}, [0, 1, 2], 7, r"order must be an integer in \[1, 10\], got 11"),
        ({"order": 2.0}, [0, 1, 2], 7, r"order must be an integer in \[1, 10\], got 2.0"),
        ({"discount": "kn"}, [0, 1, 2, 3, 4], 7, "discount must be 'modified', 'single' or a float in .*got 'kn'"),
        ({"discount": 1.5}, [0, 1, 2, 3, 4], 7, "discount must be 'modified', 'single' or a float in .*got 1.5"),
        ({"discount": 0.0}, [0, 1, 2, 3, 4], 7, "discount must be 'modified', 'single' or a float in .*got 0.0"),
        ({}, [0, 1, 2, 3, 4], 0, "vocab_size must be an integer >= 1, got 0"),
    ],
)
def test_fit_rejects_bad_input(kwargs, ids, V, match):
    with pytest.raises(ValueError, match=match):
        KneserNeyLM(**kwargs).fit(ids, V)


@IGNORE_FALLBACK
def test_scoring_rejects_bad_input(tiny):
    train, _, V = tiny
    lm = KneserNeyLM(3).fit(train, V)
    with pytest.raises(ValueError, match=r"context must lie in \[0, vocab_size=7\), got values in \[0, 9\]"):
        lm.next_token_probs([0, 9])
    with pytest.raises(ValueError, match=r"token must lie in \[0, vocab_size=7\), got 7"):
        lm.log_prob([0], 7)
    with pytest.raises(ValueError, match=r"token must be an integer token id, got 1.0"):
        lm.log_prob([0], 1.0)
    with pytest.raises(ValueError, match="ids must hold integer token ids, got dtype float64"):
        lm.score(np.array([0.5, 1.0]))
    with pytest.raises(RuntimeError, match="not fitted"):
        KneserNeyLM().score([0, 1])


@IGNORE_FALLBACK
def test_to_dict_round_trip_through_npz(tiny, tmp_path):
    train, test, V = tiny
    lm = KneserNeyLM(4, discount="single").fit(train, V)
    np.savez(tmp_path / "kn.npz", **lm.to_dict())
    with np.load(tmp_path / "kn.npz") as f:
        back = KneserNeyLM.from_dict(dict(f))
    assert (back.order_, back.vocab_size_, back.n_params_, back.discount) == (4, V, lm.n_params_, "single")
    np.testing.assert_array_equal(back.score(test), lm.score(test))
    np.testing.assert_array_equal(back.next_token_probs([1, 2, 3]), lm.next_token_probs([1, 2, 3]))
