"""Element-wise activations applied to random pre-activations, addressed by name so configs stay JSON."""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "get_activation", "get_activation_"]

Activation = Callable[[torch.Tensor], torch.Tensor]


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, ``x · Φ(x)`` with ``Φ`` the standard normal CDF (Hendrycks & Gimpel 2016)."""
    return F.gelu(x)


def relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)``."""
    return F.relu(x)


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0) + 0.01 · min(x, 0)``."""
    return F.leaky_relu(x, negative_slope=0.01)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)``."""
    return torch.tanh(x)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + exp(-x))``."""
    return torch.sigmoid(x)


def sine(x: torch.Tensor) -> torch.Tensor:
    """``sin(x)`` (random Fourier-type features when paired with a uniform bias)."""
    return torch.sin(x)


def identity(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged (a plain random projection)."""
    return x


ACTIVATIONS: dict[str, Activation] = {
    "gelu": gelu,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "sine": sine,
    "identity": identity,
}


#: In-place versions, bit for bit equal to :data:`ACTIVATIONS`: for a pre-activation the caller owns and needs no
#: gradient through, they save one (n, d) allocation (page faults on every batch) and one memory pass. Looked up by
#: name when called (:func:`get_activation_`), never stored on a module, so they need not pickle.
ACTIVATIONS_INPLACE: dict[str, Activation] = {
    "gelu": torch.ops.aten.gelu_,
    "relu": F.relu_,
    "leaky_relu": functools.partial(F.leaky_relu_, negative_slope=0.01),
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "sine": torch.sin_,
    "identity": identity,
}


def get_activation_(name: str) -> Activation:
    """The in-place version of :func:`get_activation`'s ``name`` (same values, written into its argument)."""
    get_activation(name)
    return ACTIVATIONS_INPLACE[name]


def get_activation(name: str) -> Activation:
    """Return the activation called ``name``.

    Raises:
        ValueError: ``name`` is not a key of :data:`ACTIVATIONS`; the message lists the valid names.
    """
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]
