"""Checkpoints of PRANC, MCNC and NOLA: seeds plus learned numbers, in one safetensors file.

The tensors are the learned coefficients (and, for PRANC/MCNC, the module's persistent buffers such as
batch-norm statistics); the header's metadata holds JSON: the format, the class, the constructor
configuration (seeds included) and the layout of θ, so a load into the wrong architecture fails loudly.
No basis, generator or base weight is ever stored: they are regenerated from the seeds, or (frozen base
weights, NOLA's base model) supplied again by the caller.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._safetensors import read_safetensors
from ._flat import FlatReparam
from ._mcnc import MCNC
from ._nola import NOLALinear, _replace, load_nola_state_dict, nola_layers, nola_state_dict
from ._pranc import PRANC

__all__ = ["save_reparam", "load_reparam", "FORMAT"]

FORMAT = "pilearn.reparam.v1"
_FLAT_CLASSES: dict[str, type[FlatReparam]] = {"PRANC": PRANC, "MCNC": MCNC}


def _layout(wrapper: FlatReparam) -> list[list]:
    return [[list(spec.names), list(spec.shape)] for spec in wrapper.specs]


def save_reparam(model: nn.Module, path: str | os.PathLike) -> None:
    """Write a :class:`PRANC` or :class:`MCNC` wrapper, or a model carrying NOLA layers, to ``path``.

    Stored: the learned numbers, the module's persistent buffers (PRANC/MCNC) and JSON metadata with the
    class and its configuration. Read back with :func:`load_reparam`.

    Raises:
        TypeError: ``model`` is neither a PRANC/MCNC wrapper nor a model with NOLA layers.
    """
    from .. import __version__

    meta: dict = {"format": FORMAT, "pilearn_version": __version__}
    if isinstance(model, FlatReparam):
        name = type(model).__name__
        if name not in _FLAT_CLASSES:
            raise TypeError(f"cannot save a {name}; save_reparam knows {sorted(_FLAT_CLASSES)} and NOLA models")
        tensors = {f"learned.{k}": v for k, v in model.learned_state().items()}
        tensors.update({f"buffers.{k}": v for k, v in model.persistent_buffers().items()})
        meta.update({"class": name, "config": model.reparam_config(), "n_params": model.n_params,
                     "layout": _layout(model)})
    elif nola_layers(model):
        tensors = {f"nola.{k}": v for k, v in nola_state_dict(model).items()}
        layers = {name: layer.layer_config() for name, layer in nola_layers(model).items()}
        meta.update({"class": "NOLA", "layers": layers})
    else:
        raise TypeError(f"model must be a PRANC or MCNC wrapper or carry NOLA layers, got {type(model).__name__} "
                        "without any NOLALinear")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.fspath(path), metadata={"pilearn.reparam": json.dumps(meta)})


def _read_meta(path: str) -> dict:
    meta, _ = read_safetensors(path, "reparameterization checkpoint", tensors=False)
    raw = meta.get("pilearn.reparam")
    if raw is None:
        raise ValueError(f"{path!r} is a safetensors file but not a pilearn.reparam checkpoint")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_reparam(path: str | os.PathLike, module: nn.Module, **overrides: object) -> nn.Module:
    """Rebuild what :func:`save_reparam` wrote, around ``module`` (a fresh copy of the same architecture).

    PRANC/MCNC: returns a new wrapper ``cls(module, **config)`` with the learned numbers and the buffers
    loaded. With the saved config θ is reproduced bit for bit on the same machine; ``overrides`` may change
    settings that move θ only by float rounding (``cache_basis``, ``chunk_size``). NOLA: wraps the saved
    layers of ``module`` in place (every other parameter frozen, as :func:`apply_nola` does), loads the
    coefficients and returns ``module``.

    Raises:
        ValueError: not a checkpoint of this format, or ``module`` does not have the saved architecture.
    """
    path = os.fspath(path)
    meta = _read_meta(path)
    tensors = load_file(path)
    if meta["class"] == "NOLA":
        return _load_nola(meta, tensors, module, overrides)
    if meta["class"] not in _FLAT_CLASSES:
        raise ValueError(f"{path!r} holds an unknown class {meta['class']!r}")
    config = {**meta["config"], **overrides}
    wrapper = _FLAT_CLASSES[meta["class"]](module, **config)
    mine, saved = _layout(wrapper), meta["layout"]
    if mine != saved:
        i = next(i for i in range(max(len(mine), len(saved))) if i >= min(len(mine), len(saved)) or mine[i] != saved[i])
        here, there = (mine[i] if i < len(mine) else None), (saved[i] if i < len(saved) else None)
        raise ValueError(f"module does not match the checkpoint's architecture: parameter {i} is {here} "
                         f"(names, shape) in the module but {there} in the checkpoint")
    _copy_into(wrapper.learned_state(), tensors, "learned.")
    _copy_into(wrapper.persistent_buffers(), tensors, "buffers.")
    return wrapper


def _copy_into(targets: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], prefix: str) -> None:
    saved = {k[len(prefix):] for k in tensors if k.startswith(prefix)}
    if saved != set(targets):
        raise ValueError(f"checkpoint {prefix.rstrip('.')} tensors {sorted(saved)} do not match the module's "
                         f"{sorted(targets)}")
    with torch.no_grad():
        for name, target in targets.items():
            value = tensors[prefix + name]
            if value.shape != target.shape:
                raise ValueError(f"{prefix}{name} has shape {tuple(value.shape)} in the checkpoint, the module "
                                 f"expects {tuple(target.shape)}")
            target.copy_(value)


def _load_nola(meta: dict, tensors: dict[str, torch.Tensor], module: nn.Module, overrides: dict) -> nn.Module:
    layers = meta["layers"]
    for name in layers:
        try:
            base = module.get_submodule(name)
        except AttributeError:
            base = None
        if not isinstance(base, nn.Linear):
            raise ValueError(f"checkpoint adapts {name!r}, but the module has no nn.Linear there "
                             f"(found {type(base).__name__})")
    module.requires_grad_(False)
    for name, config in layers.items():
        _replace(module, name, NOLALinear(module.get_submodule(name), **{**config, **overrides}))
    load_nola_state_dict(module, {k[len("nola."):]: v for k, v in tensors.items()})
    return module
