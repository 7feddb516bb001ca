"""down="rrr": the data-chosen W_down of reduced-rank ridge regression — its optimality against the loss written
out, its agreement with the full-rank ridge when the rank allows, checkpoints, merging, and the errors."""

import pytest
import torch

from _adapter_models import lm_batches, mlp, perturbed, tiny_llama
from pilearn.adapters import PILLoraConfig, PILModel, fit_distill, get_pil_model
from pilearn.adapters._fit import reduced_rank
from pilearn.solvers import RidgeStats

F64 = torch.float64


def _problem(generator, n=300, d_in=12, d_out=7, true_rank=3, noise=0.3):
    X = torch.randn(n, d_in, generator=generator, dtype=F64)
    B = torch.randn(d_in, true_rank, generator=generator, dtype=F64) @ torch.randn(true_rank, d_out, generator=generator,
                                                                                  dtype=F64)
    Y = X @ B + 0.5 + noise * torch.randn(n, d_out, generator=generator, dtype=F64)
    stats = RidgeStats(d_in, d_out, dual=False)
    stats.update(X, Y)
    return X, Y, stats


def _loss(X, Y, B, lam):
    """The centred ridge objective ‖Ỹ − X̃B‖² + λ‖B‖² (the intercept absorbs the means)."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return float(((Yc - Xc @ B) ** 2).sum() + lam * (B**2).sum())


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_reduced_rank_is_the_rank_constrained_optimum(rank, generator):
    X, Y, stats = _problem(generator)
    lam = 3.0
    B = stats.solve(lam).coef
    W_down, W_up, B_r = reduced_rank(stats.centered()[0], B, lam, rank)
    assert W_down.shape == (12, rank) and W_up.shape == (rank, 7)
    torch.testing.assert_close(B_r, W_down @ W_up)
    assert torch.linalg.matrix_rank(B_r) == rank
    # the identity of reduced-rank regression: the rank-r loss = full-rank loss + the eigenvalues left out
    G, _, _ = stats.centered()
    S = B.T @ (G + lam * torch.eye(12, dtype=F64)) @ B
    eig = torch.linalg.eigvalsh((S + S.T) / 2).flip(0)
    assert _loss(X, Y, B_r, lam) == pytest.approx(_loss(X, Y, B, lam) + float(eig[rank:].sum()), rel=1e-9)
    # ... and nothing of that rank does better: truncated SVD of B, random projections, and a local search
    U, s, Vh = torch.linalg.svd(B, full_matrices=False)
    assert _loss(X, Y, B_r, lam) <= _loss(X, Y, (U[:, :rank] * s[:rank]) @ Vh[:rank], lam) + 1e-9
    for _ in range(20):
        R = torch.linalg.qr(torch.randn(7, rank, generator=generator, dtype=F64))[0]
        assert _loss(X, Y, B_r, lam) <= _loss(X, Y, B @ R @ R.T, lam) + 1e-9
        E = 1e-3 * torch.randn(12, rank, generator=generator, dtype=F64)
        assert _loss(X, Y, B_r, lam) <= _loss(X, Y, (W_down + E) @ W_up, lam) + 1e-12


def test_full_rank_reduces_to_the_ridge_solution_and_extra_columns_are_zero(generator):
    X, Y, stats = _problem(generator)
    B = stats.solve(0.5).coef
    W_down, W_up, B_r = reduced_rank(stats.centered()[0], B, 0.5, 9)  # rank 9 > 7 outputs
    torch.testing.assert_close(B_r, B, atol=1e-12, rtol=1e-10)
    assert torch.count_nonzero(W_down[:, 7:]) == 0 and torch.count_nonzero(W_up[7:]) == 0


def test_rrr_adapter_fits_the_optimum_and_beats_a_random_down_projection():
    """MLP layer 2, distilled from a teacher whose layer differs by a rank-2 change: the rrr adapter's W_down W_up
    equals the reduced-rank ridge of the layer's (x̂, target) rows, and it closes more of the gap than a random
    W_down of the same rank."""
    name = "2"
    student, teacher = mlp(), perturbed(mlp(), name, rank=2, scale=1.0)
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(64, 6, generator=g) for _ in range(3)]
    reports = {}
    for down in ("rrr", "random"):
        pil = get_pil_model(mlp(), PILLoraConfig(target_modules=[name], rank=2, activation="identity", lam=1e-4,
                                                 down=down, seed=1))
        reports[down] = fit_distill(pil, batches, teacher).layers[name].r2
        if down == "rrr":
            layer = pil.adapters[name]
            assert layer.W_down.abs().sum() > 0
            # the oracle: x̂ and the gap at layer 2, by hand
            with torch.no_grad():
                xs = torch.cat([student[1](student[0](b)) for b in batches]).to(F64)
                gap = torch.cat([teacher[2](student[1](student[0](b))) - student[2](student[1](student[0](b)))
                                 for b in batches]).to(F64)
            stats = RidgeStats(16, 16, dual=False)
            xh = (xs - layer.input_shift.to(F64)) / layer.input_scale.to(F64)
            stats.update(xh, gap)
            from pilearn.solvers import lam_scale

            lam = 1e-4 * lam_scale(stats)
            _, _, B_r = reduced_rank(stats.centered()[0], stats.solve(lam).coef, lam, 2)
            torch.testing.assert_close((layer.W_down.to(F64) @ layer.W_up.to(F64)), B_r, atol=1e-4, rtol=1e-3)
    assert reports["rrr"] > 0.99 and reports["rrr"] > reports["random"] + 0.1


def test_rrr_checkpoint_merge_and_parameter_count(tmp_path):
    name = "model.layers.0.self_attn.v_proj"
    student, teacher = tiny_llama(), perturbed(tiny_llama(), name, rank=2, scale=1.0)
    cfg = PILLoraConfig(target_modules=["v_proj"], rank=2, activation="identity", down="rrr")
    pil = get_pil_model(student, cfg)
    batches = lm_batches(2, seed=1)
    fit_distill(pil, batches, teacher)
    ids = lm_batches(1, seed=9)[0]
    with torch.no_grad():
        before = pil(**ids).logits
    pil.save_pretrained(tmp_path / "a")
    loaded = PILModel.from_pretrained(tiny_llama(), tmp_path / "a")
    for n, layer in loaded.adapters.items():
        assert torch.equal(layer.W_down, pil.adapters[n].W_down)  # stored, not regenerated from the seed
    with torch.no_grad():
        assert torch.equal(loaded(**ids).logits, before)
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(**ids).logits, before, atol=1e-4, rtol=1e-4)
    per_layer = 2 * 32 + 2 * 16 + 16  # W_down (in × r) + W_up (r × out) + bias, v_proj 32 -> 16 (2 kv heads)
    assert pil.n_adapter_parameters == 2 * per_layer


def test_rrr_errors_name_the_problem():
    with pytest.raises(ValueError, match='down="rrr" .* needs activation="identity", got activation=\'gelu\''):
        PILLoraConfig(down="rrr")
    with pytest.raises(ValueError, match='down must be "random" or "rrr", got \'pca\''):
        PILLoraConfig(down="pca", activation="identity")
    pil = get_pil_model(mlp(), PILLoraConfig(target_modules=["2"], rank=2, activation="identity", down="rrr"))
    batches = [torch.randn(20, 6, generator=torch.Generator().manual_seed(0))]
    teacher = perturbed(mlp(), "2", rank=1, scale=1.0)
    fit_distill(pil, batches, teacher)
    with pytest.raises(ValueError, match="already fitted; reset it first"):
        fit_distill(pil, batches, teacher, reset=False)
    seeded = get_pil_model(mlp(), PILLoraConfig(target_modules=["2"], rank=2, activation="identity"))
    with pytest.raises(ValueError, match="fixed by its seed"):
        seeded.adapters["2"].set_down(torch.zeros(16, 2))


def test_rrr_w_down_is_in_the_state_dict_and_restored_by_it():
    """A data-chosen W_down is model state: state_dict() holds it and load_state_dict restores it (a seeded one is
    regenerated and stays out of the state_dict)."""
    name = "2"
    teacher = perturbed(mlp(), name, rank=2, scale=1.0)
    batches = [torch.randn(40, 6, generator=torch.Generator().manual_seed(0))]
    pil = get_pil_model(mlp(), PILLoraConfig(target_modules=[name], rank=2, activation="identity", down="rrr"))
    fit_distill(pil, batches, teacher)
    state = pil.state_dict()
    key = next(k for k in state if k.endswith(f"{name}.W_down"))
    assert torch.equal(state[key], pil.adapters[name].W_down)
    fresh = get_pil_model(mlp(), PILLoraConfig(target_modules=[name], rank=2, activation="identity", down="rrr"))
    assert not torch.equal(fresh.adapters[name].W_down, pil.adapters[name].W_down)
    fresh.load_state_dict(state)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fresh(x), pil(x))
    seeded = get_pil_model(mlp(), PILLoraConfig(target_modules=[name], rank=2, activation="identity"))
    assert not any(k.endswith("W_down") for k in seeded.state_dict())
