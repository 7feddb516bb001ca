"""Run a function on 2 gloo ranks in spawned processes, for the distributed-equality tests of every model family."""

from __future__ import annotations

import os
import socket
from typing import Any, Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable, args: tuple, out: Any) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        out[rank] = fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, *args: Any, world: int = 2) -> list:
    """``[fn(rank, world, *args) for each rank]``, each rank in its own process with a gloo group initialized.

    ``fn`` must be a module-level function (it is pickled) and return picklable values (tensors, arrays, floats).
    """
    import torch.multiprocessing as mp

    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, free_port(), fn, args, out), nprocs=world, join=True)
    return [out[r] for r in range(world)]
