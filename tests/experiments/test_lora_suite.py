"""``pilearn bench lora``: its config checks, its bars from the numbers, and the classification group end to end at a
tiny size on the real offline MiniLM (skipped where the model package is not installed)."""

from __future__ import annotations

import json

import pytest

from pilearn.cli import main
from pilearn.experiments import RENDERERS, SUITES
from pilearn.experiments.lora import GROUPS, bars, make_config


def test_registered_and_config_checks():
    assert "lora" in SUITES and "lora" in RENDERERS and GROUPS == ("lm", "cls")
    cfg = make_config("smoke", datasets=("ptb", "tweets"))
    assert cfg.lm_corpora == ("ptb",) and cfg.cls_datasets == ("tweets",)
    with pytest.raises(TypeError, match="unknown LoraBenchConfig field"):
        make_config("small", nope=1)
    with pytest.raises(ValueError, match="datasets must be among"):
        make_config("small", datasets=("imdb",))
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        make_config("small", rank=0)
    with pytest.raises(ValueError, match="lm_test_tokens must be at least seq_len"):
        make_config("small", lm_test_tokens=100)
    with pytest.raises(ValueError, match="groups must be among"):
        make_config("small", groups=("nlp",))
    with pytest.raises(ValueError, match="pil_downs must be among"):
        make_config("small", pil_downs=("pca",))
    with pytest.raises(ValueError, match="at most once"):
        make_config("small", pil_downs=("rrr", "rrr"))
    assert make_config("small", pil_downs="rrr").pil_downs == ("rrr",)
    with pytest.raises(ValueError, match=r"pil_rounds=2 needs pil_downs=\('random',\)"):
        make_config("small", pil_rounds=2)
    with pytest.raises(ValueError, match="pil_rounds must be an int >= 1"):
        make_config("small", pil_rounds=0)
    assert make_config("small", pil_rounds=3, pil_downs=("random",)).pil_rounds == 3


def _row(group, dataset, family, method="m", **kw):
    return {"group": group, "dataset": dataset, "family": family, "method": method, **kw}


def test_bars_follow_the_numbers():
    cfg = {"lm_corpora": ["shakespeare"], "cls_datasets": ["bbc"], "lm_targets": ["q_proj", "v_proj"],
           "groups": None}
    rows = [_row("lm", "shakespeare", "frozen", test_ppl=30.0),
            _row("lm", "shakespeare", "PIL-LoRA", "PIL-LoRA on q_proj/v_proj", test_ppl=24.5, train_seconds=10.0,
                 targets=["q_proj", "v_proj"]),
            _row("lm", "shakespeare", "LoRA", test_ppl=24.0, train_seconds=200.0),
            _row("cls", "bbc", "PIL-LoRA", accuracy=0.955, peak_mb=300.0),
            _row("cls", "bbc", "LoRA", accuracy=0.970, peak_mb=900.0)]
    lm, cls = bars({"rows": rows, "config": cfg})
    assert "92 % of LoRA's reduction" in lm and "5 % of its time" in lm and lm.endswith(": met")
    assert "within 1 point: no" in cls and cls.endswith("NOT met")
    rrr = [_row("lm", "shakespeare", "PIL-LoRA", "rrr on q_proj/v_proj", test_ppl=27.0, train_seconds=20.0,
                targets=["q_proj", "v_proj"], down="rrr"),
           _row("cls", "bbc", "PIL-LoRA", accuracy=0.968, peak_mb=300.0, down="rrr")]
    lm2, cls_random, cls_rrr = bars({"rows": rows + rrr, "config": cfg})
    assert "; PIL-LoRA-RRR on q_proj/v_proj: 27.00 (50 % of the reduction, 10 % of the time)" in lm2
    assert cls_random == cls and cls_rrr.startswith("MiniLM bbc: PIL-LoRA-RRR 96.80 %") and cls_rrr.endswith(": met")
    rows[1]["train_seconds"] = 40.0  # 20 % of LoRA's time: the time half of the bar fails
    assert bars({"rows": rows, "config": cfg})[0].endswith("NOT met")
    cfg["groups"] = ["cls"]  # a group not run gets no bar line
    assert len(bars({"rows": rows, "config": cfg})) == 1


TINY = ["cls_train_docs=10", "cls_val_docs=6", "cls_test_docs=6", "cls_max_length=12", "cls_batch_size=5",
        "cls_max_epochs=1", "determinism=True"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_classification_group_end_to_end(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert main(["bench", "lora", "--scale", "smoke", "--only", "cls", "--out", str(out), "--set", *TINY]) == 0
    res = json.loads((out / "results.json").read_text())
    if "cls" in res.get("skipped", {}):
        pytest.skip(res["skipped"]["cls"])
    fam = {r["family"]: r for r in res["rows"]}
    assert set(fam) == {"probe", "PIL-LoRA", "LoRA", "LoRA time-matched", "LoRA other seed"}
    pils = {r["down"]: r for r in res["rows"] if r["family"] == "PIL-LoRA"}
    assert set(pils) == {"random", "rrr"}
    pil, lora = pils["random"], fam["LoRA"]
    assert pil["stored_adapter"] == 6 * 2 * (8 * 384 + 384)  # rank 8 on query and value of 6 layers, W_up and b
    assert pils["rrr"]["stored_adapter"] == 6 * 2 * (384 * 8 + 8 * 384 + 384)  # + the data-chosen W_down
    assert lora["stored_adapter"] == 6 * 2 * (8 * 384 + 384 * 8)  # A and B
    assert pil["refit_max_abs_diff"] == 0.0  # the closed form is deterministic
    assert all(0 <= r["accuracy"] <= 1 and r["train_seconds"] > 0 for r in res["rows"])
    md = (out / "results.md").read_text()
    assert "MiniLM bbc: PIL-LoRA " in md and "MiniLM bbc: PIL-LoRA-RRR " in md and "Seed §3.5's table, measured" in md


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_re_linearized_rounds_end_to_end(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert main(["bench", "lora", "--scale", "smoke", "--only", "cls", "--out", str(out), "--set", *TINY,
                 "determinism=False", "pil_rounds=2", "pil_downs=random"]) == 0
    res = json.loads((out / "results.json").read_text())
    if "cls" in res.get("skipped", {}):
        pytest.skip(res["skipped"]["cls"])
    (pil,) = [r for r in res["rows"] if r["family"] == "PIL-LoRA"]
    assert pil["rounds"] == 2 and len(pil["round_losses"]) == 2
    for before, after in pil["round_losses"]:  # each round's step search never accepts a worse validation loss
        assert after <= before
    assert pil["loss_after"] == pil["round_losses"][-1][1]
