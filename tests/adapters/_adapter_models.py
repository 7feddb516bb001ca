"""Tiny models built from configs (no download) for the adapter tests: a 2-layer Llama, a 2-layer BERT, an MLP."""

import copy

import pytest
import torch
from torch import nn


def _seeded(build, seed: int = 0):
    """Build a model from the global RNG (transformers initializes from it) without disturbing it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return _seeded(lambda: transformers.LlamaForCausalLM(config), seed).to(dtype)


def tiny_bert(seed: int = 0, pooler: bool = False) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    return _seeded(lambda: transformers.BertModel(config, add_pooling_layer=pooler), seed)


def mlp(seed: int = 0) -> nn.Sequential:
    return _seeded(lambda: nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                                         nn.Linear(16, 3)), seed)


def lm_batches(n: int, batch: int = 2, T: int = 12, seed: int = 1, pad_last: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 100, (batch, T), generator=g)
        mask = torch.ones(batch, T, dtype=torch.long)
        if pad_last:
            mask[-1, T - 3:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def perturbed(model: nn.Module, name: str, rank: int, scale: float, seed: int = 3) -> nn.Module:
    """A copy of ``model`` whose Linear ``name`` gets W += scale · U Vᵀ/√in with U, V of ``rank`` columns."""
    teacher = copy.deepcopy(model)
    layer = teacher.get_submodule(name)
    g = torch.Generator().manual_seed(seed)
    out_f, in_f = layer.weight.shape
    with torch.no_grad():
        U = torch.randn(out_f, rank, generator=g, dtype=layer.weight.dtype)
        V = torch.randn(in_f, rank, generator=g, dtype=layer.weight.dtype)
        layer.weight += scale * U @ V.T / in_f ** 0.5
    return teacher
