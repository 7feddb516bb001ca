"""``pilearn bench flow`` and ``pilearn ablate flow``: PIL flow matching against gradient flow matching.

Rows, per data set, all in one process on the same data:

* **PIL flow** (:class:`~pilearn.generative.PILFlowMatching`), fitted once in closed form.
* **gradient FM, MLP** and, for images, **gradient FM, U-Net** (torchcfm's loss and loop, AdamW): time-matched to
  the PIL fit (the same wall-clock budget), and trained to convergence (validation flow-matching loss with
  patience, capped at ``converge_seconds``; the row records which stopped it).
* **empirical optimum**: the exact velocity field of the training set (the memorization reference).

Quality: images: FD-LeNet (Fréchet distance in the 84-d features of a LeNet trained here on the same data set;
not FID), the class accuracy of conditional samples under that LeNet, and the nearest-training-image distance of
samples against that of test images; 2-D: exact W2 and RBF MMD² against fresh data. Also fit time, sampling time,
number of function evaluations (NFE), and peak memory.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..data import TOY_2D_NAMES, load_dataset, make_toy_2d
from ..generative import EmpiricalVelocityField, PILFlowMatching, integrate
from ..metrics import class_accuracy, fd_lenet, lenet_for, memorization_report, mmd_rbf, wasserstein2
from ._generative_baselines import ConvVelocity, MLPVelocity, model_velocity, train_flow_matching
from ._results import PeakMemory, Stopwatch, default_out_dir, environment, markdown_table, write_results

Scale = Literal["smoke", "small", "full"]
GROUPS = ("pil", "mlp", "conv", "empirical")
IMAGE_DATASETS = ("digits", "mnist", "fashion-mnist")


@dataclass
class FlowConfig:
    """One run of the flow suite. ``scale`` picks the sizes below; fields override them."""

    scale: Scale = "small"
    # 2-D toys (pilearn.data.TOY_2D_NAMES) and image data sets (digits, mnist, fashion-mnist), run in this order
    datasets: tuple[str, ...] = ("8gaussians", "moons", "checkerboard", "mnist")
    n_toy: int = 20000
    n_train: int | None = None  # None: the whole training split
    n_samples: int = 2000  # samples per model for every metric
    n_reference: int = 10000  # test images the FD compares against
    # PIL flow on images
    width: int = 1024
    time_buckets: int = 4
    draws: int = 2
    # PIL flow on 2-D toys: low-dimensional data need a higher input scale (spatial frequency) than images
    toy_width: int = 512
    toy_time_buckets: int = 8
    toy_draws: int = 2
    toy_input_scale: float = 3.0
    method: str = "heun"
    steps: int = 25  # NFE 50 with Heun; `pilearn ablate flow --study steps` shows what more steps buy
    # gradient baselines
    mlp_hidden: int = 512
    mlp_depth: int = 3
    toy_mlp_hidden: int = 256
    conv_channels: tuple[int, ...] = (16, 32)  # (32, 64) trains at ~0.4 steps/s on 2 cores: no use on a CPU budget
    converge_seconds: float = 300.0  # cap of a "to convergence" run
    toy_converge_seconds: float = 60.0
    toy_time_multiple: float = 10.0  # the bar: PIL's W2 against the gradient MLP given this × PIL's time
    patience: int = 5
    lenet_epochs: int = 3
    empirical_samples: int = 500
    groups: tuple[str, ...] | None = None
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None


SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(datasets=("8gaussians", "digits"), n_toy=1000, n_samples=300, n_reference=450,
                  width=64, time_buckets=2, draws=1, toy_width=32, toy_time_buckets=2, toy_draws=1, steps=5,
                  mlp_hidden=32, mlp_depth=2, toy_mlp_hidden=32, conv_channels=(4, 8), converge_seconds=1.0,
                  toy_converge_seconds=1.0, toy_time_multiple=2.0, patience=2, lenet_epochs=15,
                  empirical_samples=50),
    "small": {},
    "full": dict(datasets=("8gaussians", "moons", "checkerboard", "mnist", "fashion-mnist"), width=2048, n_samples=10000, steps=50,
                 conv_channels=(32, 64), converge_seconds=3600.0, toy_converge_seconds=600.0, empirical_samples=2000),
}


def make_config(scale: Scale = "small", **overrides: Any) -> FlowConfig:
    """The config of a scale, with ``overrides`` (unknown keys raise ``TypeError``)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    cfg = replace(FlowConfig(scale=scale), **{**SCALES[scale], **overrides})
    if cfg.groups is not None:
        unknown = sorted(set(cfg.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"groups must be among {GROUPS}, got unknown {unknown}")
    unknown = sorted(set(cfg.datasets) - set(TOY_2D_NAMES) - set(IMAGE_DATASETS))
    if unknown:
        raise ValueError(f"datasets must be among {TOY_2D_NAMES + IMAGE_DATASETS}, got unknown {unknown}")
    return cfg


def _on(cfg: FlowConfig, group: str) -> bool:
    return cfg.groups is None or group in cfg.groups


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- images
def _load_images(name: str, cfg: FlowConfig):
    X, y = load_dataset(name, "train")
    Xt, yt = load_dataset(name, "test")
    if cfg.n_train is not None:
        X, y = X[: cfg.n_train], y[: cfg.n_train]
    shape = tuple(int(v) for v in X.shape[1:])  # (C, H, W)
    return X.reshape(len(X), -1).astype(np.float32), y, Xt.reshape(len(Xt), -1).astype(np.float32), yt, shape


def _image_metrics(x: torch.Tensor, req: np.ndarray, net, X01: np.ndarray, Xt01: np.ndarray, cfg: FlowConfig) -> dict:
    """Metrics of samples ``x`` in the model's [−1, 1] scale, mapped to [0, 1] pixels and clipped."""
    img = ((x.float() + 1) / 2).clamp(0, 1)
    ref = torch.from_numpy(Xt01[: cfg.n_reference])
    mem = memorization_report(img, X01, Xt01, n=min(len(img), 1000), seed=cfg.seed)
    return {"fd_lenet": fd_lenet(img, ref, net), "class_accuracy": class_accuracy(img, req, net),
            "nn_ratio": mem["ratio"], "near_copy_fraction": mem["near_copy_fraction"],
            "median_nn_train": mem["median_samples_to_train"], "median_test_nn_train": mem["median_test_to_train"]}


def _evaluate_images(x: torch.Tensor | None, req: np.ndarray, shape: tuple[int, ...], png: Path, ctx) -> dict:
    """The image metrics and the sample grid of ``x`` (nothing for a sampler that diverged)."""
    if x is None:
        return {}
    net, X01, Xt01, cfg, n_classes = ctx
    _grid_png(x, shape, png, n_classes)
    return _image_metrics(x, req, net, X01, Xt01, cfg)


def _grid_png(x: torch.Tensor, shape: tuple[int, ...], path: Path, n_classes: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, h, w = shape
    r = max(1, min(10, len(x) // n_classes))  # rows of the grid; column j holds class j (samples asked as i % C)
    img = ((x[: n_classes * r].float() + 1) / 2).clamp(0, 1).reshape(r, n_classes, h, w)
    grid = img.permute(0, 2, 1, 3).reshape(r * h, n_classes * w).numpy()
    plt.imsave(path, grid, cmap="gray", vmin=0, vmax=1)


def _sample_rows(label: str, field, x0: torch.Tensor, cfg: FlowConfig, **ode: Any
                 ) -> tuple[torch.Tensor | None, dict]:
    """Integrate ``field`` from ``x0``: (samples, timing row). A field that blows up (NaN/inf velocity) gives
    ``None`` and the sampler's message in ``sample_error``: the row is reported as diverged, the run goes on."""
    res, info = _integrate_safely(label, field, x0, cfg, **ode)
    return (None if res is None else res.x), info


def _integrate_safely(label: str, field, x0: torch.Tensor, cfg: FlowConfig, **ode: Any) -> tuple[Any, dict]:
    """:func:`integrate` with t clamped to [0, 1]; a diverging field gives ``(None, {..., "sample_error"})``."""
    method, steps = ode.pop("method", cfg.method), ode.pop("steps", cfg.steps)
    clamped = lambda x, t: field(x, t.clamp(0.0, 1.0))  # noqa: E731  (dopri5 probes a hair past t = 1)
    info: dict[str, Any] = {"ode": f"{method}/{steps}" if method != "dopri5" else "dopri5"}
    with Stopwatch(cfg.device) as sw:
        try:
            res = integrate(clamped, x0, method=method, steps=steps, **ode)
        except ValueError as err:
            if "velocity returned" not in str(err):
                raise
            _progress(f"{label}: sampling diverged: {err}")
            return None, {**info, "sample_error": str(err)}
    return res, {**info, "sample_seconds": sw.seconds, "nfe": res.nfe}


def _pil_params(cfg: FlowConfig, toy: bool) -> dict:
    if toy:
        return dict(width=cfg.toy_width, time_buckets=cfg.toy_time_buckets, draws=cfg.toy_draws,
                    input_scale=cfg.toy_input_scale)
    return dict(width=cfg.width, time_buckets=cfg.time_buckets, draws=cfg.draws)


def _fit_pil(cfg: FlowConfig, X, y, **params: Any) -> tuple[PILFlowMatching, dict]:
    model = PILFlowMatching(random_state=cfg.seed, device=cfg.device, **params)
    with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
        model.fit(X, y)
    rels = [h.lam_relative for h in model.heads_.values() if h.lam_relative is not None]
    return model, {"fit_seconds": sw.seconds, "peak_mb": mem.peak_mb, "n_heads": len(model.heads_),
                   "n_draws": model.n_draws_, "lam_relative_median": float(np.median(rels)) if rels else None,
                   "params": {k: v for k, v in model.get_params().items() if k in params}}


def _fit_gradient(cfg: FlowConfig, net: torch.nn.Module, X, y, *, budget: float | None, converge_cap: float,
                  lr: float) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(cfg.seed)
    kw: dict[str, Any] = dict(lr=lr, seed=cfg.seed, device=cfg.device)
    if budget is not None:
        kw.update(time_budget=budget)
    else:
        kw.update(time_budget=converge_cap, epochs=10_000, val_fraction=0.05, patience=cfg.patience)
    with PeakMemory(device=cfg.device) as mem:
        res = train_flow_matching(net, X, y, **kw)
    return res.model, {"fit_seconds": res.seconds, "peak_mb": mem.peak_mb, "steps": res.steps,
                       "epochs": res.epochs, "n_params": res.n_params, "stop": res.stop_reason,
                       "final_train_loss": res.final_train_loss, "best_val_loss": res.best_val_loss}


def _image_rows(name: str, cfg: FlowConfig, out: Path) -> tuple[list[dict], dict]:
    X01, y, Xt01, yt, shape = _load_images(name, cfg)
    X = X01 * 2 - 1  # the model scale: [−1, 1]
    n_classes = int(y.max()) + 1
    _progress(f"{name}: LeNet for FD-LeNet ({cfg.lenet_epochs} epochs)")
    # the cache key names the data set, so the LeNet always sees the whole training split (not the n_train cut)
    X_all, y_all = (X01, y) if cfg.n_train is None else _load_images(name, replace(cfg, n_train=None))[:2]
    net = lenet_for(name, X_all, y_all, in_shape=shape, seed=cfg.seed, epochs=cfg.lenet_epochs)
    lenet_acc = class_accuracy(torch.from_numpy(Xt01), yt, net)
    req = np.arange(cfg.n_samples) % n_classes
    x0 = torch.randn(cfg.n_samples, X.shape[1], generator=torch.Generator().manual_seed(cfg.seed + 1))
    ctx = (net, X01, Xt01, cfg, n_classes)
    rows: list[dict] = []
    base = {"dataset": name}
    # training images themselves: the floor FD-LeNet and class accuracy are read against (their NN ratio is 0
    # by construction, so it is not reported)
    pick = np.random.default_rng(cfg.seed).permutation(len(X))[: cfg.n_samples]
    real = _image_metrics(torch.from_numpy(X[pick]), y[pick], net, X01, Xt01, cfg)
    rows.append({**base, "method": "training images (reference)", "family": "data", "fd_lenet": real["fd_lenet"],
                 "class_accuracy": real["class_accuracy"]})
    pil_seconds = None
    if _on(cfg, "pil"):
        _progress(f"{name}: PIL flow fit")
        model, info = _fit_pil(cfg, X, y, **_pil_params(cfg, toy=False))
        pil_seconds = info["fit_seconds"]
        x, s = _sample_rows("pil", lambda x, t: model.velocity(x, t, req), x0, cfg)
        rows.append({**base, "method": f"PIL flow (width {cfg.width}, K={cfg.time_buckets})", "family": "PIL",
                     **info, **s, **_evaluate_images(x, req, shape, out / f"{name}_pil.png", ctx)})
        _progress(f"{name}: PIL flow done ({pil_seconds:.0f} s): FD-LeNet {rows[-1].get('fd_lenet')}")
    dim = X.shape[1]
    nets = []
    if _on(cfg, "mlp"):
        nets.append(("MLP", lambda: MLPVelocity(dim, hidden=cfg.mlp_hidden, depth=cfg.mlp_depth,
                                                n_classes=n_classes), 1e-3))
    if _on(cfg, "conv"):
        nets.append(("U-Net", lambda: ConvVelocity(shape, channels=cfg.conv_channels, n_classes=n_classes), 2e-3))
    for arch, make, lr in nets:
        for regime, budget in (("time-matched", pil_seconds), ("converged", None)):
            if regime == "time-matched" and budget is None:
                continue
            _progress(f"{name}: gradient FM {arch}, {regime}")
            torch.manual_seed(cfg.seed)
            trained, info = _fit_gradient(cfg, make(), X, y, budget=budget, converge_cap=cfg.converge_seconds, lr=lr)
            x, s = _sample_rows(arch, model_velocity(trained, torch.from_numpy(req)), x0, cfg)
            rows.append({**base, "method": f"gradient FM {arch} ({regime})", "family": "gradient", **info, **s,
                         **_evaluate_images(x, req, shape, out / f"{name}_{arch}-{regime}.png", ctx)})
    if _on(cfg, "empirical"):
        _progress(f"{name}: empirical optimal field ({cfg.empirical_samples} samples)")
        field = EmpiricalVelocityField(X, y)
        m = cfg.empirical_samples
        x, s = _sample_rows("emp", lambda x, t: field.velocity(x, t, req[:m]), x0[:m], cfg)
        rows.append({**base, "method": "empirical optimum (memorizes)", "family": "reference", "fit_seconds": 0.0,
                     **s, **_evaluate_images(x, req[:m], shape, out / f"{name}_empirical.png", ctx)})
    return rows, {"n_train": len(X), "n_test": len(Xt01), "lenet_test_accuracy": lenet_acc, "image_shape": shape}


# ---------------------------------------------------------------------- 2-D toys
def _toy_metrics(x: torch.Tensor, fresh: np.ndarray) -> dict:
    return {"w2": wasserstein2(x, fresh), "mmd2": mmd_rbf(x, fresh)}


def _toy_rows(name: str, cfg: FlowConfig, out: Path) -> list[dict]:
    X = make_toy_2d(name, cfg.n_toy, seed=cfg.seed)
    n_eval = min(cfg.n_samples, 2000)
    fresh = make_toy_2d(name, n_eval, seed=cfg.seed + 1000)
    x0 = torch.randn(n_eval, 2, generator=torch.Generator().manual_seed(cfg.seed + 1))
    rows: list[dict] = [{"dataset": name, "method": "fresh data (reference)", "family": "data",
                         **_toy_metrics(torch.from_numpy(make_toy_2d(name, n_eval, seed=cfg.seed + 2000)), fresh)}]
    plots: dict[str, np.ndarray] = {}
    pil_seconds = None
    if _on(cfg, "pil"):
        model, info = _fit_pil(cfg, X, None, **_pil_params(cfg, toy=True))
        pil_seconds = info["fit_seconds"]
        res, s = _integrate_safely("pil", lambda x, t: model.velocity(x, t), x0, cfg, return_trajectory=True,
                                   trajectory_points=min(11, cfg.steps + 1))
        if res is not None:
            plots["PIL flow"] = res.x.numpy()
            _trajectory_png(res.trajectory.numpy(), out / f"{name}_pil_trajectories.png", name)
        rows.append({"dataset": name, "method": f"PIL flow (width {cfg.toy_width}, K={cfg.toy_time_buckets}, "
                                                f"input scale {cfg.toy_input_scale:g})",
                     "family": "PIL", **info, **s, **({} if res is None else _toy_metrics(res.x, fresh))})
    if _on(cfg, "mlp"):
        multiple = f"{cfg.toy_time_multiple:g}x PIL time"
        for regime, budget in (("time-matched", pil_seconds), (multiple, None if pil_seconds is None
                                                               else cfg.toy_time_multiple * pil_seconds),
                               ("converged", None)):
            if regime != "converged" and budget is None:
                continue
            torch.manual_seed(cfg.seed)
            trained, info = _fit_gradient(cfg, MLPVelocity(2, hidden=cfg.toy_mlp_hidden, depth=3), X, None,
                                          budget=budget, converge_cap=cfg.toy_converge_seconds, lr=1e-3)
            x, s = _sample_rows("mlp", model_velocity(trained), x0, cfg)
            if x is not None:
                plots[f"gradient MLP ({regime})"] = x.numpy()
            rows.append({"dataset": name, "method": f"gradient FM MLP ({regime})", "family": "gradient", **info,
                         **s, **({} if x is None else _toy_metrics(x, fresh))})
    _scatter_png(X[:n_eval], plots, out / f"{name}_samples.png", name)
    return rows


def _trajectory_png(traj: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=2, c="tab:gray", alpha=0.4, label="t = 0 (noise)")
    for i in range(min(300, traj.shape[1])):
        ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.4, c="tab:olive", alpha=0.5)
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=2, c="tab:red", alpha=0.6, label="t = 1 (samples)")
    ax.set_title(f"PIL flow trajectories: {title}")
    ax.legend(fontsize=7, markerscale=4)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scatter_png(data: np.ndarray, plots: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"data": data, **plots}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    lim = np.abs(data).max() * 1.3
    for ax, (label, pts) in zip(axes[0], panels.items()):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(label, fontsize=8)
        ax.set_aspect("equal")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- report
IMAGE_COLUMNS = [("method", "method"), ("fit_seconds", "fit s"), ("fd_lenet", "FD-LeNet ↓"),
                 ("class_accuracy", "class acc ↑"), ("nn_ratio", "NN ratio (≥ 0.9)"),
                 ("near_copy_fraction", "near copies"), ("sample_seconds", "sample s"), ("nfe", "NFE"),
                 ("peak_mb", "peak MB"), ("stop", "stopped by"), ("sample_error", "sampling failed")]
TOY_COLUMNS = [("method", "method"), ("fit_seconds", "fit s"), ("w2", "W2 ↓"), ("mmd2", "MMD² ↓"),
               ("sample_seconds", "sample s"), ("nfe", "NFE"), ("peak_mb", "peak MB"), ("stop", "stopped by"),
               ("sample_error", "sampling failed")]


def render_markdown(results: dict) -> str:
    env = results["environment"]
    parts = [f"# flow benchmark ({results['config']['scale']})", "", f"Command: `{results['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} "
             f"threads), device {env['device']}  ", f"Revision: {env['git_revision']}, {env['time_utc']}", "",
             "FD-LeNet is the Fréchet distance in the features of a LeNet trained here on the same data set (not "
             "FID). NN ratio = median distance of samples to their nearest training image / the same for test "
             "images (≥ 0.9: new images, not copies). Samples are clipped to [0, 1] before every image metric.", ""]
    for ds, info in results["datasets"].items():
        rows = [r for r in results["rows"] if r["dataset"] == ds]
        cols = TOY_COLUMNS if "w2" in rows[0] else IMAGE_COLUMNS
        head = f"## {ds}"
        if "n_train" in info:
            head += (f" (train {info['n_train']}, LeNet test accuracy {100 * info['lenet_test_accuracy']:.2f} %)")
        parts += [head, "", markdown_table(rows, cols), ""]
    return "\n".join(parts)


def render(out: Path) -> None:
    """Rebuild ``results.md`` in ``out`` from its ``results.json``."""
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(render_markdown(results) + "\n")


def run_flow(cfg: FlowConfig, command: str = "pilearn bench flow") -> dict:
    """Run the suite; write ``results.json``, ``results.md``, sample grids and 2-D plots; return the results."""
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("flow")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"suite": "flow", "command": command, "config": asdict(cfg),
                               "environment": environment(cfg.device), "rows": [], "datasets": {}}
    for name in cfg.datasets:
        if name in TOY_2D_NAMES:
            _progress(f"toy {name}")
            results["rows"] += _toy_rows(name, cfg, out)
            results["datasets"][name] = {"n_toy": cfg.n_toy, "kind": "2-D"}
        else:
            rows, info = _image_rows(name, cfg, out)
            results["rows"] += rows
            results["datasets"][name] = info
        write_results(out, results)  # a later crash keeps what was measured
    results["total_seconds"] = time.perf_counter() - t0
    write_results(out, results)
    render(out)
    _progress(f"wrote {out / 'results.json'}, results.md and PNGs")
    return results


# ---------------------------------------------------------------------- ablations (seed 000 §2.5)
STUDIES = ("width", "fusion", "lambda", "time", "buckets", "conditioning", "layers", "steps")


@dataclass
class FlowAblationConfig:
    """``pilearn ablate flow``: one factor at a time around ``base`` on one image data set."""

    scale: Scale = "small"
    dataset: str = "mnist"
    n_train: int | None = 10000
    n_samples: int = 1000
    n_reference: int = 10000
    base: dict[str, Any] | None = None  # PILFlowMatching parameters every study starts from
    widths: tuple[int, ...] = (256, 512, 1024, 2048)
    lams: tuple[float | str, ...] = (1.0, 1e-3, 1e-4, 1e-5, 1e-6, "holdout")
    buckets: tuple[int, ...] = (1, 2, 4, 8)
    steps: tuple[int, ...] = (10, 50, 100, 500)
    step_methods: tuple[str, ...] = ("euler", "heun")
    method: str = "heun"
    n_steps: int = 25
    studies: tuple[str, ...] = STUDIES
    lenet_epochs: int = 3
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None


ABLATION_SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(dataset="digits", n_train=None, n_samples=300, n_reference=450, widths=(64, 128),
                  lams=(1e-3, "holdout"), buckets=(1, 2), steps=(5, 10), lenet_epochs=15,
                  base=dict(width=128, time_buckets=2, draws=1)),
    "small": {},
    "full": dict(n_train=None, n_samples=5000, widths=(256, 512, 1024, 2048, 4096)),
}
_ABLATION_BASE = dict(width=1024, time_buckets=4, draws=2)


def make_ablation_config(scale: Scale = "small", **overrides: Any) -> FlowAblationConfig:
    """The ablation config of a scale, with ``overrides`` (unknown keys raise ``TypeError``)."""
    if scale not in ABLATION_SCALES:
        raise ValueError(f"scale must be one of {tuple(ABLATION_SCALES)}, got {scale!r}")
    cfg = replace(FlowAblationConfig(scale=scale), **{**ABLATION_SCALES[scale], **overrides})
    unknown = sorted(set(cfg.studies) - set(STUDIES))
    if unknown:
        raise ValueError(f"studies must be among {STUDIES} (or 'all'), got unknown {unknown}")
    if cfg.dataset not in IMAGE_DATASETS:
        raise ValueError(f"dataset must be one of {IMAGE_DATASETS}, got {cfg.dataset!r}")
    return cfg


def _study_variants(study: str, cfg: FlowAblationConfig, base: dict) -> list[tuple[str, dict]]:
    w = base["width"]
    if study == "width":
        return [(f"width {v}", {"width": v}) for v in cfg.widths]
    if study == "fusion":  # Bi-PIL as the seed notes describe it, against one projection of equal total width
        return [(f"single, width {w}", {"fusion": "single", "width": w}),
                (f"concat, 2 × {w // 2}", {"fusion": "concat", "width": w // 2}),
                (f"add, 2 × {w} summed", {"fusion": "add", "width": w})]
    if study == "lambda":
        return [(f"λ = {v}" if v != "holdout" else "λ by hold-out", {"lam": v}) for v in cfg.lams]
    if study == "time":
        return [(f"time embedding {v}", {"time_embedding": v}) for v in ("sinusoidal", "fourier", "none")]
    if study == "buckets":
        return [(f"K = {v} time buckets", {"time_buckets": v}) for v in cfg.buckets]
    if study == "conditioning":
        return [(f"conditioning {v}", {"conditioning": v}) for v in ("separate", "features")]
    if study == "layers":
        return [(f"{v} layer(s)", {"num_layers": v}) for v in (1, 2)]
    raise ValueError(study)


def run_ablate_flow(cfg: FlowAblationConfig, command: str = "pilearn ablate flow") -> dict:
    """Fit one PIL flow per variant of each study; write ``results.json`` and ``results.md``."""
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("ablate-flow")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = {**_ABLATION_BASE, **(cfg.base or {})}
    icfg = FlowConfig(n_train=cfg.n_train, n_samples=cfg.n_samples, n_reference=cfg.n_reference,
                      method=cfg.method, steps=cfg.n_steps, seed=cfg.seed, device=cfg.device)
    X01, y, Xt01, _, shape = _load_images(cfg.dataset, icfg)
    X = X01 * 2 - 1
    net = lenet_for(cfg.dataset, *_load_images(cfg.dataset, replace(icfg, n_train=None))[:2],
                    in_shape=shape, seed=cfg.seed, epochs=cfg.lenet_epochs)
    req = np.arange(cfg.n_samples) % (int(y.max()) + 1)
    x0 = torch.randn(cfg.n_samples, X.shape[1], generator=torch.Generator().manual_seed(cfg.seed + 1))
    rows: list[dict] = []
    results = {"suite": "ablate-flow", "command": command, "config": asdict(cfg), "base": base,
               "environment": environment(cfg.device), "rows": rows, "datasets": {cfg.dataset: {"n_train": len(X)}}}
    for study in cfg.studies:
        write_results(out, results)  # a later crash keeps the studies done
        variants = [("base", {})] if study == "steps" else _study_variants(study, cfg, base)
        for label, change in variants:
            params = {**base, **change}
            _progress(f"ablate {study}: {label}")
            model, info = _fit_pil(icfg, X, y, **params)
            field = lambda x, t, model=model: model.velocity(x, t, req)  # noqa: E731
            if study != "steps":
                x, s = _sample_rows(study, field, x0, icfg)
                rows.append({"study": study, "variant": label, **info, **s,
                             **({} if x is None else _image_metrics(x, req, net, X01, Xt01, icfg))})
                continue
            for method in cfg.step_methods:
                for n_steps in cfg.steps:
                    x, s = _sample_rows(study, field, x0, icfg, method=method, steps=n_steps)
                    rows.append({"study": study, "variant": f"{method}, {n_steps} steps", **info, **s,
                                 **({} if x is None else _image_metrics(x, req, net, X01, Xt01, icfg))})
            x, s = _sample_rows(study, field, x0, icfg, method="dopri5", steps=1)
            rows.append({"study": study, "variant": "dopri5 (adaptive, rtol = atol = 1e-5)", **info, **s,
                         **({} if x is None else _image_metrics(x, req, net, X01, Xt01, icfg))})
    results["total_seconds"] = time.perf_counter() - t0
    write_results(out, results)
    render_ablation(out)
    _progress(f"wrote {out / 'results.json'} and results.md")
    return results


ABLATION_COLUMNS = [("variant", "variant"), ("fit_seconds", "fit s"), ("fd_lenet", "FD-LeNet ↓"),
                    ("class_accuracy", "class acc ↑"), ("nn_ratio", "NN ratio"), ("sample_seconds", "sample s"),
                    ("nfe", "NFE"), ("lam_relative_median", "λ/scale (median)"), ("sample_error", "sampling failed")]


def render_ablation(out: Path) -> None:
    """Rebuild ``results.md`` of an ablation folder from its ``results.json``."""
    results = json.loads((out / "results.json").read_text())
    env, cfg = results["environment"], results["config"]
    parts = [f"# flow ablations ({cfg['scale']}): {cfg['dataset']}, {results['datasets'][cfg['dataset']]['n_train']}"
             f" training images", "", f"Command: `{results['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, device {env['device']}  ",
             f"Revision: {env['git_revision']}, {env['time_utc']}  ",
             f"Base model: `PILFlowMatching({', '.join(f'{k}={v!r}' for k, v in results['base'].items())})`, "
             f"sampled with {cfg['method']}/{cfg['n_steps']} unless the study varies it; {cfg['n_samples']} "
             "class-conditional samples per row. (Peak memory is in results.json but not shown: every fit after "
             "the first reuses memory the process already holds, so its RSS increase is no measure.)", ""]
    for study in dict.fromkeys(r["study"] for r in results["rows"]):
        parts += [f"## {study}", "", markdown_table([r for r in results["rows"] if r["study"] == study],
                                                     ABLATION_COLUMNS), ""]
    (out / "results.md").write_text("\n".join(parts) + "\n")
