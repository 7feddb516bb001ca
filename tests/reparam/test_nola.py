import copy
import math

import pytest
import torch
from torch import nn

from pilearn.reparam import (
    NOLAConfig,
    NOLALinear,
    apply_nola,
    basis_rows,
    derive_seed,
    load_nola_state_dict,
    load_reparam,
    merge_nola,
    nola_layers,
    nola_state_dict,
    save_reparam,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(6, 6)
        self.myproj = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        return self.norm(x + self.q_proj(x) + self.myproj(x))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@pytest.fixture
def base() -> Tiny:
    torch.manual_seed(0)  # the base model stands for a pretrained one
    return Tiny()


def config(**kwargs) -> NOLAConfig:
    return NOLAConfig(**{"target_modules": ["q_proj", "head"], "rank": 2, "n_basis_a": 5, "n_basis_b": 7,
                         "alpha": 4.0, "seed": 3, **kwargs})


def randomize_b(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for layer in nola_layers(model).values():
            layer.nola_b.copy_(torch.randn(layer.nola_b.shape, generator=generator))


def test_targets_match_by_name_suffix_and_only_coefficients_train(base):
    model = apply_nola(base, config())
    assert sorted(nola_layers(model)) == ["blocks.0.q_proj", "blocks.1.q_proj", "head"]
    assert isinstance(model.blocks[0].myproj, nn.Linear)  # "myproj" does not end with ".q_proj"
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"{n}.nola_{ab}" for n in nola_layers(model) for ab in "ab")


def test_zero_b_leaves_the_model_unchanged(base, generator):
    x = torch.randn(4, 6, generator=generator)
    before = base(x)
    assert torch.equal(apply_nola(base, config())(x), before)


def test_delta_weight_matches_the_formula(base, generator):
    model = apply_nola(base, config())
    randomize_b(model, generator)
    layer = model.head
    seed = derive_seed(3, "head")
    assert layer.seed == seed  # a hash of the name's text: stable across processes
    A_i = basis_rows(derive_seed(seed, "A"), 0, 5, 2 * 6).view(5, 2, 6)
    B_j = basis_rows(derive_seed(seed, "B"), 0, 7, 3 * 2).view(7, 3, 2)
    A = torch.einsum("i,irc->rc", layer.nola_a.detach(), A_i) / math.sqrt(5)
    B = torch.einsum("j,jor->or", layer.nola_b.detach(), B_j) / math.sqrt(7)
    torch.testing.assert_close(layer.delta_weight(), (4.0 / 2) * B @ A)
    x = torch.randn(3, 6, generator=generator)
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ layer.delta_weight().T)


def test_initial_a_has_lora_scale():
    layer = NOLALinear(nn.Linear(400, 20), rank=8, n_basis_a=300, n_basis_b=4, alpha=8.0, seed=0)
    with torch.no_grad():
        assert abs(float(layer.lora_A().var()) * 3 * 400 - 1.0) < 0.1  # Var A = 1/(3·in) as kaiming_uniform(a=√5)
        assert float(layer.lora_B().abs().max()) == 0.0


def test_same_config_gives_the_same_bases(base):
    twin = copy.deepcopy(base)
    a, b = apply_nola(base, config()), apply_nola(twin, config())
    assert torch.equal(a.head.lora_A(), b.head.lora_A())
    assert not torch.equal(a.blocks[0].q_proj.lora_A(), a.blocks[1].q_proj.lora_A())


def test_merge_equals_the_unmerged_output(base, generator):
    model = apply_nola(base, config())
    randomize_b(model, generator)
    x = torch.randn(5, 6, generator=generator)
    unmerged = model(x)
    kept = merge_nola(copy.deepcopy(model), unload=False)
    torch.testing.assert_close(kept(x), unmerged, rtol=1e-5, atol=1e-6)
    assert all(layer.merged for layer in nola_layers(kept).values())
    plain = merge_nola(model)
    assert not nola_layers(plain) and isinstance(plain.head, nn.Linear)
    torch.testing.assert_close(plain(x), unmerged, rtol=1e-5, atol=1e-6)
    layer = nola_layers(kept)["head"]
    weight = layer.base_layer.weight.clone()
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, weight - layer.delta_weight(), rtol=0, atol=1e-6)


def test_checkpoint_reproduces_the_trained_model(base, tmp_path, generator):
    pristine = copy.deepcopy(base)
    model = apply_nola(base, config())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, y = torch.randn(16, 6, generator=generator), torch.arange(16) % 3
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_reparam(model, tmp_path / "nola.safetensors")
    loaded = load_reparam(tmp_path / "nola.safetensors", pristine)
    assert loaded is pristine and sorted(nola_layers(loaded)) == sorted(nola_layers(model))
    assert torch.equal(loaded(x), model(x))
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if "nola_" not in n)


def test_state_dict_round_trip_and_mismatch(base, generator):
    model = apply_nola(base, config())
    randomize_b(model, generator)
    state = nola_state_dict(model)
    assert sorted(state) == sorted(f"{n}.nola_{ab}" for n in ("blocks.0.q_proj", "blocks.1.q_proj", "head")
                                   for ab in "ab")
    other = apply_nola(Tiny(), config())
    load_nola_state_dict(other, state)
    assert torch.equal(other.head.nola_b, model.head.nola_b)
    with pytest.raises(ValueError, match=r"missing keys \['head.nola_a', 'head.nola_b'\]"):
        load_nola_state_dict(other, {k: v for k, v in state.items() if not k.startswith("head")})


def test_missing_target_is_named_with_the_available_layers(base):
    with pytest.raises(ValueError, match=r"target module 'k_proj' matches no module of Tiny; available nn.Linear "
                                         r"modules: \['blocks.0.q_proj', 'blocks.0.myproj'"):
        apply_nola(base, config(target_modules=["q_proj", "k_proj"]))


def test_non_linear_target_and_double_application_are_refused(base):
    with pytest.raises(TypeError, match="target 'blocks.0.norm' is a LayerNorm"):
        apply_nola(base, config(target_modules=["norm"]))
    apply_nola(base, config(target_modules=["head"]))
    with pytest.raises(ValueError, match="'head' already carries NOLA"):
        apply_nola(base, config(target_modules=["head"]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target_modules": "q_proj"}, TypeError, "target_modules must be a list of module names"),
        ({"target_modules": []}, ValueError, "target_modules must be a non-empty list"),
        ({"rank": 0}, ValueError, "rank must be a positive int, got 0"),
        ({"n_basis_a": 0}, ValueError, "n_basis_a must be a positive int, got 0"),
        ({"n_basis_b": -1}, ValueError, "n_basis_b must be a positive int, got -1"),
        ({"alpha": -1.0}, ValueError, r"alpha must be a finite float > 0, got -1.0"),
        ({"seed": -5}, ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
        ({"distribution": "laplace"}, ValueError, "distribution must be one of"),
    ],
)
def test_config_checks(kwargs, error, match):
    with pytest.raises(error, match=match):
        config(**kwargs)
