"""pilearn: Pseudoinverse Learning — fixed seeded random features, linear maps solved in closed form."""

__version__ = "0.1.0"

from .estimators import BiPILClassifier, DeepPILClassifier, PILClassifier, PILRegressor  # noqa: E402
from .solvers import RidgeStats  # noqa: E402

__all__ = ["BiPILClassifier", "DeepPILClassifier", "PILClassifier", "PILRegressor", "RidgeStats", "__version__"]
