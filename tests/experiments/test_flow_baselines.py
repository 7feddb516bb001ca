"""Gradient-trained flow-matching baselines, checked against the closed-form marginal velocity of Gaussians.

Oracle: for x₀ ~ N(0, I) and x₁ ~ N(μ, s² I) independent, on the straight path x_t = (1 − t)x₀ + t x₁,

    x_t ~ N(t μ, ((1 − t)² + t² s²) I),   Cov(x₁ − x₀, x_t) = (t s² − (1 − t)) I,
    v*(x, t) = E[x₁ − x₀ | x_t = x] = μ + (t s² − (1 − t)) / ((1 − t)² + t² s²) · (x − t μ),

and for a mixture Σ_k π_k N(μ_k, s² I) the posterior-weighted sum of these (weights ∝ π_k N(x; t μ_k, var_t I)).
Its loss E(v* − u)² is the least any model can reach, E[Var(u | x_t)].
"""

import math

import pytest
import torch
import torch.nn as nn

from pilearn.experiments._generative_baselines import (
    ConvVelocity,
    FlowTrainResult,
    MLPVelocity,
    flow_matching_loss,
    model_velocity,
    train_flow_matching,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor, m: float, s: float) -> torch.Tensor:
    """v*(x, t) for x₁ ~ N(m, s²) in 1-D; ``x, t`` broadcast."""
    var = (1 - t) ** 2 + t**2 * s**2
    cov = t * s**2 - (1 - t)
    return m + cov / var * (x - t * m)


class GMMVelocity(nn.Module):
    """The exact marginal velocity of an equal-weight mixture of N(μ_k, s² I): the loss oracle."""

    def __init__(self, means: torch.Tensor, s: float) -> None:
        super().__init__()
        self.means, self.s = means, s  # (K, D)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t[:, None, None]  # (n, 1, 1)
        var = (1 - tt) ** 2 + tt**2 * self.s**2
        cov = tt * self.s**2 - (1 - tt)
        centred = x[:, None] - tt * self.means[None]  # (n, K, D)
        w = torch.softmax(-(centred**2).sum(-1, keepdim=True) / (2 * var), dim=1)  # (n, K, 1)
        return (w * (self.means[None] + cov / var * centred)).sum(1)  # (n, D)


class Zero(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def euler(velocity, x: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from 0 to 1 (reference: written out, not the library sampler)."""
    h = 1.0 / steps
    for k in range(steps):
        x = x + h * velocity(x, torch.full((x.shape[0],), k * h))
    return x


# ---------------------------------------------------------------------------------------------------------- nets
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 9, 9), (1, 7, 7)])
@pytest.mark.parametrize("n_classes", [0, 10])
def test_conv_velocity_shapes_and_conditioning(shape, n_classes, generator):
    torch.manual_seed(0)
    net = ConvVelocity(shape, n_classes=n_classes)
    d = math.prod(shape)
    x, t = torch.randn(4, d, generator=generator), torch.rand(4, generator=generator)
    y = torch.tensor([0, 3, 9, 1]) if n_classes else None
    v = net(x, t, y)
    assert v.shape == (4, d) and torch.isfinite(v).all()
    # the rows are independent (GroupNorm is per sample): row 1 alone gives the same as in the batch
    torch.testing.assert_close(net(x[1:2], t[1:2], None if y is None else y[1:2]), v[1:2])
    assert not torch.allclose(net(x, 1 - t, y), v, atol=1e-4)  # time reaches the output
    if n_classes:
        assert not torch.allclose(net(x, t, (y + 1) % 10), v, atol=1e-4)  # so do labels


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 7, 7)])
def test_conv_velocity_skip_connection_reaches_the_up_path(shape, generator):
    """The up block at full size is fed [upsampled coarse features, the down block's output] (U-Net skip)."""
    net = ConvVelocity(shape, channels=(8, 16))
    seen = {}
    net.down_blocks[0].register_forward_hook(lambda mod, inp, out: seen.__setitem__("down", out))
    net.up_blocks[0].register_forward_hook(lambda mod, inp, out: seen.__setitem__("up_in", inp[0]))
    net(torch.randn(2, math.prod(shape), generator=generator), torch.rand(2, generator=generator))
    assert seen["up_in"].shape == (2, 16, *shape[1:])  # interpolated back to the skip's (odd) size
    torch.testing.assert_close(seen["up_in"][:, 8:], seen["down"])


def _unet_parameters(c_img: int, chs: tuple[int, ...], time_dim: int, n_classes: int) -> int:
    """The parameter count of the architecture ConvVelocity's docstring describes, written out layer by layer."""
    conv = lambda cin, cout, k=3: cin * cout * k * k + cout  # noqa: E731
    lin = lambda cin, cout: cin * cout + cout  # noqa: E731
    emb = 4 * chs[0]

    def block(cin: int, cout: int) -> int:  # conv + GN + embedding projection + conv + GN (+ 1×1 skip)
        return conv(cin, cout) + 2 * cout + lin(emb, cout) + conv(cout, cout) + 2 * cout + (
            0 if cin == cout else conv(cin, cout, 1))

    n = lin(time_dim, emb) + lin(emb, emb) + n_classes * emb + conv(c_img, chs[0])
    n += sum(block(chs[max(i - 1, 0)], c) for i, c in enumerate(chs)) + sum(conv(c, c) for c in chs[:-1])
    n += block(chs[-1], chs[-1])
    n += sum(conv(chs[i + 1], chs[i]) + block(2 * chs[i], chs[i]) for i in range(len(chs) - 1))
    return n + 2 * chs[0] + conv(chs[0], c_img)


@pytest.mark.parametrize("in_shape, channels, n_classes", [((1, 28, 28), (32, 64), 0), ((3, 8, 8), (4, 8, 16), 10)])
def test_conv_velocity_has_the_documented_architecture(in_shape, channels, n_classes):
    net = ConvVelocity(in_shape, channels=channels, time_dim=64, n_classes=n_classes)
    n = sum(p.numel() for p in net.parameters())
    assert n == _unet_parameters(in_shape[0], channels, 64, n_classes)
    if channels == (32, 64):
        assert 240_000 <= n <= 280_000  # the docstring's "about 260k parameters" for the defaults


@pytest.mark.parametrize("dim", [784, 64, 2])
@pytest.mark.parametrize("n_classes", [0, 10])
def test_mlp_velocity_shapes_and_conditioning(dim, n_classes, generator):
    torch.manual_seed(0)
    net = MLPVelocity(dim, hidden=32, depth=2, n_classes=n_classes)
    x, t = torch.randn(5, dim, generator=generator), torch.rand(5, generator=generator)
    y = torch.tensor([0, 1, 2, 9, 4]) if n_classes else None
    v = net(x, t, y)
    assert v.shape == (5, dim)
    linears = [m for m in net.net if isinstance(m, nn.Linear)]
    assert [m.in_features for m in linears] == [dim + 64 + n_classes, 32, 32] and linears[-1].out_features == dim
    assert not torch.allclose(net(x, 1 - t, y), v, atol=1e-5)
    if n_classes:
        assert not torch.allclose(net(x, t, (y + 1) % 10), v, atol=1e-5)


@pytest.mark.parametrize(
    "net, args, match",
    [
        (MLPVelocity(3), (torch.zeros(2, 4), torch.zeros(2)), r"x must be a tensor of shape \(n, 3\), got \(2, 4\)"),
        (MLPVelocity(3), (torch.zeros(2, 3), torch.zeros(3)), r"t must be a tensor of shape \(2,\), got \(3,\)"),
        (MLPVelocity(3, n_classes=2), (torch.zeros(2, 3), torch.zeros(2)), r"y is required.*n_classes=2"),
        (MLPVelocity(3, n_classes=2), (torch.zeros(2, 3), torch.zeros(2), torch.tensor([0, 2])),
         r"y must lie in \[0, 1\], got values in \[0, 2\]"),
        (MLPVelocity(3), (torch.zeros(2, 3), torch.zeros(2), torch.tensor([0, 1])), "y must be None"),
        (ConvVelocity((1, 8, 8)), (torch.zeros(2, 63), torch.zeros(2)), r"shape \(n, 64\), got \(2, 63\)"),
    ],
)
def test_forward_rejects_bad_inputs(net, args, match):
    with pytest.raises(ValueError, match=match):
        net(*args)


def test_constructors_reject_bad_arguments():
    with pytest.raises(ValueError, match="in_shape must be a \\(C, H, W\\) tuple, got \\(28, 28\\)"):
        ConvVelocity((28, 28))
    with pytest.raises(ValueError, match="channels must be a non-empty tuple"):
        ConvVelocity(channels=())
    with pytest.raises(ValueError, match="depth must be an int >= 1, got 0"):
        MLPVelocity(2, depth=0)


# ------------------------------------------------------------------------------------------------- the loss oracle
def test_flow_matching_loss_matches_analytic_minimum(generator):
    m, s = 2.0, 0.5
    X = m + s * torch.randn(200_000, 1, generator=generator)
    # min loss = ∫₀¹ Var(u) − Cov(u, x_t)² / Var(x_t) dt, Var(u) = 1 + s², by the midpoint rule
    t = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    l_min = float((1 + s**2 - (t * s**2 - (1 - t)) ** 2 / ((1 - t) ** 2 + t**2 * s**2)).mean())
    oracle = GMMVelocity(torch.tensor([[m]]), s)
    assert flow_matching_loss(oracle, X, seed=3) == pytest.approx(l_min, abs=0.015)  # ≈ 5 standard errors
    assert flow_matching_loss(Zero(), X, seed=3) == pytest.approx(m**2 + s**2 + 1, abs=0.06)  # E u²
    # the draws are fixed by the seed, not by the batching
    assert flow_matching_loss(oracle, X, seed=3) == pytest.approx(
        flow_matching_loss(oracle, X, seed=3, batch_size=999), rel=1e-12)
    assert flow_matching_loss(oracle, X, seed=3) != flow_matching_loss(oracle, X, seed=4)


# ----------------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def gaussian_fit():
    """An MLP trained on x₁ ~ N(2, 0.5²) (800 steps, about 3 s on one core)."""
    m, s = 2.0, 0.5
    X = m + s * torch.randn(8192, 1, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = MLPVelocity(1, hidden=64, depth=2, time_dim=32)
    result = train_flow_matching(net, X, epochs=100, batch_size=1024, lr=1e-2, schedule="cosine")
    return result, m, s


def test_learned_velocity_matches_analytic_marginal_velocity(gaussian_fit):
    result, m, s = gaussian_fit
    assert isinstance(result, FlowTrainResult) and not result.model.training
    t = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]).repeat(3)  # (15,)
    k = torch.tensor([-1.5, 0.0, 1.5]).repeat_interleave(5)  # x at t·m + k·sd(x_t)
    x = t * m + k * ((1 - t) ** 2 + t**2 * s**2).sqrt()
    v = model_velocity(result.model)(x[:, None], t)[:, 0]
    torch.testing.assert_close(v, gaussian_velocity(x, t, m, s), atol=0.15, rtol=0)
    # the zero model is off by |v*| ~ 1–3 here: the tolerance above is tight by comparison
    assert gaussian_velocity(x, t, m, s).abs().min() > 0.5


def test_model_velocity_transports_noise_to_the_data(gaussian_fit, generator):
    result, m, s = gaussian_fit
    velocity = model_velocity(result.model)
    x1 = euler(velocity, torch.randn(4000, 1, generator=generator))
    assert not x1.requires_grad
    assert float(x1.mean()) == pytest.approx(m, abs=0.06)
    assert float(x1.std()) == pytest.approx(s, abs=0.06)


def test_loss_decreases_to_near_the_optimum_on_two_blobs(generator):
    means, s = torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.3

    def sample(n: int) -> torch.Tensor:  # (n, 2) from the equal-weight mixture
        return means[torch.randint(0, 2, (n,), generator=generator)] + s * torch.randn(n, 2, generator=generator)

    X, X_eval = sample(2000), sample(20_000)
    torch.manual_seed(0)
    net = MLPVelocity(2, hidden=128, depth=3, time_dim=32)
    l_init = flow_matching_loss(net, X_eval, seed=5)
    l_min = flow_matching_loss(GMMVelocity(means, s), X_eval, seed=5)
    result = train_flow_matching(net, X, epochs=39, batch_size=256, lr=3e-3)  # 312 steps
    assert result.steps == 39 * 8 and result.epochs == 39.0 and result.stop_reason == "epochs"
    l_trained = flow_matching_loss(result.model, X_eval, seed=5)
    assert l_init > 1.8 * l_min  # the problem is not trivial: an untrained net is far from the optimum
    assert l_trained - l_min < 0.15 * (l_init - l_min)
    assert result.final_train_loss == result.loss_curve[-1][2] < 0.6 * l_init
    assert [r[0] for r in result.loss_curve] == [50, 100, 150, 200, 250, 300, 312]


def test_conditional_fit_follows_the_label(generator):
    """Class 0 → N(−2, 0.4²), class 1 → N(+2, 0.4²): each label's velocity is its own Gaussian's v*."""
    s, centre = 0.4, torch.tensor([-2.0, 2.0])
    y = torch.randint(0, 2, (4096,), generator=generator)
    X = (centre[y] + s * torch.randn(4096, generator=generator))[:, None]
    torch.manual_seed(0)
    net = MLPVelocity(1, hidden=64, depth=2, time_dim=32, n_classes=2)
    result = train_flow_matching(net, X, y, epochs=100, batch_size=512, lr=1e-2, schedule="cosine")
    t = torch.tensor([0.2, 0.5, 0.8])
    for label in (0, 1):
        x = t * centre[label]  # the mean of x_t given the label
        v = model_velocity(result.model, torch.full((3,), label))(x[:, None], t)[:, 0]
        torch.testing.assert_close(v, gaussian_velocity(x, t, float(centre[label]), s), atol=0.2, rtol=0)
        x1 = euler(model_velocity(result.model, torch.full((2000,), label)), torch.randn(2000, 1, generator=generator))
        assert float(x1.mean()) == pytest.approx(float(centre[label]), abs=0.1)


def test_conv_velocity_trains_conditionally_on_small_images(generator):
    X = torch.rand(60, 64, generator=generator) * 2 - 1
    y = torch.randint(0, 3, (60,), generator=generator)
    torch.manual_seed(0)
    net = ConvVelocity((1, 8, 8), channels=(8, 16), n_classes=3)
    before = [p.detach().clone() for p in net.parameters()]
    result = train_flow_matching(net, X.numpy(), y.numpy(), epochs=2, batch_size=16, log_every=3)
    assert result.steps == 8 and result.epochs == 2.0 and result.stop_reason == "epochs"
    assert result.n_params == sum(p.numel() for p in before)
    assert [r[0] for r in result.loss_curve] == [3, 6, 8]
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # every weight moved
    assert not net.training and result.model is net and result.val_curve == [] and result.best_val_loss is None


def test_time_budget_stops_near_the_budget(generator):
    X = torch.randn(1000, 2, generator=generator)
    torch.manual_seed(0)
    result = train_flow_matching(MLPVelocity(2, hidden=64, depth=2), X, time_budget=0.5, batch_size=100)
    assert result.stop_reason == "time_budget"
    assert 0.5 <= result.seconds < 1.0
    assert result.steps >= 5 and result.epochs == pytest.approx(result.steps / 10)
    assert result.loss_curve[-1][0] == result.steps and result.loss_curve[-1][1] <= result.seconds
    # with both, whichever comes first: one epoch long before a minute
    torch.manual_seed(0)
    both = train_flow_matching(MLPVelocity(2, hidden=64, depth=2), X, time_budget=60, epochs=1, batch_size=100)
    assert both.stop_reason == "epochs" and both.steps == 10 and both.seconds < 60


def test_validation_keeps_the_best_weights(generator):
    """High lr makes the validation loss bounce, so patience stops the run after non-improving evaluations."""
    X = torch.randn(400, 2, generator=generator) * 0.5 + 1
    torch.manual_seed(0)
    result = train_flow_matching(MLPVelocity(2, hidden=64, depth=2), X, epochs=200, batch_size=64, lr=0.05,
                                 val_fraction=0.25, val_every=5, patience=3, seed=7)
    assert result.stop_reason == "patience" and result.epochs < 200
    vals = [v for _, v in result.val_curve]
    assert result.best_val_loss == min(vals)
    assert vals[-1] > result.best_val_loss  # the last weights are not the best: keeping them would fail below
    assert len(result.val_indices) == 100 and result.val_seed == 8
    recomputed = flow_matching_loss(result.model, X[result.val_indices], seed=result.val_seed)
    assert recomputed == pytest.approx(result.best_val_loss, rel=1e-6)
    assert [s for s, _ in result.val_curve] == list(range(5, result.steps + 1, 5))


def _fit(seed: int, generator_seed: int = 0) -> FlowTrainResult:
    X = torch.randn(300, 3, generator=torch.Generator().manual_seed(generator_seed))
    torch.manual_seed(0)
    net = MLPVelocity(3, hidden=32, depth=2)
    return train_flow_matching(net, X, epochs=3, batch_size=64, sigma=0.1, val_fraction=0.2, seed=seed)


def test_same_seed_gives_identical_weights():
    a, b, c = _fit(seed=1), _fit(seed=1), _fit(seed=2)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert [r[2] for r in a.loss_curve] == [r[2] for r in b.loss_curve] and a.val_curve == b.val_curve
    assert torch.equal(a.val_indices, b.val_indices)
    assert not torch.equal(a.model.net[0].weight, c.model.net[0].weight)


class WrongWidth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


_X = torch.randn(20, 2)


@pytest.mark.parametrize(
    "model, X, y, kwargs, error, match",
    [
        (MLPVelocity(2), torch.tensor([[0.0, float("nan")]]).repeat(20, 1), None, {"epochs": 1}, ValueError,
         r"X must be finite, got a NaN or inf in row 0"),
        (MLPVelocity(2), torch.randn(20), None, {"epochs": 1}, ValueError, r"X must be 2-D .*got shape \(20,\)"),
        (MLPVelocity(2), torch.ones(20, 2, dtype=torch.uint8), None, {"epochs": 1}, TypeError,
         "X must be floating point"),
        (MLPVelocity(2), [[0.0, 1.0]], None, {"epochs": 1}, TypeError, "X must be a torch.Tensor or numpy array"),
        (MLPVelocity(2, n_classes=3), _X, torch.full((20,), 3), {"epochs": 1}, ValueError,
         r"y must lie in \[0, 2\] \(n_classes=3\), got values in \[3, 3\]"),
        (MLPVelocity(2, n_classes=3), _X, None, {"epochs": 1}, ValueError, r"y is required.*n_classes=3"),
        (MLPVelocity(2), _X, torch.zeros(20, dtype=torch.long), {"epochs": 1}, ValueError, "y must be None"),
        (MLPVelocity(2, n_classes=3), _X, torch.zeros(19, dtype=torch.long), {"epochs": 1}, ValueError,
         r"y must have shape \(20,\) to match X \(20, 2\), got \(19,\)"),
        (MLPVelocity(2, n_classes=3), _X, torch.zeros(20), {"epochs": 1}, TypeError, "y must hold integer labels"),
        (WrongWidth(), _X, None, {"epochs": 1}, ValueError,
         r"model output must have the shape of its input x \(8, 2\), got \(8, 3\)"),
        (MLPVelocity(2), _X, None, {}, ValueError, "time_budget and epochs cannot both be None"),
        (MLPVelocity(2), _X, None, {"time_budget": 0}, ValueError, "time_budget must be .* > 0 or None, got 0"),
        (MLPVelocity(2), _X, None, {"epochs": 0}, ValueError, "epochs must be an int >= 1, got 0"),
        (MLPVelocity(2), _X, None, {"time_budget": 1, "schedule": "cosine"}, ValueError,
         "schedule='cosine' needs epochs"),
        (MLPVelocity(2), _X, None, {"epochs": 1, "schedule": "linear"}, ValueError, "schedule must be"),
        (MLPVelocity(2), _X, None, {"epochs": 1, "val_fraction": 1.0}, ValueError,
         r"val_fraction must be a float in \[0, 1\), got 1.0"),
        (MLPVelocity(2), _X, None, {"epochs": 1, "val_fraction": 0.01}, ValueError, "leaves 0 validation"),
        (MLPVelocity(2), _X, None, {"epochs": 1, "lr": -1.0}, ValueError, "lr must be a finite float > 0, got -1.0"),
        (MLPVelocity(2), _X, None, {"epochs": 1, "batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
        (MLPVelocity(2), _X, None, {"epochs": 1, "sigma": -0.1}, ValueError, "sigma must be a finite float >= 0"),
        ("not a model", _X, None, {"epochs": 1}, TypeError, "model must be a torch.nn.Module, got str"),
    ],
)
def test_bad_inputs_raise_clear_errors(model, X, y, kwargs, error, match):
    with pytest.raises(error, match=match):
        train_flow_matching(model, X, y, batch_size=kwargs.pop("batch_size", 8), **kwargs)


def test_non_finite_loss_is_reported_with_the_step():
    class NaNOut(WrongWidth):
        def forward(self, x, t):
            return self.lin(x)[:, :2] * float("nan")

    with pytest.raises(FloatingPointError, match="non-finite .* by step 1"):
        train_flow_matching(NaNOut(), _X, epochs=1, batch_size=8, log_every=1)


def test_model_velocity_checks_labels():
    net = MLPVelocity(2, hidden=8, n_classes=3)
    with pytest.raises(ValueError, match=r"y is required.*n_classes=3"):
        model_velocity(net)
    with pytest.raises(ValueError, match=r"x must have 4 rows to match the fixed labels y, got \(3, 2\)"):
        model_velocity(net, torch.zeros(4, dtype=torch.long))(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="y must be an integer tensor"):
        model_velocity(net, torch.zeros(4))
    v = model_velocity(net, torch.tensor([0, 2]))(torch.ones(2, 2), torch.full((2,), 0.5))
    torch.testing.assert_close(v, net(torch.ones(2, 2), torch.full((2,), 0.5), torch.tensor([0, 2])))
