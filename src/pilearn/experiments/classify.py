"""``pilearn bench classify``: PIL classifiers against the gradient-trained and kernel baselines.

For each dataset (MNIST, Fashion-MNIST), in one process and on the same split:

* PIL with dense random features at several widths; PIL on random convolutional features;
* the seed notes' Bi-PIL fusion (concat / add / single) at one total width;
* Deep PIL (stacked PIL auto-encoders) and the published Bi-PIL (forward network, closed-form backward
  twin, fused), with the twin alone and the forward network alone as ablation rows of the same fit,
  on the pixels and on the random convolutional front-end;
* an MLP of the same shape as the widest dense PIL network trained with AdamW, time-matched to
  that PIL fit and to convergence (early stopping on a validation split);
* scikit-learn ``Nystroem`` and ``RBFSampler`` + ``RidgeCV``; ``hpelm`` if it imports.

Columns: test accuracy, fit time, peak memory above the loaded data, λ chosen. On the first
dataset it also measures the Gram floor (the fastest HᵀH of the widest dense network's features)
and the peak memory of that streaming fit at several N.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from ..data import load_dataset
from ..estimators import BiPILClassifier, PILClassifier
from ._baselines import gram_floor, hpelm_available, hpelm_baseline, kernel_ridge_baseline, train_mlp
from ._results import PeakMemory, Stopwatch, default_out_dir, environment, markdown_table, write_results

__all__ = ["ClassifyConfig", "SCALES", "run_classify"]

log = logging.getLogger(__name__)

Scale = Literal["smoke", "small", "full"]


@dataclass
class ClassifyConfig:
    """One run of the classify suite. ``scale`` picks the sizes below; fields override them."""

    scale: Scale = "small"
    datasets: tuple[str, ...] = ("mnist", "fashion-mnist")
    n_train: int | None = None  # None: the whole training split
    n_test: int | None = None
    widths: tuple[int, ...] = (1024, 2048, 4096)
    bipil_width: int = 2048
    conv: bool = True
    deep: bool = True
    deep_layers: tuple[int, ...] = (2000, 1500, 500)
    deep_fusion_hidden: tuple[int, ...] = (0, 4000)
    deep_conv_layers: tuple[int, ...] = (2000,)
    deep_conv_fusion_hidden: tuple[int, ...] = (0,)  # a hidden fusion head over d = 4,000 would break 5 minutes
    groups: tuple[str, ...] | None = None  # None: every group of GROUPS
    mlp_max_epochs: int = 15
    kernel_components: int = 2048
    hpelm: bool = True
    memory_scan: tuple[int, ...] = (6000, 60000)
    batch_size: int = 4096
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None


SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(n_train=2000, n_test=1000, widths=(256, 512), bipil_width=256, mlp_max_epochs=2,
                  deep_layers=(128, 64), deep_fusion_hidden=(0, 256), deep_conv_layers=(128,),
                  deep_conv_fusion_hidden=(0, 256),
                  kernel_components=256, memory_scan=(500, 2000), batch_size=512),
    "small": {},
    "full": dict(widths=(1024, 2048, 4096, 8192, 16384), bipil_width=4096, mlp_max_epochs=30,
                 kernel_components=8192, memory_scan=(6000, 60000)),
}


#: row groups a run may be limited to (``--only``); "floor" (Gram floor and memory scan) needs "dense"
GROUPS = ("dense", "conv", "bipil-seed", "deep", "mlp", "kernel", "hpelm", "floor")


def make_config(scale: Scale = "small", **overrides: Any) -> ClassifyConfig:
    """The config of a scale, with ``overrides`` (unknown keys raise ``TypeError``)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    cfg = replace(ClassifyConfig(scale=scale), **{**SCALES[scale], **overrides})
    if cfg.groups is not None:
        unknown = sorted(set(cfg.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"groups must be among {GROUPS}, got unknown {unknown}")
        if "floor" in cfg.groups and "dense" not in cfg.groups:
            raise ValueError("group 'floor' measures the widest dense fit: add group 'dense'")
    return cfg


def _on(cfg: ClassifyConfig, group: str) -> bool:
    return cfg.groups is None or group in cfg.groups


def _load(name: str, cfg: ClassifyConfig) -> tuple[np.ndarray, ...]:
    X, y = load_dataset(name, "train")
    Xt, yt = load_dataset(name, "test")
    if cfg.n_train is not None:
        X, y = X[: cfg.n_train], y[: cfg.n_train]
    if cfg.n_test is not None:
        Xt, yt = Xt[: cfg.n_test], yt[: cfg.n_test]
    image_shape = tuple(X.shape[1:])
    return X.reshape(len(X), -1), y, Xt.reshape(len(Xt), -1), yt, image_shape


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _fit_pil(cfg: ClassifyConfig, X, y, Xt, yt, **params: Any) -> tuple[dict, PILClassifier]:
    clf = PILClassifier(random_state=cfg.seed, batch_size=cfg.batch_size, device=cfg.device, **params)
    with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
        clf.fit(X, y)
    acc = float(clf.score(Xt, yt))
    row = {"accuracy": acc, "fit_seconds": sw.seconds, "peak_mb": mem.peak_mb, "lam": clf.lam_,
           "d": clf.feature_map_.out_features, "n_params_solved": int(clf.coef_.size)}
    return row, clf


def _measured(fn: Callable[[], dict]) -> dict:
    with PeakMemory() as mem:
        row = fn()
    row["peak_mb"] = mem.peak_mb
    return row


def _dataset_rows(name: str, cfg: ClassifyConfig) -> tuple[list[dict], dict]:
    X, y, Xt, yt, image_shape = _load(name, cfg)
    rows: list[dict] = []
    extra: dict[str, Any] = {"n_train": len(X), "n_test": len(Xt), "image_shape": list(image_shape)}

    def add(method: str, family: str, row: dict, **info: Any) -> None:
        row = {"dataset": name, "method": method, "family": family, **row, **info}
        rows.append(row)
        _progress(f"{name}: {method}: acc {row['accuracy']:.4f}, fit {row['fit_seconds']:.1f}s")

    # warm-up: first calls into MKL/OpenBLAS pay their thread start-up
    PILClassifier(n_hidden=64, random_state=0).fit(X[:512], y[:512])

    widest = max(cfg.widths)
    widest_clf = widest_row = None
    if _on(cfg, "dense"):
        for w in cfg.widths:
            row, clf = _fit_pil(cfg, X, y, Xt, yt, n_hidden=w, features="dense")
            add(f"PIL dense d={w} (λ by GCV)", "PIL", row)
            if w == widest:
                widest_clf, widest_row = clf, row
    if cfg.conv and _on(cfg, "conv"):
        row, _ = _fit_pil(cfg, X, y, Xt, yt, features="conv", image_shape=image_shape, lam="holdout")
        add(f"PIL random-conv d={row['d']} (λ by hold-out)", "PIL", row)
    if _on(cfg, "bipil-seed"):
        for fusion in ("concat", "add", "single"):
            row, _ = _fit_pil(cfg, X, y, Xt, yt, n_hidden=cfg.bipil_width, features="bipil", fusion=fusion)
            add(f"Bi-PIL (seed notes) {fusion}, total width {row['d']}", "Bi-PIL ablation", row, fusion=fusion)
    if cfg.deep and _on(cfg, "deep"):
        _deep_rows(cfg, X, y, Xt, yt, add, "pixels", "standardize", cfg.deep_layers, cfg.deep_fusion_hidden)
        if cfg.conv:
            _deep_rows(cfg, X, y, Xt, yt, add, "random-conv", "conv", cfg.deep_conv_layers,
                       cfg.deep_conv_fusion_hidden)

    n_params = X.shape[1] * widest + widest + widest * 10 + 10
    if _on(cfg, "mlp"):
        if widest_row is not None:
            budget = widest_row["fit_seconds"]
            r = _measured(lambda: asdict(train_mlp(X, y, Xt, yt, n_hidden=widest, time_budget=budget, seed=cfg.seed)))
            add(f"MLP {X.shape[1]}-{widest}-10 AdamW, time-matched", "gradient", _mlp_row(r), n_params=n_params,
                epochs=r["epochs"])
        r = _measured(lambda: asdict(train_mlp(X, y, Xt, yt, n_hidden=widest, max_epochs=cfg.mlp_max_epochs,
                                               seed=cfg.seed)))
        add(f"MLP {X.shape[1]}-{widest}-10 AdamW, to convergence", "gradient", _mlp_row(r), n_params=n_params,
            epochs=r["epochs"], best_val_accuracy=r["best_val_accuracy"])
    if _on(cfg, "kernel"):
        for method in ("nystroem", "rbf_sampler"):
            r = _measured(lambda: kernel_ridge_baseline(X, y, Xt, yt, method=method,
                                                        n_components=cfg.kernel_components, seed=cfg.seed))
            label = "Nystroem" if method == "nystroem" else "RBFSampler"
            add(f"sklearn {label}({cfg.kernel_components}) + RidgeCV", "kernel", r, d=cfg.kernel_components)
    if _on(cfg, "hpelm"):
        if cfg.hpelm and hpelm_available():
            r = _measured(lambda: hpelm_baseline(X, y, Xt, yt, n_hidden=widest))
            add(f"hpelm ELM sigm d={widest}", "ELM library", r, d=widest)
        elif cfg.hpelm:
            extra["hpelm"] = "not installed"
    return rows, {"extra": extra, "widest_clf": widest_clf, "widest_row": widest_row, "X": X, "y": y}


def _deep_rows(cfg: ClassifyConfig, X, y, Xt, yt, add, label: str, features: str, layers: tuple[int, ...],
               fusion_hidden: tuple[int, ...]) -> None:
    """One Bi-PIL fit: the model as fitted (its output chosen on validation), and as ablation rows its
    forward network alone (= Deep PIL), its backward twin alone and its fusion classifier.

    The forward network of a Bi-PIL fit *is* the Deep PIL model (same seed, same selection), so the
    ablation rows come from one fit; the fit time of the Deep PIL row is the forward phase's share.
    """
    clf = BiPILClassifier(hidden_layers=layers, features=features, fusion_hidden=fusion_hidden,
                          random_state=cfg.seed, batch_size=cfg.batch_size, device=cfg.device)
    with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
        clf.fit(X, y)
    parts = clf.decision_parts(Xt)
    acc = {k: float((v.argmax(1) == np.searchsorted(clf.classes_, yt)).mean()) for k, v in parts.items()}
    sel = clf.selection_
    widths = "-".join(str(w) for w in sel["widths"])
    common = {"peak_mb": mem.peak_mb, "selection": sel}
    add(f"Deep PIL ({label}) {widths}, depth by validation", "Deep PIL",
        {"accuracy": acc["forward"], "fit_seconds": clf.timings_["forward"], "lam": clf.head_.lam,
         "d": int(sel["widths"][-1]), "peak_mb": mem.peak_mb}, val_accuracy=sel["forward_val_acc"])
    add(f"Bi-PIL backward twin alone ({label}), μ={clf.mu_:g}", "Bi-PIL ablation",
        {"accuracy": acc["backward"], "fit_seconds": clf.timings_["forward"] + clf.timings_["backward"],
         "lam": clf.backward_head_.lam, "d": int(sel["widths"][-1]), "peak_mb": mem.peak_mb},
        val_accuracy=sel["backward"]["val_acc"])
    l1, l2 = clf.fusion_pair_
    head = f"hidden {clf.fusion_width_}" if clf.fusion_width_ else "linear"
    add(f"Bi-PIL fusion classifier ({label}): fwd {l1} + bwd {l2}, {head} head", "Bi-PIL ablation",
        {"accuracy": acc["fused"], "fit_seconds": sw.seconds, "lam": clf.fusion_head_.lam,
         "d": int(clf.fusion_width_ or clf.fusion_mean_.numel()), "peak_mb": mem.peak_mb},
        val_accuracy=sel["fusion"]["val_acc"])
    add(f"Bi-PIL ({label}) {widths}, as fitted: output '{clf.output_}' chosen on validation", "Bi-PIL",
        {"accuracy": float(clf.score(Xt, yt)), "fit_seconds": sw.seconds, "lam": None, "d": None, **common},
        val_accuracy=sel["output"]["val_acc"][clf.output_], timings=clf.timings_,
        fusion_hidden_candidates=list(fusion_hidden))


def _mlp_row(r: dict) -> dict:
    return {"accuracy": r["accuracy"], "fit_seconds": r["seconds"], "peak_mb": r["peak_mb"], "lam": None}


def _gram_floor_check(cfg: ClassifyConfig, clf: PILClassifier, fit_row: dict, X: np.ndarray,
                      y: np.ndarray, repeats: int = 2) -> dict:
    """Time the widest fit against the fastest way to form its Gram matrix, on the same H.

    This VM is noisy, so both sides are the best of ``repeats`` runs (every sample is recorded), and
    the fits run before the 8·N·d-byte H of the floor measurement is allocated.
    """
    # the plain fit: features + statistics + one solve at the λ that GCV chose (no λ search)
    plain_times = []
    for _ in range(repeats):
        plain = PILClassifier(n_hidden=clf.n_hidden, lam=clf.lam_, random_state=cfg.seed,
                              batch_size=cfg.batch_size, device=cfg.device)
        with Stopwatch(cfg.device) as sw:
            plain.fit(X, y)
        plain_times.append(sw.seconds)
        del plain
    _progress("gram floor: forming H in float64 for the widest dense fit")
    with torch.no_grad():
        H64 = torch.cat([clf.feature_map_(torch.as_tensor(X[i : i + cfg.batch_size])).double()
                         for i in range(0, len(X), cfg.batch_size)])
    routes = gram_floor(H64, repeats=repeats)
    del H64
    best = min(plain_times)
    return {"n": len(X), "d": clf.feature_map_.out_features, "gram_seconds": routes, "repeats": repeats,
            "plain_fit_samples": plain_times, "plain_fit_seconds": best, "fit_over_floor": best / routes["floor"],
            "gcv_fit_seconds": fit_row["fit_seconds"], "gcv_fit_over_floor": fit_row["fit_seconds"] / routes["floor"]}


def _memory_scan(cfg: ClassifyConfig, X: np.ndarray, y: np.ndarray) -> list[dict]:
    """Peak memory of the widest dense streaming fit at several N: flat in N is the claim."""
    out = []
    for n in cfg.memory_scan:
        n = min(n, len(X))
        clf = PILClassifier(n_hidden=max(cfg.widths), random_state=cfg.seed, batch_size=cfg.batch_size,
                            device=cfg.device)
        with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
            clf.fit(X[:n], y[:n])
        out.append({"n": n, "peak_mb": mem.peak_mb, "fit_seconds": sw.seconds,
                    "theory_mb": (8 * clf.stats_.n_features**2 + 4 * cfg.batch_size * clf.stats_.n_features) / 2**20})
        _progress(f"memory scan: N={n}: peak {mem.peak_mb:.0f} MB")
    return out


COLUMNS = [("method", "method"), ("family", "family"), ("accuracy", "test acc"), ("fit_seconds", "fit s"),
           ("peak_mb", "peak MB"), ("lam", "λ"), ("d", "d")]


def render_markdown(results: dict) -> str:
    """The Markdown report of a results dict (tables only from results files)."""
    env = results["environment"]
    parts = [f"# classify benchmark ({results['config']['scale']})", "",
             f"Command: `{results['command']}`  ", f"Machine: {env['cpu']}, {env['cpu_count']} cores, "
             f"torch {env['torch']} ({env['torch_threads']} threads), device {env['device']}  ",
             f"Revision: {env['git_revision']}, {env['time_utc']}", ""]
    for ds in results["config"]["datasets"]:
        rows = [r for r in results["rows"] if r["dataset"] == ds]
        info = results["datasets"].get(ds, {})
        parts += [f"## {ds} (train {info.get('n_train')}, test {info.get('n_test')})", "",
                  markdown_table(rows, COLUMNS), ""]
    gf = results.get("gram_floor")
    if gf:
        gs = gf["gram_seconds"]
        parts += ["## Fit time against the Gram floor", "",
                  f"N = {gf['n']}, d = {gf['d']}, best of {gf.get('repeats', 1)} runs each. Forming HᵀH of the same H "
                  f"in float64: BLAS syrk {gs['syrk']:.2f} s, torch matmul {gs['matmul']:.2f} s; floor = "
                  f"{gs['floor']:.2f} s.", "",
                  f"- plain PIL fit (features + statistics + one Cholesky solve at a given λ): "
                  f"{gf['plain_fit_seconds']:.2f} s = **{gf['fit_over_floor']:.2f}× the floor**",
                  f"- the same fit with λ chosen by GCV (one d×d eigendecomposition): {gf['gcv_fit_seconds']:.2f} s = "
                  f"{gf['gcv_fit_over_floor']:.2f}× the floor", ""]
    ms = results.get("memory_scan")
    if ms:
        parts += ["## Peak memory of a streaming fit against N", "",
                  markdown_table(ms, [("n", "N"), ("peak_mb", "peak MB above data"), ("theory_mb", "8d² + batch·d·4 MB"),
                                      ("fit_seconds", "fit s")]), ""]
    return "\n".join(parts)


def plot(results: dict, path: Path) -> None:
    """Accuracy against fit time, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = results["config"]["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 5), squeeze=False)
    styles = {"PIL": ("o", "tab:red"), "Bi-PIL ablation": ("s", "tab:pink"), "Deep PIL": ("P", "tab:purple"),
              "Bi-PIL": ("*", "tab:brown"), "gradient": ("^", "tab:blue"),
              "kernel": ("D", "tab:green"), "ELM library": ("v", "tab:orange")}
    for ax, ds in zip(axes[0], datasets):
        for r in (r for r in results["rows"] if r["dataset"] == ds):
            marker, color = styles.get(r["family"], ("x", "black"))
            ax.scatter(r["fit_seconds"], 100 * r["accuracy"], marker=marker, color=color, label=r["family"])
            ax.annotate(r["method"], (r["fit_seconds"], 100 * r["accuracy"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("fit time (s, log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(ds)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def render(out: Path) -> None:
    """Rebuild ``results.md`` and ``accuracy_vs_time.png`` in ``out`` from its ``results.json``."""
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(render_markdown(results) + "\n")
    plot(results, out / "accuracy_vs_time.png")


def run_classify(cfg: ClassifyConfig, command: str = "pilearn bench classify") -> dict:
    """Run the suite, write ``results.json``, ``results.md`` and ``accuracy_vs_time.png``; return the results."""
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("classify")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    results: dict[str, Any] = {"suite": "classify", "command": command, "config": asdict(cfg),
                               "environment": environment(cfg.device), "rows": [], "datasets": {}}
    for i, ds in enumerate(cfg.datasets):
        _progress(f"dataset {ds}")
        rows, ctx = _dataset_rows(ds, cfg)
        results["rows"] += rows
        results["datasets"][ds] = ctx["extra"]
        if i == 0 and _on(cfg, "floor") and ctx["widest_clf"] is not None:
            results["gram_floor"] = _gram_floor_check(cfg, ctx["widest_clf"], ctx["widest_row"], ctx["X"],
                                                      ctx["y"])
            results["memory_scan"] = _memory_scan(cfg, ctx["X"], ctx["y"])
        del ctx
    results["total_seconds"] = time.perf_counter() - t0
    write_results(out, results)
    render(out)
    _progress(f"wrote {out / 'results.json'}, results.md, accuracy_vs_time.png")
    return results
