import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator: every random tensor in a test comes from one."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _seed_global_rng():
    """Seed torch's global RNG before every test, so a module built with default init (nn.Linear(...)) is the same
    whichever tests ran before it: a result never depends on test order."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many tiny-tensor calls (restored after): on a shared 2-core machine two
    threads fighting over busy cores are many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ridge_updates(monkeypatch) -> list:
    """Record ``(grad enabled, H.requires_grad, Y.requires_grad)`` at every ``RidgeStats.update``, and make any
    ``Tensor.backward()`` an error: a closed-form fit must build no autograd graph."""
    from pilearn.solvers import RidgeStats

    seen: list = []
    real_update = RidgeStats.update

    def spy(self, H, Y, *a, **k):
        seen.append((torch.is_grad_enabled(), H.requires_grad, Y.requires_grad))
        return real_update(self, H, Y, *a, **k)

    def no_backward(*a, **k):
        raise AssertionError("backward() called during a closed-form fit")

    monkeypatch.setattr(RidgeStats, "update", spy)
    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    return seen
