"""What ``import pilearn`` sets up for the process."""

import os
import subprocess
import sys


def _seen_after_import(env: dict[str, str]) -> str:
    code = ("import os, pilearn, scipy.linalg.blas; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return proc.stdout.strip()


def test_import_shortens_openblas_spin_unless_the_user_set_it():
    base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    assert _seen_after_import(base) == "16"
    assert _seen_after_import({**base, "OPENBLAS_THREAD_TIMEOUT": "24"}) == "24"
