import math

import pytest
import torch

from pilearn.features import sinusoidal_embedding


def _reference(t: list[float], dim: int, max_period: float) -> torch.Tensor:
    half = dim // 2
    rows = []
    for ti in t:
        freqs = [max_period ** (-k / half) for k in range(half)]
        row = [math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs]
        rows.append(row + [0.0] * (dim % 2))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("dim", [2, 7, 16, 33])
@pytest.mark.parametrize("max_period", [10000.0, 50.0])
def test_matches_formula(dim, max_period):
    t = [0.0, 0.5, 1.0, 17.0, 999.0]
    out = sinusoidal_embedding(torch.tensor(t, dtype=torch.float64), dim, max_period=max_period)
    assert out.shape == (len(t), dim) and out.dtype == torch.float64
    torch.testing.assert_close(out, _reference(t, dim, max_period), atol=1e-9, rtol=0)


def test_odd_dim_last_column_is_zero_and_dim_one_is_zero():
    t = torch.tensor([0.3, 4.0])
    assert torch.equal(sinusoidal_embedding(t, 5)[:, -1], torch.zeros(2))
    assert torch.equal(sinusoidal_embedding(t, 1), torch.zeros(2, 1))


def test_integer_steps_become_float32():
    out = sinusoidal_embedding(torch.arange(4), 6)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sinusoidal_embedding(torch.arange(4.0), 6))
    assert torch.equal(out[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))  # t = 0: cos 0, sin 0


@pytest.mark.parametrize(
    "t, dim, max_period, match",
    [
        (torch.zeros(3, 1), 4, 10000.0, r"\(n,\).*\(3, 1\)"),
        (torch.zeros(3), 0, 10000.0, "dim"),
        (torch.zeros(3), 2.0, 10000.0, "dim"),
        (torch.zeros(3), 4, 0.0, "max_period"),
        (torch.zeros(3, dtype=torch.bool), 4, 10000.0, "real"),
    ],
)
def test_rejects_bad_input(t, dim, max_period, match):
    with pytest.raises(ValueError, match=match):
        sinusoidal_embedding(t, dim, max_period=max_period)
