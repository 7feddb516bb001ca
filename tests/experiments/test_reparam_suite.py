"""``pilearn bench reparam`` end to end at a tiny size, its closed-form head solver against solve_pranc_head, and its
config checks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pilearn.cli import main
from pilearn.experiments.reparam import GROUPS, LENET_PARAMS, make_config, mcnc_shape, pranc_head_path
from pilearn.reparam import PRANC, solve_pranc_head

TINY = ["n_train=400", "n_val=200", "n_test=200", "budgets=(60,200)", "batch_size=100", "supsup_sizes=(784,32,10)",
        "supsup_max_steps=5", "supsup_infer_batches=1", "nola_train_docs=10", "nola_val_docs=5", "nola_test_docs=10",
        "nola_max_length=16", "nola_batch_size=5", "nola_n_basis=8"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("reparam")
    assert main(["bench", "reparam", "--scale", "smoke", "--out", str(out), "--set", *TINY]) == 0
    return json.loads((out / "results.json").read_text()), out


def test_results_rows_and_fields(bench):
    res, _ = bench
    assert res["suite"] == "reparam" and res["config"]["budgets"] == [60, 200]
    assert res["environment"]["torch"] == torch.__version__ and res["environment"]["device"] == "cpu"
    assert set(res["group_seconds"]) == set(GROUPS)
    assert res["mnist"] == {"n_train": 400, "n_val": 200, "n_test": 200}
    by_family: dict[str, list[dict]] = {}
    for r in res["rows"]:
        by_family.setdefault(r["family"], []).append(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["train_seconds"] > 0 and r["peak_mb"] is not None, r
    ref = by_family["reference"][0]
    assert ref["n_stored"] == LENET_PARAMS and ref["compression"] == 1.0
    assert [r["n_stored"] for r in by_family["PRANC"]] == [60, 200]
    assert [r["n_stored"] for r in by_family["MCNC"]] == [mcnc_shape(b, 4)[2] for b in (60, 200)]
    assert all(r["n_stored"] <= r["budget"] for r in by_family["MCNC"])
    for r in by_family["PRANC"] + by_family["MCNC"]:
        assert r["compression"] == pytest.approx(LENET_PARAMS / r["n_stored"])
        assert len(r["curve"]) == 1 and r["basis_seconds"] >= 0
    ridge = by_family["closed-form ridge"]
    assert [r["n_basis"] for r in ridge] == [60, 200] and all(r["random_features"] for r in ridge)
    assert all(r["direct"]["alpha_rel_diff"] < 1e-4 for r in ridge)  # solve_pranc_head agrees with the factored path
    assert len(by_family["closed-form Adam"]) == 2 and by_family["closed-form ridge (plain head)"][0]["n_stored"] == 850
    (ss,) = by_family["SupSup"]
    assert ss["n_tasks"] == 2 and len(ss["task_accuracies"]) == 2
    assert ss["bits_per_task"] == 784 * 32 + 32 * 10 and ss["stored_bits"] == 64 + 2 * ss["bits_per_task"]
    assert 0 <= ss["infer_one_shot_accuracy"] <= 1 and 0 <= ss["infer_binary_accuracy"] <= 1
    if "nola" in res.get("skipped", {}):  # MiniLM or transformers not installed here
        return
    lora, nola = by_family["LoRA"][0], by_family["NOLA"][0]
    assert lora["stored_adapter"] == 12 * (8 * 384 + 384 * 8)  # rank 8 on 6 layers' query and value
    assert nola["stored_adapter"] == 12 * (8 + 8)
    assert lora["n_stored"] - lora["stored_adapter"] == 384 * 5 + 5 == nola["n_stored"] - nola["stored_adapter"]
    assert by_family["closed-form floor"][0]["stored_adapter"] == 0


def test_markdown_and_plot_come_from_results_json(bench):
    _, out = bench
    md = (out / "results.md").read_text()
    assert "## Bars" in md and "PRANC k=5000 ≥ 98.5 %: not run" in md and "| PRANC k=60 |" in md
    assert "random-feature heads" in md and "SupSup 5 tasks: not run" in md
    assert (out / "accuracy_vs_stored.png").stat().st_size > 10_000
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").read_text() == md


@pytest.mark.parametrize("k", [30, 1200])  # fewer and more coefficients than the head's 850 parameters
def test_pranc_head_path_solves_the_same_ridge_as_solve_pranc_head(k, generator):
    X = torch.rand(400, 84, generator=generator, dtype=torch.float64)
    X[:, 5] = 0.0  # a dead feature: X̄ᵀX̄ is singular
    Y = torch.nn.functional.one_hot(torch.randint(0, 10, (400,), generator=generator), 10).double()
    head = PRANC(nn.Linear(84, 10).double(), k, seed=3)
    Xb = torch.cat([X, torch.ones(400, 1, dtype=torch.float64)], 1)
    (alpha,), (lam,) = pranc_head_path(head.basis_networks(0, k), Xb.T @ Xb, Xb.T @ Y, [1e-2], relative=True)
    oracle = solve_pranc_head(head, X, Y, lam).detach()
    torch.testing.assert_close(alpha, oracle, rtol=1e-6, atol=1e-8)


def test_mcnc_shape_fits_the_budget():
    for budget, k in [(1000, 4), (5000, 4), (10000, 9), (61706 * 5, 4)]:
        d, s, stored = mcnc_shape(budget, k)
        assert stored == s * (k + 1) <= budget and s == -(-LENET_PARAMS // d)
        assert stored >= 0.99 * budget  # as many segments as the budget allows, give or take rounding d up
    with pytest.raises(ValueError, match="budget must be >= k \\+ 1"):
        mcnc_shape(4, 4)


def test_config_errors(capsys):
    with pytest.raises(ValueError, match="scale must be one of"):
        make_config("huge")
    with pytest.raises(TypeError, match="unknown ReparamConfig field"):
        make_config("smoke", budget=(10,))
    with pytest.raises(ValueError, match="groups must be among"):
        make_config("smoke", groups=("pranc", "lora"))
    with pytest.raises(ValueError, match="every budget must be >= mcnc_k"):
        make_config("smoke", budgets=(3,))
    with pytest.raises(ValueError, match="lr_pranc must be a number > 0"):
        make_config("smoke", lr_pranc=0)
    with pytest.raises(ValueError, match="supsup_sizes must run from 784"):
        make_config("smoke", supsup_sizes=(100, 10))
    with pytest.raises(ValueError, match="nola_lrs must be a non-empty tuple"):
        make_config("smoke", nola_lrs=())
    assert make_config("smoke", budgets=5000).budgets == (5000,)  # one value for a tuple field
    assert make_config("small").supsup_n_tasks == (5, 10) and make_config("full").epochs > make_config("small").epochs
    assert main(["bench", "reparam", "--scale", "smoke", "--set", "epochz=2"]) == 2
    assert "unknown ReparamConfig field" in capsys.readouterr().err
    assert main(["bench", "reparam", "--scale", "smoke", "--only", "nolа"]) == 2  # a Cyrillic а
