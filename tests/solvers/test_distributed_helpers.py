"""pilearn.distributed: the shared reductions, and a flag that differs between ranks is one clear error everywhere."""

from __future__ import annotations

import numpy as np
import torch

from _dist import run_ranks
from pilearn.distributed import all_agree, all_reduce_floats, all_reduce_sum_, union_labels


def _helpers(rank: int, world: int) -> dict:
    out = {"floats": all_reduce_floats([1.0, float(rank)]),
           "tensor": all_reduce_sum_(torch.tensor([rank + 1.0], dtype=torch.float64)).tolist(),
           "labels": union_labels(np.array([rank, 7])).tolist(), "agree": all_agree(True, "flag")}
    try:
        all_agree(rank == 0, "valid (given or None)")
        out["disagree"] = None
    except ValueError as err:
        out["disagree"] = str(err)
    from pilearn.adapters import ClosedFormHead

    g = torch.Generator().manual_seed(rank)
    F, y = torch.randn(20, 4, generator=g, dtype=torch.float64), torch.arange(20) % 2
    try:
        ClosedFormHead(distributed=True).fit(F, y, valid=(F, y) if rank == 0 else None)
        out["head"] = None
    except ValueError as err:
        out["head"] = str(err)
    return out


def test_reductions_and_disagreeing_flags_on_two_ranks():
    for out in run_ranks(_helpers):
        assert out["floats"] == [2.0, 1.0] and out["tensor"] == [3.0] and out["labels"] == [0, 1, 7]
        assert out["agree"] is True
        assert "must be the same on every rank" in out["disagree"] and "1 of 2 ranks" in out["disagree"]
        assert "valid (given or None)" in out["head"]


def test_helpers_are_identities_when_not_distributed():
    assert all_reduce_floats([1.5], distributed=False) == [1.5]
    t = torch.ones(2)
    assert all_reduce_sum_(t, distributed=False) is t
    assert all_agree(False, "x", distributed=False) is False
    assert union_labels(np.array([3, 1, 3]), distributed=False).tolist() == [1, 3]
