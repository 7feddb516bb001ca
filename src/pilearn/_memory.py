"""Returning freed heap memory to the operating system (glibc), shared by the statistics and the benchmarks."""

from __future__ import annotations

import ctypes
import functools
from typing import Callable

__all__ = ["release_freed_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to do
        return None


def release_freed_heap() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).

    Why a streaming fit needs it: glibc serves blocks above its mmap threshold with ``mmap`` and returns them on
    ``free``, but each such ``free`` raises the threshold to the block's size (up to 32 MiB). From then on
    batch-sized tensors come from the heap, whose freed chunks stay resident and fragment, so the resident set
    creeps up with the number of batches, not with the size of the problem. Trimming once per large batch stops
    the creep (one batch-sized step remains after the threshold first rises: ``pilearn bench solver --only flat``).
    It costs about a millisecond on a fragmented heap.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
