"""Out-of-core fits: row batches of arrays that do not fit in memory, and resumable accumulation.

:func:`array_batches` walks the rows of a numpy array, an ``np.memmap`` / ``np.load(mmap_mode="r")`` file or a
tensor, one batch in memory at a time. :func:`fit_stream` feeds batches to a :class:`~pilearn.solvers.RidgeStats`
and, given a checkpoint path, saves the statistics every ``every`` batches so that a killed fit resumes where its
last checkpoint left off and ends with exactly the statistics of an uninterrupted one.

This is the one module of :mod:`pilearn.solvers` that touches files: a checkpoint is ``stats.state_dict()`` plus
the number of batches consumed, written atomically as safetensors (the statistics are the whole state of a
closed-form fit, so a checkpoint of a 4,096-wide fit is 8·4,107² bytes ≈ 135 MB whatever the number of rows).
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import os
import sys
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

import numpy as np
import torch

from ._ridge import RidgeStats

__all__ = ["array_batches", "fit_stream", "load_checkpoint", "CHECKPOINT_FORMAT"]

logger = logging.getLogger(__name__)

#: version of the checkpoint layout written by :func:`fit_stream`
CHECKPOINT_FORMAT = 1

Batch = tuple  # (H, Y) or (H, Y, sample_weight)
Batches = Union[Iterable[Batch], Callable[[int], Iterable[Batch]]]


# ---------------------------------------------------------------------------------------------- batches
def _check_int(name: str, v: object, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return int(v)


_MADV_DONTNEED = 4  # Linux <sys/mman.h>
_libc: Any = None


def _drop_pages(view: np.ndarray) -> None:
    """Unmap the pages of a read-only file mapping that ``view`` covers (Linux; a no-op elsewhere).

    Pages of a file mapping that were read count in the process's resident set until unmapped, so a pass over a
    memmap larger than memory would show an RSS that grows with the rows read. The pages are clean, so dropping
    them loses nothing: reading them again faults them back in from the file (or the page cache).
    """
    global _libc
    if not sys.platform.startswith("linux") or view.nbytes == 0:
        return
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return
    page = mmap.PAGESIZE
    begin = view.ctypes.data // page * page
    end = view.ctypes.data + view.nbytes
    _libc.madvise(begin, end - begin, _MADV_DONTNEED)  # advice only: a failure leaves the pages resident


def _is_readonly_map(a: np.ndarray) -> bool:
    return isinstance(a, np.memmap) and getattr(a, "mode", None) == "r" and a.flags.c_contiguous


def array_batches(
    array: np.ndarray | torch.Tensor,
    batch_size: int,
    *,
    start: int = 0,
    dtype: torch.dtype | None = None,
    pin_memory: bool | None = None,
    device: str | torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``array[i : i + batch_size]`` as tensors, for i = start·batch_size, (start+1)·batch_size, …

    Only one batch is in memory at a time: rows of an in-memory array or tensor are zero-copy views; rows of a
    read-only ``np.memmap`` (``np.load(path, mmap_mode="r")``) are copied out of the file one batch at a time and
    their pages unmapped afterwards, so the resident memory does not grow with the rows read.

    Args:
        array: (N, ...) numpy array, ``np.memmap`` or tensor; batches are cut along the first axis.
        batch_size: rows per batch; the last batch may be shorter.
        start: index of the first batch to yield (skips ``start·batch_size`` rows without reading them): the
            argument a :func:`fit_stream` resume passes.
        dtype: cast each batch to this dtype (None keeps the array's).
        pin_memory: stage each batch in page-locked host memory and copy it to ``device`` asynchronously.
            Default: True when ``device`` is a CUDA device.
        device: move each batch there (None: leave it on the host).

    Yields:
        (b, ...) tensors with b ≤ batch_size.
    """
    if not isinstance(array, (np.ndarray, torch.Tensor)):
        raise TypeError(f"array must be a numpy array, np.memmap or torch.Tensor, got {type(array).__name__}")
    if array.ndim < 1:
        raise ValueError(f"array must have at least one dimension (rows), got shape {tuple(array.shape)}")
    batch_size = _check_int("batch_size", batch_size, 1)
    start = _check_int("start", start, 0)
    device = None if device is None else torch.device(device)
    if pin_memory is None:
        pin_memory = device is not None and device.type == "cuda"
    n = array.shape[0]
    for i in range(start * batch_size, n, batch_size):
        yield _batch(array, i, min(i + batch_size, n), dtype, bool(pin_memory), device)


def _batch(array: np.ndarray | torch.Tensor, i: int, j: int, dtype: torch.dtype | None, pin: bool,
           device: torch.device | None) -> torch.Tensor:
    rows = array[i:j]
    if isinstance(rows, torch.Tensor):
        t = rows.pin_memory() if pin and rows.device.type == "cpu" else rows
    elif pin or _is_readonly_map(array) or not (rows.flags.c_contiguous and rows.flags.writeable):
        t = torch.empty(rows.shape, dtype=torch.from_numpy(np.empty(0, rows.dtype)).dtype, pin_memory=pin)
        t.numpy()[...] = rows  # the one copy, straight from the file mapping into (pinned) host memory
        if _is_readonly_map(array):
            _drop_pages(rows)
    else:
        t = torch.from_numpy(rows)  # a view: no copy
    if device is not None:
        t = t.to(device, non_blocking=pin)
    return t if dtype is None else t.to(dtype)


# ---------------------------------------------------------------------------------------------- checkpoints
def _meta(stats: RidgeStats, fingerprint: object) -> dict[str, str]:
    """What must match for a checkpoint to be resumed: the problem's shape, the policy and the stream's key."""
    return {
        "format": str(CHECKPOINT_FORMAT),
        "n_features": str(stats.n_features),
        "n_targets": str(stats.n_targets),
        "fit_intercept": str(stats.fit_intercept),
        "accumulate_dtype": str(stats.accumulate_dtype).removeprefix("torch."),
        "fingerprint": json.dumps(fingerprint, sort_keys=True, default=str),
    }


def _save(path: Path, stats: RidgeStats, batches_done: int, meta: dict[str, str]) -> None:
    """Write the checkpoint to a temporary file in the same folder, flush it to disk, then rename it over ``path``
    (atomic on POSIX): a crash leaves either the previous checkpoint or the new one, never half of one."""
    from safetensors.torch import save_file

    state = stats._state(clone=False)  # stats.state_dict() without its copy of M; folds any kept rows into M
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tensors["batches_done"] = torch.tensor(batches_done, dtype=torch.int64)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={**meta, "batches_done": str(batches_done)})
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    logger.info("checkpoint %s: %d batches, %d rows", path, batches_done, stats.n_rows)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int, dict[str, str]]:
    """Read a :func:`fit_stream` checkpoint: ``(state_dict, batches_done, metadata)``."""
    from .._safetensors import read_safetensors

    path = Path(path)
    meta, tensors = read_safetensors(path, "fit_stream checkpoint")
    if meta.get("format") != str(CHECKPOINT_FORMAT) or "batches_done" not in tensors:
        raise ValueError(f"{path} is not a fit_stream checkpoint of format {CHECKPOINT_FORMAT} "
                         f"(metadata format={meta.get('format')!r})")
    done = int(tensors.pop("batches_done"))
    return tensors, done, meta


def _check_resumable(path: Path, meta: dict[str, str], expected: dict[str, str]) -> None:
    got_shape = (meta.get("n_features"), meta.get("n_targets"))
    want_shape = (expected["n_features"], expected["n_targets"])
    if got_shape != want_shape:
        raise ValueError(f"checkpoint {path} holds statistics of (n_features, n_targets) = "
                         f"({got_shape[0]}, {got_shape[1]}), but these statistics have ({want_shape[0]}, "
                         f"{want_shape[1]}): a checkpoint of a different problem; delete it or pass another path")
    for key in ("fit_intercept", "accumulate_dtype", "fingerprint"):
        if meta.get(key) != expected[key]:
            raise ValueError(f"checkpoint {path} was written with {key}={meta.get(key)}, this fit has "
                             f"{key}={expected[key]}: resuming would mix two different streams; delete it or pass "
                             "another path")


# ---------------------------------------------------------------------------------------------- fitting
def fit_stream(
    stats: RidgeStats,
    batches: Batches,
    *,
    checkpoint: str | os.PathLike | None = None,
    every: int = 10,
    fingerprint: Mapping[str, Any] | str | int | None = None,
    check_finite: bool = True,
) -> RidgeStats:
    """Accumulate a stream of batches into ``stats``, resumably.

    Without ``checkpoint`` this is ``for b in batches: stats.update(*b)``. With it, ``stats.state_dict()`` and the
    number of batches consumed are saved to ``checkpoint`` (safetensors, written atomically) every ``every``
    batches and at the end. If the file already exists, the statistics are loaded from it and the batches it
    counts are skipped, so ``fit_stream`` run again after an interruption (a killed job, a lost node, an exception
    from the data loader) ends with bit for bit the statistics of an uninterrupted run.

    Args:
        stats: the accumulator; must be empty when ``checkpoint`` is given.
        batches: ``(H, Y)`` or ``(H, Y, sample_weight)`` tuples, either an iterable or a callable ``start ->
            iterable`` that yields the stream from batch ``start`` on. On resume an iterable is advanced past the
            consumed batches (they are drawn and dropped: their features are computed for nothing), a callable is
            asked for the rest directly, e.g. ``lambda start: zip(array_batches(X, 4096, start=start), ...)``.
        checkpoint: path of the checkpoint file, or None for no checkpoints.
        every: batches between checkpoints.
        fingerprint: anything JSON-able that identifies the stream (data file, batch size, feature seed). Stored
            in the checkpoint with the problem's shape, ``fit_intercept`` and ``accumulate_dtype``; a checkpoint
            whose values differ is refused with a ``ValueError`` rather than silently resumed.
        check_finite: passed to :meth:`RidgeStats.update`.

    Returns:
        ``stats``, holding every batch of the stream.

    Note:
        A checkpoint stores the primal statistics: kept rows of the dual form (``n ≤ d``) are folded in at the first
        checkpoint, so a stream of fewer rows than features ends solved in the primal form.
    """
    if not isinstance(stats, RidgeStats):
        raise TypeError(f"stats must be a RidgeStats, got {type(stats).__name__}")
    every = _check_int("every", every, 1)
    done = 0
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None:
        if stats.n_rows:
            raise ValueError(f"stats must be empty when checkpoint is given (it is loaded from or written to "
                             f"{path}), got statistics of {stats.n_rows} rows")
        meta = _meta(stats, fingerprint)
        if path.exists():
            state, done, saved = load_checkpoint(path)
            _check_resumable(path, saved, meta)
            stats.load_state_dict(state)
            logger.info("resuming from %s: %d batches (%d rows) done", path, done, stats.n_rows)
    stream = batches(done) if callable(batches) else islice(iter(batches), done, None)
    count = saved_at = done
    for batch in stream:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise TypeError(f"batches must yield (H, Y) or (H, Y, sample_weight) tuples, got "
                            f"{type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list))
                                                          else ""))
        stats.update(*batch, check_finite=check_finite)
        del batch  # release this batch before the stream builds the next: one batch alive at a time, not two
        count += 1
        if path is not None and count - saved_at >= every:
            _save(path, stats, count, meta)
            saved_at = count
    stats.release_workspace()
    if path is not None and (count != saved_at or not path.exists()):
        _save(path, stats, count, meta)
    return stats
