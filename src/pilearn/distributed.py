"""Data parallelism for closed-form fits: one all-reduce of the statistics, the same solution on every rank.

A closed-form fit is a sum over rows (Gram, cross-products, counts) followed by one solve, so data parallelism is
exact: each rank streams its shard, the per-rank sums are added with one ``all_reduce``, and every rank solves the
identical system. Every fit in pilearn that takes ``distributed=True`` uses the helpers below; they work with any
initialized ``torch.distributed`` process group (gloo on CPU, NCCL on GPU), launched with ``torchrun``::

    # torchrun --nnodes=2 --nproc_per_node=8 --rdzv_endpoint=HOST:29500 fit.py
    import torch.distributed as dist
    dist.init_process_group("gloo")          # "nccl" for CUDA statistics
    model = PILClassifier(distributed=True, random_state=0).fit(X_shard, y_shard)

Two conventions, each stated in the fit's docstring:

- *user shards*: each rank passes its own rows (estimators, adapters, heads);
- *library shards*: every rank passes the same data (a memory-mapped array costs nothing to share) and reads only the
  batches ``b`` with ``b % world_size == rank`` (:func:`owns_batch`); used where per-batch random draws (flow and
  diffusion noise) must follow the global batch index so that the distributed fit equals the one-process fit.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

__all__ = ["is_active", "check_distributed", "rank_and_world", "owns_batch", "collective_device", "all_reduce_sum_",
           "all_reduce_stats", "all_reduce_floats", "all_agree", "union_labels"]


def is_active() -> bool:
    """True when ``torch.distributed`` is available and a default process group is initialized."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def check_distributed(flag: Any, name: str = "distributed") -> bool:
    """Validate a ``distributed`` argument: a bool, and ``True`` only with an initialized process group."""
    if not isinstance(flag, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {flag!r}")
    if flag and not is_active():
        raise RuntimeError(f"{name}=True needs torch.distributed to be initialized "
                           "(dist.init_process_group('gloo') on CPU, 'nccl' on GPU, e.g. under torchrun)")
    return bool(flag)


def rank_and_world(distributed: bool) -> tuple[int, int]:
    """(rank, world size) of the default group, or (0, 1) when ``distributed`` is False."""
    if not distributed:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def owns_batch(batch_index: int, distributed: bool) -> bool:
    """Library shards: whether this rank processes global batch ``batch_index`` (round robin over the ranks)."""
    rank, world = rank_and_world(distributed)
    return batch_index % world == rank


def collective_device(t: torch.Tensor) -> torch.device:
    """Where a collective on ``t`` can run: its own device, or the current CUDA device when ``t`` is on the CPU and
    the default group has no CPU backend (plain ``"nccl"``)."""
    import torch.distributed as dist

    if t.device.type == "cpu" and "gloo" not in str(dist.get_backend()) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_sum_(t: torch.Tensor, distributed: bool = True) -> torch.Tensor:
    """Sum ``t`` over the ranks in place (a no-op when not ``distributed``); returns ``t``.

    Works with any backend: a CPU tensor under a NCCL-only group is reduced through a copy on the current CUDA
    device (the statistics and small sums pilearn keeps on the CPU), so ``init_process_group("nccl")`` suffices.
    """
    if distributed:
        import torch.distributed as dist

        dev = collective_device(t)
        if dev == t.device:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        else:
            staged = t.to(dev)
            dist.all_reduce(staged, op=dist.ReduceOp.SUM)
            t.copy_(staged)
    return t


def all_reduce_stats(*stats: Any, distributed: bool = True) -> None:
    """Sum each :class:`~pilearn.solvers.RidgeStats` over the ranks in place (one collective each)."""
    if distributed:
        for st in stats:
            st.all_reduce()


def all_reduce_floats(values: Iterable[float], distributed: bool = True) -> list[float]:
    """Sum a list of Python floats over the ranks (float64); the list itself when not ``distributed``."""
    values = [float(v) for v in values]
    if not distributed or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    all_reduce_sum_(t)
    return t.tolist()


def all_agree(value: bool, name: str, distributed: bool = True) -> bool:
    """Raise the same ValueError on every rank unless every rank passed the same ``value`` (a flag that decides
    which collectives follow; ranks that disagree would otherwise wait on each other forever)."""
    if not distributed:
        return value
    t = torch.tensor([float(bool(value)), 1.0], dtype=torch.float64)
    all_reduce_sum_(t)
    if t[0] not in (0.0, t[1]):
        raise ValueError(f"{name} must be the same on every rank of a distributed fit; {int(t[0])} of {int(t[1])} "
                         "ranks passed it")
    return value


def union_labels(labels: np.ndarray, distributed: bool = True) -> np.ndarray:
    """The sorted union of every rank's labels (``np.unique`` of the concatenation); every rank gets the same."""
    labels = np.unique(np.asarray(labels))
    if not distributed:
        return labels
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, labels)
    return np.unique(np.concatenate([np.asarray(g) for g in gathered]))
