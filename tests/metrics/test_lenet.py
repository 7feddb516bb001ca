"""LeNet feature extractor: shapes, training on sklearn digits, safetensors round trip, cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pilearn.metrics import LeNet, class_accuracy, lenet_for, load_lenet, save_lenet, train_lenet


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits scaled to [0, 1], flat (n, 64), stratified 75/25 split."""
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    return tuple(train_test_split(X, d.target, test_size=0.25, random_state=0, stratify=d.target))


@pytest.fixture(scope="module")
def digits_net(digits) -> LeNet:
    X_tr, _, y_tr, _ = digits
    return train_lenet(X_tr, y_tr, in_shape=(1, 8, 8), epochs=10, batch_size=32, lr=3e-3, seed=0)


# ----------------------------------------------------------------------------------------------- architecture
@pytest.mark.parametrize(
    ("in_shape", "n_flat"),
    [
        ((1, 28, 28), 16 * 5 * 5),  # the classic LeNet-5: 28 → 28 → 14 → 10 → 5
        ((1, 8, 8), 16 * 2 * 2),  # padded second conv: 8 → 8 → 4 → 4 → 2
        ((3, 32, 32), 16 * 6 * 6),  # 32 → 32 → 16 → 12 → 6
        ((1, 10, 12), 16 * 2 * 1),  # H: 10 → 10 → 5 → 5 (pad 2) → 2; W: 12 → 12 → 6 → 2 (no pad) → 1
    ],
)
def test_lenet_shapes(in_shape, n_flat, generator):
    c, h, w = in_shape
    net = LeNet(in_shape, n_classes=7, seed=0)
    assert net.in_shape == in_shape and net.n_classes == 7
    assert net.fc1.in_features == n_flat
    x = torch.rand(5, c, h, w, generator=generator)
    assert net.features(x).shape == (5, 84)
    assert net(x).shape == (5, 7)
    # flat rows are the row-major flattening of (C, H, W)
    torch.testing.assert_close(net(x.reshape(5, -1)), net(x), rtol=0, atol=0)


def test_features_are_the_penultimate_layer(generator):
    net = LeNet((1, 8, 8), 10, seed=0)
    x = torch.rand(4, 64, generator=generator)
    feats = net.features(x)
    assert bool((feats >= 0).all())  # after a ReLU
    torch.testing.assert_close(net(x), feats @ net.fc3.weight.T + net.fc3.bias)


def test_lenet_casts_input_dtype(generator):
    net = LeNet((1, 8, 8), 10, seed=0)
    x = torch.rand(3, 64, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(net(x), net(x.float()), rtol=0, atol=0)


def test_lenet_seed_is_reproducible_and_leaves_global_rng():
    state = torch.get_rng_state()
    a, b, c = LeNet(seed=3), LeNet(seed=3), LeNet(seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_shape": (1, 3, 28)}, r"H >= 4 and W >= 4"),
        ({"in_shape": (28, 28)}, r"in_shape must be \(C, H, W\)"),
        ({"in_shape": (0, 8, 8)}, r"in_shape\[0\] must be a positive int, got 0"),
        ({"n_classes": 1}, r"n_classes must be >= 2, got 1"),
    ],
)
def test_lenet_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LeNet(**kwargs)


def test_lenet_bad_input_shape(generator):
    net = LeNet((1, 8, 8), 10, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 64\) or \(n, 1, 8, 8\), got \(2, 63\)"):
        net(torch.rand(2, 63, generator=generator))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        net(np.zeros((2, 64), dtype=np.float32))


# ------------------------------------------------------------------------------------------------ training
def test_train_lenet_digits_accuracy(digits, digits_net):
    _, X_te, _, y_te = digits
    assert not digits_net.training
    acc = class_accuracy(X_te, y_te, digits_net)
    assert acc > 0.90
    # oracle for the accuracy itself: argmax by hand
    with torch.no_grad():
        manual = (digits_net(torch.from_numpy(X_te)).argmax(1).numpy() == y_te).mean()
    assert acc == pytest.approx(manual, abs=1e-12)


def test_train_lenet_is_seeded(digits):
    X_tr, _, y_tr, _ = digits
    X, y = X_tr[:200], y_tr[:200]
    a = train_lenet(X, y, in_shape=(1, 8, 8), epochs=1, batch_size=64, seed=5)
    b = train_lenet(X.reshape(-1, 1, 8, 8), torch.from_numpy(y), in_shape=(1, 8, 8), epochs=1, batch_size=64, seed=5)
    c = train_lenet(X, y, in_shape=(1, 8, 8), epochs=1, batch_size=64, seed=6)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    assert not torch.equal(a.fc3.weight, c.fc3.weight)
    assert a.n_classes == 10


@pytest.mark.parametrize(
    ("X", "y", "kwargs", "exc", "match"),
    [
        (np.full((4, 64), np.nan, np.float32), np.arange(4), {}, ValueError, r"X must be finite, got 256 NaN"),
        (np.full((4, 64), 255.0, np.float32), np.arange(4), {}, ValueError, r"X must hold pixels in \[0, 1\]"),
        (np.zeros((4, 60), np.float32), np.arange(4), {}, ValueError, r"X must have shape \(n, 64\)"),
        (np.zeros((4, 64), np.float32), np.arange(3), {}, ValueError, r"y must have shape \(4,\), got \(3,\)"),
        (np.zeros((4, 64), np.float32), np.arange(4.0), {}, TypeError, r"y must hold integer class labels"),
        (np.zeros((4, 64), np.float32), np.array([0, 1, 2, 5]), {"n_classes": 5}, ValueError,
         r"y must be < n_classes=5, got max label 5"),
        (np.zeros((4, 64), np.float32), np.array([0, -1, 2, 3]), {}, ValueError, r"y must be >= 0, got min -1"),
        (np.zeros((4, 64), np.float32), np.arange(4), {"epochs": 0}, ValueError, r"epochs must be a positive int"),
        (np.zeros((4, 64), np.float32), np.arange(4), {"lr": -1.0}, ValueError, r"lr must be a finite float > 0"),
        ([[0.0] * 64] * 4, np.arange(4), {}, TypeError, r"X must be a torch.Tensor or numpy.ndarray, got list"),
    ],
)
def test_train_lenet_bad_input(X, y, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        train_lenet(X, y, in_shape=(1, 8, 8), **kwargs)


# ------------------------------------------------------------------------------------------- save and load
def test_save_load_round_trip(tmp_path, digits, digits_net):
    path = tmp_path / "net.safetensors"
    save_lenet(digits_net, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == {"in_shape": [1, 8, 8], "n_classes": 10}
    loaded = load_lenet(path)
    assert loaded.in_shape == (1, 8, 8) and loaded.n_classes == 10 and not loaded.training
    x = torch.from_numpy(digits[1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), digits_net(x), rtol=0, atol=0)


def test_load_rejects_foreign_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="is not a pilearn LeNet checkpoint"):
        load_lenet(path)
    with pytest.raises(FileNotFoundError, match="no LeNet checkpoint"):
        load_lenet(tmp_path / "missing.safetensors")


def test_load_rejects_mismatched_weights(tmp_path):
    path = tmp_path / "net.safetensors"
    save_lenet(LeNet((1, 8, 8), 10, seed=0), path)
    tensors = {k: v for k, v in LeNet((1, 28, 28), 10, seed=0).state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="do not fit a LeNet"):
        load_lenet(path)


# ---------------------------------------------------------------------------------------------------- cache
def test_lenet_for_trains_once_then_loads(tmp_path, monkeypatch, digits):
    X_tr, _, y_tr, _ = digits
    monkeypatch.setenv("PILEARN_CACHE", str(tmp_path))
    net = lenet_for("digits", X_tr[:300], y_tr[:300], in_shape=(1, 8, 8), seed=1, epochs=1)
    path = tmp_path / "lenet-digits-seed1-e1.safetensors"
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    # second call: no data needed, same weights
    again = lenet_for("digits", None, None, in_shape=(1, 8, 8), seed=1, epochs=1)
    x = torch.from_numpy(X_tr[:10])
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), rtol=0, atol=0)
    # explicit cache_dir beats the environment
    other = tmp_path / "other"
    with pytest.raises(ValueError, match="no cached LeNet at .*other.*pass X and y"):
        lenet_for("digits", None, None, in_shape=(1, 8, 8), seed=1, epochs=1, cache_dir=other)
    with pytest.raises(ValueError, match=r"has in_shape \(1, 8, 8\), expected \(1, 28, 28\)"):
        lenet_for("digits", None, None, in_shape=(1, 28, 28), seed=1, epochs=1)


def test_lenet_for_bad_name(tmp_path):
    with pytest.raises(ValueError, match="dataset_name must be letters"):
        lenet_for("../evil", None, None, in_shape=(1, 8, 8), cache_dir=tmp_path)
