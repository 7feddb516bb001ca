"""Metrics for generative models: FD-LeNet, class accuracy, memorization, W2 and MMD.

Image quality is measured in the features of a small LeNet the project trains itself (no Inception weights
offline), so the Fréchet figure is called "FD-LeNet", never "FID".
"""

from ._generative import (
    class_accuracy,
    fd_lenet,
    frechet_distance,
    memorization_report,
    mmd_rbf,
    nearest_neighbour_distance,
    wasserstein2,
)
from ._lenet import LeNet, default_cache_dir, lenet_for, load_lenet, save_lenet, train_lenet

__all__ = [
    "LeNet",
    "class_accuracy",
    "default_cache_dir",
    "fd_lenet",
    "frechet_distance",
    "lenet_for",
    "load_lenet",
    "memorization_report",
    "mmd_rbf",
    "nearest_neighbour_distance",
    "save_lenet",
    "train_lenet",
    "wasserstein2",
]
