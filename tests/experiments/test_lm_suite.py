"""``pilearn bench lm``, ``pilearn ablate lm`` and ``pilearn eval lambada`` end to end at a tiny size."""

from __future__ import annotations

import json

import pytest

from pilearn.cli import main
from pilearn.experiments.lm import eval_lambada, make_ablation_config, make_config, run_ablate_lm, run_lm

TINY = dict(max_train_tokens=12000, max_eval_tokens=1500, n_layer=1, n_embd=32, n_head=2, block_size=16,
            eval_tokens=500, epochs=0.2, batch_size=8)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    return run_lm(make_config("smoke", **TINY, out=out)), out


def test_bench_rows_and_files(bench):
    res, out = bench
    methods = [r["method"] for r in res["rows"]]
    assert methods[0] == "Kneser-Ney 3-gram" and "PIL-LM (pure)" in methods
    assert any(m.startswith("PIL-LM (pure) ⊕ KN-3") for m in methods)
    assert any(m.startswith("Transformer, AdamW, 0.2 epochs") for m in methods)
    assert any(m.startswith("Transformer, AdamW, time-matched") for m in methods)
    attn = next(r for r in res["rows"] if r["method"].startswith("PIL-LM (+Attn)"))
    assert attn["method"].endswith("softmax head") and attn["pil_seconds"] == pytest.approx(
        next(r["fit_seconds"] for r in res["rows"] if r["method"] == "PIL-LM (pure)"))
    for r in res["rows"]:
        assert r["test_ppl"] > 1 and r["valid_ppl"] > 1
    pure = next(r for r in res["rows"] if r["method"] == "PIL-LM (pure)")
    assert pure["gradient_free"] and len(pure["fit"]["layers"]) == 1
    saved = json.loads((out / "results.json").read_text())
    assert saved["data"]["train_tokens"] == 12000 and saved["environment"]["torch"]
    assert "| PIL-LM (pure) |" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 0 and (out / "pil_lm_pure.safetensors").is_file()


def test_attn_phase_can_keep_the_mixture_head(tmp_path):
    res = run_lm(make_config("smoke", **TINY, groups=("attn",), attn_head="keep", attn_seconds=1.0, out=tmp_path))
    attn = next(r for r in res["rows"] if r["method"].startswith("PIL-LM (+Attn)"))
    assert attn["method"].endswith("mixture head kept") and attn["test_ppl"] > 1


def test_eval_lambada_on_a_file_in_the_real_format(bench, tmp_path):
    _, out = bench
    data = tmp_path / "lambada_test.jsonl"
    data.write_text('{"text": "the company said it will sell the shares"}\n'
                    '{"text": "he said the Company would report results for the Quarter"}\n'
                    '{"text": "zzqx unknownword"}\n')
    res = eval_lambada(out / "pil_lm_pure.safetensors", data)
    assert res["examples"] == 3
    # "shares" and "Quarter" (lower-cased like the PTB vocabulary) are PTB words; "unknownword" is not
    assert res["target_in_vocab"] == pytest.approx(2 / 3)
    assert 0.0 <= res["accuracy"] <= res["target_in_vocab"]
    assert main(["eval", "lambada", "--model", str(out / "pil_lm_pure.safetensors"), "--data", str(data),
                 "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["examples"] == 3
    assert main(["eval", "lambada", "--model", str(tmp_path / "missing.safetensors"), "--data", str(data)]) == 2


def test_ablation_bipil_rows(tmp_path):
    cfg = make_ablation_config("smoke", studies=("bipil",), out=tmp_path)
    res = run_ablate_lm(cfg)
    widths = {r["variant"]: r["ffn_width"] for r in res["rows"]}
    e = cfg.bench.expansion * cfg.bench.n_embd
    assert sorted(widths.values()) == sorted([e, 2 * e, 2 * e, e])  # single, single equal-width, concat, add
    assert "## bipil" in (tmp_path / "results.md").read_text()


def test_config_errors():
    with pytest.raises(ValueError, match="dataset must be one of"):
        make_config("small", dataset="nope")
    with pytest.raises(ValueError, match="groups must be among"):
        make_config("small", groups=("pil", "bogus"))
    with pytest.raises(TypeError):
        make_config("small", not_a_field=1)
    with pytest.raises(ValueError, match="attn_head must be"):
        make_config("small", attn_head="mixture")
    with pytest.raises(ValueError, match="studies must be among"):
        make_ablation_config("smoke", studies=("bipil", "nope"))
