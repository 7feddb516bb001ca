"""Closed-form reparameterized fits with ``distributed=True`` (user shards): 2 gloo ranks equal one process.

Each rank passes its own rows (unequal shards, and one case where rank 1 holds none); the oracle is the one-process
fit on the concatenated rows. Everything is float64: the coefficients agree to 1e-10. One spawn runs every fit.
"""

import pytest
import torch
from torch import nn

from _dist import run_ranks
from pilearn.reparam import PRANC, NOLALinear, fit_linear_coefficients, fit_nola_layer, solve_pranc_head

F64 = torch.float64
SPLIT = 30  # rank 0 holds rows [:SPLIT], rank 1 the rest


def _data():
    g = torch.Generator().manual_seed(0)
    k, d_out, d_in, n = 6, 3, 4, 47
    shapes = {"W": (k, d_out, d_in), "b": (k, d_out), "W0": (d_out, d_in), "b0": (d_out,), "X": (n, d_in),
              "Y": (n, d_out), "Xh": (n, 5), "Xn": (n, 6), "Rn": (n, 4)}
    data = {name: torch.randn(*shape, generator=g, dtype=F64) for name, shape in shapes.items()}
    return data | {"Yh": nn.functional.one_hot(torch.arange(n) % 3, 3).to(F64)}


def _fits(rows: slice, all_rows_first: bool, distributed: bool) -> dict:
    """Every fit on ``rows``; the case "rank 1 empty" takes every row on the first rank and none on the other."""
    d = _data()
    out = {"linear": fit_linear_coefficients(d["W"], d["X"][rows], d["Y"][rows], 1e-3, bias_basis=d["b"],
                                             weight0=d["W0"], bias0=d["b0"], batch_size=4, distributed=distributed)}
    every = slice(None) if all_rows_first else slice(0)
    out["linear, rank 1 empty"] = fit_linear_coefficients(d["W"], d["X"][every], d["Y"][every], 1e-3,
                                                          distributed=distributed)
    torch.manual_seed(0)  # the wrapped layers' own initial values come from the global RNG
    head = PRANC(nn.Linear(5, 3), n_basis=12, seed=4).double()
    out["pranc"] = solve_pranc_head(head, d["Xh"][rows], d["Yh"][rows], 0.1, distributed=distributed).detach()
    layer = NOLALinear(nn.Linear(6, 4).double(), rank=2, n_basis_a=5, n_basis_b=9, alpha=3.0, seed=1)
    out["nola"] = fit_nola_layer(layer, d["Xn"][rows], d["Rn"][rows], 0.01, distributed=distributed).detach()
    return out


def _rank_fits(rank: int, world: int) -> dict:
    return _fits(slice(0, SPLIT) if rank == 0 else slice(SPLIT, None), rank == 0, True)


@pytest.fixture(scope="module")
def fits():
    return _fits(slice(None), True, False), run_ranks(_rank_fits), _fits(slice(0, SPLIT), True, False)


@pytest.mark.parametrize("name", ["linear", "linear, rank 1 empty", "pranc", "nola"])
def test_two_rank_fit_equals_one_process_fit(fits, name):
    one, ranks, rank0_alone = fits
    for rank in range(2):
        torch.testing.assert_close(ranks[rank][name], one[name], rtol=1e-10, atol=1e-12)
    if name != "linear, rank 1 empty":  # rank 0's shard alone gives another solution: the reduction matters
        assert not torch.allclose(rank0_alone[name], one[name], rtol=1e-3, atol=0)


def test_distributed_needs_a_process_group_and_a_bool():
    d = _data()
    head = PRANC(nn.Linear(5, 3), n_basis=4, seed=0).double()
    layer = NOLALinear(nn.Linear(6, 4).double(), rank=2, n_basis_a=3, n_basis_b=3, alpha=2.0, seed=0)
    for fit in (lambda flag: fit_linear_coefficients(d["W"], d["X"], d["Y"], 0.1, distributed=flag),
                lambda flag: solve_pranc_head(head, d["Xh"], d["Yh"], 0.1, distributed=flag),
                lambda flag: fit_nola_layer(layer, d["Xn"], d["Rn"], 0.1, distributed=flag)):
        with pytest.raises(RuntimeError, match="torch.distributed"):
            fit(True)
        with pytest.raises(ValueError, match="distributed must be a bool"):
            fit(1)
