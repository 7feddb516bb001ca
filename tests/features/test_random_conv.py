import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

import pilearn.features._conv as conv_module
from pilearn.features import RandomConvFeatures, feature_map_from_config, get_activation, random_matrix


def _pool_reference(h: torch.Tensor, pool: str, size: int, stride: int) -> torch.Tensor:
    """Pooling written with unfold: every window of every channel, then mean or max."""
    n, c, hh, ww = h.shape
    if pool == "none":
        return h
    windows = F.unfold(h.reshape(n * c, 1, hh, ww), size, stride=stride)  # (n·c, size², L)
    pooled = windows.mean(dim=1) if pool == "avg" else windows.amax(dim=1)
    ho, wo = (hh - size) // stride + 1, (ww - size) // stride + 1
    return pooled.reshape(n, c, ho, wo)


def _reference(m: RandomConvFeatures, x: torch.Tensor) -> torch.Tensor:
    """The map computed patch by patch: unfold, (normalize), filter, bias, activation, pool, flatten."""
    c, h, w = m.in_shape
    k = m.kernel_size
    patches = F.unfold(x.reshape(-1, c, h, w), k, padding=m.padding, stride=m.stride)  # (n, C·k·k, L)
    if m.normalize_patches:
        centred = patches - patches.mean(dim=1, keepdim=True)
        patches = centred / torch.sqrt((centred**2).sum(dim=1, keepdim=True) + m.patch_eps)
    filters = m.weight.reshape(m.n_filters, -1)  # (F, C·k·k)
    z = torch.einsum("fd,ndl->nfl", filters, patches)
    if m.bias is not None:
        z = z + m.bias[None, :, None]
    hc, wc = m.conv_shape
    act = get_activation(m.activation)(z).reshape(-1, m.n_filters, hc, wc)
    pooled = _pool_reference(act, m.pool, m.pool_size, m.pool_stride or m.pool_size)
    return pooled.reshape(x.shape[0], -1)


CASES = [
    dict(),
    dict(stride=2, padding=1, pool="max"),
    dict(kernel_size=2, pool="none", activation="tanh", bias=False),
    dict(padding=2, pool="avg", pool_size=3, pool_stride=1, kind="orthogonal"),
    dict(normalize_patches=True),
    dict(normalize_patches=True, padding=1, stride=2, pool="max", kind="sparse"),
    dict(normalize_patches=True, kernel_size=2, pool="none", patch_eps=1e-6, activation="identity"),
]


@pytest.mark.parametrize("kwargs", CASES)
def test_matches_unfold_reference(kwargs, generator):
    kwargs = {"n_filters": 6, "kernel_size": 3, "seed": 1, "dtype": torch.float64, **kwargs}
    m = RandomConvFeatures((2, 7, 8), **kwargs)
    x = torch.rand(3, 2 * 7 * 8, generator=generator, dtype=torch.float64)
    out = m(x)
    assert out.shape == (3, m.out_features)
    torch.testing.assert_close(out, _reference(m, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 1, 0), (5, 2, 2), (4, 3, 1), (1, 1, 0)])
@pytest.mark.parametrize("pool, pool_size, pool_stride", [("avg", 2, None), ("max", 3, 1), ("none", 2, None)])
def test_output_shape_formula(kernel_size, stride, padding, pool, pool_size, pool_stride, generator):
    c, h, w, n_f = 3, 13, 10, 4
    m = RandomConvFeatures(
        (c, h, w), n_filters=n_f, kernel_size=kernel_size, stride=stride, padding=padding,
        pool=pool, pool_size=pool_size, pool_stride=pool_stride,
    )
    hc = math.floor((h + 2 * padding - kernel_size) / stride) + 1
    wc = math.floor((w + 2 * padding - kernel_size) / stride) + 1
    if pool != "none":
        ps = pool_stride or pool_size
        hc, wc = (hc - pool_size) // ps + 1, (wc - pool_size) // ps + 1
    assert m.in_features == c * h * w
    assert m.out_features == n_f * hc * wc
    assert m(torch.randn(2, c, h, w, generator=generator)).shape == (2, n_f * hc * wc)


@pytest.mark.parametrize("normalize_patches", [False, True])
def test_flat_and_image_input_agree(normalize_patches, generator):
    m = RandomConvFeatures((3, 6, 5), n_filters=4, kernel_size=3, normalize_patches=normalize_patches)
    img = torch.randn(2, 3, 6, 5, generator=generator)
    assert torch.equal(m(img), m(img.reshape(2, -1)))


def test_filters_are_unit_norm_and_seeded():
    m = RandomConvFeatures((3, 8, 8), n_filters=10, kernel_size=3, seed=4, dtype=torch.float64)
    assert m.weight.shape == (10, 3, 3, 3)
    flat = m.weight.reshape(10, -1)
    torch.testing.assert_close(flat.norm(dim=1), torch.ones(10, dtype=torch.float64))
    raw = random_matrix((27, 10), seed=4, dtype=torch.float64)
    torch.testing.assert_close(flat, (raw / raw.norm(dim=0)).T)


def test_orthogonal_filters_are_orthonormal():
    m = RandomConvFeatures((3, 8, 8), n_filters=20, kernel_size=3, kind="orthogonal", dtype=torch.float64)
    flat = m.weight.reshape(20, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(20, dtype=torch.float64), atol=1e-12, rtol=0)


def test_patch_normalization_is_contrast_invariant(generator):
    # p̃ of a·p + c equals p̃ of p when patch_eps is negligible against ‖p - μ‖².
    m = RandomConvFeatures(
        (1, 9, 9), n_filters=5, kernel_size=3, normalize_patches=True, patch_eps=1e-20,
        activation="identity", pool="none", dtype=torch.float64,
    )
    x = torch.rand(2, 81, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(m(3.0 * x + 7.0), m(x), atol=1e-9, rtol=0)
    plain = RandomConvFeatures((1, 9, 9), n_filters=5, kernel_size=3, activation="identity", pool="none",
                               dtype=torch.float64)
    assert not torch.allclose(plain(3.0 * x + 7.0), plain(x))


@pytest.mark.parametrize(
    "shape",
    [(4, 3 * 6 * 5 + 1), (4, 3, 5, 6), (4, 3, 6), (90,), (4, 1, 3, 6, 5)],
)
def test_wrong_input_shape_names_both_shapes(shape):
    m = RandomConvFeatures((3, 6, 5), n_filters=2, kernel_size=3)
    expected = re.escape("(n, 90) or (n, 3, 6, 5)") + ".*" + re.escape(str(tuple(shape)))
    with pytest.raises(ValueError, match=expected):
        m(torch.zeros(shape))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(in_shape=(3, 6)), "in_shape"),
        (dict(in_shape=(3, 0, 6)), r"in_shape\[1\]"),
        (dict(n_filters=0), "n_filters"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=7), "kernel_size"),
        (dict(stride=0), "stride"),
        (dict(padding=-1), "padding"),
        (dict(pool="sum"), "pool"),
        (dict(pool_size=0), "pool_size"),
        (dict(pool_size=5), "pool_size"),
        (dict(pool_stride=0), "pool_stride"),
        (dict(activation="swish"), "activation"),
        (dict(kind="uniform"), "kind"),
        (dict(normalize_patches=1), "normalize_patches"),
        (dict(patch_eps=0.0), "patch_eps"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    kwargs = {"in_shape": (3, 6, 6), "n_filters": 2, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        RandomConvFeatures(**kwargs)


@pytest.mark.parametrize("normalize_patches", [False, True])
def test_chunked_forward_matches_reference(normalize_patches, monkeypatch, generator):
    # A tiny chunk budget forces many chunks (and a ragged last one); rows must not mix between chunks.
    m = RandomConvFeatures((1, 9, 9), n_filters=3, kernel_size=3, pool="max", normalize_patches=normalize_patches,
                           dtype=torch.float64)
    monkeypatch.setattr(conv_module, "_CHUNK_ELEMENTS", 2 * 3 * 7 * 7)  # two images per chunk
    assert m._chunk_rows() == 2
    x = torch.rand(7, 81, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(m, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_bias_scale_draws_from_scaled_interval(activation, generator):
    m1 = RandomConvFeatures((1, 8, 8), n_filters=50, kernel_size=3, seed=2, dtype=torch.float64,
                            activation=activation)
    m2 = RandomConvFeatures((1, 8, 8), n_filters=50, kernel_size=3, seed=2, dtype=torch.float64,
                            activation=activation, bias_scale=0.25)
    torch.testing.assert_close(m2.bias, 0.25 * m1.bias)  # same U(-1, 1) draw, rescaled
    assert torch.equal(m2.weight, m1.weight)
    assert m2.bias.abs().max() <= 0.25
    x = torch.rand(4, 64, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(m2(x), _reference(m2, x), atol=1e-10, rtol=1e-10)


def test_bias_scale_round_trips_and_is_validated():
    m = RandomConvFeatures((1, 8, 8), n_filters=4, kernel_size=3, bias_scale=0.5, normalize_patches=True, seed=3)
    cfg = json.loads(json.dumps(m.get_config()))
    assert cfg["bias_scale"] == 0.5
    m2 = feature_map_from_config(cfg)
    assert torch.equal(m2.bias, m.bias) and torch.equal(m2.weight, m.weight)
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="bias_scale"):
            RandomConvFeatures((1, 8, 8), n_filters=4, kernel_size=3, bias_scale=bad)
