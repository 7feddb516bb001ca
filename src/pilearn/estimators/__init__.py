"""scikit-learn estimators: PIL classifiers and regressors."""

from ._conv import conv_features
from ._deep import BiPILClassifier, DeepPILClassifier
from ._pil import DEFAULT_LAM_GRID, PILClassifier, PILRegressor

__all__ = ["BiPILClassifier", "DeepPILClassifier", "PILClassifier", "PILRegressor", "DEFAULT_LAM_GRID", "conv_features"]
