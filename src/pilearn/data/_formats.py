"""Readers for the on-disk formats of the image benchmarks: IDX (MNIST family) and NumPy pickles (CIFAR-10).

Both readers only parse bytes; finding the files and turning pixels into model inputs is the job of
:mod:`pilearn.data._images`.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["read_idx", "read_numpy_pickle"]

# IDX type codes (third byte of the magic number) -> big-endian NumPy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Gzip decoding errors: a corrupt archive is bad content, reported like a bad IDX header.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _open_maybe_gzip(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing on the fly when it ends in ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an array stored in the IDX format of LeCun's MNIST files.

    Layout (all integers big-endian)::

        bytes 0-1   0x00 0x00
        byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
        byte  3     number of dimensions d
        4 * d       the size of each dimension, uint32
        rest        the values, row-major (C order)

    Parameters
    ----------
    path : str or os.PathLike
        The file; a name ending in ``.gz`` is decompressed with gzip.

    Returns
    -------
    numpy.ndarray
        Writeable, C-contiguous array of the stored shape ``(n_0, ..., n_{d-1})`` in native byte order,
        e.g. ``(60000, 28, 28)`` uint8 for ``train-images-idx3-ubyte``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the magic number or type code is not IDX, the file is truncated or has trailing bytes,
        or a ``.gz`` file is not valid gzip. The message names the file.
    """
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as f:
            raw = f.read()
    except _GZIP_ERRORS as exc:
        raise ValueError(f"{path}: not a valid gzip file ({exc})") from exc
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """Decode the bytes of an IDX file; ``path`` is only used in error messages."""
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file, expected a 4-byte header, got {len(raw)} bytes")
    zero0, zero1, code, ndim = raw[:4]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}, expected 0x0000TTDD with type code TT in "
            f"{{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}}"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header, expected {header_len} bytes for {ndim} dims, got {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header_len
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes in"
        raise ValueError(
            f"{path}: {what} IDX file, shape {shape} of {dtype.newbyteorder('=')} "
            f"needs {expected} data bytes, got {got}"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    # astype copies: native byte order, writeable, and no longer tied to the bytes object.
    return values.astype(dtype.newbyteorder("="), order="C")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled NumPy array needs.

    CIFAR-10 batches are Python pickles, and unpickling an arbitrary file can run arbitrary code; this
    refuses every other global, so a file that is not a plain dict of arrays, lists and strings fails.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data pickle")
        return super().find_class(module, name)


def read_numpy_pickle(path: str | os.PathLike, *, encoding: str = "bytes") -> Any:
    """Unpickle a file that holds only built-in containers and NumPy arrays.

    Parameters
    ----------
    path : str or os.PathLike
        The pickle; a name ending in ``.gz`` is decompressed with gzip.
    encoding : str, default "bytes"
        How Python 2 ``str`` objects are decoded (``"bytes"`` keeps them as :class:`bytes`, as the
        CIFAR-10 batches expect; ``"latin1"`` is needed for pickled NumPy arrays of Python 2 origin
        that must come back as text).

    Returns
    -------
    object
        The unpickled object.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a valid pickle, refers to anything but NumPy array globals, or is not valid gzip.
        The message names the file.
    """
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as f:
            return _NumpyOnlyUnpickler(f, encoding=encoding).load()
    except (pickle.UnpicklingError, *_GZIP_ERRORS, AttributeError, ImportError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: cannot unpickle as a NumPy data pickle ({type(exc).__name__}: {exc})") from exc
