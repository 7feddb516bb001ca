"""Offline data sets as NumPy arrays: image benchmarks and the file-format readers behind them."""

from pilearn.data._formats import read_idx, read_numpy_pickle
from pilearn.data._images import (
    DATASET_NAMES,
    DatasetNotFoundError,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)

__all__ = [
    "DATASET_NAMES",
    "DatasetNotFoundError",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "read_numpy_pickle",
]
