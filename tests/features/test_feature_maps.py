import json
import math

import pytest
import torch

from pilearn.features import (
    BiPILFeatures,
    ComposedFeatures,
    ConcatFeatures,
    FeatureMap,
    RandomConvFeatures,
    RandomFourierFeatures,
    RandomProjection,
    derive_seed,
    feature_map_from_config,
    get_activation,
    random_matrix,
    stream_features,
)

FACTORIES = {
    "projection": lambda **kw: RandomProjection(12, 30, **kw),
    "projection_sparse_nobias": lambda **kw: RandomProjection(12, 30, kind="sparse", bias=False, scale=0.5, **kw),
    "projection_orthogonal_tanh": lambda **kw: RandomProjection(12, 30, kind="orthogonal", activation="tanh", **kw),
    "bipil_concat": lambda **kw: BiPILFeatures(12, 10, **kw),
    "bipil_add": lambda **kw: BiPILFeatures(12, 10, fusion="add", kind="rademacher", **kw),
    "bipil_single": lambda **kw: BiPILFeatures(12, 10, fusion="single", **kw),
    "rff": lambda **kw: RandomFourierFeatures(12, 40, gamma=0.3, **kw),
    "conv": lambda **kw: RandomConvFeatures((3, 2, 2), n_filters=5, kernel_size=1, pool="max", **kw),
    "conv_normalized": lambda **kw: RandomConvFeatures(
        (3, 2, 2), n_filters=4, kernel_size=2, padding=1, normalize_patches=True, pool="none", **kw
    ),
    "composed": lambda **kw: ComposedFeatures(
        [RandomProjection(12, 20, **kw), RandomFourierFeatures(20, 8, **kw)]
    ),
    "concat": lambda **kw: ConcatFeatures([RandomProjection(12, 5, **kw), BiPILFeatures(12, 3, fusion="add", **kw)]),
}


@pytest.fixture
def x(generator) -> torch.Tensor:
    return torch.randn(7, 12, generator=generator)


def _weights(m: FeatureMap) -> list[torch.Tensor]:
    return [b for b in m.buffers() if b is not None]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_config_round_trip_through_json_gives_identical_outputs(name, x):
    m = FACTORIES[name](seed=3)
    cfg = m.get_config()
    text = json.dumps(cfg)
    rebuilt = feature_map_from_config(json.loads(text))
    assert type(rebuilt) is type(m)
    assert rebuilt.get_config() == cfg
    assert (rebuilt.in_features, rebuilt.out_features) == (m.in_features, m.out_features)
    out = m(x)
    assert out.shape == (7, m.out_features)
    assert torch.equal(rebuilt(x), out)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_same_seed_same_weights_regardless_of_global_rng(name):
    torch.manual_seed(0)
    a = FACTORIES[name](seed=11)
    torch.manual_seed(999)
    torch.randn(100)
    b = FACTORIES[name](seed=11)
    c = FACTORIES[name](seed=12)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert len(wa) > 0 and len(wa) == len(wb)
    assert all(torch.equal(p, q) for p, q in zip(wa, wb))
    assert not all(torch.equal(p, q) for p, q in zip(wa, wc))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_float32_weights_are_float64_weights_cast_down(name):
    w32 = _weights(FACTORIES[name](seed=4, dtype=torch.float32))
    w64 = _weights(FACTORIES[name](seed=4, dtype="float64"))
    assert all(a.dtype == torch.float32 and b.dtype == torch.float64 for a, b in zip(w32, w64))
    assert all(torch.equal(a, b.to(torch.float32)) for a, b in zip(w32, w64))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_weights_are_not_in_state_dict(name):
    m = FACTORIES[name]()
    assert len(_weights(m)) > 0
    assert m.state_dict() == {}
    assert list(m.parameters()) == []


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_wrong_input_shape_names_both_shapes(name):
    m = FACTORIES[name]()
    with pytest.raises(ValueError, match=rf"\(n, {m.in_features}\).*\(4, 11\)"):
        m(torch.zeros(4, 11))
    with pytest.raises(ValueError, match="shape"):
        m(torch.zeros(m.in_features))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_rejects_integer_and_non_tensor_input(name):
    m = FACTORIES[name]()
    with pytest.raises(ValueError, match="floating"):
        m(torch.zeros(4, m.in_features, dtype=torch.int64))
    with pytest.raises(TypeError, match="Tensor"):
        m([[0.0] * m.in_features])


def test_input_is_cast_to_map_dtype(x):
    m = RandomProjection(12, 6, seed=1)
    out = m(x.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, m(x))


# RandomProjection


@pytest.mark.parametrize("kind", ["gaussian", "orthogonal", "rademacher", "sparse"])
@pytest.mark.parametrize("activation", ["gelu", "sine"])
def test_projection_matches_formula(kind, activation, x):
    m = RandomProjection(12, 30, kind=kind, activation=activation, seed=5, dtype=torch.float64)
    w = random_matrix((12, 30), kind=kind, seed=5, dtype=torch.float64)
    assert torch.equal(m.weight, w)
    assert m.bias.shape == (30,) and m.bias.abs().max() <= 1.0
    expected = get_activation(activation)(x.double() @ w / math.sqrt(12) + m.bias)
    torch.testing.assert_close(m(x), expected, atol=1e-12, rtol=1e-12)


def test_projection_weight_independent_of_bias_and_scale(x):
    a = RandomProjection(12, 30, bias=True, seed=2)
    b = RandomProjection(12, 30, bias=False, scale=2.0, activation="identity", seed=2)
    assert b.bias is None
    assert torch.equal(a.weight, b.weight)
    torch.testing.assert_close(b(x), 2.0 * x @ b.weight)


def test_default_scale_gives_unit_order_preactivation_variance():
    # For a fixed x, z_j = x·W_j / sqrt(in) over D i.i.d. columns has variance ‖x‖²/in; the sample
    # variance has relative standard deviation sqrt(2/D) ≈ 0.01 for D = 20000: 5 sigma = 0.05.
    d_in, d_out = 64, 20000
    x = torch.linspace(-2.0, 2.0, d_in, dtype=torch.float64)[None, :]
    m = RandomProjection(d_in, d_out, activation="identity", bias=False, seed=0, dtype=torch.float64)
    z = m(x)[0]
    expected = (x**2).mean().item()
    assert abs(z.var().item() / expected - 1.0) < 5 * math.sqrt(2.0 / d_out)


# Bi-PIL


@pytest.mark.parametrize("fusion, width_factor", [("concat", 2), ("add", 1), ("single", 1)])
def test_bipil_shapes(fusion, width_factor, x):
    m = BiPILFeatures(12, 9, fusion=fusion)
    assert m.out_features == 9 * width_factor
    assert m(x).shape == (7, 9 * width_factor)
    assert len(m.branches) == (1 if fusion == "single" else 2)


@pytest.mark.parametrize("fusion", ["concat", "add", "single"])
def test_bipil_equals_its_two_single_projections(fusion, x):
    m = BiPILFeatures(12, 9, fusion=fusion, activation="tanh", seed=6)
    h1 = RandomProjection(12, 9, activation="tanh", seed=derive_seed(6, "bipil", 0))(x)
    h2 = RandomProjection(12, 9, activation="tanh", seed=derive_seed(6, "bipil", 1))(x)
    expected = {"concat": torch.cat([h1, h2], dim=1), "add": h1 + h2, "single": h1}[fusion]
    assert torch.equal(m(x), expected)
    assert not torch.allclose(h1, h2)


def test_bipil_seeds_do_not_overlap_across_seed_sweeps():
    weights = [b.weight for s in range(3) for b in BiPILFeatures(4, 3, seed=s).branches]
    assert all(not torch.equal(weights[i], weights[j]) for i in range(6) for j in range(i))


# Random Fourier features


def test_rff_approximates_rbf_kernel(generator):
    # z(x)·z(y) averages D terms cos(w·(x-y)) + cos(w·(x+y) + 2b), each of variance <= 1:
    # the error has standard deviation <= 1/sqrt(D); we allow 5 of them.
    d_in, d_out, gamma = 5, 20000, 0.4
    m = RandomFourierFeatures(d_in, d_out, gamma=gamma, seed=0, dtype=torch.float64)
    pts = torch.randn(6, d_in, generator=generator, dtype=torch.float64) * 0.7
    z = m(pts)
    approx = z @ z.T
    exact = torch.exp(-gamma * torch.cdist(pts, pts) ** 2)
    assert (approx - exact).abs().max().item() < 5.0 / math.sqrt(d_out)
    assert exact.min() < 0.5  # the points are far enough apart for the test to mean something


def test_rff_parameters_have_the_right_law():
    m = RandomFourierFeatures(50, 4000, gamma=2.5, seed=1, dtype=torch.float64)
    n = m.weight.numel()
    assert abs(m.weight.var().item() / 5.0 - 1.0) < 5 * math.sqrt(2.0 / n)
    assert 0.0 <= m.bias.min() and m.bias.max() <= 2 * math.pi
    assert abs(m.bias.mean().item() - math.pi) < 5 * (2 * math.pi / math.sqrt(12 * 4000))


# Composition


def test_composed_applies_in_sequence(x):
    a, b = RandomProjection(12, 20, seed=1), RandomProjection(20, 4, activation="relu", seed=2)
    m = ComposedFeatures([a, b])
    assert (m.in_features, m.out_features) == (12, 4)
    assert torch.equal(m(x), b(a(x)))


def test_concat_concatenates(x):
    a, b = RandomProjection(12, 20, seed=1), RandomFourierFeatures(12, 3, seed=2)
    m = ConcatFeatures([a, b])
    assert (m.in_features, m.out_features) == (12, 23)
    assert torch.equal(m(x), torch.cat([a(x), b(x)], dim=1))


def test_composed_with_conv_first_accepts_images(generator):
    conv = RandomConvFeatures((1, 6, 6), n_filters=3, kernel_size=3)
    m = ComposedFeatures([conv, RandomProjection(conv.out_features, 5)])
    img = torch.randn(2, 1, 6, 6, generator=generator)
    assert torch.equal(m(img), m(img.reshape(2, -1)))


def test_composed_and_concat_reject_mismatches():
    with pytest.raises(ValueError, match=r"maps\[0\].out_features.*maps\[1\].in_features.*20.*19"):
        ComposedFeatures([RandomProjection(12, 20), RandomProjection(19, 4)])
    with pytest.raises(ValueError, match=r"maps\[1\].in_features.*13.*12"):
        ConcatFeatures([RandomProjection(12, 20), RandomProjection(13, 4)])
    for cls in (ComposedFeatures, ConcatFeatures):
        with pytest.raises(ValueError, match="maps"):
            cls([])
        with pytest.raises(ValueError, match="maps"):
            cls([RandomProjection(3, 3), torch.nn.Linear(3, 3)])


# Configs and argument checking


def test_from_config_rejects_unknown_type_and_keys():
    with pytest.raises(ValueError, match="NoSuchMap"):
        feature_map_from_config({"type": "NoSuchMap"})
    with pytest.raises(ValueError, match="type"):
        feature_map_from_config({"in_features": 3})
    cfg = RandomProjection(3, 4).get_config()
    with pytest.raises(ValueError, match="widht"):
        feature_map_from_config({**cfg, "widht": 3})
    with pytest.raises(ValueError, match="cfg"):
        feature_map_from_config([cfg])


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: RandomProjection(0, 4), "in_features"),
        (lambda: RandomProjection(3, -1), "out_features"),
        (lambda: RandomProjection(3.0, 4), "in_features"),
        (lambda: RandomProjection(3, 4, scale=0.0), "scale"),
        (lambda: RandomProjection(3, 4, scale=float("nan")), "scale"),
        (lambda: RandomProjection(3, 4, seed=-1), "seed"),
        (lambda: RandomProjection(3, 4, kind="uniform"), "kind"),
        (lambda: RandomProjection(3, 4, activation="swish"), "activation"),
        (lambda: RandomProjection(3, 4, bias="yes"), "bias"),
        (lambda: RandomProjection(3, 4, dtype=torch.int32), "dtype"),
        (lambda: RandomProjection(3, 4, dtype="float8"), "dtype"),
        (lambda: BiPILFeatures(3, 0), "width"),
        (lambda: BiPILFeatures(3, 4, fusion="mul"), "fusion"),
        (lambda: BiPILFeatures(3, 4, seed=-5), "seed"),
        (lambda: RandomFourierFeatures(3, 4, gamma=-1.0), "gamma"),
        (lambda: RandomFourierFeatures(3, 0), "out_features"),
    ],
)
def test_bad_constructor_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("activation", ["gelu", "tanh", "identity"])
def test_random_projection_in_place_activation_keeps_values_and_gradients(activation, generator):
    """Without a graph to record, the activation is applied in place: same values; with x.requires_grad, the
    out-of-place path keeps the gradient correct."""
    import torch.nn.functional as F  # noqa: N812

    from pilearn.features import RandomProjection, get_activation

    fmap = RandomProjection(20, 64, activation=activation, seed=3)
    x = torch.randn(50, 20, generator=generator)
    expected = get_activation(activation)(F.linear(x, fmap.weight.T) * fmap.scale + fmap.bias)
    torch.testing.assert_close(fmap(x), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(fmap(x), get_activation(activation)(torch.addmm(fmap.bias, x, fmap.weight, alpha=fmap.scale)))
    xg = x.clone().requires_grad_(True)
    fmap(xg).sum().backward()
    xr = x.clone().requires_grad_(True)
    expected_fn = get_activation(activation)(torch.addmm(fmap.bias, xr, fmap.weight, alpha=fmap.scale))
    expected_fn.sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_out_buffer_gives_the_same_features_bit_for_bit(name, x):
    fmap = FACTORIES[name](seed=3)
    inp = x if name not in ("conv", "conv_normalized") else x[:, : fmap.in_features]
    ref = fmap(inp)
    buf = torch.full_like(ref, float("nan"))
    with torch.no_grad():
        got = fmap(inp, out=buf)
    assert got.data_ptr() == buf.data_ptr()
    assert torch.equal(got, ref)


def test_out_buffer_is_checked(x):
    fmap = RandomProjection(12, 30)
    good = torch.empty(x.shape[0], 30)
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.float32 tensor of shape \(7, 30\).*\(7, 31\)"):
        fmap(x, out=torch.empty(x.shape[0], 31))
    with pytest.raises(ValueError, match="out must be .*got torch.float64"):
        fmap(x, out=good.double())
    with pytest.raises(ValueError, match="non-contiguous"):
        fmap(x, out=torch.empty(30, x.shape[0]).T)
    with pytest.raises(TypeError, match="out must be a torch.Tensor or None, got ndarray"):
        fmap(x, out=good.numpy())
    with pytest.raises(ValueError, match="torch.no_grad"):
        fmap(x.clone().requires_grad_(), out=good)
    square = RandomProjection(12, 12)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        with torch.no_grad():
            square(x, out=x)


def test_stream_features_gives_fresh_features_to_maps_that_would_only_copy(generator):
    fmap = BiPILFeatures(12, 10, seed=2)  # computes two branches and concatenates: nothing to write in place
    assert not fmap.writes_into_out and RandomProjection(12, 3).writes_into_out
    assert ComposedFeatures([fmap, RandomProjection(20, 4)]).writes_into_out
    xs = [torch.randn(6, 12, generator=generator) for _ in range(3)]
    kept = [H for (H,) in stream_features(fmap, ((x,) for x in xs))]  # safe to keep: no buffer is shared
    assert len({H.data_ptr() for H in kept}) == 3
    assert all(torch.equal(H, fmap(x)) for H, x in zip(kept, xs))


def test_stream_features_reuses_one_buffer_and_matches_fresh_features(generator):
    fmap = RandomProjection(12, 30, seed=1)
    xs = [torch.randn(n, 12, generator=generator) for n in (5, 5, 3, 8)]
    seen = []
    for (H, tag), x in zip(stream_features(fmap, ((x, i) for i, x in enumerate(xs))), xs):
        assert torch.equal(H, fmap(x))
        seen.append((H.data_ptr(), tag, H.shape[0]))
    assert [t for _, t, _ in seen] == [0, 1, 2, 3]
    assert seen[0][0] == seen[1][0] == seen[2][0]  # one buffer while batches fit in it; grown for the longer one
    with pytest.raises(TypeError, match="non-empty tuples"):
        next(stream_features(fmap, iter([xs[0]])))
