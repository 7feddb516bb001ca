"""Distillation targets: every solve against its normal equations written out, zero residuals, recovery of a
perturbed teacher, context distillation, bad inputs, and no autograd."""

import pytest
import torch
from torch import nn

from _adapter_models import lm_batches, mlp, perturbed, tiny_llama
from pilearn.adapters import DistillBatch, PILLoraConfig, context_distillation_batches, fit_distill, get_pil_model

F64 = torch.float64


def _ridge_oracle(X: torch.Tensor, Y: torch.Tensor, layer, lam_rel: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[W_up; b] from the centred normal equations in float64, with H = σ(((X − μ)/s) W_down) built by hand."""
    X, Y = X.to(F64), Y.to(F64)
    mu = X.mean(0)
    s = (X - mu).pow(2).mean().sqrt()
    torch.testing.assert_close(layer.input_shift.to(F64), mu.float().to(F64))
    H = layer.sigma((X - layer.input_shift.to(F64)) / layer.input_scale.to(F64) @ layer.W_down.to(F64))
    Y = Y / layer.scaling
    Hc, Yc = H - H.mean(0), Y - Y.mean(0)
    G = Hc.T @ Hc
    lam = lam_rel * G.trace() / G.shape[0]
    W = torch.linalg.solve(G + lam * torch.eye(G.shape[0], dtype=F64), Hc.T @ Yc)
    b = Y.mean(0) - H.mean(0) @ W
    assert float(s) == pytest.approx(float(layer.input_scale), rel=1e-5)
    return W, b


def test_mlp_solves_equal_their_normal_equations_layer_by_layer(generator):
    """Layer 2 is fitted on inputs that already pass through the fitted layer 0 (sequential schedule)."""
    student, teacher = mlp(), perturbed(mlp(), "0", rank=2, scale=0.5)
    with torch.no_grad():
        teacher[2].weight += 0.1 * torch.randn(16, 16, generator=generator)
    cfg = PILLoraConfig(target_modules=["0", "2"], rank=5, lam=1e-2, activation="gelu", scaling=0.5)
    pil = get_pil_model(student, cfg)
    x = torch.randn(40, 6, generator=generator)
    report = fit_distill(pil, [x], teacher)
    assert report.n_passes == 2 and report.groups == [["0"], ["2"]]
    with torch.no_grad():
        l0, l2 = pil.adapters["0"], pil.adapters["2"]
        W, b = _ridge_oracle(x, teacher[0](x) - l0.base_layer(x), l0, 1e-2)
        torch.testing.assert_close(l0.W_up.to(F64), W, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(l0.bias.to(F64), b, atol=2e-5, rtol=1e-4)
        x2, x2_t = torch.tanh(l0(x)), torch.tanh(teacher[0](x))  # student's layer-2 input uses the fitted layer 0
        W, b = _ridge_oracle(x2, teacher[2](x2_t) - l2.base_layer(x2), l2, 1e-2)
        torch.testing.assert_close(l2.W_up.to(F64), W, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(l2.bias.to(F64), b, atol=2e-5, rtol=1e-4)


def test_llama_gcv_choice_equals_gcv_written_out():
    """lam="auto": the λ minimizing GCV(λ) = (RSS/(n·k)) / (1 − df/n)², computed from the hat matrix by hand."""
    student, teacher = tiny_llama(), perturbed(tiny_llama(), "model.layers.1.self_attn.v_proj", rank=2, scale=1.0)
    name = "model.layers.1.self_attn.v_proj"
    grid = (1e-4, 1e-2, 1.0, 100.0)
    pil = get_pil_model(student, PILLoraConfig(target_modules=[name], rank=6, lam="auto", lam_grid=grid))
    batches = lm_batches(2, pad_last=True)
    report = fit_distill(pil, batches, teacher)
    layer = pil.adapters[name]
    rows = []
    for batch in batches:  # hand capture: the layer's input and the teacher's output at the unpadded positions
        got = {}
        h1 = layer.base_layer.register_forward_hook(lambda m, a, o: got.update(x=a[0], y=o))
        h2 = teacher.get_submodule(name).register_forward_hook(lambda m, a, o: got.update(t=o))
        with torch.no_grad(), pil.disable_adapters():
            pil(**batch), teacher(**batch)
        h1.remove(), h2.remove()
        keep = batch["attention_mask"].reshape(-1).bool()
        rows.append((got["x"].reshape(-1, 32)[keep], (got["t"] - got["y"]).reshape(-1, 16)[keep]))
    X, Y = torch.cat([r[0] for r in rows]).to(F64), torch.cat([r[1] for r in rows]).to(F64)
    H = layer.sigma((X - layer.input_shift.to(F64)) / layer.input_scale.to(F64) @ layer.W_down.to(F64))
    Hc, Yc = H - H.mean(0), Y - Y.mean(0)
    n, k = Y.shape
    scale = (Hc.T @ Hc).trace() / H.shape[1]
    gcv = []
    for rel in grid:
        hat = Hc @ torch.linalg.solve(Hc.T @ Hc + rel * scale * torch.eye(6, dtype=F64), Hc.T)
        rss = (Yc - hat @ Yc).pow(2).sum()
        gcv.append(float(rss / (n * k) / (1 - (hat.trace() + 1) / n) ** 2))
    best = grid[min(range(len(grid)), key=gcv.__getitem__)]
    assert report.layers[name].lam_rel == best
    assert report.layers[name].n_rows == int(sum(b["attention_mask"].sum() for b in batches))


def test_zero_residuals_leave_the_model_unchanged():
    pil = get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["q_proj", "v_proj"], rank=4))
    batches = lm_batches(2)
    with torch.no_grad():
        before = [pil(**b).logits for b in batches]
    fit_distill(pil, batches)  # teacher None: the unadapted model itself
    for layer in pil.adapters.values():
        assert layer._is_fitted and not layer.W_up.any() and not layer.bias.any()
    with torch.no_grad():
        assert all(torch.equal(pil(**b).logits, y) for b, y in zip(batches, before))


def _logit_mse(model, teacher, batches):
    with torch.no_grad():
        return sum(float((model(**b).logits - teacher(**b).logits).pow(2).mean()) for b in batches) / len(batches)


def test_distillation_recovers_a_perturbed_teacher():
    """Teacher = the student with a rank-2 change in layer 0's v_proj. A linear adapter of rank ≥ in spans the
    whole input space, so it can represent the change exactly: the gap should all but vanish, also off the
    training batches."""
    name = "model.layers.0.self_attn.v_proj"
    student, teacher = tiny_llama(), perturbed(tiny_llama(), name, rank=2, scale=1.0)
    pil = get_pil_model(student, PILLoraConfig(target_modules=["q_proj", "v_proj"], rank=32, activation="identity",
                                               lam=1e-6))
    train, held_out = lm_batches(3, seed=1), lm_batches(2, seed=2)
    gap_train, gap_held = _logit_mse(pil, teacher, train), _logit_mse(pil, teacher, held_out)
    report = fit_distill(pil, train, teacher)
    assert report.layers[name].r2 > 0.99
    assert _logit_mse(pil, teacher, train) < 0.01 * gap_train
    assert _logit_mse(pil, teacher, held_out) < 0.1 * gap_held


class _CharTokenizer:
    """ids = code points mod 90 + 10; pad 0 (enough for a 100-token model)."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [10 + ord(c) % 90 for c in text]}


def test_context_distillation_aligns_text_tokens_and_writes_the_document_in():
    tok = _CharTokenizer()
    texts = ["the cat", "a dog ran", "to the sea", "slept"]
    batches = context_distillation_batches(tok, "Facts: cats sleep.", texts, batch_size=2)
    assert len(batches) == 2
    for b in batches:
        s_ids, t_ids = b.student["input_ids"], b.teacher["input_ids"]
        assert torch.equal(s_ids[b.student_positions], t_ids[b.teacher_positions])
        assert int(b.teacher_positions.sum()) == int(b.student["attention_mask"].sum())
    # o_proj, not q/v: layer 0's q/v inputs are the token embeddings alone, identical with and without the document,
    # so their targets are zero; the document reaches the text tokens through attention outputs (o_proj's input)
    pil = get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["o_proj"], rank=8, lam=1e-4))

    def gap():
        with torch.no_grad():
            total = 0.0
            for b in batches:
                s = pil(**b.student).logits[b.student_positions]
                with pil.disable_adapters():
                    t = pil(**b.teacher).logits[b.teacher_positions]
                total += float((s - t).pow(2).mean())
            return total

    before = gap()
    fit_distill(pil, batches)
    assert gap() < 0.3 * before


# --------------------------------------------------------------------------------------------------- errors


def test_mismatched_teacher_and_student_shapes_are_explained():
    pil = get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["v_proj"], rank=2))
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    pair = DistillBatch(student={"input_ids": ids[:, :7]}, teacher={"input_ids": ids})
    with pytest.raises(ValueError, match=r"teacher output \(2, 9, 16\) and student output \(2, 7, 16\) differ"):
        fit_distill(pil, [pair])
    pair.student_positions = torch.ones(2, 7, dtype=torch.bool)
    pair.teacher_positions = torch.ones(2, 9, dtype=torch.bool)
    with pytest.raises(ValueError, match="the student selects 14 positions .* and the teacher 18"):
        fit_distill(pil, [pair])
    with pytest.raises(ValueError, match="teacher .* has no module named 'model.layers.0.self_attn.v_proj'"):
        fit_distill(pil, [{"input_ids": ids}], teacher=mlp())


def test_nan_inputs_and_one_shot_iterators_are_refused(generator):
    pil = get_pil_model(mlp(), PILLoraConfig(target_modules=["0"], rank=2))
    x = torch.randn(8, 6, generator=generator)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="batch 0: input 'input' contains 1 NaN"):
        fit_distill(pil, [x], mlp(seed=1))
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit_distill(pil, iter([x]), mlp(seed=1))
    with pytest.raises(TypeError, match="pil_model must be a PILModel"):
        fit_distill(mlp(), [x])


def test_nan_in_a_teacher_activation_names_the_layer(generator):
    teacher = mlp(seed=1)
    with torch.no_grad():
        teacher[0].weight[0, 0] = float("nan")
    pil = get_pil_model(mlp(), PILLoraConfig(target_modules=["0"], rank=2))
    with pytest.raises(ValueError, match="layer '0': its targets in batch 0 contain"):
        fit_distill(pil, [torch.randn(8, 6, generator=generator)], teacher)


def test_fit_runs_without_autograd(ridge_updates):
    seen = ridge_updates
    student = tiny_llama()
    student.requires_grad_(True)  # even trainable base weights must not enter a graph
    pil = get_pil_model(student, PILLoraConfig(target_modules=["q_proj", "v_proj"], rank=4))
    fit_distill(pil, lm_batches(2), perturbed(tiny_llama(), "model.layers.0.self_attn.q_proj", 2, 1.0))
    assert seen and all(s == (False, False, False) for s in seen)
    assert isinstance(pil.adapters["model.layers.0.self_attn.q_proj"].W_up, nn.Parameter)
