"""Seeded random bases that regenerate bit for bit: the storage trick behind PRANC, NOLA and MCNC.

A basis is ``n_basis`` rows bⱼ ∈ R^dim. Row j is drawn on the CPU from its own :class:`torch.Generator`,
seeded with ``derive_seed(seed, j)``, and only then moved to the device. Hence

* any range of rows can be generated alone, so chunking over rows never changes a bit;
* the same ``(seed, dim, distribution)`` gives the same rows on every run, machine and device, so a
  checkpoint stores the seed and the coefficients, never the basis;
* rows are independent streams, so they are drawn in parallel threads.

Distributions (the bits are defined in float32; float64 is their exact upcast):

* ``"uniform"``: U[-1, 1) as ``2u - 1`` with ``u = torch.rand`` (multiples of 2⁻²⁴, so ``2u - 1`` is
  exact). Integer arithmetic only: the same bits on every CPU. What PRANC's and NOLA's code draw.
* ``"normal"``: N(0, 1), drawn in float64 and rounded to float32. float32 ``torch.randn`` is *not* used:
  its vectorized Box–Muller gives different bits on AVX2 and on plain CPUs (measured with
  ``ATEN_CPU_CAPABILITY=default``), which would change a model on reload. The float64 path is about
  five times slower to draw, so prefer ``cache=True`` with it.
"""

from __future__ import annotations

import numbers
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..features import derive_seed

__all__ = ["derive_seed", "basis_rows", "RandomBasis", "Distribution", "DISTRIBUTIONS"]

Distribution = Literal["uniform", "normal"]
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "normal")

_CHUNK_ELEMENTS = 2**22  # default chunk: 4M entries (16 MB of float32) per block of rows
_PARALLEL_ELEMENTS = 2**16  # draw rows in threads only when a block is at least this big


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return int(seed)


def _check_distribution(distribution: object) -> str:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return str(distribution)


def _draw_row(seed: int, j: int, out: torch.Tensor, distribution: str) -> None:
    """Fill the float32 row ``out`` (dim,) with row j of the basis of ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(derive_seed(seed, j))
    if distribution == "uniform":
        torch.rand(out.shape, generator=g, dtype=torch.float32, out=out)
        out.mul_(2.0).sub_(1.0)
    else:
        out.copy_(torch.randn(out.shape, generator=g, dtype=torch.float64))


def basis_rows(
    seed: int,
    start: int,
    stop: int,
    dim: int,
    *,
    distribution: Distribution = "uniform",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rows ``start, …, stop-1`` of the random basis of ``seed``, on the CPU.

    Row j comes from ``torch.Generator().manual_seed(derive_seed(seed, j))`` alone, so
    ``basis_rows(s, a, c, d)`` equals ``cat([basis_rows(s, a, b, d), basis_rows(s, b, c, d)])`` bit for bit.
    Blocks of at least 2¹⁶ entries are drawn by ``torch.get_num_threads()`` threads (one generator per
    row, so the result does not depend on the thread count).

    Args:
        seed: non-negative int below 2⁶³.
        start, stop: the row range, ``0 <= start <= stop``.
        dim: length of a row.
        distribution: ``"uniform"`` (U[-1, 1)) or ``"normal"`` (N(0, 1)); see the module docstring.
        dtype: ``torch.float32`` or ``torch.float64`` (the exact upcast of the float32 rows).

    Returns:
        (stop - start, dim) tensor on the CPU.
    """
    dim = _check_positive_int("dim", dim)
    distribution = _check_distribution(distribution)
    for name, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if stop < start:
        raise ValueError(f"stop must be >= start, got start={start!r}, stop={stop!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    seed = _check_seed(seed)
    out = torch.empty(stop - start, dim, dtype=torch.float32)
    n_rows = stop - start
    workers = min(torch.get_num_threads(), n_rows)
    if workers > 1 and n_rows * dim >= _PARALLEL_ELEMENTS:
        bounds = [start + (n_rows * w) // workers for w in range(workers + 1)]

        def fill(lo: int, hi: int) -> None:
            for j in range(lo, hi):
                _draw_row(seed, j, out[j - start], distribution)

        # a pool per call (threads cost ~0.1 ms): a module-level pool would hang in forked children
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pilearn-basis") as pool:
            for fut in [pool.submit(fill, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]:
                fut.result()
    else:
        for j in range(start, stop):
            _draw_row(seed, j, out[j - start], distribution)
    return out.to(dtype)


class RandomBasis(nn.Module):
    """``n_basis`` seeded random vectors bⱼ ∈ R^dim, used through B (n_basis, dim) without storing it.

    * :meth:`combine` ``(α) = Bᵀα = Σⱼ αⱼ bⱼ``  (dim,)
    * :meth:`project` ``(g) = B g``  (n_basis,), the adjoint; the gradient of ``combine``.

    Both walk over blocks of ``chunk_size`` rows, so with ``cache=False`` the memory is
    O(chunk_size · dim) and every call regenerates the rows (on the CPU, then moved to the device of its
    input). With ``cache=True`` the whole (n_basis, dim) matrix is drawn once, on first use, and kept as a
    non-persistent buffer (it follows ``.to(device)`` and never enters a ``state_dict``).

    Autograd through :meth:`combine` is a custom :class:`torch.autograd.Function` whose backward is
    :meth:`project`: it saves nothing and, without the cache, regenerates the rows instead of storing them.

    Rounding: the basis is the same bits in every mode; the products are not. Both modes compute the same
    block-wise sums (``combine`` adds one ``Bᵀα`` partial per block, in block order) on identically shaped
    blocks, but a cached block is a view at some offset of the big matrix while a regenerated one is a fresh
    allocation, and BLAS kernels may round differently with memory alignment; ``chunk_size`` regroups the
    sums of ``combine``; another device rounds its products its own way. So cache vs no-cache, one chunk
    size vs another, CPU vs GPU agree to float rounding (relative 1e-6 in float32), not necessarily bit for
    bit. One configuration on one machine is deterministic: a reloaded checkpoint gives the same bits.

    Args:
        seed: non-negative int below 2⁶³.
        n_basis: number of rows k.
        dim: length of a row.
        distribution: ``"uniform"`` or ``"normal"`` (see :func:`basis_rows`).
        chunk_size: rows per block; default ``max(1, 2²² // dim)`` (16 MB of float32 per block).
        cache: keep the full matrix after its first use.
    """

    def __init__(
        self,
        seed: int,
        n_basis: int,
        dim: int,
        *,
        distribution: Distribution = "uniform",
        chunk_size: int | None = None,
        cache: bool = True,
    ) -> None:
        super().__init__()
        self.seed = _check_seed(seed)
        self.n_basis = _check_positive_int("n_basis", n_basis)
        self.dim = _check_positive_int("dim", dim)
        self.distribution = _check_distribution(distribution)
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_ELEMENTS // self.dim)
        self.chunk_size = min(_check_positive_int("chunk_size", chunk_size), self.n_basis)
        self.cache = bool(cache)
        self.register_buffer("matrix_cache", None, persistent=False)

    def extra_repr(self) -> str:
        return (f"seed={self.seed}, n_basis={self.n_basis}, dim={self.dim}, distribution={self.distribution!r}, "
                f"chunk_size={self.chunk_size}, cache={self.cache}")

    def rows(self, start: int, stop: int, *, device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``start:stop`` (stop - start, dim) on ``device`` in ``dtype``: from the cache or drawn now."""
        if not 0 <= start <= stop <= self.n_basis:
            raise ValueError(f"row range must satisfy 0 <= start <= stop <= n_basis={self.n_basis}, "
                             f"got start={start}, stop={stop}")
        if self.cache:
            if self.matrix_cache is None:
                self.matrix_cache = self._draw(0, self.n_basis).to(device=device, dtype=dtype)
            return self.matrix_cache[start:stop].to(device=device, dtype=dtype)
        return self._draw(start, stop).to(device=device, dtype=dtype)

    def matrix(self, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole basis B (n_basis, dim); it costs n_basis · dim numbers of memory."""
        return self.rows(0, self.n_basis, device=device, dtype=dtype)

    def _draw(self, start: int, stop: int) -> torch.Tensor:
        return basis_rows(self.seed, start, stop, self.dim, distribution=self.distribution)

    def _blocks(self):
        for start in range(0, self.n_basis, self.chunk_size):
            yield start, min(start + self.chunk_size, self.n_basis)

    def _check_vector(self, name: str, x: object, size: int, size_name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.shape != (size,):
            raise ValueError(f"{name} must have shape ({size},) (({size_name},)), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
        return x

    def _combine(self, alpha: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.dim, dtype=alpha.dtype, device=alpha.device)
        for start, stop in self._blocks():
            out.addmv_(self.rows(start, stop, device=alpha.device, dtype=alpha.dtype).T, alpha[start:stop])
        return out

    def _project(self, g: torch.Tensor) -> torch.Tensor:
        parts = [self.rows(start, stop, device=g.device, dtype=g.dtype) @ g for start, stop in self._blocks()]
        return torch.cat(parts)

    def combine(self, alpha: torch.Tensor) -> torch.Tensor:
        """Σⱼ αⱼ bⱼ = Bᵀα for α (n_basis,); differentiable in α (the backward is :meth:`project`)."""
        alpha = self._check_vector("alpha", alpha, self.n_basis, "n_basis")
        return _Combine.apply(alpha, self)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """B g (n_basis,) for g (dim,): the inner product of every basis vector with g (not differentiable)."""
        g = self._check_vector("g", g, self.dim, "dim")
        with torch.no_grad():
            return self._project(g)


class _Combine(torch.autograd.Function):
    """θ = Bᵀα with ∂L/∂α = B ∂L/∂θ; nothing is saved, the rows are regenerated (or read from the cache)."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, basis: RandomBasis) -> torch.Tensor:  # type: ignore[override]
        ctx.basis = basis
        return basis._combine(alpha)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.basis._project(grad.contiguous()), None
