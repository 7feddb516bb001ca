"""The documented ``torchrun`` launch of a data-parallel fit, at a tiny size: 2 gloo ranks equal one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _dist import free_port


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    pytest.importorskip("torch.distributed.run")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "pilearn.experiments.torchrun_check", "--out", str(out), "--n-train", "600", "--n-hidden", "64",
           "--n-flow", "300", "--flow-width", "32"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2 and res["backend"] == "gloo"
    for family in ("classifier", "flow"):
        diffs = res[family]["rel_diff_per_rank"]
        assert len(diffs) == 2 and max(diffs) < 1e-10, (family, diffs)
