"""``pilearn bench diffusion`` and ``pilearn ablate diffusion``: PIL diffusion against gradient-trained DDPM.

Rows, per image data set, all in one process on the same data (seed ``000`` §1.5):

* **PIL diffusion** (:class:`~pilearn.generative.PILDiffusion`) in three time-sharing modes (§1.6 question 1):
  one read-out shared by all timesteps, one per bucket of timesteps (the default), one per timestep the sampler
  visits. Each is fitted once in closed form.
* **gradient DDPM, MLP** and **gradient DDPM, U-Net** (L_simple, AdamW): time-matched to the default PIL fit and
  trained to convergence (validation loss with patience, capped at ``converge_seconds``).
* **PIL flow** (:class:`~pilearn.generative.PILFlowMatching`) with the same features, cells and draws: the
  side-by-side of the two closed-form generative models on the same data and budget.
* **empirical optimum**: the exact denoiser of the training set (the memorization reference).

Every diffusion model is sampled by the same DDIM loop (η = 0, ``steps`` steps, x̂₀ not clipped: clipping x̂₀
while stepping with the unclipped ε̂ takes the trajectory off the probability-flow ODE — the PIL flow field run
through DDIM went from FD-LeNet 66 to 377 with clipping on in a development probe, and PIL diffusion from 54.9 to
601.9 in ``pilearn ablate diffusion --study steps``), from the same x_T. Quality: FD-LeNet (not FID), the class accuracy of conditional samples under
the LeNet, and the nearest-training-image ratio; also fit time, sampling time, NFE, peak memory and stored numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..generative import DDIMScheduler, EmpiricalDenoiser, PILDiffusion, PILFlowMatching, denoise
from ..metrics import class_accuracy, lenet_for
from ._generative_baselines import ConvVelocity, MLPVelocity, model_noise, train_ddpm
from ._results import PeakMemory, Stopwatch, default_out_dir, environment, markdown_table, write_results
from .flow import IMAGE_DATASETS, FlowConfig, _grid_png, _image_metrics, _load_images, _progress, _sample_rows

Scale = Literal["smoke", "small", "full"]
GROUPS = ("pil", "sharing", "flow", "mlp", "conv", "empirical")


@dataclass
class DiffusionConfig:
    """One run of the diffusion suite. ``scale`` picks the sizes below; fields override them."""

    scale: Scale = "small"
    datasets: tuple[str, ...] = ("mnist",)
    n_train: int | None = None  # None: the whole training split
    n_samples: int = 2000
    n_reference: int = 10000
    # PIL diffusion (the default row): dense Bi-PIL features, K buckets of timesteps, per-class heads
    width: int = 1024
    time_buckets: int = 4
    draws: int = 2
    features: str = "dense"
    prediction_type: str = "epsilon"
    beta_schedule: str = "linear"
    # the sharing rows: one shared read-out (given K × draws draws per point, the same total as the default),
    # and per-timestep heads at the sampler's timesteps (``per_timestep_steps`` DDIM steps, 1 draw each)
    per_timestep_steps: int = 10
    steps: int = 50  # DDIM steps (NFE) for every row
    # gradient baselines
    mlp_hidden: int = 512
    mlp_depth: int = 3
    conv_channels: tuple[int, ...] = (16, 32)
    converge_seconds: float = 300.0
    match_seconds: float | None = None  # the time-matched budget when the PIL row is not run (else its fit time)
    patience: int = 5
    lenet_epochs: int = 3
    empirical_samples: int = 500
    groups: tuple[str, ...] | None = None
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None


SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(datasets=("digits",), n_samples=300, n_reference=450, width=64, time_buckets=2, draws=1,
                  per_timestep_steps=5, steps=10, mlp_hidden=32, mlp_depth=2, conv_channels=(4, 8),
                  converge_seconds=1.0, patience=2, lenet_epochs=15, empirical_samples=50),
    "small": {},
    "full": dict(datasets=("mnist", "fashion-mnist"), width=2048, n_samples=10000, per_timestep_steps=25,
                 conv_channels=(32, 64), converge_seconds=3600.0, empirical_samples=2000),
}


def make_config(scale: Scale = "small", **overrides: Any) -> DiffusionConfig:
    """The config of a scale, with ``overrides`` (unknown keys raise ``TypeError``)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    cfg = replace(DiffusionConfig(scale=scale), **{**SCALES[scale], **overrides})
    if cfg.groups is not None:
        unknown = sorted(set(cfg.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"groups must be among {GROUPS}, got unknown {unknown}")
    unknown = sorted(set(cfg.datasets) - set(IMAGE_DATASETS))
    if unknown:
        raise ValueError(f"datasets must be among {IMAGE_DATASETS}, got unknown {unknown}")
    return cfg


def _on(cfg: DiffusionConfig, group: str) -> bool:
    return cfg.groups is None or group in cfg.groups


def _scheduler(prediction_type: str = "epsilon", beta_schedule: str = "linear") -> DDIMScheduler:
    """The DDIM every row is sampled with (x̂₀ not clipped; see the module docstring)."""
    return DDIMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=False)


def _denoise_safely(label: str, predict, sched, x_T: torch.Tensor, steps: int, seed: int, device: str,
                    eta: float = 0.0) -> tuple[torch.Tensor | None, dict]:
    """Run the sampler; a model that blows up gives ``(None, {"sample_error": …})`` and the run goes on."""
    info: dict[str, Any] = {"sampler": f"{type(sched).__name__[:4]} {steps}" + (f", η={eta:g}" if eta else "")}
    g = torch.Generator().manual_seed(seed)
    with Stopwatch(device) as sw:
        try:
            res = denoise(predict, sched, x_T, steps, generator=g, eta=eta)
        except FloatingPointError as err:
            _progress(f"{label}: sampling diverged: {err}")
            return None, {**info, "sample_error": str(err)}
    return res.x, {**info, "sample_seconds": sw.seconds, "nfe": res.nfe}


def _fit_pil(cfg: Any, X, y, cls=PILDiffusion, **params: Any) -> tuple[Any, dict]:
    model = cls(random_state=cfg.seed, device=cfg.device, **params)
    with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
        model.fit(X, y)
    rels = [h.lam_relative for h in model.heads_.values() if h.lam_relative is not None]
    return model, {"fit_seconds": sw.seconds, "peak_mb": mem.peak_mb, "n_heads": len(model.heads_),
                   "n_draws": model.n_draws_, "stored_numbers": model.n_stored_parameters(),
                   "lam_relative_median": float(np.median(rels)) if rels else None,
                   "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.get_params().items()
                              if k in params}}


def _fit_gradient(cfg: DiffusionConfig, net: torch.nn.Module, X, y, ab: torch.Tensor, *, budget: float | None,
                  lr: float) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(cfg.seed)
    kw: dict[str, Any] = dict(alphas_cumprod=ab, lr=lr, seed=cfg.seed, device=cfg.device)
    if budget is not None:
        kw.update(time_budget=budget)
    else:
        kw.update(time_budget=cfg.converge_seconds, epochs=10_000, val_fraction=0.05, patience=cfg.patience)
    with PeakMemory(device=cfg.device) as mem:
        res = train_ddpm(net, X, y, **kw)
    return res.model, {"fit_seconds": res.seconds, "peak_mb": mem.peak_mb, "steps": res.steps,
                       "epochs": res.epochs, "n_params": res.n_params, "stored_numbers": res.n_params,
                       "stop": res.stop_reason, "final_train_loss": res.final_train_loss,
                       "best_val_loss": res.best_val_loss}


def _pil_params(cfg: DiffusionConfig, shape: tuple[int, ...]) -> dict:
    return dict(width=cfg.width, time_buckets=cfg.time_buckets, draws=cfg.draws, features=cfg.features,
                prediction_type=cfg.prediction_type, beta_schedule=cfg.beta_schedule, image_shape=tuple(shape))


def _image_rows(name: str, cfg: DiffusionConfig, out: Path) -> tuple[list[dict], dict]:
    X01, y, Xt01, yt, shape = _load_images(name, cfg)
    X = X01 * 2 - 1  # DDPM's scale: [−1, 1]
    n_classes = int(y.max()) + 1
    X_all, y_all = (X01, y) if cfg.n_train is None else _load_images(name, replace(cfg, n_train=None))[:2]
    net = lenet_for(name, X_all, y_all, in_shape=shape, seed=cfg.seed, epochs=cfg.lenet_epochs)
    lenet_acc = class_accuracy(torch.from_numpy(Xt01), yt, net)
    req = np.arange(cfg.n_samples) % n_classes
    x_T = torch.randn(cfg.n_samples, X.shape[1], generator=torch.Generator().manual_seed(cfg.seed + 1))
    rows: list[dict] = []
    base = {"dataset": name}

    def evaluate(x: torch.Tensor | None, tag: str, labels: np.ndarray = req) -> dict:
        if x is None:
            return {}
        _grid_png(x, shape, out / f"{name}_{tag}.png", n_classes)
        return _image_metrics(x, labels, net, X01, Xt01, cfg)

    pick = np.random.default_rng(cfg.seed).permutation(len(X))[: cfg.n_samples]
    real = _image_metrics(torch.from_numpy(X[pick]), y[pick], net, X01, Xt01, cfg)
    rows.append({**base, "method": "training images (reference)", "family": "data", "fd_lenet": real["fd_lenet"],
                 "class_accuracy": real["class_accuracy"]})
    sched = _scheduler(cfg.prediction_type, cfg.beta_schedule)
    pil_seconds = cfg.match_seconds
    variants: list[tuple[str, str, dict, int]] = []
    if _on(cfg, "pil"):
        variants.append((f"PIL diffusion, K={cfg.time_buckets} buckets (width {cfg.width})", "pil",
                         _pil_params(cfg, shape), cfg.steps))
    if _on(cfg, "sharing"):
        variants.append(("PIL diffusion, one read-out shared by all t", "pil-shared",
                         {**_pil_params(cfg, shape), "time_buckets": 1, "draws": cfg.draws * cfg.time_buckets}, cfg.steps))
        s = _scheduler(cfg.prediction_type, cfg.beta_schedule)
        s.set_timesteps(cfg.per_timestep_steps)
        variants.append((f"PIL diffusion, per-timestep heads at the {cfg.per_timestep_steps} DDIM timesteps",
                         "pil-per-t", {**_pil_params(cfg, shape), "head_timesteps": tuple(s.timesteps.tolist()),
                                       "draws": 1}, cfg.per_timestep_steps))
    for label, tag, params, steps in variants:
        _progress(f"{name}: {label}: fit")
        model, info = _fit_pil(cfg, X, y, **params)
        if tag == "pil":
            pil_seconds = info["fit_seconds"]
        x, s = _denoise_safely(tag, lambda x, t, m=model: m(x, t, req), sched, x_T, steps, cfg.seed + 2, cfg.device)
        rows.append({**base, "method": label, "family": "PIL", **info, **s, **evaluate(x, tag)})
        _progress(f"{name}: {label}: {info['fit_seconds']:.0f} s, FD-LeNet {rows[-1].get('fd_lenet')}")
        del model
    if _on(cfg, "flow"):
        _progress(f"{name}: PIL flow, same features, cells and draws")
        fparams = dict(width=cfg.width, time_buckets=cfg.time_buckets, draws=cfg.draws)
        flow, info = _fit_pil(cfg, X, y, cls=PILFlowMatching, **fparams)
        fcfg = FlowConfig(method="heun", steps=cfg.steps // 2, device=cfg.device)
        x, s = _sample_rows("flow", lambda x, t: flow.velocity(x, t, req), x_T, fcfg)
        rows.append({**base, "method": f"PIL flow matching, K={cfg.time_buckets} (Heun, same NFE)",
                     "family": "PIL", **info, **s, **evaluate(x, "pil-flow")})
        del flow
    ab = sched.alphas_cumprod
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
            _progress(f"{name}: gradient DDPM {arch}, {regime}")
            torch.manual_seed(cfg.seed)
            trained, info = _fit_gradient(cfg, make(), X, y, ab, budget=budget, lr=lr)
            predict = model_noise(trained, torch.from_numpy(req), num_train_timesteps=len(ab))
            # sampled both ways: without clipping as every row, and with x̂₀ clipped as diffusers' DDPM pipelines do
            # by default (an under-trained ε-network's x̂₀ blows up at high noise, and clipping hides it)
            for clip in (False, True):
                gsched = DDIMScheduler(beta_schedule=cfg.beta_schedule, clip_sample=clip)
                x, s = _denoise_safely(arch, predict, gsched, x_T, cfg.steps, cfg.seed + 2, cfg.device)
                s["sampler"] += ", x̂₀ clipped" if clip else ""
                rows.append({**base, "method": f"gradient DDPM {arch} ({regime})", "family": "gradient", **info,
                             **s, **evaluate(x, f"{arch}-{regime}" + ("-clipped" if clip else ""))})
    if _on(cfg, "empirical"):
        m = cfg.empirical_samples
        _progress(f"{name}: empirical optimal denoiser ({m} samples)")
        emp = EmpiricalDenoiser(X, y, alphas_cumprod=_scheduler("epsilon", cfg.beta_schedule).alphas_cumprod)
        x, s = _denoise_safely("emp", lambda x, t: emp(x, t, req[:m]), _scheduler("epsilon", cfg.beta_schedule),
                               x_T[:m], cfg.steps, cfg.seed + 2, cfg.device)
        rows.append({**base, "method": "empirical optimum (memorizes)", "family": "reference", "fit_seconds": 0.0,
                     **s, **evaluate(x, "empirical", req[:m])})
    return rows, {"n_train": len(X), "n_test": len(Xt01), "lenet_test_accuracy": lenet_acc, "image_shape": shape}


# ---------------------------------------------------------------------- report
COLUMNS = [("method", "method"), ("fit_seconds", "fit s"), ("fd_lenet", "FD-LeNet ↓"),
           ("class_accuracy", "class acc ↑"), ("nn_ratio", "NN ratio (≥ 0.9)"), ("near_copy_fraction", "near copies"),
           ("sampler", "sampler"), ("nfe", "NFE"), ("sample_seconds", "sample s"), ("peak_mb", "peak MB"),
           ("stored_numbers", "stored numbers"), ("stop", "stopped by"), ("sample_error", "sampling failed")]


def render_markdown(results: dict) -> str:
    env = results["environment"]
    parts = [f"# diffusion benchmark ({results['config']['scale']})", "", f"Command: `{results['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} "
             f"threads), device {env['device']}  ", f"Revision: {env['git_revision']}, {env['time_utc']}", "",
             "FD-LeNet is the Fréchet distance in the features of a LeNet trained here on the same data set (not "
             "FID). NN ratio = median distance of samples to their nearest training image / the same for test "
             "images (≥ 0.9: new images, not copies). Every diffusion row is sampled by DDIM (η = 0, x̂₀ not clipped) "
             "from the same x_T; the flow row by Heun with the same number of model evaluations. "
             "Peak MB is the process's resident-memory increase during the fit: a fit after the first reuses "
             "memory the process already holds, so only the first row's figure is a clean measure.", ""]
    for ds, info in results["datasets"].items():
        rows = [r for r in results["rows"] if r["dataset"] == ds]
        parts += [f"## {ds} (train {info['n_train']}, LeNet test accuracy {100 * info['lenet_test_accuracy']:.2f} %)",
                  "", markdown_table(rows, COLUMNS), ""]
    return "\n".join(parts)


def render(out: Path) -> None:
    """Rebuild ``results.md`` in ``out`` from its ``results.json``."""
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(render_markdown(results) + "\n")


def run_diffusion(cfg: DiffusionConfig, command: str = "pilearn bench diffusion") -> dict:
    """Run the suite; write ``results.json``, ``results.md`` and sample grids; return the results."""
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("diffusion")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"suite": "diffusion", "command": command, "config": asdict(cfg),
                               "environment": environment(cfg.device), "rows": [], "datasets": {}}
    for name in cfg.datasets:
        rows, info = _image_rows(name, cfg, out)
        results["rows"] += rows
        results["datasets"][name] = info
        write_results(out, results)
    results["total_seconds"] = time.perf_counter() - t0
    write_results(out, results)
    render(out)
    _progress(f"wrote {out / 'results.json'}, results.md and PNGs")
    return results


# ---------------------------------------------------------------------- ablations (seed 000 §1.6)
STUDIES = ("sharing", "draws", "features", "bipil", "lambda", "target", "schedule", "steps")


@dataclass
class DiffusionAblationConfig:
    """``pilearn ablate diffusion``: one factor at a time around ``base`` on one image data set."""

    scale: Scale = "small"
    dataset: str = "mnist"
    n_train: int | None = 10000
    n_samples: int = 1000
    n_reference: int = 10000
    base: dict[str, Any] | None = None  # PILDiffusion parameters every study starts from
    buckets: tuple[int, ...] = (1, 2, 4, 8)
    per_timestep_steps: tuple[int, ...] = (10, 25)
    draws: tuple[int, ...] = (1, 2, 4, 8)
    lams: tuple[float | str, ...] = (1.0, 1e-2, 1e-4, "holdout")
    ddim_steps: tuple[int, ...] = (10, 25, 50, 100)
    ddpm_steps: tuple[int, ...] = (100, 1000)
    n_steps: int = 50
    studies: tuple[str, ...] = STUDIES
    lenet_epochs: int = 3
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None


ABLATION_SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(dataset="digits", n_train=None, n_samples=300, n_reference=450, buckets=(1, 2),
                  per_timestep_steps=(5,), draws=(1, 2), lams=(1.0, "holdout"), ddim_steps=(5, 10), ddpm_steps=(20,), n_steps=10,
                  lenet_epochs=15, base=dict(width=64, time_buckets=2, draws=1, conv_channels=(2, 4))),
    "small": {},
    "full": dict(n_train=None, n_samples=5000),
}
_ABLATION_BASE = dict(width=1024, time_buckets=4, draws=2)


def make_ablation_config(scale: Scale = "small", **overrides: Any) -> DiffusionAblationConfig:
    """The ablation config of a scale, with ``overrides`` (unknown keys raise ``TypeError``)."""
    if scale not in ABLATION_SCALES:
        raise ValueError(f"scale must be one of {tuple(ABLATION_SCALES)}, got {scale!r}")
    cfg = replace(DiffusionAblationConfig(scale=scale), **{**ABLATION_SCALES[scale], **overrides})
    unknown = sorted(set(cfg.studies) - set(STUDIES))
    if unknown:
        raise ValueError(f"studies must be among {STUDIES} (or 'all'), got unknown {unknown}")
    if cfg.dataset not in IMAGE_DATASETS:
        raise ValueError(f"dataset must be one of {IMAGE_DATASETS}, got {cfg.dataset!r}")
    return cfg


def _study_variants(study: str, cfg: DiffusionAblationConfig, base: dict) -> list[tuple[str, dict, int]]:
    """(label, parameter change, DDIM steps) of each variant of ``study``."""
    w, n = base["width"], cfg.n_steps
    if study == "sharing":  # the same draws per point in total: K cells × draws
        total = base["time_buckets"] * base["draws"]
        rows = [(f"K = {k} bucket(s), {max(1, total // k)} draws each", {"time_buckets": k,
                                                                        "draws": max(1, total // k)}, n)
                for k in cfg.buckets]
        rows.append((f"K = {base['time_buckets']}, equal numbers of timesteps (not flow-time spacing)",
                     {"bucket_spacing": "timestep"}, n))
        for steps in cfg.per_timestep_steps:
            s = DDIMScheduler()
            s.set_timesteps(steps)
            rows.append((f"per-timestep heads at {steps} DDIM timesteps, 1 draw each (sampled with {steps})",
                         {"head_timesteps": tuple(s.timesteps.tolist()), "draws": 1}, steps))
        return rows
    if study == "draws":  # rows per head against features per head: the fit's variance
        return [(f"{v} draw(s) per point and bucket", {"draws": v}, n) for v in cfg.draws]
    if study == "features":
        ch = base.get("conv_channels", (4, 8))
        return [("dense random features", {"features": "dense"}, n),
                (f"dense + random conv {tuple(ch)} with skips", {"features": "conv"}, n)]
    if study == "bipil":  # Bi-PIL against one projection of equal total width
        return [(f"single, width {w}", {"fusion": "single", "width": w}, n),
                (f"concat, 2 × {w // 2}", {"fusion": "concat", "width": w // 2}, n),
                (f"add, 2 × {w} summed", {"fusion": "add", "width": w}, n)]
    if study == "lambda":
        return [(f"λ = {v}" if v != "holdout" else "λ by hold-out", {"lam": v}, n) for v in cfg.lams]
    if study == "target":
        return [(f"regress {v}", {"prediction_type": v}, n) for v in ("epsilon", "sample", "v_prediction")]
    if study == "schedule":
        return [(f"{v} β schedule", {"beta_schedule": v}, n) for v in ("linear", "cosine")]
    raise ValueError(study)


def run_ablate_diffusion(cfg: DiffusionAblationConfig, command: str = "pilearn ablate diffusion") -> dict:
    """Fit one PIL diffusion per variant of each study; write ``results.json`` and ``results.md``."""
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("ablate-diffusion")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = {**_ABLATION_BASE, **(cfg.base or {})}
    icfg = DiffusionConfig(n_train=cfg.n_train, n_samples=cfg.n_samples, n_reference=cfg.n_reference,
                           seed=cfg.seed, device=cfg.device)
    X01, y, Xt01, _, shape = _load_images(cfg.dataset, icfg)
    X = X01 * 2 - 1
    net = lenet_for(cfg.dataset, *_load_images(cfg.dataset, replace(icfg, n_train=None))[:2],
                    in_shape=shape, seed=cfg.seed, epochs=cfg.lenet_epochs)
    req = np.arange(cfg.n_samples) % (int(y.max()) + 1)
    x_T = torch.randn(cfg.n_samples, X.shape[1], generator=torch.Generator().manual_seed(cfg.seed + 1))
    rows: list[dict] = []
    results = {"suite": "ablate-diffusion", "command": command, "config": asdict(cfg), "base": base,
               "environment": environment(cfg.device), "rows": rows, "datasets": {cfg.dataset: {"n_train": len(X)}}}

    def sample_row(study: str, label: str, model: PILDiffusion, info: dict, sched, steps: int, eta: float = 0.0):
        x, s = _denoise_safely(study, lambda x, t: model(x, t, req), sched, x_T, steps, cfg.seed + 2, cfg.device,
                               eta=eta)
        rows.append({"study": study, "variant": label, **info, **s,
                     **({} if x is None else _image_metrics(x, req, net, X01, Xt01, icfg))})

    for study in cfg.studies:
        write_results(out, results)
        variants = [("base", {}, cfg.n_steps)] if study == "steps" else _study_variants(study, cfg, base)
        for label, change, steps in variants:
            params = {**base, **change}
            _progress(f"ablate {study}: {label}")
            model, info = _fit_pil(icfg, X.reshape(len(X), *shape), y, **params)
            if study != "steps":
                sample_row(study, label, model, info, model.make_scheduler("ddim"), steps)
                continue
            for k in cfg.ddim_steps:
                sample_row(study, f"DDIM η = 0, {k} steps", model, info, model.make_scheduler("ddim"), k)
            sample_row(study, f"DDIM η = 0, {cfg.n_steps} steps, x̂₀ clipped to [−1, 1]", model, info,
                       model.make_scheduler("ddim", clip_sample=True), cfg.n_steps)
            sample_row(study, f"DDIM η = 1, {cfg.n_steps} steps", model, info, model.make_scheduler("ddim"),
                       cfg.n_steps, eta=1.0)
            for k in cfg.ddpm_steps:
                sample_row(study, f"DDPM, {k} steps", model, info, model.make_scheduler("ddpm"), k)
    results["total_seconds"] = time.perf_counter() - t0
    write_results(out, results)
    render_ablation(out)
    _progress(f"wrote {out / 'results.json'} and results.md")
    return results


ABLATION_COLUMNS = [("variant", "variant"), ("fit_seconds", "fit s"), ("fd_lenet", "FD-LeNet ↓"),
                    ("class_accuracy", "class acc ↑"), ("nn_ratio", "NN ratio"), ("nfe", "NFE"),
                    ("sample_seconds", "sample s"), ("n_heads", "heads"), ("stored_numbers", "stored numbers"),
                    ("lam_relative_median", "λ/scale (median)"), ("sample_error", "sampling failed")]


def render_ablation(out: Path) -> None:
    """Rebuild ``results.md`` of an ablation folder from its ``results.json``."""
    results = json.loads((out / "results.json").read_text())
    env, cfg = results["environment"], results["config"]
    parts = [f"# diffusion ablations ({cfg['scale']}): {cfg['dataset']}, "
             f"{results['datasets'][cfg['dataset']]['n_train']} training images", "",
             f"Command: `{results['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, device {env['device']}  ",
             f"Revision: {env['git_revision']}, {env['time_utc']}  ",
             f"Base model: `PILDiffusion({', '.join(f'{k}={v!r}' for k, v in results['base'].items())})`, sampled "
             f"with DDIM (η = 0, x̂₀ not clipped) in {cfg['n_steps']} steps unless the row says otherwise; "
             f"{cfg['n_samples']} class-conditional samples per row.", ""]
    for study in dict.fromkeys(r["study"] for r in results["rows"]):
        parts += [f"## {study}", "", markdown_table([r for r in results["rows"] if r["study"] == study],
                                                     ABLATION_COLUMNS), ""]
    (out / "results.md").write_text("\n".join(parts) + "\n")
