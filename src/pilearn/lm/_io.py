"""Save and load a :class:`~pilearn.lm.model.PILLM` as safetensors: tensors plus a JSON header, no pickle.

The fixed random projections of the PIL FFNs are not stored: they are rebuilt from ``config.seed``. The head's
mode (``"softmax"`` or ``"mixture"``), the config and, optionally, the vocabulary travel in the header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .model import LMConfig, PILLM

__all__ = ["save_lm", "load_lm"]

_FORMAT = "pilearn.lm/1"


def save_lm(model: PILLM, path: str | Path, *, vocab: dict[str, Any] | None = None,
            extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file); ``vocab`` is e.g. ``Vocab.to_dict()``."""
    from safetensors.torch import save_file

    if not isinstance(model, PILLM):
        raise TypeError(f"model must be a PILLM, got {type(model).__name__}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_weights:
        state.pop("lm_head.weight", None)  # the same tensor as wte.weight
    meta = {"format": _FORMAT, "config": json.dumps(model.config.to_dict()), "head": model.head,
            "vocab": json.dumps(vocab) if vocab is not None else "", "extra": json.dumps(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return path


def load_lm(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[PILLM, dict[str, Any] | None]:
    """Read a file written by :func:`save_lm`: ``(model, vocab dict or None)``."""
    from safetensors.torch import load_file

    from .._safetensors import read_safetensors

    path = Path(path)
    meta, _ = read_safetensors(path, "PIL-LM file written by pilearn.lm.save_lm", tensors=False)
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a PIL-LM file (format {meta.get('format')!r}, expected {_FORMAT!r})")
    model = PILLM(LMConfig.from_dict(json.loads(meta["config"])))
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_weights)]
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: missing {missing}, unexpected {unexpected}")
    if meta.get("head") not in ("softmax", "mixture"):
        raise ValueError(f"{path} has an unknown head mode {meta.get('head')!r}")
    model.head = meta["head"]
    model.to(device).eval()
    return model, (json.loads(meta["vocab"]) if meta.get("vocab") else None)
