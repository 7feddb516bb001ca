"""NOLA: LoRA factors as linear combinations of seeded random matrices (Koohpayegani et al., ICLR 2024).

A peft-like API: :class:`NOLAConfig`, :func:`apply_nola` (wraps target ``nn.Linear`` layers in
:class:`NOLALinear`, which keeps ``base_layer`` and adds a delta), :func:`merge_nola`, and
:func:`nola_state_dict` / :func:`load_nola_state_dict` for the coefficients alone.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ._basis import DISTRIBUTIONS, Distribution, RandomBasis, _check_positive_int, _check_seed, basis_rows, derive_seed

__all__ = ["NOLAConfig", "NOLALinear", "apply_nola", "merge_nola", "nola_layers", "nola_state_dict",
           "load_nola_state_dict"]


@dataclass
class NOLAConfig:
    """Which layers NOLA adapts and how.

    Attributes:
        target_modules: module names matched like peft: a module is adapted when its full name equals an
            entry or ends with ``"." + entry`` (``"q_proj"`` matches ``"layers.0.attn.q_proj"``).
        rank: r, the LoRA rank.
        n_basis_a: k_A, random matrices combined into A (r × in).
        n_basis_b: k_B, random matrices combined into B (out × r).
        alpha: LoRA's α; the delta is scaled by α / r.
        seed: parent seed; layer ``name`` uses ``derive_seed(seed, name)`` (stable across runs and machines).
        distribution: ``"uniform"`` (NOLA's code: U[-1, 1)) or ``"normal"`` basis entries.
        cache_basis: keep the basis matrices after first use (they are small: k · r · width numbers).
    """

    target_modules: list[str]
    rank: int = 8
    n_basis_a: int = 1024
    n_basis_b: int = 1024
    alpha: float = 8.0
    seed: int = 0
    distribution: Distribution = "uniform"
    cache_basis: bool = True

    def __post_init__(self) -> None:
        targets = self.target_modules
        if isinstance(targets, str) or not isinstance(targets, (list, tuple)):
            raise TypeError(f"target_modules must be a list of module names, got {targets!r}")
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"target_modules must be a non-empty list of non-empty strings, got {targets!r}")
        self.target_modules = list(targets)
        for name in ("rank", "n_basis_a", "n_basis_b"):
            _check_positive_int(name, getattr(self, name))
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not (math.isfinite(a) and a > 0):
            raise ValueError(f"alpha must be a finite float > 0, got {a!r}")
        _check_seed(self.seed)
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}")


class NOLALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a NOLA delta: y = base_layer(x) + (α/r) · x Aᵀ Bᵀ.

    Notation (paper → code)::

        A = (1/√k_A) Σᵢ aᵢ Aᵢ   (r, in)     Aᵢ = row i of basis_a, reshaped; aᵢ = nola_a[i]
        B = (1/√k_B) Σⱼ bⱼ Bⱼ   (out, r)    Bⱼ = row j of basis_b, reshaped; bⱼ = nola_b[j]
        ΔW = (α/r) B A           (out, in)   delta_weight()

    The basis matrices have i.i.d. U[-1, 1) (or N(0, 1)) entries and the 1/√k normalization of NOLA's code,
    so the scale of A and B does not grow with k. Only a and b are parameters.

    Initialization: b = 0, so the layer starts as its base (as LoRA and NOLA do); a is drawn from the layer
    seed, U[-√(3/in), √(3/in)), which gives A the variance 1/(3·in) of LoRA's ``kaiming_uniform_(a=√5)`` A
    (E[A²] = mean(a²) · E[Aᵢ²] = (1/in) · (1/3)). a ≠ 0 matters: with a = b = 0 both gradients vanish.

    Args:
        base_layer: the ``nn.Linear`` to adapt; its parameters are frozen.
        rank, n_basis_a, n_basis_b, alpha, distribution, cache_basis: see :class:`NOLAConfig`.
        seed: this layer's seed (``apply_nola`` passes ``derive_seed(config.seed, name)``).
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        *,
        rank: int,
        n_basis_a: int,
        n_basis_b: int,
        alpha: float,
        seed: int,
        distribution: Distribution = "uniform",
        cache_basis: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"base_layer must be an nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer.requires_grad_(False)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.rank, self.alpha, self.seed = int(rank), float(alpha), _check_seed(seed)
        self.scaling = self.alpha / self.rank
        self.basis_a = RandomBasis(derive_seed(seed, "A"), n_basis_a, self.rank * self.in_features,
                                   distribution=distribution, cache=cache_basis)
        self.basis_b = RandomBasis(derive_seed(seed, "B"), n_basis_b, self.out_features * self.rank,
                                   distribution=distribution, cache=cache_basis)
        w = base_layer.weight
        bound = math.sqrt(3.0 / self.in_features)
        a = basis_rows(derive_seed(seed, "a-init"), 0, 1, self.basis_a.n_basis)[0] * bound
        self.nola_a = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.nola_b = nn.Parameter(torch.zeros(self.basis_b.n_basis, device=w.device, dtype=w.dtype))
        self.merged = False

    def lora_A(self) -> torch.Tensor:
        """A (r, in), differentiable in a."""
        k = self.basis_a.n_basis
        return (self.basis_a.combine(self.nola_a) / math.sqrt(k)).view(self.rank, self.in_features)

    def lora_B(self) -> torch.Tensor:
        """B (out, r), differentiable in b."""
        k = self.basis_b.n_basis
        return (self.basis_b.combine(self.nola_b) / math.sqrt(k)).view(self.out_features, self.rank)

    def b_basis(self) -> torch.Tensor:
        """The k_B matrices Bⱼ/√k_B stacked: (k_B, out, r), so B = Σⱼ bⱼ · b_basis()[j]."""
        k = self.basis_b.n_basis
        B = self.basis_b.matrix(device=self.nola_b.device, dtype=self.nola_b.dtype) / math.sqrt(k)
        return B.view(k, self.out_features, self.rank)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) B A (out, in)."""
        return self.scaling * (self.lora_B() @ self.lora_A())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + self.scaling * F.linear(F.linear(x, self.lora_A()), self.lora_B())

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into ``base_layer.weight``; the forward then skips the delta."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (to float rounding)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def layer_config(self) -> dict:
        """JSON-able keyword arguments that rebuild this layer around its base (the checkpoint stores these)."""
        return {"rank": self.rank, "n_basis_a": self.basis_a.n_basis, "n_basis_b": self.basis_b.n_basis,
                "alpha": self.alpha, "seed": self.seed, "distribution": self.basis_a.distribution,
                "cache_basis": self.basis_a.cache}

    @property
    def n_stored(self) -> int:
        """Learned numbers of this layer: k_A + k_B."""
        return self.nola_a.numel() + self.nola_b.numel()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"n_basis_a={self.basis_a.n_basis}, n_basis_b={self.basis_b.n_basis}, scaling={self.scaling:g}, "
                f"merged={self.merged}")


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def nola_layers(model: nn.Module) -> dict[str, NOLALinear]:
    """{name: layer} for every :class:`NOLALinear` in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NOLALinear)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    prefix, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(prefix) if prefix else model, leaf, new)


def apply_nola(model: nn.Module, config: NOLAConfig) -> nn.Module:
    """Wrap every target ``nn.Linear`` of ``model`` in a :class:`NOLALinear`, in place; return ``model``.

    As peft does, every other parameter of ``model`` is frozen: the NOLA coefficients are the only
    trainable parameters. Layer ``name`` is seeded with ``derive_seed(config.seed, name)`` (a hash of the
    name's text, not Python's salted ``hash``), so the same model and config give the same bases anywhere.

    Raises:
        TypeError: ``config`` is not a :class:`NOLAConfig`, or a target is not an ``nn.Linear``.
        ValueError: a target matches no module (the message lists available ``nn.Linear`` names), or a
            target is already a :class:`NOLALinear`.
    """
    if not isinstance(config, NOLAConfig):
        raise TypeError(f"config must be a NOLAConfig, got {type(config).__name__}")
    inside_nola = {f"{name}.{sub}" for name, m in nola_layers(model).items() for sub, _ in m.named_modules() if sub}
    modules = {name: m for name, m in model.named_modules() if name and name not in inside_nola}
    linear_names = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
    chosen: dict[str, nn.Module] = {}
    for target in config.target_modules:
        found = {name: m for name, m in modules.items() if _matches(name, target)}
        if not found:
            shown = ", ".join(repr(n) for n in linear_names[:12]) + (", …" if len(linear_names) > 12 else "")
            raise ValueError(f"target module {target!r} matches no module of {type(model).__name__}; "
                             f"available nn.Linear modules: [{shown}]")
        chosen.update(found)
    for name, m in chosen.items():
        if isinstance(m, NOLALinear):
            raise ValueError(f"module {name!r} already carries NOLA; merge or remove it before applying NOLA again")
        if not isinstance(m, nn.Linear):
            raise TypeError(f"NOLA adapts nn.Linear layers only; target {name!r} is a {type(m).__name__}")
    model.requires_grad_(False)
    for name, m in chosen.items():
        layer = NOLALinear(m, rank=config.rank, n_basis_a=config.n_basis_a, n_basis_b=config.n_basis_b,
                           alpha=config.alpha, seed=derive_seed(config.seed, name), distribution=config.distribution,
                           cache_basis=config.cache_basis)
        _replace(model, name, layer)
    return model


def merge_nola(model: nn.Module, *, unload: bool = True) -> nn.Module:
    """Fold every NOLA delta into its base weight (W ← W + (α/r) B A), in place; return ``model``.

    With ``unload=True`` (peft's ``merge_and_unload``) each :class:`NOLALinear` is replaced by its
    ``base_layer``, leaving a plain model; with ``unload=False`` the wrappers stay, marked merged (their
    forward skips the delta) and can :meth:`NOLALinear.unmerge`.
    """
    for name, layer in nola_layers(model).items():
        layer.merge()
        if unload:
            _replace(model, name, layer.base_layer)
    return model


def nola_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The learned coefficients only: ``{"<layer>.nola_a": a, "<layer>.nola_b": b}`` for every NOLA layer."""
    out = {}
    for name, layer in nola_layers(model).items():
        out[f"{name}.nola_a"] = layer.nola_a.detach()
        out[f"{name}.nola_b"] = layer.nola_b.detach()
    return out


def load_nola_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Copy coefficients written by :func:`nola_state_dict` into ``model``'s NOLA layers (keys must match)."""
    expected = nola_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"NOLA state dict does not fit the model: missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    for key, target in expected.items():
        value = state[key]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"{key} must have shape {tuple(target.shape)}, got {tuple(value.shape)}")
        with torch.no_grad():
            target.copy_(value)
    return model
