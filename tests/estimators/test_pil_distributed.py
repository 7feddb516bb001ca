"""PILClassifier / PILRegressor with ``distributed=True`` (user shards): 2 gloo ranks equal one process.

One spawn of 2 ranks fits every case (a spawn costs seconds); each test then compares both ranks with its oracle:
the one-process fit on the concatenated rows, or for ``lam='holdout'`` the hold-out scan written out over the
union of each rank's own split.
"""

import numpy as np
import pytest
import torch
from _dist import free_port, run_ranks

from pilearn import PILClassifier, PILRegressor
from pilearn.solvers import DEFAULT_HOLDOUT_GRID, RidgeStats, holdout_scan

N, D, SPLIT = 160, 5, 90  # rank 0 gets rows [:SPLIT], rank 1 the rest (unequal shards)
COMMON = dict(n_hidden=12, dtype="float64", batch_size=32, random_state=3)


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D)) * 2.0 + 0.5
    y = (X[:, 0] > 0.5).astype(int) + (X[:, 1] > 1.5)  # classes 0, 1, 2
    y[SPLIT:][y[SPLIT:] == 2] = 1  # class 2 only in rank 0's shard: the classes must be the union
    Y = np.stack([np.sin(X[:, 0]) + X[:, 1] ** 2, X[:, 2] * X[:, 3]], 1)
    w = rng.uniform(0.5, 2.0, N)
    Xq = rng.standard_normal((7, D))
    return X, y, Y, w, Xq


def _shard(rank: int, *arrays):
    sl = slice(0, SPLIT) if rank == 0 else slice(SPLIT, N)
    return [a[sl] for a in arrays]


def _state(m, Xq) -> dict:
    out = {"coef": m.coef_, "intercept": m.intercept_, "lam": m.lam_, "input_scale": m.input_scale_,
           "pred": m.decision_function(Xq) if hasattr(m, "classes_") else m.predict(Xq)}
    if hasattr(m, "classes_"):
        out["classes"] = m.classes_
    if hasattr(m, "lam_relative_"):
        out["lam_relative"] = m.lam_relative_
    return out


def _fit_all(rank: int, world: int) -> dict:
    """Every distributed case on this rank's shard."""
    X, y, Y, w, Xq = _data()
    Xs, ys, Ys, ws = _shard(rank, X, y, Y, w)
    out = {
        "clf_gcv": _state(PILClassifier(distributed=True, **COMMON).fit(Xs, ys, sample_weight=ws), Xq),
        "reg_gcv": _state(PILRegressor(distributed=True, **COMMON).fit(Xs, Ys), Xq),
        "reg_holdout": _state(PILRegressor(distributed=True, lam="holdout", validation_fraction=0.25,
                                           **COMMON).fit(Xs, Ys, sample_weight=ws), Xq),
    }
    # partial_fit: two collective calls per rank, then forget a few rows of each shard (a collective too)
    reg = PILRegressor(distributed=True, input_scale=1.0, **COMMON)
    half = len(Xs) // 2
    reg.partial_fit(Xs[:half], Ys[:half]).partial_fit(Xs[half:], Ys[half:])
    out["reg_partial"] = _state(reg, Xq)
    out["reg_forget"] = _state(reg.forget(Xs[:5], Ys[:5]), Xq)
    clf = PILClassifier(distributed=True, input_scale=1.0, lam=1e-2, **COMMON)
    clf.partial_fit(Xs[:half], ys[:half], classes=np.unique(ys)).partial_fit(Xs[half:], ys[half:])
    out["clf_partial"] = _state(clf, Xq)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_ranks(_fit_all)


def _rel(got, want) -> float:
    """Relative Frobenius error of ``got`` against ``want`` (same shape required)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def _worst(ranks, case: str, ref) -> float:
    """The largest relative error, over both ranks and every fitted quantity, of ``case`` against the one-process
    ``ref`` (class lists must be equal)."""
    _, _, _, _, Xq = _data()
    want = _state(ref, Xq)
    worst = 0.0
    for rank in (0, 1):
        got = ranks[rank][case]
        assert got.keys() >= {"coef", "pred"}
        for key, value in want.items():
            if key == "classes":
                np.testing.assert_array_equal(got[key], value)
            else:
                worst = max(worst, _rel(got[key], value))
    return worst


def test_classifier_gcv_equals_one_process(ranks):
    X, y, _, w, _ = _data()
    ref = PILClassifier(**COMMON).fit(X, y, sample_weight=w)
    assert ref.classes_.tolist() == [0, 1, 2]
    assert _worst(ranks, "clf_gcv", ref) <= 1e-10


def test_regressor_gcv_equals_one_process(ranks):
    X, _, Y, _, _ = _data()
    assert _worst(ranks, "reg_gcv", PILRegressor(**COMMON).fit(X, Y)) <= 1e-10


def test_regressor_holdout_reduces_each_ranks_own_split(ranks):
    """Oracle: the hold-out scan written out over the union of each shard's seeded split, then a fixed-λ fit."""
    X, _, Y, w, _ = _data()
    vf = 0.25
    ref = PILRegressor(**COMMON).fit(X, Y, sample_weight=w)  # the same features (input_scale from every row)
    hold = np.concatenate([np.random.default_rng(COMMON["random_state"]).random(n) < vf for n in (SPLIT, N - SPLIT)])
    H, T, W = (torch.as_tensor(a) for a in (ref.hidden_features(X), Y, w))
    kept, held = RidgeStats(12, 2, dual=False), RidgeStats(12, 2, dual=False)
    kept.update(H[~hold], T[~hold], W[~hold])
    held.update(H[hold], T[hold], W[hold])
    rel, _, _ = holdout_scan(kept, held, DEFAULT_HOLDOUT_GRID)
    assert ranks[0]["reg_holdout"]["lam_relative"] == ranks[1]["reg_holdout"]["lam_relative"] == rel
    final = PILRegressor(**{**COMMON, "lam": float(ranks[0]["reg_holdout"]["lam"])}).fit(X, Y, sample_weight=w)
    _, _, _, _, Xq = _data()
    for rank in (0, 1):
        assert _rel(ranks[rank]["reg_holdout"]["coef"], final.coef_) <= 1e-10
        assert _rel(ranks[rank]["reg_holdout"]["pred"], final.predict(Xq)) <= 1e-10


def test_partial_fit_and_forget_are_collectives(ranks):
    X, y, Y, _, _ = _data()
    assert _worst(ranks, "reg_partial", PILRegressor(input_scale=1.0, **COMMON).fit(X, Y)) <= 1e-10
    gone = np.r_[0:5, SPLIT:SPLIT + 5]  # the first five rows of each shard
    keep = np.setdiff1d(np.arange(N), gone)
    assert _worst(ranks, "reg_forget", PILRegressor(input_scale=1.0, **COMMON).fit(X[keep], Y[keep])) <= 1e-10
    assert _worst(ranks, "clf_partial", PILClassifier(input_scale=1.0, lam=1e-2, **COMMON).fit(X, y)) <= 1e-10


# ---------------------------------------------------------------------- errors (no spawn)
@pytest.fixture
def world_of_one():
    """A one-rank gloo group in this process (destroyed after)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("cls", [PILClassifier, PILRegressor])
def test_distributed_without_process_group_is_a_clear_error(cls):
    X, y, _, _, _ = _data()
    with pytest.raises(RuntimeError, match="torch.distributed"):
        cls(distributed=True, **COMMON).fit(X, y)


@pytest.mark.parametrize("cls", [PILClassifier, PILRegressor])
def test_distributed_must_be_a_bool(cls):
    X, y, _, _, _ = _data()
    with pytest.raises(ValueError, match="distributed must be a bool, got 'yes'"):
        cls(distributed="yes", **COMMON).fit(X, y)


@pytest.mark.parametrize("cls", [PILClassifier, PILRegressor])
def test_distributed_needs_random_state(cls, world_of_one):
    X, y, _, _, _ = _data()
    with pytest.raises(ValueError, match="distributed=True needs random_state"):
        cls(distributed=True, **{**COMMON, "random_state": None}).fit(X, y)


def test_one_rank_group_equals_plain_fit(world_of_one):
    """The collective code path in-process: a world of one gives the plain fit."""
    X, y, _, w, Xq = _data()
    for kw in ({}, {"lam": "holdout"}):
        got = PILClassifier(distributed=True, **COMMON, **kw).fit(X, y, sample_weight=w)
        want = PILClassifier(**COMMON, **kw).fit(X, y, sample_weight=w)
        assert _rel(got.decision_function(Xq), want.decision_function(Xq)) <= 1e-10


def test_distributed_is_a_parameter():
    from sklearn.base import clone

    assert PILClassifier().get_params()["distributed"] is False
    assert clone(PILRegressor(distributed=True)).distributed is True
