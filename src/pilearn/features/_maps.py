"""Fixed, seeded feature maps ``x -> h``: the "H" of every closed-form fit in pilearn.

A map holds no trainable parameter. Its random tensors are non-persistent buffers rebuilt from the seed in its
config, so ``feature_map_from_config(m.get_config())`` reproduces ``m`` bit for bit and a checkpoint stores
a few numbers instead of the matrices.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Iterable, Iterator, Literal, Sequence

import torch
from torch import nn

from ._activations import get_activation, get_activation_
from ._random import MatrixKind, derive_seed, dtype_name, make_generator, parse_dtype, random_matrix, _check_seed

__all__ = [
    "FeatureMap",
    "RandomProjection",
    "BiPILFeatures",
    "RandomFourierFeatures",
    "ComposedFeatures",
    "ConcatFeatures",
    "feature_map_from_config",
    "register_feature_map",
    "stream_features",
]

Fusion = Literal["concat", "add", "single"]
FUSIONS: tuple[str, ...] = ("concat", "add", "single")

_REGISTRY: dict[str, type["FeatureMap"]] = {}


def register_feature_map(cls: type["FeatureMap"]) -> type["FeatureMap"]:
    """Class decorator: make ``cls`` rebuildable by :func:`feature_map_from_config` under ``cls.__name__``."""
    _REGISTRY[cls.__name__] = cls
    return cls


def feature_map_from_config(cfg: dict[str, Any], *, device: torch.device | str | None = None) -> "FeatureMap":
    """Rebuild a feature map from :meth:`FeatureMap.get_config` output (after a JSON round trip too).

    Args:
        cfg: ``{"type": <class name>, **constructor arguments}``.
        device: where to build the map; configs do not store a device, since the seed gives the same
            weights on every device.

    Raises:
        ValueError: ``cfg`` has no known ``"type"`` or carries arguments the class does not take.
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"cfg must be a dict, got {type(cfg).__name__}")
    kind = cfg.get("type")
    if kind not in _REGISTRY:
        raise ValueError(f"cfg['type'] must be one of {sorted(_REGISTRY)}, got {kind!r}")
    return _REGISTRY[kind].from_config(cfg, device=device)


def check_positive_int(name: str, value: object) -> int:
    """Return ``int(value)``; raise ``ValueError`` naming ``name`` unless it is a positive int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_nonnegative_int(name: str, value: object) -> int:
    """Return ``int(value)``; raise ``ValueError`` naming ``name`` unless it is an int ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: object) -> float:
    """Return ``float(value)``; raise ``ValueError`` naming ``name`` unless it is finite and ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < math.inf:
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value``; raise ``ValueError`` naming ``name`` and the valid choices unless it is one of them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value``; raise ``ValueError`` naming ``name`` unless it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def uniform_vector(size: int, low: float, high: float, *, seed: int) -> torch.Tensor:
    """``(size,)`` float64 draws of ``U(low, high)`` from ``make_generator(seed)`` on the CPU."""
    u = torch.rand(size, generator=make_generator(seed), dtype=torch.float64)
    return low + (high - low) * u


class FeatureMap(nn.Module):
    """Base class of the fixed feature maps: ``(n, in_features) -> (n, out_features)``.

    Subclasses set ``in_features`` and ``out_features``, register their random tensors with
    ``register_buffer(..., persistent=False)``, implement :meth:`_features` on a validated 2-D input and
    :meth:`get_config`. :meth:`forward` checks the input and casts it to the map's dtype and device.
    """

    in_features: int
    out_features: int
    #: whether ``forward(x, out=buf)`` computes into ``buf`` (no (n, out_features) temporary); where it does not,
    #: :func:`stream_features` gives fresh features per batch, since a copy into the buffer would only add a pass
    writes_into_out: bool = False

    def forward(self, x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``x`` of shape ``(n, in_features)`` (any floating dtype) to ``(n, out_features)``.

        Args:
            x: the inputs.
            out: optional contiguous ``(n, out_features)`` tensor of the map's dtype and device to write the
                features into (and return), as ``torch.mm(..., out=)`` does: a streaming fit that reuses one
                buffer for every batch skips a fresh allocation, and its page faults, per batch. Inference
                only: refused while autograd would record ``x``.
        """
        x = self._prepare(x)
        if out is None:
            return self._features(x)
        self._check_out(out, x)
        return self._features_into(x, out)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _features_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write ``self._features(x)`` into ``out``; maps that can compute in place override this."""
        return out.copy_(self._features(x))

    def _check_out(self, out: object, x: torch.Tensor) -> None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
        want = (x.shape[0], self.out_features)
        if tuple(out.shape) != want or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
            raise ValueError(
                f"out must be a contiguous {x.dtype} tensor of shape {want} on {x.device} for "
                f"{type(self).__name__}, got {'a non-contiguous ' if not out.is_contiguous() else ''}{out.dtype} "
                f"tensor of shape {tuple(out.shape)} on {out.device}"
            )
        if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
            raise ValueError("out= is for inference: call the feature map under torch.no_grad() (or with an "
                             "input that does not require grad) to write into a buffer")
        if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            raise ValueError("out must not share memory with x: the features would overwrite the input they are "
                             "computed from")

    def _reference(self) -> torch.Tensor | None:
        """A buffer whose dtype and device the input is cast to (None: leave the input as it is)."""
        return next(iter(self.buffers()), None)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = check_floating_input(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"x must have shape (n, {self.in_features}) for {type(self).__name__}, got {tuple(x.shape)}"
            )
        ref = self._reference()
        return x if ref is None else x.to(device=ref.device, dtype=ref.dtype)

    def get_config(self) -> dict[str, Any]:
        """JSON-serializable ``{"type": <class name>, **constructor arguments}``; see :func:`feature_map_from_config`."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, device: torch.device | str | None = None) -> "FeatureMap":
        """Build an instance from ``cfg`` (as written by :meth:`get_config`)."""
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        params = inspect.signature(cls.__init__).parameters
        accepted = [p for p in params if p not in ("self", "device")]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"config for {cls.__name__} has unknown keys {unknown}; accepted: {accepted}")
        if "device" in params:
            kwargs["device"] = device
        return cls(**kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def check_floating_input(x: object) -> torch.Tensor:
    """Raise unless ``x`` is a floating-point tensor; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    return x


@register_feature_map
class RandomProjection(FeatureMap):
    """Random hidden layer of an ELM / PIL network: ``h = act(scale · x @ W + b)``.

    Shapes: ``x (n, in_features)``, ``W (in_features, out_features)``, ``b (out_features,)``,
    ``h (n, out_features)``.

    * ``W = random_matrix((in_features, out_features), kind=kind, seed=seed)``: entries of mean 0 and
      ``E[w²] = 1`` (see :func:`random_matrix`). ``W`` depends on ``seed`` and ``kind`` only.
    * ``scale`` defaults to ``1/sqrt(in_features)``: for a fixed ``x`` and i.i.d. ``W`` the pre-activation
      ``z_j = scale · Σ_i x_i W_ij`` has mean 0 and variance ``‖x‖² / in_features``, the mean squared input
      coordinate — O(1) for standardized inputs, whatever ``in_features`` is.
    * ``b ~ U(-1, 1)`` i.i.d., drawn from the derived stream ``derive_seed(seed, "bias")``, so ``W`` is the
      same with and without a bias. The bias is not multiplied by ``scale``.

    The random tensors are the non-persistent buffers ``weight`` and ``bias`` (None when ``bias=False``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kind: MatrixKind = "gaussian",
        activation: str = "gelu",
        bias: bool = True,
        scale: float | None = None,
        density: float | None = None,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.kind = kind
        self.activation = activation
        self._act = get_activation(activation)
        self.use_bias = check_bool("bias", bias)
        self.scale = 1.0 / math.sqrt(self.in_features) if scale is None else check_positive_float("scale", scale)
        self._scale_arg = None if scale is None else self.scale
        self.density = density
        self.seed = _check_seed(seed)
        self.dtype = parse_dtype(dtype)
        w = random_matrix(
            (self.in_features, self.out_features), kind=kind, seed=self.seed, dtype=self.dtype, density=density
        )
        self.register_buffer("weight", w.to(device), persistent=False)
        b = None
        if self.use_bias:
            b = uniform_vector(self.out_features, -1.0, 1.0, seed=derive_seed(self.seed, "bias"))
            b = b.to(device=device, dtype=self.dtype)
        self.register_buffer("bias", b, persistent=False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            z = torch.mm(x, self.weight).mul_(self.scale)  # (n, out)
        else:
            z = torch.addmm(self.bias, x, self.weight, alpha=self.scale)  # b + scale * x @ W, (n, out)
        if torch.is_grad_enabled() and x.requires_grad:
            return self._act(z)
        return get_activation_(self.activation)(z)  # z is ours and no graph needs it: activate in place

    writes_into_out = True

    def _features_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # the same products as _features, written into out: bit for bit the same features
        if self.bias is None:
            torch.mm(x, self.weight, out=out).mul_(self.scale)
        else:
            torch.addmm(self.bias, x, self.weight, alpha=self.scale, out=out)
        return get_activation_(self.activation)(out)

    def get_config(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "kind": self.kind,
            "activation": self.activation,
            "bias": self.use_bias,
            "scale": self._scale_arg,
            "density": self.density,
            "seed": self.seed,
            "dtype": dtype_name(self.dtype),
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind!r}, activation={self.activation!r}, seed={self.seed}"


@register_feature_map
class BiPILFeatures(FeatureMap):
    """Bi-PIL fusion *as the seed notes describe it*: two independent random projections, fused.

    With ``h_k = act(scale · x @ W_k + b_k)`` for ``k = 1, 2`` (two :class:`RandomProjection` branches of
    width ``width``, seeds ``derive_seed(seed, "bipil", 0)`` and ``derive_seed(seed, "bipil", 1)``):

    * ``fusion="concat"``: ``h = [h_1, h_2]``, ``out_features = 2 · width``;
    * ``fusion="add"``: ``h = h_1 + h_2``, ``out_features = width``;
    * ``fusion="single"``: ``h = h_1`` only, ``out_features = width`` (the ablation baseline).

    Plainly: ``concat`` of two independent Gaussian (or Rademacher, or sparse) projections IS one random
    projection of width ``2 · width`` — ``[x W_1, x W_2] = x [W_1 | W_2]`` with ``[W_1 | W_2]`` i.i.d.
    just like a single ``(in, 2·width)`` draw — so it is distributed exactly like ``RandomProjection`` of
    width ``2 · width``; it adds nothing but a different seed. (For ``kind="orthogonal"`` it equals a
    block-orthogonal projection with two independent blocks.) ``add`` is the sum of two independent feature
    vectors of width ``width``; a ridge fit on it sees a width-``width`` feature space, not a wider one.
    The published Bi-PIL (Wang et al., IEEE TNNLS 2025) is a different, layer-wise method; this class is the
    seed notes' version, kept for its ablation against a single projection of equal total width.
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        *,
        fusion: Fusion = "concat",
        kind: MatrixKind = "gaussian",
        activation: str = "gelu",
        bias: bool = True,
        scale: float | None = None,
        density: float | None = None,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.fusion = check_choice("fusion", fusion, FUSIONS)
        self.width = check_positive_int("width", width)
        self.seed = _check_seed(seed)
        n_branches = 1 if fusion == "single" else 2
        self.branches = nn.ModuleList(
            RandomProjection(
                in_features,
                width,
                kind=kind,
                activation=activation,
                bias=bias,
                scale=scale,
                density=density,
                seed=derive_seed(self.seed, "bipil", k),
                dtype=dtype,
                device=device,
            )
            for k in range(n_branches)
        )
        self.in_features = self.branches[0].in_features
        self.out_features = 2 * self.width if fusion == "concat" else self.width
        self._branch_config = self.branches[0].get_config()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        hs = [branch._features(x) for branch in self.branches]  # each (n, width)
        if self.fusion == "concat":
            return torch.cat(hs, dim=1)  # (n, 2 * width)
        if self.fusion == "add":
            return hs[0] + hs[1]
        return hs[0]

    def get_config(self) -> dict[str, Any]:
        c = self._branch_config
        return {
            "type": type(self).__name__,
            "in_features": self.in_features,
            "width": self.width,
            "fusion": self.fusion,
            **{k: c[k] for k in ("kind", "activation", "bias", "scale", "density")},
            "seed": self.seed,
            "dtype": c["dtype"],
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fusion={self.fusion!r}, seed={self.seed}"


@register_feature_map
class RandomFourierFeatures(FeatureMap):
    """Random Fourier features for the Gaussian (RBF) kernel (Rahimi & Recht, NeurIPS 2007).

    ``z(x) = sqrt(2 / D) · cos(x @ W + b)`` with ``W (in, D)``, ``w_ij ~ N(0, 2γ)``, ``b_j ~ U(0, 2π)``,
    ``D = out_features``. By Bochner's theorem ``E[z(x) · z(y)] = exp(-γ ‖x - y‖²)``, and for a fixed pair
    the average over ``D`` bounded terms has standard deviation at most ``1/sqrt(D)``.

    ``W = sqrt(2γ) · random_matrix((in, D), seed=seed)`` (scaled in float64, then cast);
    ``b`` comes from the derived stream ``derive_seed(seed, "bias")``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        gamma: float = 1.0,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.gamma = check_positive_float("gamma", gamma)
        self.seed = _check_seed(seed)
        self.dtype = parse_dtype(dtype)
        w = random_matrix((self.in_features, self.out_features), seed=self.seed, dtype=torch.float64)
        w = w * math.sqrt(2.0 * self.gamma)
        b = uniform_vector(self.out_features, 0.0, 2.0 * math.pi, seed=derive_seed(self.seed, "bias"))
        self.register_buffer("weight", w.to(device=device, dtype=self.dtype), persistent=False)
        self.register_buffer("bias", b.to(device=device, dtype=self.dtype), persistent=False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.addmm(self.bias, x, self.weight)  # (n, D)
        return torch.cos_(z).mul_(math.sqrt(2.0 / self.out_features))

    def get_config(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "gamma": self.gamma,
            "seed": self.seed,
            "dtype": dtype_name(self.dtype),
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, seed={self.seed}"


def _check_maps(maps: object) -> list[FeatureMap]:
    if isinstance(maps, FeatureMap) or not isinstance(maps, Sequence) or len(maps) == 0:
        raise ValueError(f"maps must be a non-empty list of FeatureMap, got {maps!r}")
    for i, m in enumerate(maps):
        if not isinstance(m, FeatureMap):
            raise ValueError(f"maps[{i}] must be a FeatureMap, got {type(m).__name__}")
    return list(maps)


class _MapList(FeatureMap):
    """Shared config handling of the maps that hold other maps."""

    maps: nn.ModuleList

    def get_config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "maps": [m.get_config() for m in self.maps]}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, device: torch.device | str | None = None) -> FeatureMap:
        unknown = sorted(set(cfg) - {"type", "maps"})
        if unknown or not isinstance(cfg.get("maps"), list):
            raise ValueError(f"config for {cls.__name__} must be {{'type', 'maps': [configs]}}, got keys {sorted(cfg)}")
        return cls([feature_map_from_config(c, device=device) for c in cfg["maps"]])


@register_feature_map
class ComposedFeatures(_MapList):
    """Maps applied in sequence: ``h = f_K(... f_2(f_1(x)))``, a deep random network.

    ``maps[i].out_features`` must equal ``maps[i + 1].in_features``. The input is validated by ``maps[0]``
    (so a conv map first accepts ``(n, C, H, W)`` too).
    """

    def __init__(self, maps: Sequence[FeatureMap]) -> None:
        super().__init__()
        maps = _check_maps(maps)
        for i, (a, b) in enumerate(zip(maps, maps[1:])):
            if a.out_features != b.in_features:
                raise ValueError(
                    f"maps[{i}].out_features must equal maps[{i + 1}].in_features, "
                    f"got {a.out_features} and {b.in_features}"
                )
        self.maps = nn.ModuleList(maps)
        self.in_features = maps[0].in_features
        self.out_features = maps[-1].out_features

    def forward(self, x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, in_features)`` -> ``(n, out_features)``; each map validates and casts its own input. ``out``:
        see :meth:`FeatureMap.forward` (the last map writes into it)."""
        for m in self.maps[:-1]:
            x = m(x)
        return self.maps[-1](x, out=out)

    @property
    def writes_into_out(self) -> bool:  # type: ignore[override]
        return self.maps[-1].writes_into_out


@register_feature_map
class ConcatFeatures(_MapList):
    """Maps applied to the same input, outputs concatenated: ``h = [f_1(x), ..., f_K(x)]``.

    All maps must share ``in_features``; ``out_features = Σ_k maps[k].out_features``.
    """

    def __init__(self, maps: Sequence[FeatureMap]) -> None:
        super().__init__()
        maps = _check_maps(maps)
        for i, m in enumerate(maps):
            if m.in_features != maps[0].in_features:
                raise ValueError(
                    f"maps[{i}].in_features must equal maps[0].in_features, got {m.in_features} "
                    f"and {maps[0].in_features}"
                )
        self.maps = nn.ModuleList(maps)
        self.in_features = maps[0].in_features
        self.out_features = sum(m.out_features for m in maps)

    def forward(self, x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, in_features)`` -> ``(n, out_features)``, blocks in the order of ``maps``. ``out``: see
        :meth:`FeatureMap.forward`."""
        blocks = [m(x) for m in self.maps]
        if out is None:
            return torch.cat(blocks, dim=1)
        self._check_out(out, blocks[0])  # the blocks' row count, dtype and device
        return torch.cat(blocks, dim=1, out=out)


def stream_features(fmap: FeatureMap, batches: Iterable[tuple[torch.Tensor, ...]]) -> Iterator[tuple[torch.Tensor, ...]]:
    """``(fmap(x), *rest)`` for every ``(x, *rest)`` of ``batches``, all written into one reused buffer.

    A streaming fit consumes each batch's features before it asks for the next (``RidgeStats.update`` copies
    them into its own workspace), so a fresh ``(n, out_features)`` tensor per batch only costs an allocation
    and its page faults (64 MB of fresh pages per batch at 4,096 × 4,096 float32). Here every batch is written
    into the same buffer, grown only when a batch is longer than any before it.

    **Each yielded feature tensor is overwritten by the next batch**: copy it (``.clone()``) to keep it. Runs
    under ``torch.no_grad()``; the features are bit for bit those of ``fmap(x)``. Maps whose
    :attr:`~FeatureMap.writes_into_out` is False (they would compute fresh features and copy them) get fresh
    features per batch.

    Args:
        fmap: the feature map.
        batches: tuples whose first element is an ``(n, in_features)`` input batch; the rest pass through.
    """
    buf: torch.Tensor | None = None
    reuse = isinstance(fmap, FeatureMap) and fmap.writes_into_out
    for batch in batches:
        if not isinstance(batch, tuple) or not batch:
            raise TypeError(f"batches must yield non-empty tuples (x, ...), got {type(batch).__name__}")
        x, *rest = batch
        with torch.no_grad():
            if not reuse:
                H = fmap(x)
            elif buf is not None and len(x) <= buf.shape[0]:
                H = fmap(x, out=buf[: len(x)])
            else:  # the first batch, or a longer one: its fresh features become the buffer
                H = fmap(x)
                buf = H if H.is_contiguous() else None
        yield (H, *rest)
        del H, x, rest, batch  # a suspended generator keeps its locals alive: drop them before the next batch
