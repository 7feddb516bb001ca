import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator: every random tensor in a test comes from one."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many tiny-tensor calls (restored after): on a shared 2-core machine two
    threads fighting over busy cores are many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
