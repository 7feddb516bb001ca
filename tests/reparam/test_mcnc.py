import math

import pytest
import torch
from torch import nn

from pilearn.reparam import MCNC, PRANC, SineGenerator, load_reparam, save_reparam

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(bn: bool = False) -> nn.Sequential:
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)  # 67 parameters (83 with batch norm)


def test_directions_lie_on_the_unit_sphere():
    net = MCNC(mlp(), k=3, segment_size=20, hidden=(16,), omega=2.0)
    u = net.directions()
    assert u.shape == (math.ceil(67 / 20), 20)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(4))


def test_generator_matches_its_formula():
    gen = SineGenerator(3, 10, hidden=(5, 6), omega=1.5, seed=4)
    alpha = torch.linspace(-1, 1, 6).view(2, 3)
    h = torch.sin(1.5 * (alpha @ gen.weight0.T + gen.bias0))
    h = torch.sin(1.5 * (h @ gen.weight1.T + gen.bias1))
    phi = h @ gen.weight2.T
    torch.testing.assert_close(gen(alpha), phi / phi.norm(dim=1, keepdim=True))
    assert gen.state_dict() == {}  # regenerated from the seed, never stored


def test_base_init_starts_at_the_seeded_init():
    net = MCNC(mlp(), k=4, segment_size=16, seed=9)
    assert torch.equal(net.theta(), net.theta0)
    bounds = torch.cat([torch.full((40,), 0.5), torch.full((27,), 1 / math.sqrt(8))])
    assert bool((net.theta0.abs() <= bounds).all())
    assert torch.equal(MCNC(mlp(), k=4, segment_size=16, seed=9).theta0, net.theta0)  # regenerated, same bits


def test_base_zero_starts_on_the_manifold_at_init_norm():
    net = MCNC(mlp(), k=4, segment_size=16, seed=9, base="zero")
    reference = MCNC(mlp(), k=4, segment_size=16, seed=9).theta0
    assert net.theta0 is None
    segments = nn.functional.pad(net.theta().detach(), (0, 80 - 67)).view(5, 16)
    torch.testing.assert_close(segments.norm(dim=1), nn.functional.pad(reference, (0, 13)).view(5, 16).norm(dim=1))


def test_names_and_n_stored():
    net = MCNC(mlp(bn=True), k=5, segment_size=30)
    assert [name for name, _ in net.named_parameters()] == ["alpha", "beta"]
    n_segments = math.ceil(83 / 30)
    assert net.n_stored == n_segments * (5 + 1) + 8 + 8 + 1


def test_gradients_reach_alpha_and_beta(generator):
    net = MCNC(mlp(), k=3, segment_size=25)
    x = torch.randn(8, 4, generator=generator)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # β = 0 at the start, so α gets its first gradient on the second step
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    assert float(net.beta.grad.abs().sum()) > 0 and float(net.alpha.grad.abs().sum()) > 0


def test_forward_equals_the_materialized_module(generator):
    net = MCNC(mlp(), k=3, segment_size=25, base="zero")
    x = torch.randn(5, 4, generator=generator)
    assert torch.equal(net(x), net.materialize()(x))


def test_checkpoint_reproduces_trained_theta_and_outputs(tmp_path, generator):
    torch.manual_seed(0)
    net = MCNC(mlp(bn=True), k=4, segment_size=20, seed=7, hidden=(32, 32), omega=3.0)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x, y = torch.randn(32, 4, generator=generator), torch.arange(32) % 3
    for _ in range(5):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    save_reparam(net, tmp_path / "mcnc.safetensors")
    loaded = load_reparam(tmp_path / "mcnc.safetensors", mlp(bn=True)).eval()
    assert isinstance(loaded, MCNC) and loaded.reparam_config() == net.reparam_config()
    assert torch.equal(loaded.theta(), net.theta())
    assert torch.equal(loaded(x), net(x))


def test_checkpoint_class_is_kept(tmp_path):
    save_reparam(PRANC(mlp(), n_basis=3), tmp_path / "p.safetensors")
    assert isinstance(load_reparam(tmp_path / "p.safetensors", mlp()), PRANC)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, "k must be a positive int, got 0"),
        ({"segment_size": -1}, ValueError, "segment_size must be a positive int, got -1"),
        ({"omega": 0.0}, ValueError, "omega must be a finite float > 0, got 0.0"),
        ({"omega": float("nan")}, ValueError, "omega must be a finite float > 0"),
        ({"hidden": (8, 0)}, ValueError, r"hidden\[1\] must be a positive int, got 0"),
        ({"hidden": 8}, TypeError, "hidden must be a sequence of positive ints"),
        ({"base": "random"}, ValueError, "base must be 'init' or 'zero', got 'random'"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    args = {"k": 2, "segment_size": 10, **kwargs}
    with pytest.raises(error, match=match):
        MCNC(mlp(), **args)
