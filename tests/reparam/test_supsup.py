"""SupSup (Wortsman et al., NeurIPS 2020): seeded fixed weights, exact top-k masks, straight-through scores,
isolation between tasks, bit-packed checkpoints, entropy-gradient task inference, Hopfield mask storage."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pilearn.features import make_generator
from pilearn.reparam import (
    HopfieldMaskStore,
    MaskedConv2d,
    MaskedLinear,
    SupSupMLP,
    infer_task,
    load_supsup,
    permuted_mnist,
    save_supsup,
    supermask,
    train_supermask,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = (20, 48, 32, 5)


def _gaussian_tasks(n_tasks: int, n: int, seed: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list]:
    """PermutedMNIST in miniature: 4 Gaussian clusters in 32-D, each task a different feature permutation.
    Returns per task (x, y) with the first n rows for training and the next n // 2 for testing."""
    g = make_generator(seed)
    means = 2.0 * torch.randn(4, 32, generator=g)
    y = torch.randint(0, 4, (n + n // 2,), generator=g)
    x = means[y] + torch.randn(len(y), 32, generator=g)
    return [(x[:, p], y) for p in permuted_mnist(x, n_tasks, seed=seed)], means


@pytest.fixture(scope="module")
def three_tasks():
    """A 32-128-128-4 SupSup net with three masks, each trained on its own permuted cluster task."""
    data, _ = _gaussian_tasks(3, 768, seed=1)
    model = SupSupMLP((32, 128, 128, 4), 3, sparsity=0.5, seed=0)
    for t, (x, y) in enumerate(data):
        train_supermask(model, t, (x[:768], y[:768]), epochs=3, lr=1e-2, batch_size=64, seed=t)
    return model.eval(), [(x[768:], y[768:]) for x, y in data]


# ------------------------------------------------------------------------------------------ fixed random weights


def test_weights_regenerate_bit_for_bit_from_the_seed():
    rng_before = torch.get_rng_state()
    a, b = SupSupMLP(SIZES, 2, seed=7), SupSupMLP(SIZES, 2, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is never touched
    c = SupSupMLP(SIZES, 2, seed=8)
    for la, lb, lc in zip(a.layers, b.layers, c.layers):
        assert torch.equal(la.weight, lb.weight)
        assert all(torch.equal(sa, sb) for sa, sb in zip(la.scores, lb.scores))
        assert not torch.equal(la.weight, lc.weight)
        # signed Kaiming constant: every weight is ±sqrt(2 / fan_in), both signs about equally often
        sigma = torch.tensor(math.sqrt(2.0 / la.in_features), dtype=torch.float32)
        assert torch.equal(la.weight.abs(), sigma.expand_as(la.weight))
        assert abs(float((la.weight > 0).float().mean()) - 0.5) < 0.1
        # scores: Kaiming-uniform (a = √5) = U(±1/sqrt(fan_in)); different per task
        bound = 1 / math.sqrt(la.in_features)
        top = float(la.scores[0].detach().abs().max())
        assert 0.95 * bound < top <= bound
        assert not torch.equal(la.scores[0], la.scores[1])
    # the weights are fixed buffers, outside the parameters and the state dict
    assert all(n.endswith(("scores.0", "scores.1")) for n, _ in a.named_parameters())
    assert all("scores" in k for k in a.state_dict())


@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.05])
def test_each_mask_keeps_exactly_the_top_sparsity_fraction_of_scores(sparsity):
    model = SupSupMLP(SIZES, 3, sparsity=sparsity, seed=0)
    for _, layer in model.masked_layers():
        numel = layer.weight.numel()
        assert layer.n_keep == numel - int((1 - sparsity) * numel)
        for t in range(3):
            mask, magnitude = layer.mask(t), layer.scores[t].detach().abs()
            assert mask.dtype == torch.bool and mask.shape == layer.weight.shape
            assert int(mask.sum()) == layer.n_keep
            assert magnitude[mask].min() > magnitude[~mask].max()  # top-k of |scores|
    # sparsity 0.5 on even layer sizes: density exactly one half
    assert all(float(layer.mask(0).float().mean()) == 0.5 for _, layer in SupSupMLP(SIZES, 1, seed=0).masked_layers())


# ------------------------------------------------------------------------------------------ forward and gradient


def test_straight_through_gradient_reaches_only_the_active_scores(generator):
    layer = MaskedLinear(12, 6, 3, sparsity=0.5, seed=3)
    layer.set_task(1)
    x, target = torch.randn(9, 12, generator=generator), torch.randn(9, 6, generator=generator)
    F.mse_loss(layer(x), target).backward()
    # oracle: the mask as a leaf, dL/dM, then the chain through |S|: dL/dS = dL/dM * sign(S)
    mask = layer.mask(1).float().requires_grad_(True)
    F.mse_loss(F.linear(x, layer.weight * mask), target).backward()
    expected = mask.grad * layer.scores[1].detach().sign()
    torch.testing.assert_close(layer.scores[1].grad, expected, rtol=1e-6, atol=1e-8)
    assert bool((layer.scores[1].grad != 0).any())
    assert layer.scores[0].grad is None and layer.scores[2].grad is None


def test_superposition_is_the_alpha_weighted_sum_of_masks(generator):
    model = SupSupMLP(SIZES, 3, seed=2).eval()
    x = torch.randn(8, SIZES[0], generator=generator)
    with torch.no_grad():
        for t in range(3):
            onehot = F.one_hot(torch.tensor(t), 3).float()
            torch.testing.assert_close(model.set_alphas(onehot)(x), model.set_task(t)(x))
        alphas = torch.tensor([0.2, 0.5, 0.3])
        h = x
        for i, (_, layer) in enumerate(model.masked_layers()):  # oracle: W ⊙ Σ α_i M_i written out
            mix = sum(a * layer.mask(t).float() for t, a in enumerate(alphas))
            h = F.linear(h, layer.weight * mix)
            h = F.relu(h) if i < 2 else h
        torch.testing.assert_close(model.set_alphas(alphas)(x), h)
    assert model.task is None and model.alphas is alphas


def test_masked_conv_and_supermask_of_an_arbitrary_module(generator):
    conv = MaskedConv2d(3, 4, 3, 2, sparsity=0.4, seed=0, padding=1, bias=True)
    conv.set_task(1)
    x = torch.randn(2, 3, 6, 6, generator=generator)
    expected = F.conv2d(x, conv.weight * conv.mask(1), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)

    def base():
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5))

    original = base()
    model = supermask(original, 2, sparsity=0.5, seed=11)
    names = [n for n, _ in model.masked_layers()]
    assert names == ["module.0", "module.3"]
    assert isinstance(model.module[0], MaskedConv2d) and isinstance(model.module[3], MaskedLinear)
    again = supermask(base(), 2, sparsity=0.5, seed=11)  # the module's own weights play no part
    model.set_task(1), again.set_task(1)
    torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"module.{i}.scores.{t}" for i in (0, 3) for t in (0, 1)
    }


# ------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_training_one_task_leaves_the_others_untouched(optimizer):
    data, _ = _gaussian_tasks(2, 256, seed=5)
    model = SupSupMLP((32, 64, 4), 2, seed=3)
    report0 = train_supermask(model, 0, (data[0][0][:256], data[0][1][:256]), epochs=2, lr=1e-2,
                              optimizer=optimizer, batch_size=64, seed=0)
    assert report0["n_steps"] == 8 and len(report0["loss"]) == 2
    x_test = data[0][0][256:]
    scores0 = [p.detach().clone() for p in model.task_parameters(0)]
    scores1 = [p.detach().clone() for p in model.task_parameters(1)]
    with torch.no_grad():
        out0 = model.set_task(0)(x_test)
    report1 = train_supermask(model, 1, (data[1][0][:256], data[1][1][:256]), epochs=2, lr=1e-2,
                              optimizer=optimizer, batch_size=64, seed=1)
    assert model.task == 1
    assert all(torch.equal(a, b) for a, b in zip(scores0, model.task_parameters(0)))
    assert not any(torch.equal(a, b) for a, b in zip(scores1, model.task_parameters(1)))
    with torch.no_grad():
        assert torch.equal(model.set_task(0)(x_test), out0)
    assert report1["loss"][-1] < math.log(4)  # it learned something


def test_max_steps_and_dataloader_input():
    data, _ = _gaussian_tasks(1, 200, seed=2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data[0]), batch_size=50)
    model = SupSupMLP((32, 16, 4), 1, seed=0)
    report = train_supermask(model, 0, loader, epochs=5, max_steps=3)
    assert report["n_steps"] == 3 and len(report["seconds"]) == 1


# ------------------------------------------------------------------------------------------ storage


def test_save_load_gives_identical_outputs_per_task(tmp_path, generator):
    model = SupSupMLP(SIZES, 3, sparsity=0.3, seed=4, bias=True)
    with torch.no_grad():  # make the masks task-specific beyond their random init
        for p in model.task_parameters(2):
            p.mul_(torch.randn(p.shape, generator=generator))
    path = tmp_path / "supsup.safetensors"
    save_supsup(model, path)
    loaded = load_supsup(path)
    x = torch.randn(6, SIZES[0], generator=generator)
    for t in range(3):
        assert all(torch.equal(loaded.masks(t)[n], m) for n, m in model.masks(t).items())
        assert torch.equal(loaded.set_task(t)(x), model.set_task(t)(x))
    numel = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:]))
    assert model.n_stored_bits == loaded.n_stored_bits == 64 + 3 * numel
    assert path.stat().st_size < 3 * numel / 8 + 2048  # packed bits plus a small header


def test_save_load_of_a_supermasked_module(tmp_path, generator):
    def base():
        return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))

    model = supermask(base(), 2, sparsity=0.5, seed=9)
    save_supsup(model, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="module is required"):
        load_supsup(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="do not match"):
        load_supsup(tmp_path / "m.safetensors", module=nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4)))
    loaded = load_supsup(tmp_path / "m.safetensors", module=base())
    x = torch.randn(4, 10, generator=generator)
    for t in range(2):
        assert torch.equal(loaded.set_task(t)(x), model.set_task(t)(x))


# ------------------------------------------------------------------------------------------ task inference


def test_entropy_gradient_matches_finite_differences(generator):
    from pilearn.reparam._supsup import _entropy_grad, _mean_entropy

    model = SupSupMLP((10, 16, 4), 3, seed=1).double()
    x = torch.randn(12, 10, generator=generator, dtype=torch.float64)
    alphas = torch.full((3,), 1 / 3, dtype=torch.float64)
    grad = _entropy_grad(model, x, alphas)
    eps, fd = 1e-6, torch.empty(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(3):
            step = eps * F.one_hot(torch.tensor(i), 3).double()
            fd[i] = (_mean_entropy(model.set_alphas(alphas + step)(x))
                     - _mean_entropy(model.set_alphas(alphas - step)(x))) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("method", ["one_shot", "binary", "min_entropy"])
def test_infer_task_identifies_the_task_of_each_batch(three_tasks, method):
    model, test = three_tasks
    for t, (x, y) in enumerate(test):
        with torch.no_grad():
            assert float((model.set_task(t)(x).argmax(1) == y).float().mean()) > 0.95
    model.set_task(2)
    guesses = [[infer_task(model, x[i:i + 64], method) for i in range(0, 384, 64)] for x, _ in test]
    assert guesses == [[t] * 6 for t in range(3)]
    assert model.task == 2  # the task mode is restored
    assert infer_task(model, test[1][0][:64], method, n_learned=1) == 0
    assert infer_task(model, test[1][0][:64], method, n_learned=2) == 1


def test_min_entropy_is_the_argmin_of_each_masks_entropy(three_tasks):
    from pilearn.reparam._supsup import _mean_entropy

    model, test = three_tasks
    x = torch.cat([test[0][0][:20], test[2][0][:20]])  # a mixed batch: no task is obvious
    with torch.no_grad():
        entropies = [float(_mean_entropy(model.set_task(i)(x))) for i in range(3)]
    model.set_task(1)
    assert infer_task(model, x, "min_entropy") == int(np.argmin(entropies))
    assert infer_task(model, x, "min_entropy", n_learned=2) == int(np.argmin(entropies[:2]))
    assert model.task == 1


# ------------------------------------------------------------------------------------------ Hopfield storage


@pytest.mark.parametrize("rule", ["storkey", "hebbian"])
@pytest.mark.parametrize("method", ["async", "gradient"])
def test_hopfield_recalls_a_stored_mask_from_a_cue_with_ten_percent_flipped(generator, rule, method):
    d = 400
    masks = [torch.rand(20, 20, generator=generator) < 0.5 for _ in range(3)]
    store = HopfieldMaskStore(d, rule=rule)
    for m in masks:
        store.store(m)
    for m in masks:
        cue = m.clone().flatten()
        flip = torch.randperm(d, generator=generator)[: d // 10]
        cue[flip] = ~cue[flip]
        cue = cue.view(20, 20)
        recalled = store.recall(cue, 20, method=method)
        assert recalled.shape == m.shape and torch.equal(recalled, m)
        assert store.energy(m) < store.energy(cue)


def test_hebbian_weights_are_the_outer_product_sum(generator):
    patterns = [torch.rand(30, generator=generator) < 0.5 for _ in range(4)]
    store = HopfieldMaskStore(30, rule="hebbian")
    for p in patterns:
        store.store(p)
    X = torch.stack([p.double() * 2 - 1 for p in patterns])  # (k, d)
    torch.testing.assert_close(store.W, (X.T @ X - 4 * torch.eye(30, dtype=torch.float64)) / 30)
    assert store.n_stored == 4


# ------------------------------------------------------------------------------------------ PermutedMNIST


def test_permuted_mnist_is_deterministic_and_permutes():
    x = torch.zeros(5, 784)
    perms = permuted_mnist(x, 3, seed=0)
    again = permuted_mnist(x, 3, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(perms, again))
    assert all(torch.equal(p.sort().values, torch.arange(784)) for p in perms)
    assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms[0], torch.arange(784))
    assert torch.equal(permuted_mnist(x, 2, seed=0, identity_first=True)[0], torch.arange(784))


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("sparsity", [0, 1, 1.5, -0.2, True, "0.5"])
def test_sparsity_outside_open_unit_interval_is_refused(sparsity):
    with pytest.raises(ValueError, match="sparsity must be a float in \\(0, 1\\)"):
        SupSupMLP(SIZES, 2, sparsity=sparsity, seed=0)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="n_tasks must be >= 1, got 0"):
        SupSupMLP(SIZES, 0, seed=0)
    with pytest.raises(TypeError, match="n_tasks must be an int"):
        MaskedLinear(3, 2, 1.5, sparsity=0.5, seed=0)
    model = SupSupMLP(SIZES, 3, seed=0)
    for task in (3, -1):
        with pytest.raises(ValueError, match=r"task must be in \[0, 3\)"):
            model.set_task(task)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 20\).*got \(4, 19\)"):
        model(torch.zeros(4, 19))
    with pytest.raises(ValueError, match=r"alphas must be a floating tensor of shape \(3,\)"):
        model.set_alphas(torch.ones(2))
    with pytest.raises(ValueError, match="method must be"):
        infer_task(model, torch.zeros(4, 20), "greedy")
    with pytest.raises(ValueError, match="n_learned must be <= n_tasks=3"):
        infer_task(model, torch.zeros(4, 20), n_learned=4)
    with pytest.raises(ValueError, match="optimizer must be"):
        train_supermask(model, 0, (torch.zeros(4, 20), torch.zeros(4, dtype=torch.long)), optimizer="lbfgs")
    with pytest.raises(ValueError, match="task must be in"):
        train_supermask(model, 5, (torch.zeros(4, 20), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="same number of rows"):
        train_supermask(model, 0, (torch.zeros(4, 20), torch.zeros(3, dtype=torch.long)))
    with pytest.raises(ValueError, match="seed must be an int"):
        SupSupMLP(SIZES, 1, seed=-1)
    with pytest.raises(ValueError, match="must contain an nn.Linear or nn.Conv2d"):
        supermask(nn.ReLU(), 2, seed=0)
    with pytest.raises(ValueError, match="x must be a tensor of shape \\(N, D\\)"):
        permuted_mnist(torch.zeros(784), 2, seed=0)
    store = HopfieldMaskStore(8)
    with pytest.raises(ValueError, match="mask must be a tensor with 8 entries"):
        store.store(torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="cue must be binary"):
        store.recall(torch.full((8,), 0.5))
