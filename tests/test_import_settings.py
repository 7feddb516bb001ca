"""What ``import pilearn`` sets up for the process."""

import os
import subprocess
import sys


# records OPENBLAS_THREAD_TIMEOUT at the moment scipy is first imported: OpenBLAS reads it when it loads
_PROBE = """
import os, sys
seen = []
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" and not seen:
            seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
        return None
sys.meta_path.insert(0, Probe())
import pilearn
import scipy.linalg.blas
print(seen[0])
"""


def _seen_after_import(env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
    return proc.stdout.strip()


def test_import_shortens_openblas_spin_unless_the_user_set_it():
    base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    assert _seen_after_import(base) == "16"
    assert _seen_after_import({**base, "OPENBLAS_THREAD_TIMEOUT": "24"}) == "24"
