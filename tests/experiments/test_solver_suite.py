"""``pilearn bench solver`` end to end at a tiny size (fits in fresh processes), its report, and its config checks."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pilearn.cli import main
from pilearn.experiments import RENDERERS, SUITES
from pilearn.experiments.solver import GROUPS, bars, fit_rows, make_config

TINY = ["ns=(300,900)", "ds=(24,400)", "flat_ns=(300,3000)", "flat_d=24", "batch_size=128", "precision_n=900",
        "precision_d=48"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("solver")
    assert main(["bench", "solver", "--scale", "smoke", "--out", str(out), "--set", *TINY]) == 0
    return json.loads((out / "results.json").read_text()), out


def test_results_rows_and_fields(bench):
    res, _ = bench
    assert res["suite"] == "solver" and res["config"]["ns"] == [300, 900]
    assert res["environment"]["torch"] == torch.__version__ and res["environment"]["device"] == "cpu"
    assert res["data"]["source"] in ("mnist", "synthetic") and res["data"]["d_in"] == 784
    assert sorted((f["n"], f["d"]) for f in res["floor"]) == [(300, 24), (300, 400), (900, 24), (900, 400),
                                                              (3000, 24)]
    for f in res["floor"]:
        assert f["floor_seconds"] == min(f["syrk_seconds"], f["syrk_batched_seconds"], f["torch_gram_seconds"]) > 0
        assert f["gemm_gflops"] == pytest.approx(2 * f["n"] * f["d"] ** 2 / f["gemm_seconds"] / 1e9)
    fits = {(r["n"], r["d"], r["group"]): r for r in res["fits"]}
    # flat reuses the fit rows at d = flat_d
    assert set(fits) == {(300, 24, "fit"), (900, 24, "fit"), (300, 400, "fit"), (900, 400, "fit"), (3000, 24, "flat")}
    for r in res["fits"]:
        # every fit forms the d × d Gram and solves it by Cholesky, also with fewer rows than features (no dual form)
        assert r["n_rows"] == r["n"] and r["solve_method"] == "cholesky"
        assert r["accumulate_seconds"] > 0 and r["features_seconds"] > 0 and r["solve_seconds"] > 0
        assert 0 < r["peak_accumulate_mb"] <= r["peak_fit_mb"] < 500  # measured in a fresh process, above baseline
        assert r["stats_mb"] == 8 * (r["d"] + 11) ** 2 / 2**20
    for r in fit_rows(res):
        assert r["ratio"] == pytest.approx(r["fit_seconds"] / r["floor_seconds"])
    p64, p32 = res["precision"]
    assert p64["accumulate"] == "float64" and p64["coef_rel_error"] == 0.0
    assert p32["accumulate"] == "float32" and 0 < p32["coef_rel_error"] < 1e-2 and p32["pred_rel_error"] < 1e-3
    assert set(res["group_seconds"]) == {"floor", "fit+flat", "precision"}


def test_markdown_and_plots_come_from_results_json(bench):
    _, out = bench
    md = (out / "results.md").read_text()
    assert "## Bars" in md and "fit ≤ 1.3× floor at N=60,000, d=4,096: not run" in md
    assert "peak memory flat in N at d=24 (300:" in md and "| fit / floor |" in md and "| float32 |" in md
    for name in ("time_vs_n.png", "time_vs_d.png", "memory_vs_n.png"):
        assert (out / name).stat().st_size > 10_000
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").read_text() == md


def test_registered_and_config_checks():
    assert "solver" in SUITES and "solver" in RENDERERS
    cfg = make_config("small")
    assert cfg.ns == (6_000, 60_000) and cfg.ds == (1_024, 2_048, 4_096, 8_192) and cfg.flat_ns[-1] == 600_000
    assert make_config("full").ds[-1] == 16_384 and make_config("smoke", ds=64).ds == (64,)
    with pytest.raises(TypeError, match="unknown SolverConfig field"):
        make_config("smoke", widths=(3,))
    with pytest.raises(ValueError, match="groups must be among"):
        make_config("smoke", groups=("fits",))
    with pytest.raises(ValueError, match="ds entries must be an int >= 1, got 0"):
        make_config("smoke", ds=(0,))
    with pytest.raises(ValueError, match="data must be 'auto', 'mnist' or 'synthetic'"):
        make_config("smoke", data="cifar")
    assert set(GROUPS) == {"floor", "fit", "flat", "precision"}


def test_only_groups_and_in_process_fits(tmp_path):
    out = tmp_path / "solver"
    assert main(["bench", "solver", "--scale", "smoke", "--out", str(out), "--only", "fit", "--set", "ns=(200,)",
                 "ds=(16,)", "batch_size=64", "subprocess=False", "data=synthetic"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["floor"] == [] and res["precision"] == [] and [r["n"] for r in res["fits"]] == [200]
    assert res["data"]["source"] == "synthetic"
    assert "fit ≤ 1.3× floor at N=60,000, d=4,096: not run" in (out / "results.md").read_text()


def test_fit_env_reaches_the_fit_processes_and_is_checked(tmp_path):
    out = tmp_path / "solver"
    assert main(["bench", "solver", "--scale", "smoke", "--out", str(out), "--only", "fit", "--set", "ns=(200,)",
                 "ds=(16,)", "batch_size=64", "data=synthetic", "fit_env=('OMP_WAIT_POLICY=PASSIVE',)",
                 "fit_repeats=2"]) == 0
    res = json.loads((out / "results.json").read_text())
    row = res["fits"][0]
    assert len(row["fit_seconds_all"]) == 2 and row["fit_seconds"] == min(row["fit_seconds_all"])
    assert res["config"]["fit_env"] == ["OMP_WAIT_POLICY=PASSIVE"]
    env = res["fits"][0]["env"]
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["OPENBLAS_THREAD_TIMEOUT"] == os.environ["OPENBLAS_THREAD_TIMEOUT"]  # recorded whatever fit_env says
    with pytest.raises(ValueError, match="fit_env entries must be 'NAME=VALUE' strings, got 'PASSIVE'"):
        make_config("smoke", fit_env=("PASSIVE",))
    with pytest.raises(ValueError, match="needs subprocess=True"):
        make_config("smoke", fit_env=("A=1",), subprocess=False)


def test_repeated_fits_are_paired_with_a_floor_timed_just_before_each(tmp_path):
    out = tmp_path / "solver"
    assert main(["bench", "solver", "--scale", "smoke", "--out", str(out), "--only", "floor", "fit", "--set",
                 "ns=(300,)", "ds=(16,)", "batch_size=64", "data=synthetic", "fit_repeats=2"]) == 0
    res = json.loads((out / "results.json").read_text())
    (row,) = res["fits"]
    assert len(row["pairs"]) == 2 and [p["fit_seconds"] for p in row["pairs"]] == row["fit_seconds_all"]
    for p in row["pairs"]:
        assert p["floor_seconds"] > 0 and p["ratio"] == pytest.approx(p["fit_seconds"] / p["floor_seconds"])
    # the bar reads the median of the paired ratios (here the rows are relabelled as the bar's size)
    for r in res["fits"] + res["floor"]:
        r["n"], r["d"] = 60_000, 4_096
    row["pairs"] = [{"floor_seconds": 10.0, "fit_seconds": f, "ratio": f / 10.0} for f in (12.0, 14.0, 20.0)]
    text = bars(res)[1]
    assert "median 1.40×" in text and "NOT met" in text
