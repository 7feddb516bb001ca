"""``pilearn bench diffusion`` and ``pilearn ablate diffusion`` at smoke scale: every row, metric and file is made."""

import json

import pytest

from pilearn.cli import main
from pilearn.experiments.diffusion import make_ablation_config, make_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PILEARN_CACHE", str(tmp_path / "cache"))  # the LeNet is trained here, not read from ~


def test_bench_diffusion_smoke_writes_every_row_metric_and_figure(tmp_path):
    out = tmp_path / "run"
    assert main(["bench", "diffusion", "--scale", "smoke", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["family"] for r in rows] == ["data", "PIL", "PIL", "PIL", "PIL"] + ["gradient"] * 8 + ["reference"]
    methods = [r["method"] for r in rows]
    assert "one read-out shared by all t" in methods[2] and "per-timestep heads at the 5 DDIM" in methods[3]
    assert methods[4].startswith("PIL flow matching")
    for r in rows[1:]:
        assert r["fd_lenet"] >= 0 and 0 <= r["class_accuracy"] <= 1, r
    pil, shared, per_t = rows[1:4]
    assert pil["nfe"] == 10 and per_t["nfe"] == 5 and rows[4]["nfe"] == 10  # flow: Heun/5, 2 per step
    assert per_t["n_heads"] == 5 * 10 and shared["n_heads"] == 10 and pil["n_heads"] == 2 * 10
    assert pil["class_accuracy"] > 0.3, pil  # chance is 0.1: the per-class heads condition the samples
    assert rows[-1]["nn_ratio"] < pil["nn_ratio"]  # the empirical optimum copies training images; PIL does not
    tm = [r for r in rows if "time-matched" in r["method"]]
    assert [r["sampler"] for r in tm] == ["DDIM 10", "DDIM 10, x̂₀ clipped"] * 2
    assert len(tm) == 4 and all(r["fit_seconds"] >= 0.9 * pil["fit_seconds"] and r["stop"] == "time_budget"
                                for r in tm)
    for png in ("digits_pil.png", "digits_pil-per-t.png", "digits_pil-flow.png", "digits_empirical.png"):
        assert (out / png).stat().st_size > 500
    md = (out / "results.md").read_text()
    assert "not FID" in md and "| PIL diffusion, K=2 buckets (width 64) |" in md
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").read_text() == md


def test_ablate_diffusion_smoke_runs_the_named_studies(tmp_path):
    out = tmp_path / "abl"
    assert main(["ablate", "diffusion", "--scale", "smoke", "--study", "sharing", "steps", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    sharing = [r for r in rows if r["study"] == "sharing"]
    assert [r["n_heads"] for r in sharing] == [10, 20, 20, 50]  # K = 1, 2, 2 (timestep spacing), per-t at 5
    assert sharing[-1]["nfe"] == 5
    steps = [r for r in rows if r["study"] == "steps"]
    assert [r["nfe"] for r in steps] == [5, 10, 10, 10, 20]  # DDIM 5, 10, 10 clipped, η = 1, DDPM 20
    assert "clipped" in steps[2]["variant"] and "DDPM" in steps[-1]["variant"]
    assert all(r["fd_lenet"] >= 0 for r in rows)
    assert "## sharing" in (out / "results.md").read_text()


def test_bench_set_overrides_fields_and_a_conv_row_runs(tmp_path):
    out = tmp_path / "conv"
    assert main(["bench", "diffusion", "--scale", "smoke", "--only", "pil", "--set", "features=conv",
                 "datasets=digits", "n_samples=100", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["features"] == "conv" and results["config"]["datasets"] == ["digits"]
    (row,) = [r for r in results["rows"] if r["family"] == "PIL"]
    assert row["params"]["features"] == "conv" and row["n_heads"] == 2 * 10
    assert main(["bench", "diffusion", "--scale", "smoke", "--set", "widht=3"]) == 2
    assert main(["bench", "diffusion", "--scale", "smoke", "--set", "draws"]) == 2


def test_configs_reject_unknown_names():
    with pytest.raises(ValueError, match="groups"):
        make_config("smoke", groups=("pil", "unet"))
    with pytest.raises(ValueError, match="datasets"):
        make_config("smoke", datasets=("cifar10",))
    with pytest.raises(TypeError):
        make_config("smoke", widht=3)
    with pytest.raises(ValueError, match="studies"):
        make_ablation_config("smoke", studies=("sharing", "depth"))
    with pytest.raises(ValueError, match="dataset"):
        make_ablation_config("smoke", dataset="8gaussians")
    assert main(["ablate", "diffusion", "--study", "depth"]) == 2
