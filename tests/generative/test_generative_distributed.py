"""PILFlowMatching / PILDiffusion with ``distributed=True`` (library shards): 2 gloo ranks equal one process.

Every rank passes the same data and owns every other batch of each head's draws; the draws must still be those of
one process, so the 2-rank model equals the one-process model up to the order of the sums. One spawn fits every
case. The one-process numbers are also pinned to values computed before data parallelism existed: sharding must
not move a single draw.
"""

import numpy as np
import pytest
import torch
from _dist import run_ranks

from pilearn.generative import PILDiffusion, PILFlowMatching

CASES = {
    # 50 points, batch 20: 3 batches per draw × 3 draws = 9 batches, an odd number (rank 0 owns 5, rank 1 owns 4)
    "flow": (PILFlowMatching, dict(width=8, time_buckets=2, draws=3, batch_size=20), False),
    # two layers, σ > 0 (a third random tensor per draw) and per-head hold-out λ (train and hold-out reduced)
    "flow_holdout": (PILFlowMatching, dict(width=8, time_buckets=2, draws=2, batch_size=8, sigma=0.1, num_layers=2,
                                           lam="holdout"), False),
    "flow_separate": (PILFlowMatching, dict(width=8, time_buckets=2, draws=2, batch_size=8,
                                            conditioning="separate"), True),
    "diffusion": (PILDiffusion, dict(num_train_timesteps=100, width=8, time_buckets=2, draws=3, batch_size=20), False),
    "diffusion_holdout": (PILDiffusion, dict(num_train_timesteps=100, width=8, time_buckets=2, draws=2, batch_size=8,
                                             lam="holdout", conditioning="features"), True),
}


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 3, generator=g, dtype=torch.float64)
    y = np.arange(50) % 2
    q = torch.randn(6, 3, generator=g, dtype=torch.float64)
    return X, y, q


def _answer(model, q: torch.Tensor, conditional: bool) -> torch.Tensor:
    """Velocities or noise predictions at fixed query points."""
    yq = np.array([0, 1, 0, 1, 1, 0]) if conditional else None
    if isinstance(model, PILFlowMatching):
        return model.velocity(q, torch.linspace(0.05, 0.95, 6, dtype=torch.float64), yq)
    return model(q, torch.tensor([3, 20, 40, 60, 80, 99]), yq)


def _fit(name: str, distributed: bool):
    cls, kw, conditional = CASES[name]
    X, y, _ = _data()
    return cls(distributed=distributed, dtype="float64", random_state=1, **kw).fit(X, y if conditional else None)


def _fit_all(rank: int, world: int) -> dict:
    _, _, q = _data()
    out = {}
    for name, (_, _, conditional) in CASES.items():
        m = _fit(name, True)
        out[name] = (_answer(m, q, conditional), m.n_draws_, {k: h.lam for k, h in m.heads_.items()})
    X, _, _ = _data()
    try:  # library shards: a rank with other data is an error on every rank (not a silently wrong model)
        PILFlowMatching(width=4, time_buckets=1, draws=1, distributed=True).fit(X + rank)
        out["mismatch"] = None
    except ValueError as err:
        out["mismatch"] = str(err)
    try:  # the same rows in another order are other data too: the draws would follow other rows
        PILFlowMatching(width=4, time_buckets=1, draws=1, distributed=True).fit(X if rank == 0 else X.flip(0))
        out["reordered"] = None
    except ValueError as err:
        out["reordered"] = str(err)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_ranks(_fit_all)


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(ranks, name):
    _, _, q = _data()
    conditional = CASES[name][2]
    ref = _fit(name, False)
    want = _answer(ref, q, conditional)
    for rank in (0, 1):
        got, n_draws, lams = ranks[rank][name]
        assert n_draws == ref.n_draws_
        assert lams.keys() == ref.heads_.keys()
        for key, lam in lams.items():
            assert lam == pytest.approx(ref.heads_[key].lam, rel=1e-10)
        err = float((got - want).norm() / want.norm())
        assert err <= 1e-10, f"rank {rank}: relative error {err:.2e}"


def test_every_rank_must_pass_the_same_data(ranks):
    for rank in (0, 1):
        assert ranks[rank]["mismatch"] is not None and "every rank must pass the same X" in ranks[rank]["mismatch"]
        assert ranks[rank]["reordered"] is not None and "in the same order" in ranks[rank]["reordered"]


# the first query's answer of one-process fits computed before data parallelism was added (commit 4bcadda)
_PINNED = {
    "flow": (PILFlowMatching, dict(width=8, time_buckets=2, draws=3, batch_size=16, random_state=1), False,
             [1.9627101747212414, 0.7974552516587594, 0.17938148812044405], 300),
    "flow_holdout": (PILFlowMatching, dict(width=8, time_buckets=2, draws=2, batch_size=8, sigma=0.1, num_layers=2,
                                           lam="holdout", random_state=3), False,
                     [2.2715878141876553, 0.7718170564394499, -0.054462841873104906], 400),
    "flow_separate": (PILFlowMatching, dict(width=8, time_buckets=2, draws=2, batch_size=8, random_state=2), True,
                      [0.6213335168801614, -0.04872938767843471, 0.6787998986221351], 200),
    "diffusion": (PILDiffusion, dict(num_train_timesteps=100, width=8, time_buckets=2, draws=3, batch_size=16,
                                     random_state=5), False,
                  [-1.5152387859418628, -0.34971007494994205, -0.01836892413549952], 300),
    "diffusion_holdout": (PILDiffusion, dict(num_train_timesteps=100, width=8, time_buckets=2, draws=2, batch_size=8,
                                             lam="holdout", conditioning="features", random_state=6), True,
                          [-1.282076155224478, -0.354991746005969, 0.40745368392838527], 200),
}


@pytest.mark.parametrize("name", list(_PINNED))
def test_one_process_fit_is_unchanged(name):
    cls, kw, conditional, first, n_draws = _PINNED[name]
    X, y, q = _data()
    model = cls(dtype="float64", **kw).fit(X, y if conditional else None)
    assert model.n_draws_ == n_draws
    np.testing.assert_allclose(_answer(model, q, conditional)[0].numpy(), first, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------- errors (no spawn)
@pytest.mark.parametrize("cls", [PILFlowMatching, PILDiffusion])
def test_distributed_without_process_group_is_a_clear_error(cls):
    X, _, _ = _data()
    with pytest.raises(RuntimeError, match="torch.distributed"):
        cls(width=4, distributed=True).fit(X)


@pytest.mark.parametrize("cls", [PILFlowMatching, PILDiffusion])
def test_distributed_must_be_a_bool(cls):
    X, _, _ = _data()
    with pytest.raises(ValueError, match="distributed must be a bool, got 'yes'"):
        cls(width=4, distributed="yes").fit(X)


@pytest.mark.parametrize("cls", [PILFlowMatching, PILDiffusion])
def test_distributed_needs_random_state(cls):
    X, _, _ = _data()
    with pytest.raises(ValueError, match="random_state must be an int"):
        cls(width=4, distributed=True, random_state=None).fit(X)


@pytest.mark.parametrize("cls", [PILFlowMatching, PILDiffusion])
def test_distributed_is_a_parameter_and_survives_save(cls, tmp_path):
    X, _, _ = _data()
    model = cls(width=4, time_buckets=1, draws=1, random_state=0).fit(X)
    assert model.get_params()["distributed"] is False
    model.save(tmp_path / "m.safetensors")
    assert cls.load(tmp_path / "m.safetensors").get_params() == model.get_params()
