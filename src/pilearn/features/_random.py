"""Seeded random matrices: the only source of randomness in :mod:`pilearn.features`.

Every matrix is drawn on the CPU from a :class:`torch.Generator` built from an explicit integer seed, in
float64, and only then cast and moved (``.to(device, dtype)``). Hence

* the same seed gives the same bits on every run and every device (a checkpoint stores the seed, not the
  matrix — the idea peft's VeRA uses for its shared bases);
* the float32 matrix is exactly the float64 matrix rounded to float32;
* the global torch RNG (``torch.manual_seed``) is never read or advanced.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from typing import Literal

import torch

__all__ = ["make_generator", "derive_seed", "random_matrix", "MatrixKind", "MATRIX_KINDS"]

MatrixKind = Literal["gaussian", "orthogonal", "rademacher", "sparse"]
MATRIX_KINDS: tuple[str, ...] = ("gaussian", "orthogonal", "rademacher", "sparse")

_SEED_LIMIT = 2**63  # torch.Generator accepts < 2**64; we keep one bit spare so derived seeds fit an int64


def _check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < _SEED_LIMIT:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {seed!r}")
    return int(seed)


def make_generator(seed: int) -> torch.Generator:
    """Return a CPU :class:`torch.Generator` seeded with ``seed``.

    Args:
        seed: a non-negative int below ``2**63``.

    Raises:
        ValueError: ``seed`` is not such an int (bools are refused too).
    """
    return torch.Generator(device="cpu").manual_seed(_check_seed(seed))


def derive_seed(seed: int, *keys: object) -> int:
    """Derive an independent-looking child seed from ``seed`` and a path of ``keys``.

    ``derive_seed(s, "bias")`` names the stream a map uses for its bias, ``derive_seed(s, "bipil", 1)`` the
    second Bi-PIL branch. The child is the first 63 bits of ``blake2b(repr((seed, keys)))``, so it is stable
    across machines and Python versions (no ``hash()`` randomization), and seeds ``s`` and ``s + 1`` give
    unrelated children (unlike ``s + 1`` offsets, which make seed sweeps overlap).

    Args:
        seed: parent seed, a non-negative int below ``2**63``.
        *keys: ints or strings naming the child stream.
    """
    seed = _check_seed(seed)
    for key in keys:
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise ValueError(f"keys must be str or int, got {key!r}")
    digest = hashlib.blake2b(repr((seed, tuple(keys))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_LIMIT


def _check_shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}") from None
    if not dims or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0 for d in dims):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def _haar_block(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, cols) with cols <= rows and orthonormal columns, Haar-distributed (QR with sign fix, Mezzadri 2007)."""
    g = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)  # q: (rows, cols)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs


def _orthogonal(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if len(shape) != 2:
        raise ValueError(f"kind='orthogonal' needs a 2-D shape (in, out), got shape={shape!r}")
    n_in, n_out = shape
    blocks, done = [], 0
    while done < n_out:  # (in, out) with out > in: independent orthonormal blocks of <= in columns each
        cols = min(n_in, n_out - done)
        blocks.append(_haar_block(n_in, cols, generator))
        done += cols
    return torch.cat(blocks, dim=1) * math.sqrt(n_in)


def _sparse(shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    value = 1.0 / math.sqrt(density)
    w = torch.zeros(shape, dtype=torch.float64)
    w[u < density / 2] = value
    w[(u >= density / 2) & (u < density)] = -value
    return w


def random_matrix(
    shape: tuple[int, ...],
    *,
    kind: MatrixKind = "gaussian",
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    density: float | None = None,
) -> torch.Tensor:
    """Draw a seeded random matrix whose entries have mean 0 and ``E[w²] = 1``.

    Drawn on the CPU in float64 from ``make_generator(seed)``, then ``.to(device, dtype)``; see the module
    docstring for the reproducibility guarantees.

    Kinds (``W`` of shape ``(in, out) = shape``):

    * ``"gaussian"``: ``w_ij ~ N(0, 1)`` i.i.d.; any number of dimensions.
    * ``"orthogonal"``: 2-D only. The columns are split into blocks of at most ``in`` columns; each block is
      an independent Haar-random set of orthonormal columns (QR of a Gaussian with the sign of ``diag(R)``
      fixed), and the whole matrix is multiplied by ``sqrt(in)``. So every column has norm exactly
      ``sqrt(in)`` (as a Gaussian column has on average), ``WᵀW = in·I`` when ``out <= in``, and columns in
      different blocks are independent. Each column is uniform on the sphere, so ``E[w_ij²] = 1``.
    * ``"rademacher"``: ``w_ij = ±1`` with probability 1/2 each.
    * ``"sparse"``: very sparse random projection (Achlioptas 2003; Li, Hastie & Church 2006):
      ``w_ij = ±1/sqrt(density)`` with probability ``density/2`` each, 0 otherwise, so
      ``E[w²] = density · (1/density) = 1``. Default ``density = 1/sqrt(shape[0])``.

    Args:
        shape: positive ints; ``(in, out)`` for a projection ``x @ W``.
        kind: one of ``"gaussian"``, ``"orthogonal"``, ``"rademacher"``, ``"sparse"``.
        seed: non-negative int; the only source of randomness.
        dtype: floating dtype of the result.
        device: where the result lives; does not change its values.
        density: fraction of non-zeros for ``kind="sparse"``, in ``(0, 1]``; must be None for other kinds.

    Returns:
        Tensor of ``shape``, ``dtype``, on ``device``.

    Raises:
        ValueError: bad ``shape``, ``kind``, ``seed``, ``density`` or a non-floating ``dtype``.
    """
    dims = _check_shape(shape)
    if kind not in MATRIX_KINDS:
        raise ValueError(f"kind must be one of {MATRIX_KINDS}, got {kind!r}")
    dtype = parse_dtype(dtype)
    if density is not None and kind != "sparse":
        raise ValueError(f"density is only used with kind='sparse', got density={density!r} with kind={kind!r}")
    generator = make_generator(seed)
    if kind == "gaussian":
        w = torch.randn(dims, generator=generator, dtype=torch.float64)
    elif kind == "orthogonal":
        w = _orthogonal(dims, generator)
    elif kind == "rademacher":
        w = torch.randint(0, 2, dims, generator=generator, dtype=torch.int64).to(torch.float64) * 2.0 - 1.0
    else:
        if density is None:
            density = 1.0 / math.sqrt(dims[0])
        if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0.0 < density <= 1.0:
            raise ValueError(f"density must be a float in (0, 1], got {density!r}")
        w = _sparse(dims, float(density), generator)
    return w.to(device=device, dtype=dtype)


_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Map a floating ``torch.dtype`` or its name (``"float32"``, ``"torch.float64"``) to the ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {dtype!r}")
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype must be a floating torch.dtype or one of {tuple(_DTYPES)}, got {dtype!r}")


def dtype_name(dtype: torch.dtype) -> str:
    """The JSON-friendly name of a floating dtype: ``torch.float32 -> "float32"``."""
    return str(parse_dtype(dtype)).removeprefix("torch.")
