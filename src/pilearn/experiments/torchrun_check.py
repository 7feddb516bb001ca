"""A data-parallel fit launched by ``torchrun``, checked against the one-process fit on the same data.

Run (one node, 2 CPU processes; on several nodes add ``--nnodes``, ``--node_rank`` and ``--rdzv_endpoint``)::

    torchrun --nproc_per_node=2 -m pilearn.experiments.torchrun_check --out docs/results/torchrun-cpu2

Every rank initializes the default process group from the environment torchrun sets (gloo on CPU, NCCL for
``--device cuda``) and fits, in float64:

* ``PILClassifier`` on MNIST — *user shards*: rank r passes training rows r, r + world, r + 2·world, …;
* ``PILFlowMatching`` on MNIST images — *library shards*: every rank passes the same images, each processes every
  world-th batch of draws.

Rank 0 then fits both models again in one process on all the rows and writes ``results.json``: the relative
difference of the solved outputs (classifier decision values, flow velocities at fixed query points) between the
distributed and the one-process fit, and the wall-clock of each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _data(n_train: int, n_flow: int) -> dict:
    from ..data import load_mnist

    X, y = load_mnist("train")
    Xt, _ = load_mnist("test")
    X = X.reshape(len(X), -1).astype(np.float64)
    Xt = Xt.reshape(len(Xt), -1).astype(np.float64)
    g = torch.Generator().manual_seed(0)
    return {"X": X[:n_train], "y": y[:n_train], "Xq": Xt[:500], "F": 2 * X[:n_flow] - 1,
            "xq": torch.randn(200, X.shape[1], generator=g, dtype=torch.float64),
            "tq": torch.rand(200, generator=g, dtype=torch.float64)}


def _fit(d: dict, distributed: bool, rank: int, world: int, args: argparse.Namespace) -> dict:
    from ..estimators import PILClassifier
    from ..generative import PILFlowMatching

    out = {}
    t = time.perf_counter()
    clf = PILClassifier(n_hidden=args.n_hidden, dtype="float64", lam="auto", distributed=distributed,
                        device=args.device, random_state=0)
    clf.fit(d["X"][rank::world], d["y"][rank::world])
    out["classifier_seconds"] = time.perf_counter() - t
    out["decision"] = clf.decision_function(d["Xq"])
    t = time.perf_counter()
    flow = PILFlowMatching(width=args.flow_width, dtype="float64", distributed=distributed, device=args.device,
                           random_state=0, batch_size=512)
    flow.fit(d["F"])
    out["flow_seconds"] = time.perf_counter() - t
    out["velocity"] = flow.velocity(d["xq"], d["tq"]).cpu().numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--n-hidden", type=int, default=2_048)
    p.add_argument("--n-flow", type=int, default=10_000)
    p.add_argument("--flow-width", type=int, default=1_024)
    args = p.parse_args(argv)
    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.device.startswith("cuda"):
        torch.cuda.set_device(int(args.device.split(":")[1]) if ":" in args.device else rank % torch.cuda.device_count())
    d = _data(args.n_train, args.n_flow)
    t = time.perf_counter()
    got = _fit(d, True, rank, world, args)
    dist_seconds = time.perf_counter() - t
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {k: v for k, v in got.items()})
    dist.destroy_process_group()
    if rank != 0:
        return 0
    t = time.perf_counter()
    ref = _fit(d, False, 0, 1, args)
    ref_seconds = time.perf_counter() - t
    from ._results import environment, write_results

    results = {
        "suite": "torchrun-check",
        "command": f"torchrun --nproc_per_node={world} -m pilearn.experiments.torchrun_check "
                   + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "environment": environment(args.device), "world_size": world, "backend": backend,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "classifier": {"n_train": args.n_train, "n_hidden": args.n_hidden,
                       "rel_diff_per_rank": [_rel(g["decision"], ref["decision"]) for g in gathered],
                       "seconds_per_rank": [g["classifier_seconds"] for g in gathered],
                       "seconds_one_process": ref["classifier_seconds"]},
        "flow": {"n_images": args.n_flow, "width": args.flow_width,
                 "rel_diff_per_rank": [_rel(g["velocity"], ref["velocity"]) for g in gathered],
                 "seconds_per_rank": [g["flow_seconds"] for g in gathered],
                 "seconds_one_process": ref["flow_seconds"]},
        "distributed_seconds": dist_seconds, "one_process_seconds": ref_seconds,
    }
    write_results(args.out, results)
    print(json.dumps({k: results[k] for k in ("classifier", "flow")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
