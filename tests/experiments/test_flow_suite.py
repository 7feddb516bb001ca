"""``pilearn bench flow`` and ``pilearn ablate flow`` at smoke scale: every row, metric and file is produced."""

import json
import math

import pytest
import torch

from pilearn.cli import main
from pilearn.experiments.flow import make_ablation_config, make_config


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PILEARN_CACHE", str(tmp_path / "cache"))  # the LeNet is trained here, not read from ~


def test_bench_flow_smoke_writes_every_row_metric_and_figure(tmp_path):
    out = tmp_path / "run"
    assert main(["bench", "flow", "--scale", "smoke", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    toy = [r for r in rows if r["dataset"] == "8gaussians"]
    digits = [r for r in rows if r["dataset"] == "digits"]
    assert [r["method"].split(" (")[0] for r in toy] == ["fresh data", "PIL flow"] + ["gradient FM MLP"] * 3
    assert all(r["w2"] >= 0 and math.isfinite(r["mmd2"]) for r in toy)
    pil_toy = toy[1]
    # a PIL flow that failed to move the noise would sit at W2 ≈ 2 (radius of the 8 Gaussians); real samples ≈ 0.3
    assert pil_toy["w2"] < 1.0, pil_toy
    families = [r["family"] for r in digits]
    assert families == ["data", "PIL", "gradient", "gradient", "gradient", "gradient", "reference"]
    for r in digits[1:]:
        assert r["fd_lenet"] >= 0 and 0 <= r["class_accuracy"] <= 1 and r["nfe"] == 10, r  # heun/5: 2 per step
    pil = digits[1]
    assert pil["class_accuracy"] > 0.5, pil  # chance is 0.1: the conditional heads work
    assert digits[-1]["nn_ratio"] < pil["nn_ratio"]  # the empirical optimum copies training images; PIL does not
    # the time-matched gradient rows got the PIL fit's budget (to the step that crossed it)
    tm = [r for r in digits if "time-matched" in r["method"]]
    assert all(r["fit_seconds"] >= 0.9 * pil["fit_seconds"] and r["stop"] == "time_budget" for r in tm)
    for png in ("digits_pil.png", "digits_empirical.png", "8gaussians_samples.png", "8gaussians_pil_trajectories.png"):
        assert (out / png).stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "FD-LeNet" in md and "not FID" in md and "| PIL flow (width 64, K=2) |" in md
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").read_text() == md


def test_ablate_flow_smoke_runs_the_named_studies(tmp_path):
    out = tmp_path / "abl"
    assert main(["ablate", "flow", "--scale", "smoke", "--study", "fusion", "steps", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [r["variant"] for r in rows if r["study"] == "fusion"] == [
        "single, width 128", "concat, 2 × 64", "add, 2 × 128 summed"]
    steps = [r for r in rows if r["study"] == "steps"]
    assert [r["nfe"] for r in steps[:4]] == [5, 10, 10, 20]  # euler 5/10, heun 5/10 (2 evaluations per step)
    assert steps[-1]["ode"] == "dopri5" and steps[-1]["nfe"] > 0
    assert "## fusion" in (out / "results.md").read_text()


def test_flow_configs_fail_loudly():
    with pytest.raises(ValueError, match="scale must be one of"):
        make_config("huge")
    with pytest.raises(TypeError):
        make_config("smoke", widht=3)
    with pytest.raises(ValueError, match="datasets must be among .* got unknown \\['cifar'\\]"):
        make_config("smoke", datasets=("moons", "cifar"))
    with pytest.raises(ValueError, match="groups must be among"):
        make_config("smoke", groups=("pil", "gan"))
    with pytest.raises(ValueError, match="studies must be among"):
        make_ablation_config("smoke", studies=("width", "depth"))
    with pytest.raises(ValueError, match="dataset must be one of"):
        make_ablation_config("smoke", dataset="moons")
    assert main(["ablate", "flow", "--study", "depth"]) == 2


def test_a_field_that_blows_up_is_reported_not_fatal():
    from pilearn.experiments.flow import _sample_rows

    cfg = make_config("smoke")
    x, info = _sample_rows("test", lambda x, t: torch.where(t[:, None] > 0.5, torch.inf, 1.0) * x, torch.ones(4, 3),
                           cfg)
    assert x is None and "velocity returned inf at t=0.6" in info["sample_error"]
    x, info = _sample_rows("test", lambda x, t: -x, torch.ones(4, 3), cfg)
    assert info["nfe"] == 2 * cfg.steps and "sample_error" not in info
    torch.testing.assert_close(x, torch.full((4, 3), (1 - 1 / 5 + 1 / 50) ** 5))  # Heun's factor per step
