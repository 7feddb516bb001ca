"""Offline data sets as NumPy arrays: image benchmarks, the file-format readers behind them, 2-D toy shapes."""

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
from pilearn.data._toy import TOY_2D_NAMES, make_toy_2d

__all__ = [
    "DATASET_NAMES",
    "DatasetNotFoundError",
    "TOY_2D_NAMES",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "make_toy_2d",
    "read_idx",
    "read_numpy_pickle",
]
