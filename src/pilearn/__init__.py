"""pilearn: Pseudoinverse Learning — fixed seeded random features, linear maps solved in closed form."""

__version__ = "0.1.0"

import os

# scipy's OpenBLAS forms every CPU Gram (dsyrk). After each call its worker threads spin for 2^28 cycles (about 0.1 s)
# before they sleep, taking the cores that torch's next product (a batch's features) needs: in a streamed fit at
# 60,000 × 4,096 the features took 3.16 s with that spin against 2.55 s with this setting (docs/scale.md,
# docs/results/solver-openblas-spin-cpu2 and solver-4096-paired-cpu2). 2^16 cycles still covers the
# pauses inside one dsyrk. OpenBLAS reads the variable when it loads, so this takes effect when pilearn is imported
# before scipy (or sklearn); a value the user exported is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from .estimators import BiPILClassifier, DeepPILClassifier, PILClassifier, PILRegressor  # noqa: E402
from .solvers import RidgeStats  # noqa: E402

__all__ = ["BiPILClassifier", "DeepPILClassifier", "PILClassifier", "PILRegressor", "RidgeStats", "__version__"]
