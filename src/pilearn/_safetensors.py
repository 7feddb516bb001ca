"""Reading a pilearn safetensors file: one place for the checks every loader needs (the file exists, it is a
readable safetensors file), with errors that name the file and what was expected of it."""

from __future__ import annotations

import os
from typing import Any, Literal

from safetensors import SafetensorError, safe_open

__all__ = ["read_safetensors"]


def read_safetensors(path: str | os.PathLike, what: str, *, framework: Literal["pt", "np"] = "pt",
                     tensors: bool = True) -> tuple[dict[str, str], dict[str, Any]]:
    """``(metadata, tensors)`` of the safetensors file at ``path`` (``tensors=False``: the metadata only, ``{}``).

    Args:
        path: the file.
        what: what the caller expects there, for the messages (``"PIL-LM file"``, ``"fit_stream checkpoint"``).
        framework: ``"pt"`` for torch tensors, ``"np"`` for numpy arrays.
        tensors: read the tensors too.

    Raises:
        FileNotFoundError: nothing at ``path``.
        IsADirectoryError: ``path`` is a directory.
        ValueError: the file is not a safetensors file (truncated, another format).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} at {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, expected a {what} (a file)")
    try:
        with safe_open(path, framework=framework) as f:
            meta = dict(f.metadata() or {})
            out = {key: f.get_tensor(key) for key in f.keys()} if tensors else {}
    except (SafetensorError, ValueError) as err:  # an OSError (permissions, I/O) propagates as it is
        raise ValueError(f"{path!r} is not a readable safetensors file ({type(err).__name__}: {err}); expected a "
                         f"{what}") from err
    return meta, out
