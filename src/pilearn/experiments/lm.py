"""``pilearn bench lm``, ``pilearn ablate lm`` and ``pilearn eval lambada``: seed ``001``'s experiments.

Rows of ``bench lm``, all in one process on the same corpus (seed ``001`` Table 1, plus the n-gram):

* **Kneser-Ney n-gram** (interpolated, modified discounts), orders 3 and 5: the classic gradient-free LM.
* **PIL-LM (pure)**: :func:`~pilearn.lm.fit_pil`, no gradient anywhere.
* **PIL-LM (pure) ⊕ KN-5**: the two gradient-free models' distributions mixed, ``p = β p_PIL + (1−β) p_KN``, with
  ``β`` chosen on the validation split (the classic way a neural LM is combined with an n-gram).
* **Transformer, AdamW, ``epochs`` epochs**: the same architecture with a gradient-trained MLP FFN.
* **Transformer, AdamW, time-matched**: the same, stopped at the PIL-LM (pure) fit time.
* **PIL-LM (+Attn)**: the pure model, then attention, LayerNorms, embeddings and head trained by AdamW with the FFNs
  frozen; the closed-form fit and the AdamW phase together get ``attn_fraction`` of the baseline's wall-clock.

Every model is scored on the same targets (every token of the split but the first) by the same code; the
transformers by sliding windows with half-window stride (:func:`~pilearn.lm.evaluate`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..data import TEXT_DATASET_NAMES, load_text
from ..lm import (KneserNeyLM, LMConfig, PILFitConfig, PILLM, TrainConfig, evaluate, fit_pil, save_lm,
                  train_adamw)
from ._results import PeakMemory, Stopwatch, default_out_dir, environment, markdown_table, write_results

Scale = Literal["smoke", "small", "full"]
GROUPS = ("ngram", "pil", "baseline", "attn")


def _progress(msg: str) -> None:
    print(f"[lm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class LMBenchConfig:
    """One run of the LM suite. ``scale`` picks the sizes below; fields override them."""

    scale: Scale = "small"
    dataset: str = "ptb"
    data_path: str | None = None
    level: str | None = None
    model: str = "small"  # one of pilearn.lm.CONFIGS
    block_size: int = 64
    max_train_tokens: int | None = None
    # PIL-LM
    expansion: int = 4
    fusion: str = "concat"
    lam: float | str = 1e-4
    head_lam: float = 1e-4
    # baselines
    epochs: float = 5.0
    batch_size: int = 32
    lr: float = 1e-3
    dropout: float = 0.1
    attn_fraction: float = 0.2  # the whole +Attn run gets this fraction of the baseline's wall-clock
    attn_seconds: float | None = None  # or: the AdamW phase alone gets this many seconds
    attn_lr: float = 1e-3
    attn_head: str = "softmax"  # the +Attn phase's head: "softmax" (re-started) or "keep" (the pure fit's head)
    eval_tokens: int = 20000  # validation tokens per learning-curve point
    max_eval_tokens: int | None = None  # cap on the valid and test streams (None: whole splits)
    ngram_orders: tuple[int, ...] = (3, 5)
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    groups: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None  # accepted from the CLI's --datasets; the first one is used
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None


SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(max_train_tokens=30000, n_layer=2, n_embd=64, n_head=2, block_size=32, epochs=0.5,
                  batch_size=16, eval_tokens=2000, ngram_orders=(3,), max_eval_tokens=3000),
    "small": {},
    "full": dict(model="medium", block_size=128),
}


def make_config(scale: Scale = "small", **overrides: Any) -> LMBenchConfig:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    cfg = replace(LMBenchConfig(scale=scale), **{**SCALES[scale], **overrides})
    if cfg.datasets:
        cfg = replace(cfg, dataset=cfg.datasets[0], datasets=None)
    if cfg.dataset not in TEXT_DATASET_NAMES:
        raise ValueError(f"dataset must be one of {TEXT_DATASET_NAMES}, got {cfg.dataset!r}")
    if cfg.attn_head not in ("softmax", "keep"):
        raise ValueError(f"attn_head must be 'softmax' or 'keep', got {cfg.attn_head!r}")
    if cfg.groups is not None:
        unknown = sorted(set(cfg.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"groups must be among {GROUPS}, got unknown {unknown}")
    return cfg


def _on(cfg: LMBenchConfig, group: str) -> bool:
    return cfg.groups is None or group in cfg.groups


def model_config(cfg: LMBenchConfig, vocab_size: int, **kw: Any) -> LMConfig:
    sizes = {k: v for k, v in (("n_layer", cfg.n_layer), ("n_embd", cfg.n_embd), ("n_head", cfg.n_head))
             if v is not None}
    base = dict(vocab_size=vocab_size, block_size=cfg.block_size, expansion=cfg.expansion, fusion=cfg.fusion,
                seed=cfg.seed)
    return LMConfig.from_name(cfg.model, **{**base, **sizes, **kw})


def load_corpus(cfg: LMBenchConfig):
    corpus = load_text(cfg.dataset, path=cfg.data_path, level=cfg.level, max_tokens=cfg.max_train_tokens)
    if cfg.max_eval_tokens is not None:
        corpus = replace(corpus, valid=corpus.valid[: cfg.max_eval_tokens], test=corpus.test[: cfg.max_eval_tokens])
    return corpus


def _eval_row(model: PILLM, corpus) -> dict[str, Any]:
    v, t = evaluate(model, corpus.valid), evaluate(model, corpus.test)
    return {"valid_ppl": v.perplexity, "test_ppl": t.perplexity, "test_accuracy": t.accuracy,
            "test_tokens": t.n_tokens}


def _transformer_log_probs(model: PILLM, ids: np.ndarray) -> np.ndarray:
    """Per-target log-probabilities (targets 1 … n−1), the same windows as :func:`~pilearn.lm.evaluate`."""
    from ..lm import token_log_probs

    return token_log_probs(model, ids)[0].numpy()


def _mix(lp_a: np.ndarray, lp_b: np.ndarray, beta: float) -> float:
    """Perplexity of ``β p_a + (1−β) p_b`` from per-token log-probs."""
    m = np.logaddexp(np.log(beta) + lp_a, np.log1p(-beta) + lp_b) if 0 < beta < 1 else (lp_a if beta >= 1 else lp_b)
    return float(np.exp(-m.mean()))


def run_lm(cfg: LMBenchConfig, command: str = "pilearn bench lm") -> dict:
    """Run the suite; write ``results.json``, ``results.md``, the learning-curve PNG and the PIL-LM model file."""
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("lm")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    corpus = load_corpus(cfg)
    V = corpus.vocab_size
    results: dict[str, Any] = {"suite": "lm", "command": command, "config": asdict(cfg),
                               "environment": environment(cfg.device),
                               "data": {"dataset": cfg.dataset, "level": corpus.level, "vocab_size": V,
                                        "train_tokens": len(corpus.train), "valid_tokens": len(corpus.valid),
                                        "test_tokens": len(corpus.test)},
                               "rows": [], "curves": {}}
    t0 = time.perf_counter()

    def add(row: dict[str, Any]) -> None:
        results["rows"].append(row)
        write_results(out, results)
        _progress(f"{row['method']}: " + ", ".join(f"{k} {row[k]:.4g}" for k in ("test_ppl", "fit_seconds")
                                                   if isinstance(row.get(k), float)))

    kn5_lp = {}
    kn_seconds: dict[int, float] = {}
    if _on(cfg, "ngram"):
        for order in cfg.ngram_orders:
            with PeakMemory() as mem, Stopwatch() as sw:
                lm = KneserNeyLM(order).fit(corpus.train, V)
            lp_v = lm.score(corpus.valid[1:], context=corpus.valid[:1])
            lp_t = lm.score(corpus.test[1:], context=corpus.test[:1])
            kn5_lp[order] = (lp_v, lp_t)
            kn_seconds[order] = sw.seconds
            add({"method": f"Kneser-Ney {order}-gram", "family": "n-gram", "fit_seconds": sw.seconds,
                 "peak_mb": mem.peak_mb, "params": lm.n_params_, "gradient_free": True,
                 "valid_ppl": float(np.exp(-lp_v.mean())), "test_ppl": float(np.exp(-lp_t.mean()))})

    pil_seconds = None
    pil_model = None
    pil_report_grid: dict[str, float] = {}
    if _on(cfg, "pil") or _on(cfg, "attn"):
        mcfg = model_config(cfg, V, ffn="pil", tie_weights=False, dropout=0.0)
        pil_model = PILLM(mcfg).to(cfg.device)
        _progress(f"PIL-LM (pure): fit, {mcfg}")
        with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
            rep = fit_pil(pil_model, corpus.train, valid_ids=corpus.valid[: cfg.eval_tokens],
                          config=PILFitConfig(lam=cfg.lam, head_lam=cfg.head_lam, seed=cfg.seed))
        pil_seconds = sw.seconds
        pil_report_grid = rep.head.get("grid", {})
        row = {"method": "PIL-LM (pure)", "family": "PIL", "fit_seconds": sw.seconds, "peak_mb": mem.peak_mb,
               "params": pil_model.n_params(), "gradient_free": True, "fit": rep.to_dict(),
               **_eval_row(pil_model, corpus)}
        add(row)
        save_lm(pil_model, out / "pil_lm_pure.safetensors",
                vocab=corpus.vocab.to_dict() if corpus.vocab is not None else None)
        if 5 in kn5_lp or kn5_lp:
            order = 5 if 5 in kn5_lp else max(kn5_lp)
            lp_pv, lp_pt = (_transformer_log_probs(pil_model, corpus.valid), _transformer_log_probs(pil_model, corpus.test))
            grid = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
            scores = {b: _mix(lp_pv, kn5_lp[order][0], b) for b in grid}
            beta = min(scores, key=scores.get)
            add({"method": f"PIL-LM (pure) ⊕ KN-{order}, β={beta:g} on valid", "family": "PIL + n-gram",
                 "gradient_free": True, "fit_seconds": sw.seconds + kn_seconds[order],
                 "valid_ppl": scores[beta], "test_ppl": _mix(lp_pt, kn5_lp[order][1], beta),
                 "beta_grid": {str(k): v for k, v in scores.items()}})

    base_seconds = None
    if _on(cfg, "baseline"):
        budgets = [("epochs", TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                          eval_tokens=cfg.eval_tokens, seed=cfg.seed))]
        if pil_seconds is not None:
            budgets.append(("time-matched", TrainConfig(epochs=cfg.epochs, max_seconds=pil_seconds,
                                                        schedule_by_time=True, batch_size=cfg.batch_size,
                                                        lr=cfg.lr, eval_tokens=cfg.eval_tokens, seed=cfg.seed)))
        for tag, tcfg in budgets:
            torch.manual_seed(cfg.seed)
            model = PILLM(model_config(cfg, V, ffn="mlp", dropout=cfg.dropout)).to(cfg.device)
            label = (f"Transformer, AdamW, {cfg.epochs:g} epochs" if tag == "epochs"
                     else f"Transformer, AdamW, time-matched to PIL-LM (pure) ({pil_seconds:.0f} s)")
            _progress(f"{label}: train")
            with PeakMemory(device=cfg.device) as mem:
                rep = train_adamw(model, corpus.train, corpus.valid, config=tcfg,
                                  progress=_step_logger(label))
            if tag == "epochs":
                base_seconds = rep.seconds
            results["curves"][label] = rep.curve
            add({"method": label, "family": "gradient", "fit_seconds": rep.seconds, "peak_mb": mem.peak_mb,
                 "params": model.n_params(), "steps": rep.steps, "epochs": rep.epochs, "gradient_free": False,
                 **_eval_row(model, corpus)})

    if _on(cfg, "attn") and pil_model is not None:
        # the whole +Attn run (closed-form phase included) gets attn_fraction of the baseline's wall-clock
        total = cfg.attn_fraction * (base_seconds if base_seconds is not None else 10 * (pil_seconds or 60.0))
        budget = max(total - (pil_seconds or 0.0), 0.05 * total)
        label = f"PIL-LM (+Attn): pure fit + AdamW on attention, {cfg.attn_fraction:g}× the baseline's time in all"
        if cfg.attn_seconds is not None:
            budget = cfg.attn_seconds
            label = f"PIL-LM (+Attn): pure fit + AdamW on attention for {budget:.0f} s"
        if cfg.attn_head == "softmax":
            # a softmax head, started from the pure head's best softmax temperature. Keeping the calibrated
            # mixture head (attn_head="keep") trains worse: its cross-entropy gradient is zero for every target whose
            # clipped score relu(s_y) is 0, so AdamW mostly shrinks the other tokens' mass towards the unigram
            # (docs/lm.md, "+Attn with the mixture head kept")
            temps = {k: v for k, v in pil_report_grid.items() if k.startswith("softmax")}
            if temps:
                pil_model.temperature.fill_(float(min(temps, key=temps.get).split("=")[1]))
            pil_model.head = "softmax"
            label += ", softmax head"
        else:
            label += ", mixture head kept"
        _progress(f"{label}: train for {budget:.0f} s")
        with PeakMemory(device=cfg.device) as mem:
            rep = train_adamw(pil_model, corpus.train, corpus.valid, which="attention",
                              config=TrainConfig(epochs=cfg.epochs, max_seconds=budget, schedule_by_time=True,
                                                 batch_size=cfg.batch_size, lr=cfg.attn_lr,
                                                 eval_tokens=cfg.eval_tokens, seed=cfg.seed),
                              progress=_step_logger(label))
        results["curves"][label] = rep.curve
        add({"method": label, "family": "PIL + gradient", "fit_seconds": (pil_seconds or 0.0) + rep.seconds,
             "pil_seconds": pil_seconds, "attn_seconds": rep.seconds, "peak_mb": mem.peak_mb,
             "params": pil_model.n_params(), "trainable_params": rep.trainable_parameters, "steps": rep.steps,
             "gradient_free": False, **_eval_row(pil_model, corpus)})
        save_lm(pil_model, out / "pil_lm_attn.safetensors",
                vocab=corpus.vocab.to_dict() if corpus.vocab is not None else None)
    results["total_seconds"] = time.perf_counter() - t0
    write_results(out, results)
    render(out)
    _progress(f"wrote {out / 'results.json'} and results.md")
    return results


def _step_logger(label: str):
    last = [time.perf_counter()]

    def log(step: int, total: int, loss: float) -> None:
        if time.perf_counter() - last[0] > 60:
            last[0] = time.perf_counter()
            _progress(f"{label}: step {step}/{total}, loss {loss:.3f}")
    return log


COLUMNS = [("method", "model"), ("params", "params"), ("fit_seconds", "time (s)"), ("valid_ppl", "valid PPL"),
           ("test_ppl", "test PPL"), ("test_accuracy", "test top-1"), ("peak_mb", "peak MB"),
           ("gradient_free", "gradient-free")]


def render_markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    d = results["data"]
    lines = [f"# `{results['command']}`", "",
             f"{d['dataset']} ({d['level']} level, vocabulary {d['vocab_size']:,}; train {d['train_tokens']:,}, "
             f"valid {d['valid_tokens']:,}, test {d['test_tokens']:,} tokens). Machine: {env.get('cpu', '?')}, "
             f"device {env.get('device', 'cpu')}, torch {env.get('torch', '?')}, revision {env.get('git_revision')}.",
             "", markdown_table(results["rows"], COLUMNS), ""]
    bars = _bars(results)
    if bars:
        lines += ["## Bars (issue 4)", ""] + [f"- {b}" for b in bars] + [""]
    return "\n".join(lines)


def _bars(results: dict[str, Any]) -> list[str]:
    rows = {r["method"]: r for r in results["rows"]}
    kn = next((r for m, r in rows.items() if m.startswith("Kneser-Ney 5")), None)
    pure = rows.get("PIL-LM (pure)")
    base = next((r for m, r in rows.items() if "epochs" in m and m.startswith("Transformer")), None)
    attn = next((r for m, r in rows.items() if m.startswith("PIL-LM (+Attn)")), None)
    out = []
    if kn and pure:
        ok = pure["test_ppl"] < kn["test_ppl"]
        out.append(f"PIL-LM (pure) test PPL {pure['test_ppl']:.1f} vs Kneser-Ney 5-gram {kn['test_ppl']:.1f}: "
                   f"{'met' if ok else 'NOT met'}")
    if base and attn:
        within = attn["test_ppl"] <= 1.1 * base["test_ppl"]
        fast = attn["fit_seconds"] <= base["fit_seconds"] / 5
        out.append(f"PIL-LM (+Attn) test PPL {attn['test_ppl']:.1f} vs AdamW {base['test_ppl']:.1f} "
                   f"(within 10 %: {'met' if within else 'NOT met'}), time {attn['fit_seconds']:.0f} s vs "
                   f"{base['fit_seconds']:.0f} s (≤ 1/5: {'met' if fast else 'NOT met'})")
    return out


def render(out: Path) -> None:
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(render_markdown(results) + "\n")
    _plot_curves(results, out / "curves.png")


def _plot_curves(results: dict[str, Any], path: Path) -> None:
    if not results.get("curves"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curve in results["curves"].items():
        pts = [(p["seconds"], p["valid_ppl"]) for p in curve if "valid_ppl" in p]
        if pts:
            offset = 0.0
            if label.startswith("PIL-LM (+Attn)"):
                offset = next((r.get("pil_seconds") or 0.0 for r in results["rows"] if r["method"] == label), 0.0)
            line, = ax.plot([offset + s for s, _ in pts], [v for _, v in pts], marker="o", ms=3, label=label)
            row = next((r for r in results["rows"] if r["method"] == label), None)
            if row and row.get("valid_ppl"):  # the final model on the whole split, as in the table
                ax.plot([row["fit_seconds"]], [row["valid_ppl"]], marker="*", ms=10, color=line.get_color())
    for r in results["rows"]:
        if r.get("gradient_free") and r.get("valid_ppl"):
            ax.axhline(r["valid_ppl"], ls="--", lw=1, color="gray")
            ax.text(0.01, r["valid_ppl"], r["method"], fontsize=7, va="bottom", transform=ax.get_yaxis_transform())
    n_curve = results.get("config", {}).get("eval_tokens")
    ax.set_xlabel("wall-clock seconds (fit or training)")
    ax.set_ylabel("validation perplexity")
    ax.set_title(f"curves: first {n_curve} validation tokens; ★ and dashed lines: the whole split", fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # long labels: beside the axes
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------- ablations (seed 001 Tables 2–4)
STUDIES = ("bipil", "lambda", "expansion", "design")


@dataclass
class LMAblationConfig:
    """``pilearn ablate lm``: PIL-LM (pure) varied one factor at a time around the bench's default."""

    scale: Scale = "small"
    studies: tuple[str, ...] = STUDIES
    bench: LMBenchConfig | None = None
    lams: tuple[float | str, ...] = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, "gcv")
    expansions: tuple[int, ...] = (1, 4, 8)
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None
    dataset: str = "ptb"


ABLATION_SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(max_train_tokens=20000, max_eval_tokens=2000, n_layer=1, n_embd=64, n_head=2, block_size=32,
                  eval_tokens=1000),
    # 100k training tokens, 2 layers: 14 closed-form fits in about 25 minutes on one CPU core
    "small": dict(max_train_tokens=100000, max_eval_tokens=20000, n_layer=2, eval_tokens=5000),
    "full": dict(),
}


def make_ablation_config(scale: Scale = "small", **overrides: Any) -> LMAblationConfig:
    if scale not in ABLATION_SCALES:
        raise ValueError(f"scale must be one of {tuple(ABLATION_SCALES)}, got {scale!r}")
    studies = tuple(overrides.pop("studies", STUDIES))
    unknown = sorted(set(studies) - set(STUDIES))
    if unknown:
        raise ValueError(f"studies must be among {STUDIES} or 'all', got unknown {unknown}")
    bench = make_config(scale if scale != "full" else "small", **ABLATION_SCALES[scale],
                        seed=overrides.get("seed", 0), device=overrides.get("device", "cpu"),
                        dataset=overrides.get("dataset", "ptb"))
    return replace(LMAblationConfig(scale=scale, studies=studies, bench=bench), **overrides)


def _variants(study: str, cfg: LMAblationConfig) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, LMConfig overrides, PILFitConfig overrides) of one study."""
    e = cfg.bench.expansion
    if study == "bipil":
        return [(f"single projection, width {e}·C", {"fusion": "single"}, {}),
                (f"single projection of equal total width, {2 * e}·C", {"fusion": "single", "expansion": 2 * e}, {}),
                (f"Bi-PIL concat, 2 × {e}·C", {"fusion": "concat"}, {}),
                (f"Bi-PIL add, {e}·C", {"fusion": "add"}, {})]
    if study == "lambda":
        return [(f"λ = {lam}" if lam == "gcv" else f"λ = {lam:g} (relative)", {}, {"lam": lam}) for lam in cfg.lams]
    if study == "expansion":
        return [(f"expansion {x}×", {"expansion": x}, {}) for x in cfg.expansions]
    if study == "design":
        return [("default: shift + bag-of-words attention, ridge head with unigram mixture", {}, {}),
                ("random attention (seeded q, k, v) instead of shift heads", {}, {"attention": "random"}),
                ("Gaussian discriminant (LDA) head instead of ridge", {}, {"head": "lda"}),
                ("FFNs switched off (λ = 1e12 makes every solved FFN ≈ 0): attention + head only", {},
                 {"lam": 1e12})]
    raise ValueError(f"unknown study {study!r}")


def run_ablate_lm(cfg: LMAblationConfig, command: str = "pilearn ablate lm") -> dict:
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("ablate-lm")
    out.mkdir(parents=True, exist_ok=True)
    b = cfg.bench
    corpus = load_corpus(b)
    results: dict[str, Any] = {"suite": "ablate-lm", "command": command, "config": asdict(cfg),
                               "environment": environment(cfg.device),
                               "data": {"dataset": b.dataset, "level": corpus.level, "vocab_size": corpus.vocab_size,
                                        "train_tokens": len(corpus.train), "valid_tokens": len(corpus.valid),
                                        "test_tokens": len(corpus.test)}, "rows": []}
    done: dict[str, dict[str, Any]] = {}  # the default appears in several studies: fit it once
    for study in cfg.studies:
        for label, mkw, fkw in _variants(study, cfg):
            key = json.dumps([sorted(mkw.items()), sorted(fkw.items())], default=str)
            key = key if (mkw or fkw) and not (mkw == {"fusion": b.fusion} or fkw == {"lam": b.lam}
                                               or mkw == {"expansion": b.expansion}) else "default"
            if key in done:
                results["rows"].append({**done[key], "study": study, "variant": label, "reused": True})
                write_results(out, results)
                continue
            torch.manual_seed(cfg.seed)
            model = PILLM(model_config(b, corpus.vocab_size, ffn="pil", tie_weights=False, **mkw)).to(cfg.device)
            fcfg = PILFitConfig(**{"lam": b.lam, "head_lam": b.head_lam, "seed": cfg.seed, **fkw})
            _progress(f"ablate {study}: {label}")
            with Stopwatch(cfg.device) as sw:
                rep = fit_pil(model, corpus.train, valid_ids=corpus.valid[: b.eval_tokens], config=fcfg)
            v, t = evaluate(model, corpus.valid), evaluate(model, corpus.test)
            results["rows"].append({"study": study, "variant": label, "fit_seconds": sw.seconds,
                                    "params": model.n_params(), "ffn_width": model.h[0].mlp.width,
                                    "valid_ppl": v.perplexity, "test_ppl": t.perplexity, "test_accuracy": t.accuracy,
                                    "lam_relative": [L["lam_relative"] for L in rep.layers],
                                    "condition": [L["condition"] for L in rep.layers],
                                    "solve_method": [L["method"] for L in rep.layers],
                                    "head": rep.head["choice"]})
            done[key] = results["rows"][-1]
            write_results(out, results)
    render_ablation(out)
    _progress(f"wrote {out / 'results.json'} and results.md")
    return results


def render_ablation(out: Path) -> None:
    results = json.loads((out / "results.json").read_text())
    d, env = results["data"], results["environment"]
    lines = [f"# `{results['command']}`", "",
             f"PIL-LM (pure) on {d['dataset']} ({d['train_tokens']:,} training tokens; valid {d['valid_tokens']:,}, "
             f"test {d['test_tokens']:,}). Machine: {env.get('cpu', '?')}, revision {env.get('git_revision')}.", ""]
    cols = [("variant", "variant"), ("params", "params"), ("ffn_width", "FFN width"), ("fit_seconds", "fit (s)"),
            ("valid_ppl", "valid PPL"), ("test_ppl", "test PPL"), ("test_accuracy", "test top-1"),
            ("head", "head chosen")]
    for study in dict.fromkeys(r["study"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["study"] == study]
        extra = ""
        if study == "lambda":
            rows = [{**r, "head": f"{r['head']}; cond {max(r['condition']):.2g}; "
                                  f"{'/'.join(sorted(set(r['solve_method'])))}; rel λ {r['lam_relative'][0]:g}"}
                    for r in rows]
        lines += [f"## {study}{extra}", "", markdown_table(rows, cols), ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------- LAMBADA (seed 001 §4.3)
def eval_lambada(model_path: Path, data_path: Path, *, limit: int | None = None) -> dict[str, Any]:
    """Last-word accuracy of a saved word-level PIL-LM on LAMBADA (greedy: the argmax must be the word).

    The context is tokenized with the model's vocabulary (lower-cased when the vocabulary has no capitals, as
    PTB's), cropped to the last ``block_size`` tokens; a target word outside the vocabulary counts as a miss.
    """
    from ..data import Vocab, load_lambada
    from ..lm import load_lm

    model, vocab_d = load_lm(model_path)
    if vocab_d is None:
        raise ValueError(f"{model_path} carries no vocabulary; save it with save_lm(..., vocab=Vocab.to_dict())")
    vocab = Vocab.from_dict(vocab_d)
    # PTB's vocabulary is lower case but for the one-letter number token "N": look at longer words only
    lower = not any(w != w.lower() for w in vocab.itos if len(w) > 1 and not w.startswith("<"))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    examples = load_lambada(data_path)[:limit]
    T = model.config.block_size
    hits = in_vocab = 0
    with torch.no_grad():
        for context, target in examples:
            if lower:
                context, target = context.lower(), target.lower()
            ids = vocab.encode(context.split())[-T:]
            if len(ids) == 0:
                continue
            pred = int(model(torch.from_numpy(ids)[None])[0, -1].argmax())
            known = target in vocab.stoi
            in_vocab += known
            hits += known and pred == vocab.stoi[target]
    n = len(examples)
    return {"model": str(model_path), "data": str(data_path), "examples": n, "accuracy": hits / n if n else float("nan"),
            "target_in_vocab": in_vocab / n if n else float("nan"),
            "accuracy_in_vocab": hits / in_vocab if in_vocab else float("nan")}
