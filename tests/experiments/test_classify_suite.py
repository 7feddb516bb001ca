import json

import pytest
import torch

from pilearn.cli import main
from pilearn.experiments._results import PeakMemory, markdown_table
from pilearn.experiments.classify import make_config


def test_bench_classify_smoke_writes_results_table_and_plot(tmp_path):
    out = tmp_path / "run"
    assert main(["bench", "classify", "--scale", "smoke", "--datasets", "digits", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["scale"] == "smoke"
    assert results["environment"]["torch"] == torch.__version__
    methods = [r["method"] for r in results["rows"]]
    families = {r["family"] for r in results["rows"]}
    assert {"PIL", "Bi-PIL ablation", "gradient", "kernel"} <= families
    assert any("time-matched" in m for m in methods) and any("to convergence" in m for m in methods)
    assert any("random-conv" in m for m in methods)
    for r in results["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["fit_seconds"] > 0, r
    pil = [r for r in results["rows"] if r["family"] == "PIL"]
    assert all(r["accuracy"] > 0.85 for r in pil)  # digits is easy: a broken fit shows here
    assert results["gram_floor"]["fit_over_floor"] > 0
    assert [m["n"] for m in results["memory_scan"]] == [500, 1347]
    md = (out / "results.md").read_text()
    assert "| PIL dense d=256 (λ by GCV) |" in md and "× the floor" in md
    assert (out / "accuracy_vs_time.png").stat().st_size > 10_000
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0  # tables come back from results.json alone
    assert (out / "results.md").read_text() == md


def test_unknown_option_and_scale_fail_loudly(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "classify", "--sclae", "smoke"])
    assert e.value.code == 2
    assert "--sclae" in capsys.readouterr().err
    with pytest.raises(ValueError, match="scale must be one of"):
        make_config("huge")
    with pytest.raises(TypeError):
        make_config("smoke", widthz=(1,))


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory() as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        x += 1
        del x
    assert 60 <= mem.peak_mb <= 200


def test_markdown_table_formats_missing_values():
    table = markdown_table([{"a": 1.23456, "b": None}], [("a", "A"), ("b", "B")])
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1.235 | — |"]
