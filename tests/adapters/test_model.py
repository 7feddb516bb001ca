"""Injection, the adapter formula, switching, save/load and merging of PIL-LoRA models."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from _adapter_models import lm_batches, mlp, tiny_bert, tiny_llama
from pilearn.adapters import PILLoraConfig, PILLoraLinear, get_pil_model
from pilearn.adapters._model import CONFIG_NAME, WEIGHTS_NAME, PILModel
from pilearn.features import derive_seed, random_matrix

QV = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
      "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def _randomize(pil: PILModel, seed: int = 0) -> None:
    """Give every adapter non-trivial W_up, b, μ, s (as a fit would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in pil.adapters.values():
            layer.W_up.copy_(0.3 * torch.randn(layer.W_up.shape, generator=g))
            if layer.bias is not None:
                layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))
            layer.input_shift.copy_(0.2 * torch.randn(layer.in_features, generator=g))
            layer.input_scale.fill_(1.7)
            layer.calibrated.fill_(True)
            layer._set_fitted(True)


# --------------------------------------------------------------------------------------------------- injection


def test_injects_wrappers_that_keep_the_base_layer_and_freeze_everything():
    model = tiny_llama()
    originals = {n: model.get_submodule(n) for n in QV}
    batch = lm_batches(1)[0]
    with torch.no_grad():
        before = model(**batch).logits
    pil = get_pil_model(model, PILLoraConfig(target_modules=["q_proj", "v_proj"], rank=4))
    assert pil.adapter_names == QV
    for name, layer in pil.adapters.items():
        assert isinstance(layer, PILLoraLinear) and layer.base_layer is originals[name]
    assert not any(p.requires_grad for p in pil.parameters())
    with torch.no_grad():
        assert torch.equal(pil(**batch).logits, before)  # unfitted adapters change nothing
    assert pil.config is model.config  # attribute access falls through to the base model
    # q_proj: W_up (4, 32) + b (32,); v_proj (2 kv heads of 8): W_up (4, 16) + b (16,); two layers
    assert pil.n_adapter_parameters == 2 * ((4 * 32 + 32) + (4 * 16 + 16)) == 480
    assert pil.parameter_summary().startswith("adapter params: 480 || base params: ")


def test_targets_on_bert_sequential_and_all_linear():
    bert = get_pil_model(tiny_bert(), PILLoraConfig(target_modules=["query", "value"], rank=2))
    assert bert.adapter_names == [f"encoder.layer.{i}.attention.self.{k}" for i in (0, 1) for k in ("query", "value")]
    seq = get_pil_model(mlp(), PILLoraConfig(target_modules="all-linear", rank=2))
    assert seq.adapter_names == ["0", "2", "4"]
    llama = get_pil_model(tiny_llama(), PILLoraConfig(target_modules="all-linear", rank=2))
    assert "lm_head" not in llama.adapter_names and len(llama.adapter_names) == 14


def test_missing_target_names_it_and_lists_linear_layers():
    with pytest.raises(ValueError, match=r"target module 'c_attn' not found in LlamaForCausalLM; .*'model.layers.0"
                                         r".self_attn.q_proj'.*\(15 in all\)"):
        get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["q_proj", "c_attn"]))


def test_non_linear_target_is_a_type_error():
    with pytest.raises(TypeError, match="'model.layers.0.self_attn' is a LlamaAttention; PIL-LoRA adapts torch.nn"):
        get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["self_attn"]))
    with pytest.raises(TypeError, match="config must be a PILLoraConfig"):
        get_pil_model(mlp(), {"rank": 2})


def test_adapting_twice_is_refused():
    pil = get_pil_model(mlp(), PILLoraConfig(target_modules=["0"], rank=2))
    with pytest.raises(ValueError, match="already carries PIL-LoRA adapters"):
        get_pil_model(pil.base_model, PILLoraConfig(target_modules=["2"], rank=2))


# --------------------------------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("init", ["orthogonal", "gaussian"])
def test_w_down_is_regenerated_from_the_seed_and_never_stored(init):
    cfg = PILLoraConfig(target_modules=["q_proj"], rank=4, init=init, seed=11)
    a = get_pil_model(tiny_llama(), cfg).adapters[QV[0]]
    b = get_pil_model(tiny_llama(seed=5), cfg).adapters[QV[0]]
    expected = random_matrix((32, 4), kind=init, seed=derive_seed(11, "pil_lora", QV[0]), dtype=torch.float64)
    torch.testing.assert_close(a.W_down, (expected / math.sqrt(32)).float(), rtol=0, atol=0)
    assert torch.equal(a.W_down, b.W_down)
    other = get_pil_model(tiny_llama(), cfg).adapters
    assert "W_down" not in a.state_dict()
    if init == "orthogonal":  # orthonormal columns: x̂ W_down has unit variance when x̂ has
        torch.testing.assert_close(a.W_down.T @ a.W_down, torch.eye(4), atol=1e-6, rtol=0)
    q1 = get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["q_proj"], rank=4, init=init, seed=11)).adapters
    assert not torch.equal(q1[QV[0]].W_down, q1[QV[2]].W_down)  # another name, another matrix
    assert torch.equal(other[QV[0]].W_down, a.W_down)


def test_forward_is_the_documented_formula(generator):
    base = nn.Linear(5, 3)
    layer = PILLoraLinear(base, rank=4, activation="tanh", seed=0, scaling=0.5)
    with torch.no_grad():
        layer.W_up.copy_(torch.randn(4, 3, generator=generator))
        layer.bias.copy_(torch.randn(3, generator=generator))
    x = torch.randn(7, 5, generator=generator)
    layer.calibrate(x)
    layer._set_fitted(True)
    mu, s = x.double().mean(0), (x.double() - x.double().mean(0)).pow(2).mean().sqrt()
    H = torch.tanh(((x.double() - mu) / s) @ layer.W_down.double())
    expected = base(x).double() + 0.5 * (H @ layer.W_up.double() + layer.bias.double())
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.input_scale.double(), s.float().double())


def test_disable_adapters_switches_and_restores():
    pil = get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["q_proj", "v_proj"], rank=4))
    batch = lm_batches(1)[0]
    with torch.no_grad():
        base = pil(**batch).logits
        _randomize(pil)
        adapted = pil(**batch).logits
        assert not torch.allclose(adapted, base)
        with pil.disable_adapters():
            assert torch.equal(pil(**batch).logits, base)
        assert torch.equal(pil(**batch).logits, adapted)
        pil.disable_adapters()  # without `with`: off until enable_adapters()
        assert torch.equal(pil(**batch).logits, base)
        pil.enable_adapters()
        assert torch.equal(pil(**batch).logits, adapted)


# --------------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("activation", ["gelu", "identity"])
def test_save_load_reproduces_outputs_bit_for_bit(tmp_path, activation):
    fresh = tiny_llama()
    pil = get_pil_model(copy.deepcopy(fresh), PILLoraConfig(target_modules=["q_proj", "v_proj"], rank=4,
                                                            activation=activation, seed=3))
    _randomize(pil)
    batch = lm_batches(1)[0]
    with torch.no_grad():
        before = pil(**batch).logits
    pil.save_pretrained(tmp_path)
    stored = load_file(tmp_path / WEIGHTS_NAME)
    assert sorted(stored) == sorted(f"{n}.{k}" for n in QV for k in ("W_up", "bias", "input_shift", "input_scale"))
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["layers"] == QV
    loaded = PILModel.from_pretrained(fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, before)


def test_load_into_another_architecture_fails_clearly(tmp_path):
    pil = get_pil_model(mlp(), PILLoraConfig(target_modules=["0", "2"], rank=2))
    pil.save_pretrained(tmp_path)
    other = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8))
    with pytest.raises(ValueError, match=r"2.W_up has shape \(2, 16\) in the checkpoint, \(2, 8\) in base_model"):
        PILModel.from_pretrained(other, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        PILModel.from_pretrained(mlp(), tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------------- merging


def test_merge_equals_the_unmerged_model_for_linear_adapters():
    pil = get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["q_proj", "v_proj"], rank=4,
                                                    activation="identity", scaling=0.7))
    _randomize(pil)
    batch = lm_batches(1)[0]
    with torch.no_grad():
        adapted = pil(**batch).logits
        merged = pil.merge_and_unload()
        assert not any(isinstance(m, PILLoraLinear) for m in merged.modules())
        assert type(merged.get_submodule(QV[0])) is nn.Linear
        torch.testing.assert_close(merged(**batch).logits, adapted, atol=1e-5, rtol=1e-5)


def test_merge_of_a_nonlinear_adapter_explains_why_not():
    pil = get_pil_model(mlp(), PILLoraConfig(target_modules=["0"], rank=2, activation="gelu"))
    with pytest.raises(ValueError, match="needs activation='identity'.*not linear in x"):
        pil.merge_and_unload()


def test_unload_restores_the_base_layers():
    model = mlp()
    originals = [model[i] for i in (0, 2)]
    pil = get_pil_model(model, PILLoraConfig(target_modules=["0", "2"], rank=2))
    _randomize(pil)
    base = pil.unload()
    assert base[0] is originals[0] and base[2] is originals[1]
