import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator: every random tensor in a test comes from one."""
    return torch.Generator().manual_seed(0)
