import math

import pytest
import torch
from torch import nn

from pilearn.reparam import PRANC, LeNet5, basis_rows, load_reparam, save_reparam

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(bn: bool = False) -> nn.Sequential:
    """4 → 8 → 3; the values of its parameters are irrelevant once PRANC takes it over."""
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def blobs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A balanced 3-class problem in 4-D: Gaussian clusters around three random centres."""
    centres = 2.0 * torch.randn(3, 4, generator=generator)
    y = torch.arange(n) % 3
    return centres[y] + torch.randn(n, 4, generator=generator), y


def test_alpha_is_the_only_parameter_and_theta_starts_at_basis_network_zero():
    net = PRANC(mlp(), n_basis=10, seed=3)
    assert [name for name, _ in net.named_parameters()] == ["alpha"]
    assert net.n_params == 4 * 8 + 8 + 8 * 3 + 3
    # θ = s ⊙ b₀: a default-initialized network (U(±1/√fan_in) for each layer's weight and bias)
    bounds = torch.cat([torch.full((40,), 1 / math.sqrt(4)), torch.full((27,), 1 / math.sqrt(8))])
    expected = bounds * basis_rows(3, 0, 1, 67)[0]
    torch.testing.assert_close(net.theta(), expected, rtol=0, atol=1e-7)
    assert bool((net.theta().abs() <= bounds).all())


def test_forward_equals_the_materialized_module(generator):
    net = PRANC(mlp(), n_basis=12)
    with torch.no_grad():
        net.alpha.copy_(torch.randn(12, generator=generator))
    x = torch.randn(5, 4, generator=generator)
    plain = net.materialize()
    assert torch.equal(net(x), plain(x))
    assert [n for n, _ in plain.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(p.requires_grad for p in plain.parameters())
    torch.testing.assert_close(torch.cat([p.flatten() for p in plain.parameters()]), net.theta().detach())


def test_theta_is_the_combination_of_basis_networks(generator):
    net = PRANC(mlp(), n_basis=6, seed=1, cache_basis=False, chunk_size=4)
    alpha = torch.randn(6, generator=generator)
    with torch.no_grad():
        net.alpha.copy_(alpha)
    nets = net.basis_networks(0, 6)
    torch.testing.assert_close(net.theta(), (alpha[:, None] * nets).sum(0), rtol=1e-6, atol=1e-6)


def test_gradient_reaches_alpha_through_the_basis(generator):
    net = PRANC(mlp(), n_basis=9).double()
    x = torch.randn(7, 4, generator=generator, dtype=torch.float64)
    net(x).square().sum().backward()
    theta = net.theta().detach().requires_grad_()
    plain_out = torch.func.functional_call(net.module, net.unflatten(theta), (x,))
    (g,) = torch.autograd.grad(plain_out.square().sum(), theta)
    torch.testing.assert_close(net.alpha.grad, net.basis_networks(0, 9) @ g)  # ∂L/∂α = Θ̂ ∂L/∂θ


def test_cache_and_no_cache_agree(generator):
    x = torch.randn(6, 4, generator=generator)
    outs, grads = [], []
    for cache in (True, False):
        net = PRANC(mlp(), n_basis=20, seed=5, cache_basis=cache, chunk_size=8)
        out = net(x)
        out.sum().backward()
        outs.append(out.detach())
        grads.append(net.alpha.grad)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def test_n_stored_counts_alpha_and_batchnorm_buffers():
    net = PRANC(mlp(bn=True), n_basis=15)
    # α (15) + running_mean (8) + running_var (8) + num_batches_tracked (1); BN's affine (16) is in θ
    assert net.n_stored == 15 + 8 + 8 + 1
    assert net.n_params == 40 + 16 + 27
    assert net.compression == pytest.approx(83 / 32)


def test_checkpoint_reproduces_trained_theta_and_outputs(tmp_path, generator):
    torch.manual_seed(0)  # module construction draws from the global generator; θ does not depend on it
    net = PRANC(mlp(bn=True), n_basis=30, seed=11)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = blobs(32, generator)
    for _ in range(5):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    path = tmp_path / "pranc.safetensors"
    save_reparam(net, path)
    loaded = load_reparam(path, mlp(bn=True)).eval()
    assert isinstance(loaded, PRANC)
    assert torch.equal(loaded.theta(), net.theta())
    assert torch.equal(loaded(x), net(x))
    assert torch.equal(loaded.module[1].running_mean, net.module[1].running_mean)
    assert int(loaded.module[1].num_batches_tracked) == 5


def test_checkpoint_refuses_another_architecture(tmp_path):
    net = PRANC(mlp(), n_basis=4)
    save_reparam(net, tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="does not match the checkpoint's architecture"):
        load_reparam(tmp_path / "p.safetensors", nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 3)))


def test_tied_weights_are_one_block():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(5, 5, bias=False)
            self.b = nn.Linear(5, 5, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    net = PRANC(Tied(), n_basis=3)
    assert net.n_params == 25
    plain = net.materialize()
    assert plain.a.weight is plain.b.weight


def test_learns_a_small_classification_problem(generator):
    torch.manual_seed(0)
    net = PRANC(nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)), n_basis=300, seed=2)
    x, y = blobs(300, generator)
    x_test, y_test = x[200:], y[200:]
    with torch.no_grad():
        start = float((net(x_test).argmax(1) == y_test).float().mean())
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        loss = nn.functional.cross_entropy(net(x[:200]), y[:200])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = float((net(x_test).argmax(1) == y_test).float().mean())
    assert accuracy > 0.85 and accuracy > start + 0.25, (start, accuracy)  # chance is 1/3; here 0.48 → 0.96


def test_lenet5_has_61706_parameters():
    net = LeNet5()
    assert sum(p.numel() for p in net.parameters()) == 61_706
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("n_basis", [0, -2, 2.5, True])
def test_bad_n_basis_is_refused(n_basis):
    with pytest.raises(ValueError, match="n_basis must be a positive int"):
        PRANC(mlp(), n_basis=n_basis)


def test_bad_modules_are_refused():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        PRANC("not a module", n_basis=3)
    net = PRANC(mlp(), n_basis=3)
    with pytest.raises(ValueError, match="no trainable parameters"):
        PRANC(net.module, n_basis=3)  # already taken over
    with pytest.raises(ValueError, match="distribution must be one of"):
        PRANC(mlp(), n_basis=3, distribution="cauchy")
