"""PILLoraConfig: defaults, validation messages, JSON round trip."""

import pytest

from pilearn.adapters import PILLoraConfig


def test_defaults_and_round_trip():
    cfg = PILLoraConfig(target_modules=("query", "value"), rank=4, lam="auto", activation="identity", seed=7)
    assert cfg.target_modules == ["query", "value"]
    again = PILLoraConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert PILLoraConfig(target_modules="all-linear").target_modules == "all-linear"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, "rank must be an int >= 1, got 0"),
        ({"rank": -3}, ValueError, "rank must be an int >= 1"),
        ({"rank": 2.5}, ValueError, "rank must be an int >= 1"),
        ({"rank": True}, ValueError, "rank must be an int >= 1"),
        ({"lam": -1.0}, ValueError, "lam must be a finite float >= 0"),
        ({"lam": "gcv"}, ValueError, "lam must be"),
        ({"lam_grid": ()}, ValueError, "lam_grid"),
        ({"activation": "swish"}, ValueError, "activation must be one of"),
        ({"init": "uniform"}, ValueError, "init must be one of"),
        ({"scaling": 0.0}, ValueError, "scaling must be a finite non-zero float"),
        ({"seed": -1}, ValueError, "seed must be an int"),
        ({"target_modules": "q_proj"}, ValueError, r"write \['q_proj'\]"),
        ({"target_modules": []}, ValueError, "non-empty list"),
        ({"target_modules": ["q_proj", ""]}, ValueError, "non-empty list"),
        ({"target_modules": 5}, TypeError, "target_modules must be a list"),
        ({"fit_bias": 1}, TypeError, "fit_bias must be a bool"),
    ],
)
def test_bad_values_name_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        PILLoraConfig(**kwargs)


def test_from_dict_refuses_unknown_fields():
    data = PILLoraConfig().to_dict() | {"alpha": 16}
    with pytest.raises(ValueError, match=r"unknown PILLoraConfig field\(s\) \['alpha'\]"):
        PILLoraConfig.from_dict(data)
