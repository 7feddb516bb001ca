"""Gradient-trained DDPM baselines (ε-prediction, L_simple), checked against the closed-form optimum for Gaussians.

Oracle: for x₀ ~ N(μ, s² I) and x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε with ε ~ N(0, I) independent,

    x_t ~ N(√ᾱ_t μ, (ᾱ_t s² + 1 − ᾱ_t) I),   Cov(ε, x_t) = √(1 − ᾱ_t) I,
    ε*(x, t) = E[ε | x_t = x] = √(1 − ᾱ_t)(x − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t),

and its loss E(ε* − ε)² per coordinate is Var(ε | x_t) = ᾱ_t s² / (ᾱ_t s² + 1 − ᾱ_t), averaged over t ~ U{0..T−1}:
the least any model can reach. Predicting 0 scores E ε² = 1.
"""

import pytest
import torch
import torch.nn as nn

from pilearn.experiments._generative_baselines import (
    ConvVelocity,
    MLPVelocity,
    TrainResult,
    ddpm_loss,
    model_noise,
    train_ddpm,
)


pytestmark = pytest.mark.usefixtures("one_thread")

T = 1000
#: DDPM's schedule (Ho et al. 2020): β linear from 1e-4 to 0.02 over T = 1000 steps
ABAR = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), dim=0)


class GaussianEps(nn.Module):
    """The exact ε-predictor ε*(x_t, t) of x₀ ~ N(μ, s² I); reads the time step back from the network time t/T."""

    def __init__(self, mu: torch.Tensor, s: float, alphas_cumprod: torch.Tensor = ABAR) -> None:
        super().__init__()
        self.mu, self.s, self.abar = mu, s, alphas_cumprod

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        ab = self.abar[(t.double() * len(self.abar)).round().long()][:, None]  # (n, 1)
        mu = self.mu if y is None else self.mu[y]  # (D,) or per-class (n, D)
        eps = (1 - ab).sqrt() * (x.double() - ab.sqrt() * mu) / (ab * self.s**2 + 1 - ab)
        return eps.to(x.dtype)


class Zero(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


# ------------------------------------------------------------------------------------------------- the loss oracle
def test_ddpm_loss_of_the_exact_predictor_matches_the_analytic_minimum(generator):
    mu, s = torch.tensor([1.0, -0.5]), 0.5
    X = mu + s * torch.randn(100_000, 2, generator=generator)
    l_min = float((ABAR * s**2 / (ABAR * s**2 + 1 - ABAR)).mean())  # E_t of the per-coordinate Var(ε | x_t)
    oracle = GaussianEps(mu, s)
    l_oracle = ddpm_loss(oracle, X, alphas_cumprod=ABAR, seed=3)
    assert l_oracle == pytest.approx(l_min, abs=0.007)  # ≈ 5 standard errors (0.0014, measured)
    l_zero = ddpm_loss(Zero(), X, alphas_cumprod=ABAR, seed=3)
    assert l_zero == pytest.approx(1.0, abs=0.015)  # E ε² = 1, 200 000 draws
    assert l_oracle < 0.2 < l_zero
    # the draws are fixed by the seed, not by the batching
    assert l_oracle == pytest.approx(ddpm_loss(oracle, X, alphas_cumprod=ABAR, seed=3, batch_size=999), rel=1e-12)
    assert l_oracle != ddpm_loss(oracle, X, alphas_cumprod=ABAR, seed=4)


def test_ddpm_loss_draws_t_then_eps_from_the_seed(generator):
    """Written out: t ~ randint(T), then ε ~ randn, from torch.Generator().manual_seed(seed)."""
    X = torch.randn(50, 3, generator=generator)

    class Probe(nn.Module):
        def forward(self, x, t):
            self.seen = (x, t)
            return torch.zeros_like(x)

    probe = Probe()
    loss = ddpm_loss(probe, X, alphas_cumprod=ABAR, seed=11)
    g = torch.Generator().manual_seed(11)
    steps = torch.randint(0, T, (50,), generator=g)
    eps = torch.randn(50, 3, generator=g)
    ab = ABAR[steps][:, None]
    torch.testing.assert_close(probe.seen[0], (ab.sqrt() * X + (1 - ab).sqrt() * eps).float())
    torch.testing.assert_close(probe.seen[1], steps.float() / T)
    assert loss == pytest.approx(float((eps.double() ** 2).mean()), rel=1e-6)


# ----------------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def gaussian_fit():
    """An MLP ε-network trained on x₀ ~ N((1, −0.5), 0.5² I) (400 steps, about 1 s on one core)."""
    mu, s = torch.tensor([1.0, -0.5]), 0.5
    X = mu + s * torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = MLPVelocity(2, hidden=64, depth=2, time_dim=32)
    X_eval = mu + s * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(1))
    l_init = ddpm_loss(net, X_eval, alphas_cumprod=ABAR, seed=5)
    result = train_ddpm(net, X, alphas_cumprod=ABAR, epochs=100, batch_size=1024, lr=1e-2, schedule="cosine")
    return result, mu, s, X_eval, l_init


def test_training_reaches_the_optimal_loss(gaussian_fit):
    result, mu, s, X_eval, l_init = gaussian_fit
    assert isinstance(result, TrainResult) and not result.model.training
    assert result.steps == 400 and result.epochs == 100.0 and result.stop_reason == "epochs"
    l_trained = ddpm_loss(result.model, X_eval, alphas_cumprod=ABAR, seed=5)
    l_min = ddpm_loss(GaussianEps(mu, s), X_eval, alphas_cumprod=ABAR, seed=5)
    assert l_init > 0.9 and l_min < 0.2  # predicting ~0 at init scores ~1; the optimum is far below
    assert l_trained < 1.0 and l_trained < 0.5 * l_init
    assert l_trained - l_min < 0.02 * (l_init - l_min)
    assert result.final_train_loss == result.loss_curve[-1][2] < 0.5 * l_init


def test_learned_noise_matches_the_analytic_posterior_mean(gaussian_fit):
    result, mu, s, _, _ = gaussian_fit
    steps = torch.tensor([50, 200, 400, 600, 900]).repeat(3)  # (15,)
    k = torch.tensor([-1.5, 0.0, 1.5]).repeat_interleave(5)  # x at √ᾱ μ + k·sd(x_t) on both coordinates
    ab = ABAR[steps][:, None].float()
    x = ab.sqrt() * mu + k[:, None] * (ab * s**2 + 1 - ab).sqrt()
    eps = model_noise(result.model, num_train_timesteps=T)(x, steps)
    expected = GaussianEps(mu, s)(x, steps.float() / T)
    torch.testing.assert_close(eps, expected, atol=0.15, rtol=0)
    assert expected.abs().max() > 1.4  # the zero model is off by up to 1.5 here: the tolerance is tight by comparison
    assert not eps.requires_grad


def test_conditional_fit_follows_the_label(generator):
    """Class 0 → N(−2, 0.4²), class 1 → N(+2, 0.4²): each label's ε-network is its own Gaussian's ε*."""
    s, centre = 0.4, torch.tensor([[-2.0], [2.0]])
    y = torch.randint(0, 2, (4096,), generator=generator)
    X = centre[y] + s * torch.randn(4096, 1, generator=generator)
    torch.manual_seed(0)
    net = MLPVelocity(1, hidden=64, depth=2, time_dim=32, n_classes=2)
    result = train_ddpm(net, X, y, alphas_cumprod=ABAR, epochs=100, batch_size=1024, lr=1e-2, schedule="cosine")
    oracle = GaussianEps(centre, s)
    l_trained = ddpm_loss(result.model, X, y, alphas_cumprod=ABAR, seed=2)
    assert l_trained - ddpm_loss(oracle, X, y, alphas_cumprod=ABAR, seed=2) < 0.02
    assert ddpm_loss(result.model, X, 1 - y, alphas_cumprod=ABAR, seed=2) > l_trained + 0.1  # the label matters
    steps = torch.tensor([100, 300, 600])
    for label in (0, 1):
        labels = torch.full((3,), label)
        x = ABAR[steps][:, None].float().sqrt() * centre[label] + 0.5  # off the class mean, where ε* ≠ 0
        eps = model_noise(result.model, labels, num_train_timesteps=T)(x, steps)
        torch.testing.assert_close(eps, oracle(x, steps.float() / T, labels), atol=0.15, rtol=0)


def test_conv_net_trains_as_an_eps_network_on_small_images(generator):
    X = torch.rand(60, 64, generator=generator) * 2 - 1
    y = torch.randint(0, 3, (60,), generator=generator)
    torch.manual_seed(0)
    net = ConvVelocity((1, 8, 8), channels=(8, 16), n_classes=3)
    before = [p.detach().clone() for p in net.parameters()]
    result = train_ddpm(net, X.numpy(), y.numpy(), alphas_cumprod=ABAR.numpy(), epochs=2, batch_size=16, log_every=3)
    assert result.steps == 8 and result.stop_reason == "epochs" and [r[0] for r in result.loss_curve] == [3, 6, 8]
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # every weight moved
    eps = model_noise(net, y[:5], num_train_timesteps=T)(X[:5], torch.tensor([0, 10, 500, 998, 999]))
    assert eps.shape == (5, 64) and torch.isfinite(eps).all()


def test_time_budget_and_epochs_stop_the_run(generator):
    X = torch.randn(1000, 2, generator=generator)
    torch.manual_seed(0)
    result = train_ddpm(MLPVelocity(2, hidden=64, depth=2), X, alphas_cumprod=ABAR, time_budget=0.3, batch_size=100)
    assert result.stop_reason == "time_budget" and 0.3 <= result.seconds < 1.0
    assert result.steps >= 5 and result.epochs == pytest.approx(result.steps / 10)
    torch.manual_seed(0)
    both = train_ddpm(MLPVelocity(2, hidden=64, depth=2), X, alphas_cumprod=ABAR, time_budget=60, epochs=2,
                      batch_size=100)
    assert both.stop_reason == "epochs" and both.steps == 20 and both.seconds < 60


def test_validation_keeps_the_best_weights(generator):
    """High lr makes the validation loss bounce, so patience stops the run after non-improving evaluations."""
    X = torch.randn(400, 2, generator=generator) * 0.5 + 1
    torch.manual_seed(0)
    result = train_ddpm(MLPVelocity(2, hidden=64, depth=2), X, alphas_cumprod=ABAR, epochs=200, batch_size=64,
                        lr=0.05, val_fraction=0.25, val_every=5, patience=3, seed=7)
    assert result.stop_reason == "patience" and result.epochs < 200
    vals = [v for _, v in result.val_curve]
    assert result.best_val_loss == min(vals) and vals[-1] > result.best_val_loss
    assert len(result.val_indices) == 100 and result.val_seed == 8
    recomputed = ddpm_loss(result.model, X[result.val_indices], alphas_cumprod=ABAR, seed=result.val_seed)
    assert recomputed == pytest.approx(result.best_val_loss, rel=1e-6)
    assert [s for s, _ in result.val_curve] == list(range(5, result.steps + 1, 5))


def _fit(seed: int) -> TrainResult:
    X = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = MLPVelocity(3, hidden=32, depth=2)
    return train_ddpm(net, X, alphas_cumprod=ABAR, epochs=3, batch_size=64, val_fraction=0.2, seed=seed)


def test_same_seed_gives_identical_weights():
    a, b, c = _fit(seed=1), _fit(seed=1), _fit(seed=2)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert [r[2] for r in a.loss_curve] == [r[2] for r in b.loss_curve] and a.val_curve == b.val_curve
    assert not torch.equal(a.model.net[0].weight, c.model.net[0].weight)


# ------------------------------------------------------------------------------------------------------ model_noise
def test_model_noise_calls_the_net_at_t_over_T_and_checks_its_input():
    torch.manual_seed(0)
    net = MLPVelocity(2, hidden=8, n_classes=3).train()
    labels = torch.tensor([0, 2, 1])
    noise = model_noise(net, labels, num_train_timesteps=T)
    assert not net.training
    x, steps = torch.randn(3, 2), torch.tensor([0, 500, 999])
    torch.testing.assert_close(noise(x, steps), net(x, steps.float() / T, labels))
    torch.testing.assert_close(noise(x, 250), net(x, torch.full((3,), 0.25), labels))  # an int: every row
    with pytest.raises(ValueError, match=r"x must have 3 rows to match the fixed labels y, got \(4, 2\)"):
        noise(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\] \(T = 1000 train time steps\), got 1000"):
        noise(x, torch.tensor([0, 1000, 3]))
    with pytest.raises(ValueError, match="timesteps must hold integer time-step indices, got dtype torch.float32"):
        noise(x, torch.tensor([0.0, 0.5, 0.9]))
    with pytest.raises(ValueError, match=r"timesteps must have shape \(3,\), got \(2,\)"):
        noise(x, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="x must be a torch.Tensor of shape \\(n, D\\), got list"):
        noise([[0.0, 1.0]], 0)
    with pytest.raises(ValueError, match=r"y is required.*n_classes=3"):
        model_noise(net, num_train_timesteps=T)
    with pytest.raises(ValueError, match="y must be an integer tensor"):
        model_noise(net, torch.zeros(3), num_train_timesteps=T)
    with pytest.raises(ValueError, match="num_train_timesteps must be an int >= 1, got 0"):
        model_noise(net, labels, num_train_timesteps=0)
    out = model_noise(MLPVelocity(5, hidden=8), num_train_timesteps=10)(torch.zeros(7, 5), 9)
    assert out.shape == (7, 5)


# ------------------------------------------------------------------------------------------------------- bad input
_X = torch.randn(20, 2)


@pytest.mark.parametrize(
    "alphas_cumprod, match",
    [
        (ABAR[None], r"alphas_cumprod must have shape \(T,\) with T >= 1, got \(1, 1000\)"),
        (torch.tensor([0.9, 0.5, 0.0]), r"alphas_cumprod must lie in \(0, 1\], got 0.0 at index 2"),
        (torch.tensor([0.9, -0.5]), r"alphas_cumprod must lie in \(0, 1\], got -0.5 at index 1"),
        (torch.linspace(1e-4, 0.02, 10), r"alphas_cumprod must be strictly decreasing.*betas"),  # betas passed
    ],
)
def test_bad_schedules_raise_clear_errors(alphas_cumprod, match):
    with pytest.raises(ValueError, match=match):
        train_ddpm(MLPVelocity(2), _X, alphas_cumprod=alphas_cumprod, epochs=1)
    with pytest.raises(ValueError, match=match):
        ddpm_loss(MLPVelocity(2), _X, alphas_cumprod=alphas_cumprod)


def test_bad_training_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'alphas_cumprod'"):
        train_ddpm(MLPVelocity(2), _X, epochs=1)
    with pytest.raises(ValueError, match="time_budget and epochs cannot both be None"):
        train_ddpm(MLPVelocity(2), _X, alphas_cumprod=ABAR)
    with pytest.raises(ValueError, match=r"y is required.*n_classes=3"):
        train_ddpm(MLPVelocity(2, n_classes=3), _X, alphas_cumprod=ABAR, epochs=1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        ddpm_loss("not a model", _X, alphas_cumprod=ABAR)

    class NaNOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, t):
            return self.lin(x) * float("nan")

    with pytest.raises(FloatingPointError, match="the DDPM loss became non-finite .* by step 1"):
        train_ddpm(NaNOut(), _X, alphas_cumprod=ABAR, epochs=1, batch_size=8, log_every=1)
