"""PIL-LoRA with ``distributed=True`` (user shards): 2 gloo ranks equal one process on the concatenated batches.

Rank 0 holds two batches, rank 1 one (collectives must still match); the oracle is the one-process fit on rank 0's
batches followed by rank 1's. One spawn runs every fit (a spawn costs seconds). Everything is float64, so the solved
adapters, the steps and the heads agree to 1e-10 (the float sums are added in another order).
"""

import copy

import pytest
import torch

from _adapter_models import lm_batches, mlp, perturbed, tiny_llama
from _dist import run_ranks
from pilearn.adapters import ClosedFormHead, PILLoraConfig, fit_distill, fit_head, fit_task_residuals, get_pil_model

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)
V_PROJ = "model.layers.{}.self_attn.v_proj"


def _mlp_batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for rows in (20, 14)[:n]:
        x = torch.randn(rows, 6, generator=g, dtype=F64)
        out.append((x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()))
    return out


def _shards():
    """Each rank's batches of every fit: rank 0 two, rank 1 one."""
    lm = lm_batches(3, pad_last=True)
    train = [_mlp_batches(2, 1), _mlp_batches(1, 2)]
    valid = [_mlp_batches(1, 3), _mlp_batches(2, 4)]
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(n, 7, generator=g, dtype=F64) for n in (40, 50, 20, 25)]
    # noisy labels from the features; class 3 only in rank 0's shard (the classes must be the union)
    labels = [(F[:, :k] + 0.7 * torch.randn(F.shape[0], k, generator=g, dtype=F64)).argmax(1)
              for F, k in zip(feats, (4, 3, 4, 3))]
    head = [(feats[0], labels[0], feats[2], labels[2]), (feats[1], labels[1], feats[3], labels[3])]
    return {"lm": [lm[:2], lm[2:]], "mlp": train, "mlp_valid": valid, "head": head}


def _adapters(pil) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, layer in pil.adapters.items()
            for k, v in (("W_up", layer.W_up), ("bias", layer.bias), ("shift", layer.input_shift),
                         ("scale", layer.input_scale))}


def _fits(batches: dict, distributed: bool) -> dict:
    out = {}
    # distillation of a perturbed teacher into a float64 Llama, layer by layer, λ by GCV
    llama = tiny_llama(dtype=F64)
    teacher = perturbed(llama, V_PROJ.format(1), rank=2, scale=1.0)
    pil = get_pil_model(copy.deepcopy(llama), PILLoraConfig(target_modules=["v_proj"], rank=4, lam="auto"))
    fit_distill(pil, batches["lm"], teacher, distributed=distributed)
    out["distill"] = _adapters(pil)
    # task residuals of a float64 Llama through attention (CGLS pull-back residuals), one pass, step search
    pil = get_pil_model(llama, PILLoraConfig(target_modules=["v_proj"], rank=4, lam=1e-2))
    rep = fit_task_residuals(pil, batches["lm"], schedule="parallel", distributed=distributed)
    out["task_lm"] = _adapters(pil) | {"step": rep.step, "loss_after": rep.loss_after,
                                        "residual": [r.pushback_residual for r in rep.layers.values()]}
    # task residuals of an MLP, sequential, two step groups, separate step-search batches
    out["task_mlp"] = _task_mlp(batches, distributed)
    # closed-form heads: λ by hold-out, by GCV, fixed
    F, y, Fv, yv = batches["head"]
    for lam in ("auto", 1e-2):
        head = fit_head(F, y, lam=lam, valid=(Fv, yv), distributed=distributed)
        out[f"head {lam} valid"] = (head.coef, head.intercept, head.classes, head.lam_)
    head = ClosedFormHead(distributed=distributed).fit(F, y)
    out["head gcv"] = (head.coef, head.intercept, head.classes, head.lam_)
    return out


def _task_mlp(batches: dict, distributed: bool) -> dict:
    pil = get_pil_model(mlp().double(), PILLoraConfig(target_modules="all-linear", rank=6, lam=1e-2))
    rep = fit_task_residuals(pil, batches["mlp"], n_step_groups=2, valid_batches=batches["mlp_valid"],
                             distributed=distributed)
    return _adapters(pil) | {"steps": rep.layer_steps, "losses": rep.step_losses}


def _rank_fits(rank: int, world: int) -> dict:
    shard = {k: v[rank] for k, v in _shards().items()}
    return _fits(shard, True) | {"task_mlp alone": _task_mlp(shard, False)}  # (its own shard only: no reduction)


@pytest.fixture(scope="module")
def fits():
    shards = _shards()
    one = {k: v[0] + v[1] for k, v in shards.items() if k != "head"}
    one["head"] = tuple(torch.cat([a, b]) for a, b in zip(*shards["head"]))
    return _fits(one, False), run_ranks(_rank_fits)


@pytest.mark.parametrize("name", ["distill", "task_lm", "task_mlp", "head auto valid", "head 0.01 valid", "head gcv"])
def test_two_rank_fit_equals_one_process_fit(fits, name):
    one, ranks = fits
    for rank in range(2):
        torch.testing.assert_close(ranks[rank][name], one[name], **TOL)


def test_the_shards_exercise_what_they_should(fits):
    one, ranks = fits
    for rank in range(2):  # a rank alone fits something else: the reductions matter
        alone = ranks[rank]["task_mlp alone"]
        assert not torch.allclose(alone["2.W_up"], one["task_mlp"]["2.W_up"], rtol=1e-3, atol=0)
    assert all(r is not None and r > 0 for r in one["task_lm"]["residual"])  # pull-back residuals were pooled
    assert one["head gcv"][2].tolist() == [0, 1, 2, 3]  # class 3 is only in rank 0's shard
    assert one["task_mlp"]["steps"] and len(set(one["task_mlp"]["steps"].values())) > 1  # two step groups


def test_distributed_needs_a_process_group_and_a_bool():
    pil = get_pil_model(mlp().double(), PILLoraConfig(target_modules=["0"], rank=2))
    batches = _mlp_batches(1, 0)
    for fit in (lambda d: fit_distill(pil, [batches[0][0]], distributed=d),
                lambda d: fit_task_residuals(pil, batches, distributed=d),
                lambda d: fit_head(*batches[0], distributed=d)):
        with pytest.raises(RuntimeError, match="torch.distributed"):
            fit(True)
        with pytest.raises(ValueError, match="distributed must be a bool"):
            fit("yes")
