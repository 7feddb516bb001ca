"""PIL-LM: the transformer, its closed-form fit, the AdamW trainer, metrics and save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pilearn.lm import (LMConfig, PILFitConfig, PILLM, TrainConfig, evaluate, fit_pil, load_lm, perplexity,
                        save_lm, sliding_windows, stream_layout, train_adamw)
from pilearn.lm._pil import _basis

V = 40


def _stream(n: int = 6000, seed: int = 0) -> np.ndarray:
    """A token stream with real structure: a noisy Markov chain over V symbols (perplexity floor ≈ 5.4)."""
    rng = np.random.default_rng(seed)
    nxt = rng.permutation(V)
    ids = np.empty(n, dtype=np.int64)
    ids[0] = 0
    for t in range(1, n):
        ids[t] = nxt[ids[t - 1]] if rng.random() < 0.7 else rng.integers(0, V)
    return ids


def _model(**kw) -> PILLM:
    cfg = dict(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=64, expansion=2, tie_weights=False)
    return PILLM(LMConfig(**{**cfg, **kw}))


@pytest.fixture(scope="module")
def fitted():
    ids = _stream()
    model = _model()
    report = fit_pil(model, ids[:5000], valid_ids=ids[5000:], config=PILFitConfig(lam=1e-3))
    return model, report, ids


def test_fit_runs_without_autograd(ridge_updates):
    seen = ridge_updates
    ids = _stream(3000)
    fit_pil(_model(n_layer=1), ids[:2500], valid_ids=ids[2500:])
    assert seen and all(s == (False, False, False) for s in seen)


def _layer_system(model, ids, layer, n_tokens):
    """The documented regression of FFN ``layer``, written out: features H, targets Y, and Qp (the pred block)."""
    from pilearn.lm._pil import _unit_rows, spectral_embeddings

    T, C = model.config.block_size, model.config.n_embd
    blocks = stream_layout(C, model.config.n_head)
    Qp = _basis(C, 0)[:, blocks["pred"]]
    d_tok = blocks["tok"].stop - blocks["tok"].start
    d_pred = blocks["pred"].stop - blocks["pred"].start
    _, E_out = spectral_embeddings(ids[:n_tokens], V, d_tok, offsets=model.config.n_head, out_dim=d_pred)
    u = _unit_rows(E_out, math.sqrt(d_pred), 1)
    n = (n_tokens - 1) // T
    x_ids = torch.from_numpy(ids[: n * T]).view(n, T)
    y_ids = torch.from_numpy(ids[1: n * T + 1]).view(n, T)
    block = model.h[layer]
    with torch.no_grad():
        x = model.hidden(x_ids, upto=layer)  # the stream the earlier (already solved) layers wrote
        x = x + block.attn(block.ln_1(x))
        H = block.mlp.features(block.ln_2(x)).reshape(-1, block.mlp.width).double()
        Y = u[y_ids].reshape(-1, d_pred) - x.reshape(-1, C).double() @ Qp
    return H, Y, Qp


@pytest.mark.parametrize("layer", [0, 1])
def test_ffn_solve_on_known_targets(fitted, layer):
    """Refit each layer by hand: the library's coef equals (H̃ᵀH̃ + λI)⁻¹H̃ᵀỸ for the documented Y."""
    model, report, ids = fitted
    H, Y, Qp = _layer_system(model, ids, layer, 5000)
    Hc, Yc = H - H.mean(0), Y - Y.mean(0)
    lam = report.layers[layer]["lam"]
    W = torch.linalg.solve(Hc.T @ Hc + lam * torch.eye(H.shape[1], dtype=torch.float64), Hc.T @ Yc)
    b = Y.mean(0) - H.mean(0) @ W
    block = model.h[layer]
    W_lib = (Qp.T @ block.mlp.out.weight.double()).T
    b_lib = Qp.T @ block.mlp.out.bias.double()
    torch.testing.assert_close(W_lib, W, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(b_lib, b, rtol=1e-3, atol=1e-4)


def test_shift_heads_copy_the_previous_tokens(fitted):
    model, _, ids = fitted
    C = model.config.n_embd
    blocks = stream_layout(C, model.config.n_head)
    Q = _basis(C, 0)
    x_ids = torch.from_numpy(ids[:16])[None]
    with torch.no_grad():
        x0 = model.wte(x_ids) + model.wpe(torch.arange(16))
        x1 = x0 + model.h[0].attn(model.h[0].ln_1(x0))
    z = x1[0].double() @ Q  # design coordinates
    tok = z[:, blocks["tok"]]
    for o in range(1, model.config.n_head):
        slot = z[:, blocks[f"slot{o}"]]
        torch.testing.assert_close(slot[o:], tok[:-o], rtol=0.05, atol=0.05)


def test_fit_report_and_condition_monitoring(fitted):
    _, report, _ = fitted
    assert len(report.layers) == 2
    for info in report.layers:
        assert info["condition"] >= 1 and info["method"] in ("cholesky", "eigh")
    assert report.head["held_out_perplexity"] > 1


def test_pil_lm_beats_unigram_on_structured_stream(fitted):
    model, _, ids = fitted
    counts = np.bincount(ids[:5000], minlength=V) + 1
    unigram_ppl = math.exp(-np.mean(np.log(counts[ids[5001:]] / counts.sum())))
    assert evaluate(model, ids[5000:]).perplexity < 0.35 * unigram_ppl  # floor ≈ 5.4, unigram ≈ 40


def test_mixture_head_is_a_distribution(fitted):
    model, _, ids = fitted
    model.head, old = "mixture", model.head
    try:
        with torch.no_grad():
            lp = model(torch.from_numpy(ids[:16])[None])
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(1, 16), rtol=1e-5, atol=1e-5)
    finally:
        model.head = old


def test_gcv_lambda_is_the_argmin_of_the_gcv_written_out():
    ids = _stream(3000)
    model = _model(n_layer=1)
    rep = fit_pil(model, ids[:2500], valid_ids=ids[2500:], config=PILFitConfig(lam="gcv"))
    info = rep.layers[0]
    assert info["lam_relative"] in PILFitConfig().gcv_grid
    H, Y, _ = _layer_system(model, ids, 0, 2500)
    Hc, Yc = H - H.mean(0), Y - Y.mean(0)
    n, k = H.shape[0], Y.shape[1]
    scale = float(torch.diagonal(Hc.T @ Hc).mean())
    ours = {}
    for g in PILFitConfig().gcv_grid:  # GCV(λ) = (RSS/(n·k)) / (1 − df/n)², df = tr(S) + 1 (intercept)
        S = Hc @ torch.linalg.solve(Hc.T @ Hc + g * scale * torch.eye(H.shape[1], dtype=torch.float64), Hc.T)
        rss = float(((Yc - S @ Yc) ** 2).sum())
        df = float(torch.trace(S)) + 1
        ours[g] = (rss / (n * k)) / (1 - df / n) ** 2
    assert info["lam_relative"] == min(ours, key=ours.get)
    for g, v in ours.items():
        assert info["gcv"][f"{g:g}"] == pytest.approx(v, rel=1e-4)


# ---------------------------------------------------------------------------------------------- metrics
class _Table(torch.nn.Module):
    """A bigram 'model' with a known table, to check perplexity by hand."""

    def __init__(self, logp: torch.Tensor, block_size: int = 4) -> None:
        super().__init__()
        self.logp = torch.nn.Parameter(logp, requires_grad=False)
        self.config = LMConfig(vocab_size=logp.shape[0], block_size=block_size, n_embd=4, n_head=1)

    def forward(self, idx):
        return self.logp[idx]


def test_perplexity_hand_computed():
    # p(next | cur): from 0 -> 1 w.p. 0.6; from 1 -> 0 w.p. 0.25; stream 0 1 0 1 0
    P = torch.tensor([[0.4, 0.6], [0.25, 0.75]], dtype=torch.float64)
    m = _Table(P.log(), block_size=2)
    res = evaluate(m, np.array([0, 1, 0, 1, 0]))
    # targets: 1|0 (0.6), 0|1 (0.25), 1|0 (0.6), 0|1 (0.25): ppl = (0.6·0.25·0.6·0.25)^(-1/4) = 1/√0.15
    assert res.n_tokens == 4
    assert res.perplexity == pytest.approx(1 / math.sqrt(0.15), rel=1e-12)
    assert res.accuracy == 0.5  # the argmax after 0 is 1 (right, twice); after 1 it is 1 (wrong, twice)
    assert perplexity(torch.log(torch.tensor([0.5, 0.25]))) == pytest.approx(math.sqrt(8))


@pytest.mark.parametrize("n,T,stride", [(10, 4, 2), (100, 16, 8), (17, 16, 1), (5, 16, 8), (64, 8, 8)])
def test_sliding_windows_score_every_target_once(n, T, stride):
    seen = []
    for start, first in sliding_windows(n, T, stride):
        Tw = min(T, n - 1)
        seen += list(range(first, start + Tw + 1))
        assert first >= start + 1 and start + Tw <= n - 1
    assert seen == list(range(1, n))


def test_perplexity_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        perplexity(torch.tensor([]))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate(_model(), np.array([3]))


# ---------------------------------------------------------------------------------------------- bad input
def test_sequence_longer_than_context_is_a_clear_error():
    m = _model()
    with pytest.raises(ValueError, match="block_size.*16"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside \[0, 40\)"):
        m(torch.full((1, 4), 40, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        m(torch.zeros(4))


def test_fit_input_errors():
    with pytest.raises(ValueError, match="untied head"):
        fit_pil(_model(tie_weights=True), _stream(2000))
    with pytest.raises(ValueError, match="ffn='pil'"):
        fit_pil(_model(ffn="mlp"), _stream(2000))
    with pytest.raises(ValueError, match="train_ids must hold at least"):
        fit_pil(_model(), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=r"train_ids must lie in \[0, vocab_size=40\)"):
        fit_pil(_model(), np.full(2000, V))
    with pytest.raises(ValueError, match="train_ids must hold integer token ids"):
        fit_pil(_model(), np.zeros(2000))
    with pytest.raises(ValueError, match="lam must be"):
        PILFitConfig(lam=-1.0)
    with pytest.raises(ValueError, match="n_embd must be divisible"):
        LMConfig(n_embd=30, n_head=4)


# ---------------------------------------------------------------------------------------------- io, generation
def test_save_load_round_trip(fitted, tmp_path):
    model, _, ids = fitted
    path = save_lm(model, tmp_path / "m.safetensors", vocab={"itos": [str(i) for i in range(V)], "unk": None})
    loaded, vocab = load_lm(path)
    x = torch.from_numpy(ids[:16])[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert vocab["itos"][3] == "3" and loaded.head == model.head
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_lm(tmp_path / "bad.safetensors")


def test_generate_is_seeded_and_crops_context(fitted):
    model, _, ids = fitted
    prompt = torch.from_numpy(ids[:20])[None]  # longer than block_size 16: generate crops
    a = model.generate(prompt, 10, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 10, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1, 30) and torch.equal(a, b) and torch.equal(a[:, :20], prompt)
    g = model.generate(prompt, 3, temperature=0)
    assert g.shape == (1, 23)
    with pytest.raises(ValueError, match="prompt of at least one token"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)


# ---------------------------------------------------------------------------------------------- AdamW
def test_adamw_training_lowers_the_loss():
    ids = _stream(4000)
    torch.manual_seed(0)
    m = _model(ffn="mlp", tie_weights=True, n_layer=1)
    before = evaluate(m, ids[3000:]).perplexity
    rep = train_adamw(m, ids[:3000], ids[3000:], config=TrainConfig(epochs=3, batch_size=8, warmup_steps=5))
    assert rep.steps > 0 and rep.curve[-1]["valid_ppl"] < 0.7 * before


def test_attention_phase_keeps_the_ffns_frozen(fitted):
    model, _, ids = fitted
    import copy

    m = copy.deepcopy(model)
    m.head = "softmax"
    ffn_before = [p.clone() for b in m.h for p in b.mlp.parameters()]
    attn_before = m.h[0].attn.c_attn.weight.clone()
    train_adamw(m, ids[:3000], None, which="attention", config=TrainConfig(epochs=0.5, batch_size=8, warmup_steps=2))
    for p, q in zip([p for b in m.h for p in b.mlp.parameters()], ffn_before):
        assert torch.equal(p, q)
    assert not torch.equal(m.h[0].attn.c_attn.weight, attn_before)


def test_token_log_probs_match_evaluate(fitted):
    from pilearn.lm import token_log_probs

    model, _, ids = fitted
    lp, hit = token_log_probs(model, ids[5000:])
    res = evaluate(model, ids[5000:])
    assert lp.shape == (len(ids) - 5001,) and res.n_tokens == lp.numel()
    assert math.exp(-float(lp.mean())) == pytest.approx(res.perplexity, rel=1e-12)
    # the first window's targets are scored from the start of the stream, with its own context only
    with torch.no_grad():
        first = model(torch.from_numpy(ids[5000:5016])[None])[0]
    torch.testing.assert_close(lp[:16], first.gather(-1, torch.from_numpy(ids[5001:5017])[:, None])[:, 0].double())


def test_tied_model_save_load(tmp_path):
    m = _model(ffn="mlp", tie_weights=True)
    loaded, vocab = load_lm(save_lm(m, tmp_path / "t.safetensors"))
    assert vocab is None and loaded.lm_head.weight is loaded.wte.weight
    x = torch.arange(16)[None] % V
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


def test_config_validation():
    with pytest.raises(ValueError, match="head_lam must be"):
        PILFitConfig(head_lam="gcv")
    with pytest.raises(ValueError, match="head must be"):
        PILFitConfig(head="LDA")
    with pytest.raises(ValueError, match="epochs must be"):
        TrainConfig(epochs="5")
    with pytest.raises(ValueError, match="stride must be"):
        sliding_windows(10, 4, 0)


def test_training_restores_requires_grad(fitted):
    import copy

    model, _, ids = fitted
    m = copy.deepcopy(model)
    m.h[0].mlp.out.weight.requires_grad_(False)
    train_adamw(m, ids[:3000], None, which="attention", config=TrainConfig(epochs=0.1, batch_size=4, warmup_steps=1))
    assert not m.h[0].mlp.out.weight.requires_grad and m.h[0].attn.c_attn.weight.requires_grad


def test_head_calibration_scores_what_evaluate_scores(fitted):
    # the grid reuses one pass of hidden states; its chosen value must score exactly what evaluate() scores
    model, report, ids = fitted
    assert report.head["held_out_perplexity"] == pytest.approx(evaluate(model, ids[5000:]).perplexity, rel=1e-5)
    assert report.head["choice"] == min(report.head["grid"], key=report.head["grid"].get)


def test_scored_hidden_matches_token_log_probs(fitted):
    from pilearn.lm import scored_hidden, token_log_probs

    model, _, ids = fitted
    H, y = scored_hidden(model, ids[5000:])
    lp, _ = token_log_probs(model, ids[5000:])
    with torch.no_grad():
        lp2 = model.log_probs_from_hidden(H).gather(-1, y[:, None])[:, 0].double()
    torch.testing.assert_close(lp2, lp, rtol=1e-5, atol=1e-5)
    assert torch.equal(y, torch.from_numpy(ids[5001:]).long())
