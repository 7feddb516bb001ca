import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every adapter test makes many tiny-tensor calls: one intra-op thread (see tests/conftest.py)."""
    yield
