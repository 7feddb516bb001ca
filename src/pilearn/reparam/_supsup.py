"""SupSup: Supermasks in Superposition (Wortsman, Ramanujan, Liu, Kembhavi, Rastegari, Yosinski, Farhadi,
NeurIPS 2020, arXiv 2006.14769; reference code github.com/RAIVNLab/supsup).

One network with fixed random weights W is drawn once from a seed and never trained. Task i owns a real score
tensor S_i per layer; its binary *supermask* keeps the largest-|S_i| entries,

    M_i = top-k(|S_i|),   k = numel - int((1 - sparsity) * numel)   (the reference code's ``GetSubnet``)
    y   = f(x; W ⊙ M_i)

and is learned with the straight-through estimator: ∂L/∂|S_i| = ∂L/∂M_i, hence ∂L/∂S_i = ∂L/∂M_i · sign(S_i).

Notation (paper → code)::

    W          → layer.weight   fixed, signed Kaiming constant ±sqrt(2 / fan_in), a buffer rebuilt from the seed
    S_i        → layer.scores[i]  Kaiming-uniform init (a = √5), the only trained tensors
    M_i        → layer.mask(i)  bool, a fraction ``sparsity`` of entries True (convention: sparsity = kept fraction,
                                the reference code's ``k``; its SplitCIFAR/ImageNet runs sweep it; its PermutedMNIST
                                runs threshold S_i at 0 instead of top-k, which keeps ≈ 50 %)
    α          → net.set_alphas  superposition weights, W ⊙ Σ_i α_i M_i
    H          → _mean_entropy  mean over the batch of the per-example softmax entropy

Without task identity the task is inferred (§3.3): with α_i = 1/k the network runs on the superposition of all k
masks; the gradient ∂H/∂α_i says how fast the output entropy falls as mask i is up-weighted, so the one-shot guess
is argmax_i (−∂H/∂α_i). The binary variant repeats this, keeping the half of the candidates with the most negative
gradient, until one remains.

A checkpoint is the seed plus the masks as packed bits: T · Σ numel(W) bits and 64 for the seed.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..features import derive_seed, make_generator

__all__ = [
    "HopfieldMaskStore",
    "MaskedConv2d",
    "MaskedLinear",
    "SupSupMLP",
    "SupSupModel",
    "SupSupNet",
    "infer_task",
    "load_supsup",
    "permuted_mnist",
    "save_supsup",
    "supermask",
    "train_supermask",
]

logger = logging.getLogger(__name__)

_FORMAT = "pilearn.supsup"
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------- argument checks


def _check_sparsity(sparsity: object) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 < float(sparsity) < 1.0:
        raise ValueError(
            f"sparsity must be a float in (0, 1), the fraction of weights each mask keeps, got {sparsity!r}"
        )
    return float(sparsity)


def _check_int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if int(value) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def _check_task(task: object, n_tasks: int) -> int:
    if isinstance(task, bool) or not isinstance(task, numbers.Integral):
        raise TypeError(f"task must be an int, got {type(task).__name__} {task!r}")
    if not 0 <= int(task) < n_tasks:
        raise ValueError(f"task must be in [0, {n_tasks}) (n_tasks={n_tasks}), got {task!r}")
    return int(task)


# ---------------------------------------------------------------------------------------------- the mask


def _topk_mask(magnitude: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask with True at the ``n_keep`` largest entries of ``magnitude`` (exactly ``n_keep`` of them)."""
    flat = torch.zeros(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
    flat[torch.topk(magnitude.detach().flatten(), n_keep, sorted=False).indices] = True
    return flat.view(magnitude.shape)


class _StraightThroughTopK(torch.autograd.Function):
    """M = top-k(|S|) forward; the gradient passes to |S| unchanged, as if M were the identity (Bengio et al.,
    2013; the reference code's ``GetSubnet``)."""

    @staticmethod
    def forward(ctx, magnitude: torch.Tensor, n_keep: int) -> torch.Tensor:  # noqa: D102
        return _topk_mask(magnitude, n_keep).to(magnitude.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad, None


# ---------------------------------------------------------------------------------------------- masked layers


class _MaskedLayer(nn.Module):
    """Shared state of a masked layer: fixed signed-constant weight, ``n_tasks`` score tensors, the task mode.

    Every tensor is drawn from CPU generators seeded with ``derive_seed(seed, "weight" | "bias" | "scores", i)``,
    so a layer is rebuilt bit for bit from its seed on any device.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def _init_masked(self, shape: tuple[int, ...], n_tasks: int, sparsity: float, seed: int, bias: bool) -> None:
        self.n_tasks = _check_int(n_tasks, "n_tasks", 1)
        self.sparsity = _check_sparsity(sparsity)
        self.seed = seed
        numel = math.prod(shape)
        self.n_keep = numel - int((1.0 - self.sparsity) * numel)  # the reference code's count, exact per layer
        fan_in = numel // shape[0]
        # Signed Kaiming constant (Ramanujan et al., 2020; the reference code's signed_constant): ±gain/sqrt(fan_in)
        # with gain = √2 (ReLU). The paper takes the sign of a Kaiming-normal draw; a fair coin is the same law.
        sigma = math.sqrt(2.0) / math.sqrt(fan_in)
        signs = torch.randint(0, 2, shape, generator=make_generator(derive_seed(seed, "weight"))) * 2 - 1
        self.register_buffer("weight", signs.to(torch.float32) * sigma, persistent=False)
        if bias:  # not in the paper (its nets have no bias): a fixed random bias, PyTorch's default U(±1/sqrt(fan_in))
            u = torch.rand(shape[0], generator=make_generator(derive_seed(seed, "bias")), dtype=torch.float64)
            self.register_buffer("bias", ((2 * u - 1) / math.sqrt(fan_in)).to(torch.float32), persistent=False)
        else:
            self.bias = None
        self.scores = nn.ParameterList([nn.Parameter(self._init_scores(shape, t)) for t in range(self.n_tasks)])
        self.register_buffer("_stacked", None, persistent=False)
        self._stacked_versions: tuple[int, ...] | None = None
        self._task = 0
        self._alphas: torch.Tensor | None = None

    def _init_scores(self, shape: tuple[int, ...], task: int) -> torch.Tensor:
        scores = torch.empty(shape)
        # The reference code's mask_init: Kaiming-uniform with a = √5, i.e. U(±1/sqrt(fan_in)).
        generator = make_generator(derive_seed(self.seed, "scores", task))
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=generator)
        return scores

    def mask(self, task: int) -> torch.Tensor:
        """Bool supermask of ``task``, shape of ``weight``, exactly ``n_keep`` entries True."""
        return _topk_mask(self.scores[_check_task(task, self.n_tasks)].abs(), self.n_keep)

    def set_task(self, task: int) -> None:
        """Use task ``task``'s mask in the forward pass (gradients reach its scores by straight-through)."""
        self._task = _check_task(task, self.n_tasks)
        self._alphas = None

    def set_alphas(self, alphas: torch.Tensor) -> None:
        """Superposition mode: the forward pass uses W ⊙ Σ_i α_i M_i (masks cached, gradients reach α only)."""
        versions = tuple(s._version for s in self.scores)
        if self._stacked is None or self._stacked_versions != versions:
            with torch.no_grad():
                self._stacked = torch.stack([self.mask(t) for t in range(self.n_tasks)])  # (T, *weight.shape)
            self._stacked_versions = versions
        self._alphas = alphas

    def clear_mask_cache(self) -> None:
        """Drop the stacked masks that superposition mode caches (T x numel bools)."""
        self._stacked, self._stacked_versions = None, None

    def effective_weight(self) -> torch.Tensor:
        """W ⊙ M_task in task mode, W ⊙ Σ_i α_i M_i in superposition mode."""
        if self._alphas is None:
            return self.weight * _StraightThroughTopK.apply(self.scores[self._task].abs(), self.n_keep)
        mix = torch.tensordot(self._alphas, self._stacked.to(self._alphas.dtype), dims=1)
        return self.weight * mix.to(self.weight.dtype)


class MaskedLinear(_MaskedLayer):
    """Linear layer y = x (W ⊙ M_t)ᵀ + b with fixed signed-constant W and one learned supermask per task.

    Args:
        in_features, out_features: W has shape (out_features, in_features).
        n_tasks: number of score tensors (tasks), >= 1.
        sparsity: fraction of W each mask keeps, in (0, 1); exactly ``n_keep = numel - int((1 - sparsity) numel)``.
        seed: seed of this layer's weight, bias and scores (CPU generators; identical on every device).
        bias: add a fixed random bias (the paper's networks have none).

    Shapes: input (..., in_features) → output (..., out_features).
    """

    def __init__(
        self, in_features: int, out_features: int, n_tasks: int, *, sparsity: float, seed: int, bias: bool = False
    ) -> None:
        super().__init__()
        self.in_features = _check_int(in_features, "in_features", 1)
        self.out_features = _check_int(out_features, "out_features", 1)
        self._init_masked((self.out_features, self.in_features), n_tasks, sparsity, seed, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}), got {tuple(x.shape)}")
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.in_features}, {self.out_features}, n_tasks={self.n_tasks}, sparsity={self.sparsity}"


class MaskedConv2d(_MaskedLayer):
    """2-D convolution with fixed signed-constant W (out, in/groups, kh, kw) and one supermask per task.

    Arguments as :class:`MaskedLinear`, plus those of :class:`torch.nn.Conv2d` (zero padding only).
    Shapes: input (N, in_channels, H, W) → output (N, out_channels, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        n_tasks: int,
        *,
        sparsity: float,
        seed: int,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = _check_int(in_channels, "in_channels", 1)
        self.out_channels = _check_int(out_channels, "out_channels", 1)
        self.groups = _check_int(groups, "groups", 1)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"in_channels and out_channels must be divisible by groups={groups}, got "
                             f"{in_channels} and {out_channels}")
        self.kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._init_masked(shape, n_tasks, sparsity, seed, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, n_tasks={self.n_tasks}, "
                f"sparsity={self.sparsity}")


# ---------------------------------------------------------------------------------------------- networks


class SupSupNet(nn.Module):
    """Base of a SupSup network: every masked layer shares the task mode set here.

    Subclasses set ``n_tasks``, ``sparsity``, ``seed`` and hold :class:`MaskedLinear` / :class:`MaskedConv2d`
    layers; layer ``name`` draws from ``derive_seed(seed, name)``.
    """

    n_tasks: int
    sparsity: float
    seed: int

    def masked_layers(self) -> list[tuple[str, _MaskedLayer]]:
        """(qualified name, layer) of every masked layer, in module order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, _MaskedLayer)]

    @property
    def task(self) -> int | None:
        """The task whose mask is in use, or None in superposition mode."""
        layer = self.masked_layers()[0][1]
        return None if layer._alphas is not None else layer._task

    @property
    def alphas(self) -> torch.Tensor | None:
        """The superposition weights α (T,), or None in task mode."""
        return self.masked_layers()[0][1]._alphas

    def set_task(self, task: int) -> SupSupNet:
        """Use task ``task``'s supermask everywhere. Returns self."""
        task = _check_task(task, self.n_tasks)
        for _, layer in self.masked_layers():
            layer.set_task(task)
        return self

    def set_alphas(self, alphas: torch.Tensor) -> SupSupNet:
        """Superposition mode: every layer uses W ⊙ Σ_i α_i M_i (paper eq. 4). Returns self.

        Args:
            alphas: floating tensor of shape (n_tasks,), typically ``requires_grad=True`` for task inference.
                The masks are computed once and cached until the scores change.
        """
        if not isinstance(alphas, torch.Tensor):
            raise TypeError(f"alphas must be a torch.Tensor, got {type(alphas).__name__}")
        if alphas.shape != (self.n_tasks,) or not alphas.is_floating_point():
            raise ValueError(f"alphas must be a floating tensor of shape ({self.n_tasks},), got "
                             f"{alphas.dtype} of shape {tuple(alphas.shape)}")
        for _, layer in self.masked_layers():
            layer.set_alphas(alphas)
        return self

    def clear_mask_cache(self) -> None:
        """Free the masks cached by superposition mode."""
        for _, layer in self.masked_layers():
            layer.clear_mask_cache()

    def masks(self, task: int) -> dict[str, torch.Tensor]:
        """Task ``task``'s supermask per layer: name → bool tensor shaped like the layer's weight."""
        task = _check_task(task, self.n_tasks)
        return {name: layer.mask(task) for name, layer in self.masked_layers()}

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The score tensors of ``task``, one per masked layer: what training on that task updates."""
        task = _check_task(task, self.n_tasks)
        return [layer.scores[task] for _, layer in self.masked_layers()]

    @property
    def n_stored_bits(self) -> int:
        """Bits of a checkpoint's content: 64 for the seed plus one bit per weight per task (the masks)."""
        return 64 + self.n_tasks * sum(layer.weight.numel() for _, layer in self.masked_layers())

    def _config(self) -> dict:
        raise NotImplementedError


class SupSupMLP(SupSupNet):
    """The paper's PermutedMNIST network: fully connected 784-1024-1024-10, ReLU, no bias, fixed random weights.

    Args:
        sizes: layer widths (d_in, h_1, ..., d_out), at least two entries.
        n_tasks: number of supermasks, >= 1.
        sparsity: fraction of each layer's weights a mask keeps, in (0, 1) (paper GG: 0.5).
        seed: the one integer from which every weight and initial score is drawn.
        bias: fixed random biases (the paper has none).

    Shapes: input (N, d_in) or (N, ...) with d_in features per row (e.g. (N, 1, 28, 28)) → logits (N, d_out).
    """

    def __init__(
        self,
        sizes: Sequence[int] = (784, 1024, 1024, 10),
        n_tasks: int = 1,
        *,
        sparsity: float = 0.5,
        seed: int,
        bias: bool = False,
    ) -> None:
        super().__init__()
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must have at least 2 entries (d_in, d_out), got {sizes!r}")
        self.sizes = tuple(_check_int(s, "sizes", 1) for s in sizes)
        self.n_tasks = _check_int(n_tasks, "n_tasks", 1)
        self.sparsity = _check_sparsity(sparsity)
        self.seed = seed
        self.bias = bool(bias)
        self.layers = nn.ModuleList([
            MaskedLinear(d_in, d_out, n_tasks, sparsity=sparsity, seed=derive_seed(seed, f"layers.{i}"), bias=bias)
            for i, (d_in, d_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:]))
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.sizes[0]:
            raise ValueError(f"x must have shape (N, {self.sizes[0]}) or (N, ...) with {self.sizes[0]} features "
                             f"per row, got {tuple(x.shape)}")
        h = x.reshape(x.shape[0], -1)  # (N, d_in)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h  # (N, d_out)

    def _config(self) -> dict:
        return {"kind": "SupSupMLP", "sizes": list(self.sizes), "bias": self.bias}


class SupSupModel(SupSupNet):
    """An arbitrary module whose ``nn.Linear`` / ``nn.Conv2d`` layers were replaced by masked layers
    (see :func:`supermask`). ``forward`` is the wrapped module's."""

    def __init__(self, module: nn.Module, n_tasks: int, *, sparsity: float, seed: int) -> None:
        super().__init__()
        self.module = module
        self.n_tasks, self.sparsity, self.seed = n_tasks, sparsity, seed

    def forward(self, *args, **kwargs):  # noqa: D102
        return self.module(*args, **kwargs)

    def _config(self) -> dict:
        return {"kind": "module"}


def _masked_copy(layer: nn.Module, n_tasks: int, sparsity: float, seed: int) -> _MaskedLayer:
    if isinstance(layer, nn.Linear):
        return MaskedLinear(layer.in_features, layer.out_features, n_tasks, sparsity=sparsity, seed=seed,
                            bias=layer.bias is not None)
    if layer.padding_mode != "zeros":
        raise ValueError(f"supermask supports Conv2d with padding_mode='zeros' only, got {layer.padding_mode!r}")
    return MaskedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, n_tasks, sparsity=sparsity,
                        seed=seed, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                        groups=layer.groups, bias=layer.bias is not None)


def supermask(module: nn.Module, n_tasks: int, *, sparsity: float = 0.5, seed: int) -> SupSupModel:
    """Turn ``module`` into a SupSup network: every ``nn.Linear`` / ``nn.Conv2d`` is replaced, in place, by a
    masked layer of the same geometry whose weights are re-drawn from ``seed`` (signed Kaiming constant; the
    module's own weights are discarded) and which holds ``n_tasks`` score tensors.

    Every other parameter of ``module`` is frozen (``requires_grad=False``), as the paper keeps the network
    fixed; state such as BatchNorm running statistics is shared by all tasks (the paper uses per-task non-affine
    BatchNorm; not provided here) and is not saved by :func:`save_supsup`.

    Args:
        module: the architecture; modified in place.
        n_tasks: number of supermasks, >= 1.
        sparsity: fraction of each layer's weights a mask keeps, in (0, 1).
        seed: layer ``name`` draws from ``derive_seed(seed, name)``.

    Returns:
        A :class:`SupSupModel` wrapping ``module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    n_tasks = _check_int(n_tasks, "n_tasks", 1)
    sparsity = _check_sparsity(sparsity)
    targets = [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not targets:
        raise ValueError(f"module must contain an nn.Linear or nn.Conv2d layer to mask, got {type(module).__name__}")
    for p in module.parameters():
        p.requires_grad_(False)
    if targets[0][0] == "":  # the module is itself a Linear / Conv2d
        module = _masked_copy(module, n_tasks, sparsity, derive_seed(seed, ""))
        targets = []
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        parent.register_module(child, _masked_copy(layer, n_tasks, sparsity, derive_seed(seed, name)))
    return SupSupModel(module, n_tasks, sparsity=sparsity, seed=seed)


# ---------------------------------------------------------------------------------------------- task inference


def _mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = mean_n ( -Σ_c p_nc log p_nc ), p = softmax(logits): the reference code's adaptation criterion."""
    logp = logits.log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def _entropy_grad(model: SupSupNet, x: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """∂H/∂α at ``alphas`` for the batch ``x``: shape (n_tasks,)."""
    alphas = alphas.detach().requires_grad_(True)
    model.set_alphas(alphas)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(_mean_entropy(model(x)), alphas)
    return grad


def infer_task(
    model: SupSupNet,
    x: torch.Tensor,
    method: Literal["one_shot", "binary", "min_entropy"] = "one_shot",
    *,
    n_learned: int | None = None,
) -> int:
    """Infer which task a batch comes from by entropy minimisation over the superposed masks (paper §3.3).

    One-shot: α_i = 1/k for the k learned tasks, H = mean per-example entropy of softmax(f(x; W ⊙ Σ α_i M_i)),
    task = argmax_i (−∂H/∂α_i). Binary: start from all k candidates; repeat "α uniform on the candidates, keep
    those with ∂H/∂α_i <= the (lower) median" until one remains (≈ log2 k gradient evaluations). Min-entropy (the
    exact search the gradient approximates, not the paper's rule): task = argmin_i H(softmax(f(x; W ⊙ M_i))), k
    forward passes and no gradient. The gradient rules read the task off the superposed network; when that network's
    output is close to uniform (e.g. many masks of one wide net superposed), its entropy gradient carries little task
    signal and they fail while min-entropy does not (``pilearn bench reparam`` measures all three).

    Args:
        model: a :class:`SupSupNet`; its task mode is restored afterwards.
        x: a batch from one task, shaped as ``model`` expects (e.g. (N, 784)); the paper uses N = 128.
        method: ``"one_shot"``, ``"binary"`` or ``"min_entropy"``.
        n_learned: the candidates are tasks 0..n_learned-1 (default: all ``model.n_tasks``).

    Returns:
        The inferred task index.
    """
    if not isinstance(model, SupSupNet):
        raise TypeError(f"model must be a SupSupNet, got {type(model).__name__}")
    if method not in ("one_shot", "binary", "min_entropy"):
        raise ValueError(f"method must be 'one_shot', 'binary' or 'min_entropy', got {method!r}")
    k = model.n_tasks if n_learned is None else _check_int(n_learned, "n_learned", 1)
    if k > model.n_tasks:
        raise ValueError(f"n_learned must be <= n_tasks={model.n_tasks}, got {n_learned!r}")
    if k == 1:
        return 0
    previous_task, previous_alphas = model.task, model.alphas
    device = model.masked_layers()[0][1].weight.device
    try:
        if method == "min_entropy":
            with torch.no_grad():
                entropies = []
                for i in range(k):
                    model.set_task(i)
                    entropies.append(float(_mean_entropy(model(x))))
            return int(np.argmin(entropies))
        candidates = torch.arange(model.n_tasks, device=device) < k
        while True:
            alphas = candidates.to(torch.float32) / candidates.sum()
            grad = _entropy_grad(model, x, alphas)
            if method == "one_shot":
                return int(torch.where(candidates, grad, torch.inf).argmin())
            keep = candidates & (grad <= grad[candidates].median())
            if keep.sum() == candidates.sum():  # ties: no halving, fall back to the single best
                keep = torch.zeros_like(candidates)
                keep[torch.where(candidates, grad, torch.inf).argmin()] = True
            candidates = keep
            if candidates.sum() == 1:
                return int(candidates.nonzero()[0])
    finally:
        if previous_alphas is not None:
            model.set_alphas(previous_alphas)
        else:
            model.set_task(previous_task)


# ---------------------------------------------------------------------------------------------- training


def _batches(
    data: tuple[torch.Tensor, torch.Tensor] | Iterable, batch_size: int, generator: torch.Generator
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data tensors must have the same number of rows, got x {tuple(x.shape)} and "
                             f"y {tuple(y.shape)}")
        order = torch.randperm(x.shape[0], generator=generator)
        return ((x[idx], y[idx]) for idx in order.split(batch_size))
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(f"data must be a tuple (x, y) of tensors or an iterable of (x, y) batches, got "
                        f"{type(data).__name__}")
    return data


def _make_optimizer(params: list[nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'adam', 'rmsprop' or 'sgd', got {name!r}")


def train_supermask(
    model: SupSupNet,
    task: int,
    data: tuple[torch.Tensor, torch.Tensor] | Iterable,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    optimizer: Literal["adam", "rmsprop", "sgd"] = "adam",
    batch_size: int = 128,
    max_steps: int | None = None,
    seed: int = 0,
) -> dict:
    """Learn task ``task``'s supermask: minimise cross-entropy over its scores only (straight-through top-k).

    Only ``model.task_parameters(task)`` is given to the optimiser and only task ``task``'s mask is in the
    forward pass, so every other task's scores are untouched bit for bit. The model is left in task mode
    ``task``, in the training/eval mode it had.

    Args:
        model: a :class:`SupSupNet` producing logits (N, C).
        task: index of the task to train.
        data: ``(x, y)`` tensors (shuffled with ``seed``, split into ``batch_size`` batches each epoch) or any
            iterable of ``(x, y)`` batches (a DataLoader).
        epochs: passes over ``data``.
        lr: learning rate. The reference code uses RMSprop lr 1e-4 for PermutedMNIST, Adam lr 1e-3 for SplitCIFAR.
        optimizer: ``"adam"``, ``"rmsprop"`` or ``"sgd"`` (momentum 0.9).
        batch_size: for tensor data.
        max_steps: stop after this many optimiser steps in all (the reference code's ``iter_lim``).
        seed: shuffling seed for tensor data.

    Returns:
        Report: ``task``, ``optimizer``, ``lr``, ``n_steps`` and per epoch ``loss`` (mean), ``accuracy`` (on
        the training batches, under the mask being learned) and ``seconds``.
    """
    if not isinstance(model, SupSupNet):
        raise TypeError(f"model must be a SupSupNet, got {type(model).__name__}")
    task = _check_task(task, model.n_tasks)
    epochs = _check_int(epochs, "epochs", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    if max_steps is not None:
        max_steps = _check_int(max_steps, "max_steps", 1)
    if not isinstance(lr, numbers.Real) or not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    opt = _make_optimizer(model.task_parameters(task), optimizer, float(lr))
    device = model.masked_layers()[0][1].weight.device
    generator = make_generator(seed)
    was_training = model.training
    model.train().set_task(task)
    report: dict = {"task": task, "optimizer": optimizer, "lr": float(lr), "n_steps": 0,
                    "loss": [], "accuracy": [], "seconds": []}
    for epoch in range(epochs):
        start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in _batches(data, batch_size, generator):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * y.shape[0]
            correct += int((logits.argmax(-1) == y).sum())
            seen += y.shape[0]
            report["n_steps"] += 1
            if max_steps is not None and report["n_steps"] >= max_steps:
                break
        report["loss"].append(loss_sum / max(seen, 1))
        report["accuracy"].append(correct / max(seen, 1))
        report["seconds"].append(time.perf_counter() - start)
        logger.info("task %d epoch %d: loss %.4f, train acc %.4f, %.1f s", task, epoch, report["loss"][-1],
                    report["accuracy"][-1], report["seconds"][-1])
        if max_steps is not None and report["n_steps"] >= max_steps:
            break
    model.train(was_training)
    return report


# ---------------------------------------------------------------------------------------------- storage


def save_supsup(model: SupSupNet, path: str | Path) -> None:
    """Write the seed and the masks of every task: safetensors, one uint8 tensor ``masks.<layer>`` of shape
    (n_tasks, ceil(numel / 8)) per layer (``numpy.packbits`` of the flattened masks), the configuration as JSON
    in the file's metadata. The weights and scores are not stored: weights regrow from the seed, masks are the
    bits. For a :class:`SupSupModel`, the architecture and any non-masked state are not stored either.
    """
    from safetensors.numpy import save_file

    if not isinstance(model, SupSupNet):
        raise TypeError(f"model must be a SupSupNet, got {type(model).__name__}")
    tensors, shapes = {}, {}
    for name, layer in model.masked_layers():
        bits = torch.stack([layer.mask(t).flatten() for t in range(model.n_tasks)]).cpu().numpy()  # (T, numel)
        tensors[f"masks.{name}"] = np.packbits(bits, axis=1)
        shapes[name] = list(layer.weight.shape)
    config = {"n_tasks": model.n_tasks, "sparsity": model.sparsity, "seed": model.seed, "layers": shapes,
              **model._config()}
    save_file(tensors, str(path), metadata={"format": _FORMAT, "version": str(_FORMAT_VERSION),
                                            "config": json.dumps(config)})


def load_supsup(path: str | Path, module: nn.Module | None = None) -> SupSupNet:
    """Rebuild a network saved by :func:`save_supsup`: weights from the seed, each task's scores set to
    1 where its mask keeps a weight and 1/2 elsewhere, so top-k(|scores|) is exactly the stored mask (and the
    scores stay trainable). Outputs equal the saved model's for every task.

    Args:
        path: the file.
        module: for a checkpoint of a :class:`SupSupModel`, a fresh instance of the original architecture
            (its weights are ignored); not needed for :class:`SupSupMLP`.
    """
    from .._safetensors import read_safetensors

    meta, bits = read_safetensors(path, "SupSup checkpoint", framework="np")
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a SupSup checkpoint (format {meta.get('format')!r})")
    config = json.loads(meta["config"])
    if config["kind"] == "SupSupMLP":
        model: SupSupNet = SupSupMLP(config["sizes"], config["n_tasks"], sparsity=config["sparsity"],
                                     seed=config["seed"], bias=config["bias"])
    elif module is None:
        raise ValueError("module is required to load a checkpoint of a supermask()-wrapped module, got None")
    else:
        model = supermask(module, config["n_tasks"], sparsity=config["sparsity"], seed=config["seed"])
    layers = dict(model.masked_layers())
    if {n: list(m.weight.shape) for n, m in layers.items()} != config["layers"]:
        raise ValueError(f"module's masked layers {[(n, list(m.weight.shape)) for n, m in layers.items()]} do "
                         f"not match the checkpoint's {list(config['layers'].items())}")
    for name, layer in layers.items():
        numel = layer.weight.numel()
        masks = torch.from_numpy(np.unpackbits(bits[f"masks.{name}"], axis=1, count=numel).astype(bool))
        if not bool((masks.sum(1) == layer.n_keep).all()):
            raise ValueError(f"masks of layer {name!r} must keep {layer.n_keep} weights each, got "
                             f"{masks.sum(1).tolist()}")
        with torch.no_grad():
            for t in range(model.n_tasks):
                layer.scores[t].copy_(torch.where(masks[t], 1.0, 0.5).view(layer.weight.shape))
    return model


# ---------------------------------------------------------------------------------------------- PermutedMNIST


def permuted_mnist(x: torch.Tensor, n_tasks: int, *, seed: int, identity_first: bool = False) -> list[torch.Tensor]:
    """Pixel permutations of PermutedMNIST (Goodfellow et al., 2013; the paper's GG/GNu benchmark): task t's
    inputs are ``x[:, perms[t]]``.

    Args:
        x: (N, D) flattened images (D = 784 for MNIST); only D is used.
        n_tasks: number of tasks, >= 1.
        seed: permutation t is ``torch.randperm(D)`` from the CPU generator ``derive_seed(seed, "perm", t)``.
        identity_first: make task 0 the unpermuted images (the paper permutes every task).

    Returns:
        ``n_tasks`` int64 tensors of shape (D,).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a tensor of shape (N, D), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    n_tasks = _check_int(n_tasks, "n_tasks", 1)
    d = x.shape[1]
    perms = [torch.randperm(d, generator=make_generator(derive_seed(seed, "perm", t))) for t in range(n_tasks)]
    if identity_first:
        perms[0] = torch.arange(d)
    return perms


# ---------------------------------------------------------------------------------------------- Hopfield store


class HopfieldMaskStore:
    """Masks stored as attractors of a Hopfield network (the paper's "HopSupSup"; reference code
    ``FastHopMaskBN`` and ``adaptors.hopfield_recovery``).

    A mask m ∈ {0,1}^d is stored as the pattern x = 2m − 1 ∈ {±1}^d in a symmetric d×d matrix W. The
    ``"storkey"`` rule is the one in the reference code (``FastHopMaskBN.cache_masks``), a Storkey (1997) update
    with the full local field h = W x:

        W ← W + (x xᵀ − I − x hᵀ − h xᵀ) / d

    and ``"hebbian"`` is W ← W + (x xᵀ − I) / d (capacity ≈ 0.14 d; Storkey's is larger).

    Recall minimises the energy E(s) = −½ sᵀ W s from a cue:

    * ``"async"``: the classical dynamics, s_i ← sign(Σ_{j≠i} W_ij s_j) one unit at a time in index order,
      sweeping until a fixed point (each flip lowers E). Deterministic.
    * ``"gradient"``: what the paper does — real scores u, s = sign(u) by straight-through, gradient steps
      u ← u − lr ∂E/∂u = u + lr W s. The paper starts u at the mean of the stored patterns and adds the network's
      output entropy to E (annealed from entropy to energy) so the *data* pick the basin; this store knows no
      network, so it starts u at the cue and descends E alone.

    W is dense (d² float64): meant for masks of a few thousand bits (the paper stores BatchNorm-scale masks,
    d = 2048 per layer), not whole-network masks.

    Args:
        dim: number of bits d of a mask, >= 1.
        rule: ``"storkey"`` (default, the paper's) or ``"hebbian"``.
    """

    def __init__(self, dim: int, *, rule: Literal["storkey", "hebbian"] = "storkey") -> None:
        self.dim = _check_int(dim, "dim", 1)
        if rule not in ("storkey", "hebbian"):
            raise ValueError(f"rule must be 'storkey' or 'hebbian', got {rule!r}")
        self.rule = rule
        self.W = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        self.n_stored = 0

    def _pattern(self, mask: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor) or mask.numel() != self.dim:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"{name} must be a tensor with {self.dim} entries (dim), got {got}")
        flat = mask.detach().flatten().cpu()
        if not bool(((flat == 0) | (flat == 1)).all()):
            raise ValueError(f"{name} must be binary (bool or 0/1 entries)")
        return flat.to(torch.float64) * 2 - 1  # (d,) in {±1}

    def store(self, mask: torch.Tensor) -> None:
        """Add a mask (any shape with ``dim`` binary entries) as an attractor."""
        x = self._pattern(mask, "mask")
        update = torch.outer(x, x) - torch.eye(self.dim, dtype=torch.float64)
        if self.rule == "storkey":
            h = self.W @ x
            update -= torch.outer(x, h) + torch.outer(h, x)
        self.W += update / self.dim
        self.n_stored += 1

    def energy(self, mask: torch.Tensor) -> float:
        """E(s) = −½ sᵀ W s at s = 2 mask − 1."""
        s = self._pattern(mask, "mask")
        return float(-0.5 * s @ self.W @ s)

    def recall(
        self, cue: torch.Tensor, steps: int = 20, *, method: Literal["async", "gradient"] = "async", lr: float = 1.0
    ) -> torch.Tensor:
        """Descend the energy from ``cue`` (a corrupted or partial mask) for at most ``steps`` sweeps / gradient
        steps; returns the recalled bool mask, shaped like ``cue``."""
        steps = _check_int(steps, "steps", 1)
        s = self._pattern(cue, "cue")
        if method == "async":
            s = self._recall_async(s, steps)
        elif method == "gradient":
            s = self._recall_gradient(s, steps, float(lr))
        else:
            raise ValueError(f"method must be 'async' or 'gradient', got {method!r}")
        return (s > 0).view(cue.shape).to(cue.device)

    def _recall_async(self, s: torch.Tensor, steps: int) -> torch.Tensor:
        W = self.W.clone()
        W.fill_diagonal_(0.0)
        w, s = W.numpy(), s.numpy().copy()
        for _ in range(steps):
            changed = False
            for i in range(self.dim):
                field = w[i] @ s
                if field != 0 and np.sign(field) != s[i]:
                    s[i], changed = np.sign(field), True
            if not changed:
                break
        return torch.from_numpy(s)

    def _recall_gradient(self, s: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
        u = s.clone()
        for _ in range(steps):
            u = u + lr * (self.W @ torch.where(u >= 0, 1.0, -1.0).to(torch.float64))  # −∂E/∂u, straight-through
        return torch.where(u >= 0, 1.0, -1.0)
