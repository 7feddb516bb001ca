"""PIL-LM with ``PILFitConfig(distributed=True)`` (user shards): 2 gloo ranks equal one process on their segments.

Rank r passes its own training and held-out segments; the oracle is the one-process fit on the list of both ranks'
segments (rank order). One spawn fits both configurations (a spawn costs seconds). The embeddings are
bit-identical (integer counts); the float32 weights agree to within one float32 ulp of each tensor's largest entry
(measured: 1.3e-9 relative), the log-probabilities to 1e-6 (measured: identical), the calibration choice and
every λ exactly.
"""

import numpy as np
import pytest
import torch
from _dist import run_ranks

from pilearn.lm import LMConfig, PILFitConfig, PILLM, fit_pil
from pilearn.lm._pil import _pair_counts

V, T = 40, 16
CONFIGS = {  # name: (fit config, whether valid segments are given; else each training segment's tail is held out)
    "ridge": (dict(lam=1e-3), True),
    "gcv-lda": (dict(lam="gcv", head="lda"), False),
}


def _stream(n: int, seed: int) -> np.ndarray:
    """A noisy Markov chain over V symbols (the structure the tiny model can learn)."""
    rng = np.random.default_rng(seed)
    nxt = np.random.default_rng(0).permutation(V)
    ids = np.empty(n, dtype=np.int64)
    ids[0] = rng.integers(0, V)
    for t in range(1, n):
        ids[t] = nxt[ids[t - 1]] if rng.random() < 0.7 else rng.integers(0, V)
    return ids


def _model() -> PILLM:
    return PILLM(LMConfig(vocab_size=V, block_size=T, n_layer=2, n_head=4, n_embd=64, expansion=2, tie_weights=False))


# rank 0 holds two training segments, rank 1 one (unequal shards, and a segment boundary inside a rank)
TRAIN = [[_stream(900, 1), _stream(700, 2)], [_stream(1300, 3)]]
VALID = [[_stream(300, 4)], [_stream(250, 5)]]
PROBE = torch.from_numpy(_stream(4 * T, 6)).view(4, T)


def _fit(train, valid, name: str, distributed: bool):
    kw, with_valid = CONFIGS[name]
    model = _model()
    report = fit_pil(model, train, valid_ids=valid if with_valid else None,
                     config=PILFitConfig(**kw, distributed=distributed))
    with torch.no_grad():
        lp = model(PROBE)
    return model.state_dict(), lp, report


def _rank_fits(rank: int, world: int) -> dict:
    out = {}
    for name in CONFIGS:
        state, lp, report = _fit(TRAIN[rank], VALID[rank], name, True)
        out[name] = (state, lp, report.head["choice"], [layer["lam_relative"] for layer in report.layers])
    return out


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(_rank_fits)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_rank_fit_equals_one_process_fit_on_all_segments(ranks, name):
    state, lp, report = _fit(TRAIN[0] + TRAIN[1], VALID[0] + VALID[1], name, False)
    for rank in range(2):
        r_state, r_lp, r_choice, r_lams = ranks[rank][name]
        assert r_choice == report.head["choice"]
        assert r_lams == [layer["lam_relative"] for layer in report.layers]
        for key in ("wte.weight", "wpe.weight"):  # from integer co-occurrence counts: exact
            assert torch.equal(r_state[key], state[key]), key
        for key, value in state.items():  # float32 weights: within one ulp of the tensor's largest entry
            bound = 1.2e-7 * float(value.abs().max()) if value.is_floating_point() else 0.0
            torch.testing.assert_close(r_state[key], value, rtol=0, atol=bound, msg=key)
        torch.testing.assert_close(r_lp, lp, rtol=1e-6, atol=1e-6)
    for key in state:  # and the ranks agree with each other exactly
        assert torch.equal(ranks[0][name][0][key], ranks[1][name][0][key]), key


def test_segments_are_counted_apart():
    a, b = _stream(50, 7), _stream(40, 8)
    apart = _pair_counts([a, b], V, 1).toarray()
    np.testing.assert_array_equal(apart, _pair_counts([a], V, 1).toarray() + _pair_counts([b], V, 1).toarray())
    joined = _pair_counts([np.concatenate([a, b])], V, 1).toarray()
    straddling = np.zeros((V, V))
    for s, t in ((a[-2], b[0]), (a[-1], b[1])):  # the two offset-1 pairs that straddle the boundary
        straddling[s, t] += 1
    np.testing.assert_array_equal(joined - apart, straddling)


def test_distributed_needs_a_process_group_and_a_bool():
    with pytest.raises(RuntimeError, match="torch.distributed"):
        fit_pil(_model(), _stream(400, 0), config=PILFitConfig(distributed=True))
    with pytest.raises(ValueError, match="distributed must be a bool"):
        PILFitConfig(distributed="yes")
