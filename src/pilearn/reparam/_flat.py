"""The shared body of PRANC and MCNC: a module whose trainable parameters θ ∈ R^D are computed.

:class:`FlatReparam` takes over a module: every trainable parameter becomes a non-persistent buffer (a
placeholder that keeps the module printable and callable), so the wrapper's only parameters are the few
learned numbers of the parameterization. :meth:`FlatReparam.forward` rebuilds θ and runs the module
through :func:`torch.func.functional_call`; batch-norm running statistics stay ordinary buffers of the
module and are updated in place as usual.

θ is the concatenation of the trainable parameters in ``named_parameters()`` order, each flattened
(row-major). Tied parameters (one tensor under several names) are one block of θ.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["FlatReparam", "ParamSpec", "default_init_bounds"]


@dataclass(frozen=True)
class ParamSpec:
    """One block of θ: ``theta[offset:offset + numel].view(shape)`` is the parameter ``names[0]``.

    ``names`` holds every name the tensor has in the module (several when weights are tied).
    """

    names: tuple[str, ...]
    shape: tuple[int, ...]
    offset: int
    numel: int


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = name.rpartition(".")
    return (module.get_submodule(prefix) if prefix else module), leaf


def _take_over(module: nn.Module) -> tuple[list[ParamSpec], torch.dtype]:
    """Turn the trainable parameters of ``module`` into non-persistent buffers; return θ's layout."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    by_id: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            by_id.setdefault(id(p), []).append(name)
            tensors[id(p)] = p
    if not by_id:
        raise ValueError(f"module {type(module).__name__} has no trainable parameters (requires_grad=True) to "
                         "reparameterize; is it already wrapped?")
    dtypes = {tensors[i].dtype for i in by_id}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise TypeError(f"all trainable parameters must share one floating dtype, got {sorted(map(str, dtypes))}")
    specs, offset = [], 0
    for pid, names in by_id.items():
        p = tensors[pid]
        placeholder = p.detach()
        for name in names:
            owner, leaf = _owner(module, name)
            del owner._parameters[leaf]
            owner.register_buffer(leaf, placeholder, persistent=False)
        specs.append(ParamSpec(tuple(names), tuple(p.shape), offset, p.numel()))
        offset += p.numel()
    return specs, next(iter(dtypes))


def default_init_bounds(module: nn.Module, specs: list[ParamSpec]) -> torch.Tensor:
    """Per-coordinate bounds b (D,) such that U(-b, b) is PyTorch's default init of each parameter.

    * a weight with ≥ 2 dimensions: b = 1/√fan_in, fan_in = numel / shape[0] (``nn.Linear`` and ``nn.ConvNd``
      use ``kaiming_uniform_(a=√5)``, whose bound is exactly this);
    * a 1-D parameter of a module that also has a ≥ 2-D ``weight`` (a Linear/Conv bias): that weight's 1/√fan_in,
      as PyTorch initializes biases;
    * anything else (normalization affine parameters, free vectors): b = 1, the O(1) scale of their init.

    Called before :func:`_take_over`'s placeholders are read, so it works on buffers and parameters alike.
    """
    parts = []
    for spec in specs:
        if len(spec.shape) >= 2:
            bound = 1.0 / math.sqrt(spec.numel // spec.shape[0])
        else:
            owner, _ = _owner(module, spec.names[0])
            weight = getattr(owner, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
                bound = 1.0 / math.sqrt(weight.numel() // weight.shape[0])
            else:
                bound = 1.0
        parts.append(torch.full((spec.numel,), bound, dtype=torch.float64))
    return torch.cat(parts)


class FlatReparam(nn.Module):
    """Base class: θ = f(learned numbers), unflattened into ``module``'s parameters at every call.

    Subclasses implement :meth:`theta` and :meth:`reparam_config` (the keyword arguments that rebuild
    them, saved in checkpoints by :func:`~pilearn.reparam.save_reparam`).

    The wrapped module is modified in place: its trainable parameters become non-persistent buffers
    (their initial values, never updated), frozen parameters stay as they are (part of the base model
    the caller supplies again at load time), and persistent buffers (batch-norm statistics) are kept and
    checkpointed.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        specs, dtype = _take_over(module)
        self.module = module
        self.specs: tuple[ParamSpec, ...] = tuple(specs)
        self.n_params = sum(s.numel for s in specs)
        self.param_dtype = dtype

    # ------------------------------------------------------------------ to be provided by subclasses
    def theta(self) -> torch.Tensor:
        """θ (D,): the module's trainable parameters, flattened and concatenated."""
        raise NotImplementedError

    def reparam_config(self) -> dict:
        """JSON-able keyword arguments that rebuild this wrapper around the same architecture."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared behaviour
    @property
    def device(self) -> torch.device:
        """Where the module lives (the device of its first parameter placeholder)."""
        return self.module.get_buffer(self.specs[0].names[0]).device

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: view of θ} for every parameter name (tied names share one view)."""
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta must have shape ({self.n_params},), got {tuple(theta.shape)}")
        out = {}
        for spec in self.specs:
            view = theta[spec.offset : spec.offset + spec.numel].view(spec.shape)
            for name in spec.names:
                out[name] = view
        return out

    def forward(self, *args, **kwargs):
        """Run the module with θ = :meth:`theta` as its parameters."""
        return functional_call(self.module, self.unflatten(self.theta()), args, kwargs)

    def materialize(self) -> nn.Module:
        """A plain, independent copy of the module with θ loaded as ordinary trainable parameters."""
        with torch.no_grad():
            values = self.unflatten(self.theta().detach())
        out = copy.deepcopy(self.module)
        for spec in self.specs:
            param = nn.Parameter(values[spec.names[0]].clone())
            for name in spec.names:
                owner, leaf = _owner(out, name)
                del owner._buffers[leaf]
                owner._non_persistent_buffers_set.discard(leaf)
                owner.register_parameter(leaf, param)
        return out

    def persistent_buffers(self) -> dict[str, torch.Tensor]:
        """The module's buffers that its ``state_dict`` holds (batch-norm statistics), by name."""
        keys = set(self.module.state_dict(keep_vars=True))
        return {name: b for name, b in self.module.named_buffers() if name in keys}

    @property
    def n_learned(self) -> int:
        """Number of learned numbers (the wrapper's own parameters, not the module's frozen ones)."""
        return sum(p.numel() for p in self.parameters(recurse=False))

    @property
    def n_stored(self) -> int:
        """Numbers a checkpoint stores: the learned ones plus the module's persistent buffers."""
        return self.n_learned + sum(b.numel() for b in self.persistent_buffers().values())

    @property
    def compression(self) -> float:
        """D / n_stored: how many parameters each stored number stands for."""
        return self.n_params / self.n_stored

    def learned_state(self) -> dict[str, torch.Tensor]:
        """The learned tensors by name (what a checkpoint stores besides the buffers)."""
        return dict(self.named_parameters(recurse=False))
