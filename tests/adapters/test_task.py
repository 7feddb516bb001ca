"""Task residuals: every pull-back against the real modules it inverts, the solve against its normal equations,
and the loss going down on a tiny LM, a tiny BERT with a closed-form head, and an MLP."""

import pytest
import torch
from torch import nn

from _adapter_models import lm_batches, mlp, tiny_bert, tiny_llama
from pilearn.adapters import ClosedFormHead, PILLoraConfig, fit_task_residuals, get_pil_model
from pilearn.adapters._pushback import NormLinearization
from pilearn.adapters._fit import Recorder
from pilearn.adapters._paths import ChainPath, make_path
from pilearn.adapters._readout import CausalLMReadout, EncoderReadout, probe
from pilearn.models import mean_pool

F64 = torch.float64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------------------------------- pull-backs


def test_chain_pullback_reproduces_the_output_change_through_exact_linear_maps(generator):
    model = nn.Sequential(nn.Linear(6, 16), nn.Identity(), nn.Linear(16, 16), nn.Linear(16, 3)).double().eval()
    # the square layer is inverted exactly only up to mu·cond²: give it singular values in [0.5, 2] by construction
    # (a default-initialized 16×16 can be near-singular, and then 1e-8 is out of reach for any μ > 0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator, dtype=F64))
    s = torch.linspace(0.5, 2.0, 16, dtype=F64)
    with torch.no_grad():
        model[2].weight.copy_(q * s)
    path = ChainPath(model, 0, mu=1e-12)
    y0 = torch.randn(10, 16, generator=generator, dtype=F64)
    dz = torch.randn(10, 3, generator=generator, dtype=F64)
    delta, _ = path.pull(dz, Recorder())
    with torch.no_grad():
        realized = model[1:](y0 + delta) - model[1:](y0)
    torch.testing.assert_close(realized, dz, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_norm_linearization_matches_the_module_and_inverts_on_its_range(kind, generator):
    d = 12
    weight = 1 + 0.5 * torch.randn(d, generator=generator, dtype=F64)
    if kind == "rms":  # Llama's RMSNorm, written out in float64 (the module itself computes in float32)
        norm = lambda h: weight * h / (h.pow(2).mean(-1, keepdim=True) + 1e-12).sqrt()  # noqa: E731
    else:
        norm = nn.LayerNorm(d, eps=1e-12).double()
        with torch.no_grad():
            norm.weight.copy_(weight)
    h = torch.randn(5, d, generator=generator, dtype=F64) + 0.3
    dh = torch.randn(5, d, generator=generator, dtype=F64)
    lin = NormLinearization(h, weight, kind)
    eps = 1e-6
    with torch.no_grad():
        fd = (norm(h + eps * dh) - norm(h - eps * dh)) / (2 * eps)
    torch.testing.assert_close(lin.push(dh), fd, atol=1e-8, rtol=1e-6)
    du = lin.push(dh)  # in the range: pull must find a δh the norm maps back onto du
    torch.testing.assert_close(lin.push(lin.pull(du)), du, atol=1e-10, rtol=1e-10)
    assert float(lin.pull(du).norm()) <= float(dh.norm()) + 1e-12  # minimum norm


def _llama_attention(kind: str, iters: int = 400):
    """A float64 tiny Llama with eager attention, the AttnPath of layer 1's ``kind`` projection, and a recorder."""
    model = tiny_llama(dtype=F64)
    model.set_attn_implementation("eager")
    pil = get_pil_model(model, PILLoraConfig(target_modules=["q_proj", "k_proj", "v_proj"], rank=2))
    batch = lm_batches(1, T=8)[0]
    name = f"model.layers.1.self_attn.{kind}_proj"
    readout = CausalLMReadout(pil.base_model, 1e-3)
    path = make_path(pil.base_model, name, pil.adapters[name], readout, iters=iters, mu=1e-14)
    rec = Recorder()
    path.register(rec)
    with torch.no_grad(), rec:
        pil(**batch)
    return pil, batch, name, path, rec


def _attention_output_change(pil, batch, name, delta, eps):
    """(attn(proj + eps·δ) − attn(proj − eps·δ)) / 2eps, measured on the real attention module."""
    attn = pil.base_model.get_submodule(name.rpartition(".")[0])
    outs = []
    for sign in (1.0, -1.0):
        h1 = pil.base_model.get_submodule(name).register_forward_hook(lambda m, a, o, s=sign: o + s * eps * delta)
        h2 = attn.register_forward_hook(lambda m, a, o: outs.append(o[0]))
        with torch.no_grad():
            pil(**batch)
        h1.remove(), h2.remove()
    return (outs[0] - outs[1]) / (2 * eps)


@pytest.mark.parametrize("kind", ["v", "q", "k"])
def test_attention_pullback_matches_the_real_attention_and_inverts_it(kind, generator):
    pil, batch, name, path, rec = _llama_attention(kind)
    J = path.build(rec)
    out_features = pil.adapters[name].out_features
    delta = torch.randn(2, 8, out_features, generator=generator, dtype=F64)
    if kind == "v":  # linear in v: exact for any step
        torch.testing.assert_close(J.push(delta), _attention_output_change(pil, batch, name, delta, 1.0))
    else:  # eager attention takes its softmax in float32: a central difference with a moderate step
        assert _rel(J.push(delta), _attention_output_change(pil, batch, name, delta, 1e-2)) < 1e-3
    ds = J.push(delta)  # reachable: CGLS must find a δ that reproduces it
    pulled, rel = J.pull(ds, iters=400, mu_rel=1e-14)
    assert float(rel.max()) < 1e-5
    assert _rel(J.push(pulled), ds) < 1e-5


def test_downstream_variant_equals_attention_when_attention_is_the_identity(generator):
    """One-token sequences: every attention row is [1], so v reaches the stream through o_proj (GQA repeat) alone and
    the closed-form "downstream" target must equal the CGLS attention target."""
    model = tiny_llama(dtype=F64)
    model.set_attn_implementation("eager")
    pil = get_pil_model(model, PILLoraConfig(target_modules=["v_proj"], rank=2))
    name = "model.layers.0.self_attn.v_proj"
    readout = CausalLMReadout(pil.base_model, 1e-3)
    exact = make_path(pil.base_model, name, pil.adapters[name], readout, iters=100, mu=1e-12)
    simple = make_path(pil.base_model, name, pil.adapters[name], readout, iters=1, mu=1e-12, pushback="downstream")
    rec = Recorder()
    exact.register(rec)
    with torch.no_grad(), rec:
        pil(input_ids=torch.tensor([[5], [7]]))
    dh = torch.randn(2, 1, 32, generator=generator, dtype=F64)
    torch.testing.assert_close(exact.pull(dh, rec)[0], simple.pull(dh, rec)[0], atol=1e-8, rtol=1e-6)
    with pytest.raises(ValueError, match="pushback='downstream' has no rule for a query or key projection"):
        make_path(pil.base_model, "model.layers.0.self_attn.q_proj", pil.adapters[name], readout, 1, 1e-3,
                  "downstream")


def test_bert_value_pullback_matches_the_real_attention(generator):
    pil = get_pil_model(tiny_bert().double(), PILLoraConfig(target_modules=["value"], rank=2))
    pil.base_model.set_attn_implementation("eager")
    inputs = {"input_ids": torch.randint(0, 100, (2, 6), generator=generator)}
    name = "encoder.layer.1.attention.self.value"
    head = ClosedFormHead(lam=1e-3).fit(torch.randn(8, 32, generator=generator, dtype=F64), torch.arange(8) % 2)
    readout = EncoderReadout(head, "auto", 1e-3)
    path = make_path(pil.base_model, name, pil.adapters[name], readout, iters=50, mu=1e-14)
    rec = Recorder()
    path.register(rec)
    with torch.no_grad(), rec:
        pil(**inputs)
    delta = torch.randn(2, 6, 32, generator=generator, dtype=F64)
    dense = pil.base_model.get_submodule("encoder.layer.1.attention.output.dense")
    outs = []
    for sign in (1.0, 0.0):
        h1 = pil.base_model.get_submodule(name).register_forward_hook(lambda m, a, o, s=sign: o + s * delta)
        h2 = dense.register_forward_hook(lambda m, a, o: outs.append(o))
        with torch.no_grad():
            pil(**inputs)
        h1.remove(), h2.remove()
    torch.testing.assert_close(path.build(rec).push(delta), outs[0] - outs[1], atol=1e-9, rtol=1e-9)


def testprobe_finds_the_final_norm_and_the_forward_order(generator):
    pil = get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["v_proj", "q_proj"], rank=2))
    readout = CausalLMReadout(pil.base_model, 1e-3)
    order = probe(pil, lm_batches(1)[0], pil.adapters, readout)
    assert order == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                     "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert readout.norm is pil.base_model.model.norm
    bert = get_pil_model(tiny_bert(), PILLoraConfig(target_modules=["query"], rank=2))
    head = ClosedFormHead(lam=1.0).fit(torch.randn(8, 32, generator=generator), torch.arange(8) % 2)
    readout = EncoderReadout(head, "auto", 1e-3)
    probe(bert, {"input_ids": torch.randint(0, 100, (2, 5), generator=generator)}, bert.adapters, readout)
    assert readout.norm is bert.base_model.encoder.layer[1].output.LayerNorm


def test_unsupported_layers_are_refused_with_the_rule_list(generator):
    pil = get_pil_model(tiny_bert(pooler=True), PILLoraConfig(target_modules=["pooler.dense"], rank=2))
    head = ClosedFormHead(lam=1e-3).fit(torch.randn(8, 32, generator=generator), torch.arange(8) % 2)
    batch = ({"input_ids": torch.randint(0, 100, (2, 5), generator=generator)}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no pull-back rule for layer 'pooler.dense'.*Use fit_distill"):
        fit_task_residuals(pil, [batch], head=head)


# --------------------------------------------------------------------------------------------------- the solve


def test_mlp_solve_equals_its_normal_equations(generator):
    """One adapted layer (L = 1), η = 1: targets and features written out by hand, solved in float64."""
    model = mlp()
    pil = get_pil_model(model, PILLoraConfig(target_modules=["2"], rank=6, lam=1e-2, activation="tanh"))
    x = torch.randn(30, 6, generator=generator)
    y = torch.randint(0, 3, (30,), generator=generator)
    mu = 1e-3
    fit_task_residuals(pil, [(x, y)], eta=1.0, mu=mu)
    layer = pil.adapters["2"]
    with torch.no_grad(), pil.disable_adapters():
        X = torch.tanh(model[0](x)).to(F64)
        a3 = layer.base_layer(X.float()).to(F64)
        z = model(x).to(F64)
    dz = torch.nn.functional.one_hot(y, 3).to(F64) - z.softmax(-1)  # −∂CE/∂z
    W4 = model[4].weight.to(F64)
    G4 = W4.T @ W4
    da = torch.linalg.solve(G4 + mu * G4.trace() / 16 * torch.eye(16, dtype=F64), (dz @ W4).T).T
    c = 1 - torch.tanh(a3) ** 2
    target = c * da / (c * c + mu * (c * c).mean())
    H = torch.tanh((X - layer.input_shift.to(F64)) / layer.input_scale.to(F64) @ layer.W_down.to(F64))
    Hc, Yc = H - H.mean(0), target - target.mean(0)
    Gh = Hc.T @ Hc
    W = torch.linalg.solve(Gh + 1e-2 * Gh.trace() / 6 * torch.eye(6, dtype=F64), Hc.T @ Yc)
    torch.testing.assert_close(layer.W_up.to(F64), W, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.bias.to(F64), target.mean(0) - H.mean(0) @ W, atol=1e-5, rtol=1e-4)


def test_parallel_fit_is_linear_in_eta():
    """One group: every target scales with η, and so does every ridge solution."""
    batches = lm_batches(2)
    runs = []
    for eta in (1.0, 3.0):
        pil = get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["q_proj", "v_proj"], rank=4))
        report = fit_task_residuals(pil, batches, eta=eta, schedule="parallel")
        assert report.step is None and report.n_passes == 1
        runs.append({n: l.W_up.clone() for n, l in pil.adapters.items()})
    for n in runs[0]:
        assert _rel(runs[1][n], 3.0 * runs[0][n]) < 1e-5  # float32 CGLS rounding only


# --------------------------------------------------------------------------------------------------- learning


def _lm_loss(model, batches) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(**b).logits[:, :-1]
            y, valid = b["input_ids"][:, 1:], (b["attention_mask"][:, 1:] * b["attention_mask"][:, :-1]).bool()
            total += float(torch.nn.functional.cross_entropy(logits[valid], y[valid], reduction="sum"))
            count += int(valid.sum())
    return total / count


@pytest.mark.parametrize("n_step_groups", [1, 2])
def test_task_residuals_lower_the_next_token_loss_of_a_tiny_lm(n_step_groups):
    pil = get_pil_model(tiny_llama(), PILLoraConfig(target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                                                    rank=8))
    batches = lm_batches(3, pad_last=True)
    before = _lm_loss(pil, batches)
    report = fit_task_residuals(pil, batches, n_step_groups=n_step_groups)
    after = _lm_loss(pil, batches)
    assert report.loss_before == pytest.approx(before, rel=1e-5)
    assert report.loss_after == pytest.approx(after, rel=1e-5)
    assert report.step > 0 and after < before - 0.02 * before
    assert len(report.newton_step) == 4 * n_step_groups  # chunks × kinds (q, v, o, down)
    assert report.layers["model.layers.0.self_attn.v_proj"].pushback_residual is not None


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_newton_terms_are_the_derivatives_of_the_loss(loss, generator):
    """g = −∇_c L(0) and H = ∇²_c L(0) for L(c) = loss(z0 + Σ cₖ Δzₖ), by central differences in float64."""
    from pilearn.adapters._readout import loss_sum, newton_terms

    z0 = torch.randn(6, 5, generator=generator, dtype=F64)
    dzs = [torch.randn(6, 5, generator=generator, dtype=F64) for _ in range(3)]
    y = torch.randint(0, 5, (6,), generator=generator)
    g, H = newton_terms(z0, dzs, y, loss)
    scale = 1.0 if loss == "ce" else 0.5  # "mse" is Σ‖y − z‖², the model is of its half

    def L(c):  # the loss written out in float64
        z = z0 + sum(ck * dz for ck, dz in zip(c, dzs))
        if loss == "ce":
            return float(-(z.log_softmax(-1).gather(1, y[:, None])).sum())
        return scale * float((torch.nn.functional.one_hot(y, 5).double() - z).pow(2).sum())

    e, eye = 1e-4, torch.eye(3, dtype=F64)
    grad = torch.tensor([(L(e * eye[k]) - L(-e * eye[k])) / (2 * e) for k in range(3)], dtype=F64)
    assert loss_sum(z0, y, loss) == pytest.approx(L(torch.zeros(3)) / scale, rel=1e-5)
    torch.testing.assert_close(-grad, g, rtol=1e-5, atol=1e-5)
    hess = torch.tensor([[(L(e * (eye[k] + eye[m])) - L(e * (eye[k] - eye[m])) - L(e * (eye[m] - eye[k]))
                           + L(-e * (eye[k] + eye[m]))) / (4 * e * e) for m in range(3)] for k in range(3)], dtype=F64)
    torch.testing.assert_close(hess, H, rtol=1e-4, atol=1e-4)


def test_encoder_with_closed_form_head_moves_features_towards_the_head(generator):
    bert = tiny_bert()
    inputs = [{"input_ids": torch.randint(0, 100, (4, 6), generator=generator),
               "attention_mask": torch.ones(4, 6, dtype=torch.long)} for _ in range(3)]
    labels = [torch.randint(0, 3, (4,), generator=generator) for _ in range(3)]
    with torch.no_grad():
        feats = torch.cat([mean_pool(bert(**i).last_hidden_state, i["attention_mask"]) for i in inputs])
    head = ClosedFormHead(lam=1.0).fit(feats, torch.cat(labels))
    pil = get_pil_model(bert, PILLoraConfig(target_modules=["query", "value", "dense"], rank=4))
    report = fit_task_residuals(pil, list(zip(inputs, labels)), head=head)
    assert report.loss_after < 0.9 * report.loss_before


def test_sequential_mlp_classification_and_regression(generator):
    x = torch.randn(64, 6, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    pil = get_pil_model(mlp(), PILLoraConfig(target_modules="all-linear", rank=8))
    report = fit_task_residuals(pil, [(x[:32], y[:32]), (x[32:], y[32:])])
    assert report.loss_after < 0.8 * report.loss_before
    targets = torch.randn(64, 3, generator=generator)
    report = fit_task_residuals(pil, [(x, targets)], loss="auto")
    assert report.loss_after < report.loss_before


def test_bad_arguments_are_named(generator):
    pil = get_pil_model(mlp(), PILLoraConfig(target_modules=["0"], rank=2))
    batch = (torch.randn(4, 6, generator=generator), torch.tensor([0, 1, 2, 0]))
    for kwargs, match in [({"eta": 0.0}, "eta must be"), ({"mu": -1.0}, "mu must be"),
                          ({"cg_iters": 0}, "cg_iters must be"), ({"loss": "hinge"}, "loss must be"),
                          ({"schedule": "random"}, "schedule must be")]:
        with pytest.raises(ValueError, match=match):
            fit_task_residuals(pil, [batch], **kwargs)
    with pytest.raises(TypeError, match=r"\(inputs, targets\) pairs"):
        fit_task_residuals(pil, [torch.randn(4, 6, generator=generator)])


def test_task_fit_runs_without_autograd(ridge_updates):
    seen = ridge_updates
    model = tiny_llama()
    model.requires_grad_(True)
    pil = get_pil_model(model, PILLoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "up_proj"], rank=4))
    fit_task_residuals(pil, lm_batches(1), schedule=2)
    assert len(seen) == 8 and all(s == (False, False, False) for s in seen)
