import math

import pytest
import torch

from pilearn.features import ACTIVATIONS, get_activation


def _reference(name: str, x: torch.Tensor) -> torch.Tensor:
    """The formulas written out, independently of torch.nn.functional."""
    formulas = {
        "gelu": lambda v: v * 0.5 * (1.0 + torch.erf(v / math.sqrt(2.0))),
        "relu": lambda v: torch.where(v > 0, v, torch.zeros_like(v)),
        "leaky_relu": lambda v: torch.where(v > 0, v, 0.01 * v),
        "tanh": lambda v: (torch.exp(2 * v) - 1) / (torch.exp(2 * v) + 1),
        "sigmoid": lambda v: 1.0 / (1.0 + torch.exp(-v)),
        "sine": lambda v: torch.sin(v),
        "identity": lambda v: v,
    }
    return formulas[name](x)


def test_required_names_present():
    assert {"gelu", "relu", "tanh", "sigmoid", "sine", "identity"} <= set(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_formula(name):
    x = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)
    out = get_activation(name)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, _reference(name, x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["swish", "GELU", "", None, 3])
def test_unknown_activation_lists_valid_names(name):
    with pytest.raises(ValueError, match="activation") as info:
        get_activation(name)
    assert "gelu" in str(info.value) and "identity" in str(info.value)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_inplace_activation_equals_the_out_of_place_one_bit_for_bit(name, generator):
    from pilearn.features import get_activation_

    x = 3 * torch.randn(257, 33, generator=generator)
    expected = get_activation(name)(x)
    z = x.clone()
    out = get_activation_(name)(z)
    assert torch.equal(out, expected)
    assert out.data_ptr() == z.data_ptr()  # written into its argument, no new tensor


def test_get_activation_inplace_rejects_unknown_names():
    from pilearn.features import get_activation_

    with pytest.raises(ValueError, match="activation must be one of"):
        get_activation_("swish")
