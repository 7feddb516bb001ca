"""Random convolutional features: fixed seeded filters, activation, pooling, flatten."""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F

from ._activations import get_activation
from ._maps import (
    FeatureMap,
    check_bool,
    check_choice,
    check_floating_input,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    register_feature_map,
    uniform_vector,
)
from ._random import MatrixKind, _check_seed, derive_seed, dtype_name, parse_dtype, random_matrix

__all__ = ["RandomConvFeatures"]

Pool = Literal["avg", "max", "none"]
POOLS: tuple[str, ...] = ("avg", "max", "none")

# Conv-output values per chunk in RandomConvFeatures (2**20 float32 = 4 MiB): small enough to stay in cache
# and to be recycled by the allocator, large enough that per-call overhead is negligible.
_CHUNK_ELEMENTS = 2**20


def _check_in_shape(in_shape: object) -> tuple[int, int, int]:
    if isinstance(in_shape, (str, bytes)) or not isinstance(in_shape, Sequence) or len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), three positive ints, got {in_shape!r}")
    c, h, w = (check_positive_int(f"in_shape[{i}]", d) for i, d in enumerate(in_shape))
    return c, h, w


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a sliding window: ``floor((size + 2·padding - kernel) / stride) + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


@register_feature_map
class RandomConvFeatures(FeatureMap):
    """Random convolutional features: ``h = flatten(pool(act(conv(x, F) + b)))``.

    Shapes: ``x (n, C·H·W)`` (row-major flattening of ``(C, H, W)``) or ``(n, C, H, W)``; filters
    ``F (n_filters, C, k, k)``; ``h (n, out_features)`` with ``out_features = n_filters · H_p · W_p``,
    flattened filter-major (``(n, n_filters, H_p, W_p)`` reshaped), where

    * conv: ``H_c = floor((H + 2·padding - k) / stride) + 1`` (same for ``W``; zero padding);
    * pool (``"avg"`` or ``"max"``, window ``pool_size``, stride ``pool_stride`` defaulting to
      ``pool_size``, no padding): ``H_p = floor((H_c - pool_size) / pool_stride) + 1``;
      ``pool="none"``: ``H_p = H_c``.

    Filters: ``random_matrix((C·k·k, n_filters), kind=kind, seed=seed)``, each column (one filter)
    divided by its Euclidean norm, so every filter has unit norm and the response ``f · p`` to a patch
    ``p`` is ``‖p‖ cos∠(f, p)`` — on the scale of the pixels whatever ``k`` and ``C`` are. With
    ``kind="orthogonal"`` the filters are also mutually orthogonal while ``n_filters <= C·k·k``.
    Bias ``b ~ U(-bias_scale, bias_scale)`` per filter (default ``bias_scale = 1``), from the derived stream
    ``derive_seed(seed, "bias")``. With ``normalize_patches=True`` every response lies in ``[-1, 1]``, and
    ``bias_scale = 0.5`` keeps every threshold well inside that range (measured better on MNIST than 1).

    ``normalize_patches=True`` applies contrast normalization (Coates, Lee & Ng, AISTATS 2011) to every
    patch ``p`` (the ``m = C·k·k`` values under the filter, zero padding included) before filtering:
    ``p̃ = (p - μ_p) / sqrt(‖p - μ_p‖² + patch_eps)``, ``μ_p`` the patch mean. No patch is materialized:
    ``f · (p - μ_p 1) = (f - f̄ 1) · p``, so the numerator is one convolution with the centred filters, and
    ``‖p - μ_p‖² = Σp² - (Σp)² / m`` comes from two convolutions with an all-ones filter. The default
    ``patch_eps = 1e-2`` matches Coates & Ng's ``ε = 10`` on the variance of 0–255 pixels, rescaled to
    pixels in ``[0, 1]`` and to the squared norm; flat patches map to ~0 instead of amplified noise.
    (The ``Σp² - (Σp)²/m`` form loses precision for inputs with a large common offset; centre the data.)
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        *,
        n_filters: int = 64,
        kernel_size: int = 5,
        stride: int = 1,
        padding: int = 0,
        activation: str = "relu",
        bias: bool = True,
        bias_scale: float = 1.0,
        pool: Pool = "avg",
        pool_size: int = 2,
        pool_stride: int | None = None,
        normalize_patches: bool = False,
        patch_eps: float = 1e-2,
        kind: MatrixKind = "gaussian",
        density: float | None = None,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = _check_in_shape(in_shape)
        self.n_filters = check_positive_int("n_filters", n_filters)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.stride = check_positive_int("stride", stride)
        self.padding = check_nonnegative_int("padding", padding)
        self.activation = activation
        self._act = get_activation(activation)
        self.use_bias = check_bool("bias", bias)
        self.bias_scale = check_positive_float("bias_scale", bias_scale)
        self.pool = check_choice("pool", pool, POOLS)
        self.pool_size = check_positive_int("pool_size", pool_size)
        self.pool_stride = None if pool_stride is None else check_positive_int("pool_stride", pool_stride)
        self.normalize_patches = check_bool("normalize_patches", normalize_patches)
        self.patch_eps = check_positive_float("patch_eps", patch_eps)
        self.kind = kind
        self.density = density
        self.seed = _check_seed(seed)
        self.dtype = parse_dtype(dtype)
        self.conv_shape, self.out_shape = self._output_shapes()
        c, h, w = self.in_shape
        self.in_features = c * h * w
        self.out_features = math.prod(self.out_shape)

        k = self.kernel_size
        filters = random_matrix((c * k * k, self.n_filters), kind=kind, seed=self.seed, dtype=torch.float64,
                                density=density)  # (C·k·k, n_filters)
        filters = filters / filters.norm(dim=0, keepdim=True).clamp_min(1e-300)  # sparse kind may draw a zero column
        filters = filters.T.reshape(self.n_filters, c, k, k)
        self.register_buffer("weight", filters.to(device=device, dtype=self.dtype), persistent=False)
        b = None
        if self.use_bias:
            b = uniform_vector(self.n_filters, -self.bias_scale, self.bias_scale,
                               seed=derive_seed(self.seed, "bias"))
            b = b.to(device=device, dtype=self.dtype)
        self.register_buffer("bias", b, persistent=False)

    def _output_shapes(self) -> tuple[tuple[int, int], tuple[int, int, int]]:
        c, h, w = self.in_shape
        hc, wc = (_out_size(s, self.kernel_size, self.stride, self.padding) for s in (h, w))
        if hc < 1 or wc < 1:
            raise ValueError(
                f"kernel_size={self.kernel_size} with padding={self.padding} does not fit in_shape={self.in_shape}"
            )
        if self.pool == "none":
            return (hc, wc), (self.n_filters, hc, wc)
        ps = self.pool_stride or self.pool_size
        hp, wp = (_out_size(s, self.pool_size, ps, 0) for s in (hc, wc))
        if hp < 1 or wp < 1:
            raise ValueError(f"pool_size={self.pool_size} is larger than the conv output {(hc, wc)}")
        return (hc, wc), (self.n_filters, hp, wp)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = check_floating_input(x)
        n_in = self.in_features
        if x.ndim == 2 and x.shape[1] == n_in:
            x = x.reshape(x.shape[0], *self.in_shape)
        elif not (x.ndim == 4 and tuple(x.shape[1:]) == self.in_shape):
            raise ValueError(
                f"x must have shape (n, {n_in}) or (n, {', '.join(map(str, self.in_shape))}) "
                f"for RandomConvFeatures, got {tuple(x.shape)}"
            )
        return x.to(device=self.weight.device, dtype=self.weight.dtype)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Filter responses ``(n, n_filters, H_c, W_c)``, before bias and activation."""
        conv = dict(stride=self.stride, padding=self.padding)
        # Channels-last filters make the conv emit a channels-last (n, H_c, W_c, n_filters) buffer, on which the
        # element-wise ops and the pooling run faster on the CPU (avg-pool ~9x) than on NCHW; values are unchanged
        # (up to float rounding of the conv algorithm), and the final flatten restores filter-major order.
        weight = self.weight.contiguous(memory_format=torch.channels_last)
        if not self.normalize_patches:
            return F.conv2d(x, weight, **conv)
        filters = (weight - weight.mean(dim=(1, 2, 3), keepdim=True)).contiguous(memory_format=torch.channels_last)
        numer = F.conv2d(x, filters, **conv)  # (f - f̄)·p = f·(p - μ_p)
        ones = torch.ones((1, *self.weight.shape[1:]), dtype=x.dtype, device=x.device)
        s1 = F.conv2d(x, ones, **conv)  # Σp, (n, 1, H_c, W_c)
        s2 = F.conv2d(x * x, ones, **conv)  # Σp²
        m = ones.numel()
        sq_norm = (s2 - s1 * s1 / m).clamp_min_(0.0)  # ‖p - μ_p‖²
        return numer.div_(sq_norm.add_(self.patch_eps).sqrt_())

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # Chunked over images so that every intermediate stays a few MiB: the full conv output of 60k
        # MNIST images with 64 filters is 8.8 GB, and materializing it (plus its biased and activated
        # copies) made the map memory-bound (36 s for 64 filters on the 2-core reference machine). Each
        # chunk's buffers are freed and reused by the allocator, and results are written into one output.
        return self._features_into(x, torch.empty((x.shape[0], self.out_features), dtype=x.dtype, device=x.device))

    writes_into_out = True

    def _features_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        step = self._chunk_rows()
        for start in range(0, x.shape[0], step):
            out[start:start + step] = self._features_chunk(x[start:start + step])
        return out  # (n, n_filters·H_p·W_p)

    def _chunk_rows(self) -> int:
        """Images per chunk: conv output of about ``_CHUNK_ELEMENTS`` values, at least one image."""
        per_image = self.n_filters * self.conv_shape[0] * self.conv_shape[1]
        return max(1, _CHUNK_ELEMENTS // per_image)

    def _features_chunk(self, x: torch.Tensor) -> torch.Tensor:
        z = self._conv(x)  # (m, n_filters, H_c, W_c), a fresh tensor: safe to modify in place
        if self.bias is not None:
            z.add_(self.bias[:, None, None])
        h = z.relu_() if self.activation == "relu" else self._act(z)
        ps = self.pool_stride or self.pool_size
        if self.pool == "avg":
            h = F.avg_pool2d(h, self.pool_size, stride=ps)
        elif self.pool == "max":
            h = F.max_pool2d(h, self.pool_size, stride=ps)
        return h.reshape(h.shape[0], -1)

    def get_config(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "in_shape": list(self.in_shape),
            "n_filters": self.n_filters,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "activation": self.activation,
            "bias": self.use_bias,
            "bias_scale": self.bias_scale,
            "pool": self.pool,
            "pool_size": self.pool_size,
            "pool_stride": self.pool_stride,
            "normalize_patches": self.normalize_patches,
            "patch_eps": self.patch_eps,
            "kind": self.kind,
            "density": self.density,
            "seed": self.seed,
            "dtype": dtype_name(self.dtype),
        }

    def extra_repr(self) -> str:
        return (
            f"in_shape={self.in_shape}, n_filters={self.n_filters}, kernel_size={self.kernel_size}, "
            f"pool={self.pool!r}, out_features={self.out_features}, seed={self.seed}"
        )
