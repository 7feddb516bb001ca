"""``pilearn bench reparam``: networks stored as seeds plus a few numbers (seed ``003``: PRANC, MCNC, NOLA, SupSup).

Row groups (``--only``), all in one process on one seeded split of MNIST (``n_val`` training images held out):

* ``pranc``: LeNet-5 (61,706 parameters) as ``PRANC(LeNet5(), n_basis=k)`` for k in ``budgets``, Adam on α with a
  cosine schedule, basis cached. Reference row: the plain LeNet-5 trained by the same trainer for the same epochs,
  starting from the same network (PRANC's basis network 0, the default init every PRANC run starts from).
* ``mcnc``: ``MCNC(LeNet5(), k=mcnc_k, segment_size=d)`` with d chosen so that S·(k+1) stored numbers is the largest
  count ≤ each budget (recorded exactly), same trainer.
* ``closed-form``: *random-feature heads*, not compressed LeNets. The LeNet-5 body (conv and fc layers up to the
  84-wide layer) stays at its seeded random init (basis network 0, frozen) and only the last layer, 84→10, is
  PRANC-parameterized with k coefficients: (a) solved by ridge in one pass over the features, λ chosen on the
  validation split from a small grid; (b) trained by Adam (the gradient counterpart at equal stored numbers); and the
  plain ridge head (850 numbers) as the family's ceiling. The head has only 850 parameters, so k ≥ 850 spans all of
  them. The λ path is solved in the factored form of the same normal equations (see :func:`pranc_head_path`); for
  k ≤ ``closed_form_direct_max_k`` :func:`~pilearn.reparam.solve_pranc_head` also solves it at the chosen λ, and its
  time and agreement are recorded.
* ``supsup``: PermutedMNIST, ``SupSupMLP`` 784-1024-1024-10 (fixed signed-constant weights, masks keep half), one
  supermask per task trained with the reference code's PermutedMNIST optimizer (RMSprop, lr 1e-4, batch 128) for
  ``supsup_epochs`` epochs capped at ``supsup_max_steps`` steps (the reference code's ``iter_lim``). Per-task accuracy
  with the task given; task inference by one-shot and binary entropy-gradient search on test batches of 128. The
  largest task count in ``supsup_n_tasks`` is trained once; a row for n tasks uses masks 0..n−1 (they do not depend
  on later tasks) and infers among those n only.
* ``nola``: all-MiniLM-L6-v2 (frozen) on BBC News, mean-pooled output → linear head (trained in both arms, counted
  in the stored numbers). LoRA (peft, or a minimal local LoRA when peft is missing) against NOLA, both rank r on the
  attention ``query``/``value`` layers, AdamW, the same epochs and lr grid, the lr chosen on a validation split.
  Floor: ridge on the frozen mean-pooled features (λ on the same validation split). Training documents are
  subsampled (``nola_train_docs``) and truncated to ``nola_max_length`` tokens for the CPU budget.

Budget of ``--scale small``, from one measured epoch per group (``--set epochs=1`` etc.) on a *shared* 2-vCPU VM
(AMD EPYC, load 6–7, this process getting ≈ 0.67 of a core):

======================  ==========================================================  ===============
group                   measured                                                    small, as set
======================  ==========================================================  ===============
pranc                   per epoch: LeNet-5 50 s, PRANC k=1000 53 s, k=5000 122 s,   4 epochs ≈ 28 min
                        k=10000 183 s (+ 2–8 s drawing the cached basis)
mcnc                    per epoch: budgets 1000 / 5000 / 10000: 65 / 118 / 97 s     4 epochs ≈ 19 min
closed-form             features 11 s, each ridge λ path 1–2 s, solve_pranc_head    ≈ 2.5 min
                        (k=1000) 33–48 s, Adam heads 7–17 s per epoch
supsup                  135–165 s per task (1 epoch, 430 steps); inference ≈ 0.3 s  5 + 10 tasks ≈ 32 min
                        per batch and gradient (one-shot 1, binary ≈ log₂ n)        (5 only ≈ 14 min)
nola                    floor 104 s; per epoch of 400 documents LoRA 151 s, NOLA    ≈ 22 min
                        169 s; validation 33 s, test 52 s per model
======================  ==========================================================  ===============

≈ 104 min in all at that contention; ≈ 40 min on a quiet 2-core machine if the process gets both cores (≈ 2.5×
faster, from the CPU time the runs got: an estimate, not a measurement). ``--set "supsup_n_tasks=(5,)"`` saves
≈ 7 quiet minutes.

``--scale full`` is GPU-sized: more epochs, 5 and 10 SupSup tasks with every test batch inferred, all BBC documents.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import load_bbc_news, load_mnist, stratified_split
from ..features import derive_seed
from ..reparam import (MCNC, PRANC, FlatReparam, LeNet5, NOLAConfig, SupSupMLP, apply_nola, infer_task, permuted_mnist,
                       solve_pranc_head, train_supermask)
from ..solvers import DEFAULT_HOLDOUT_GRID, RidgeSolution, RidgeStats, lam_scale, spd_solve
from ._baselines import TextClassifier, apply_peft_lora
from ._results import PeakMemory, Stopwatch, default_out_dir, environment, markdown_table, write_results

__all__ = ["ReparamConfig", "SCALES", "GROUPS", "make_config", "run_reparam", "render", "mcnc_shape",
           "pranc_head_path"]

Scale = Literal["smoke", "small", "full"]
GROUPS = ("pranc", "mcnc", "closed-form", "supsup", "nola")
LENET_PARAMS = 61_706
_MNIST_MEAN, _MNIST_STD = 0.1307, 0.3081


@dataclass
class ReparamConfig:
    """One run of the reparam suite. ``scale`` picks the sizes below; fields override them."""

    scale: Scale = "small"
    groups: tuple[str, ...] | None = None  # None: every group of GROUPS
    # MNIST / LeNet-5 (pranc, mcnc, closed-form)
    n_val: int = 5000  # held out of the 60,000 training images (λ selection, learning curves)
    n_train: int | None = None  # training images kept after the hold-out (None: all 55,000)
    n_test: int | None = None
    budgets: tuple[int, ...] = (1000, 5000, 10000)  # stored numbers of the PRANC, MCNC and closed-form rows
    epochs: int = 4
    batch_size: int = 256
    lr_lenet: float = 1e-3
    lr_pranc: float = 3e-3
    lr_mcnc: float = 0.1
    lr_head: float = 0.1  # Adam on the closed-form group's head coefficients (its random features are small)
    mcnc_k: int = 4
    mcnc_hidden: tuple[int, ...] = (256, 256)
    mcnc_omega: float = 4.0
    closed_form_lams: tuple[float, ...] = DEFAULT_HOLDOUT_GRID  # relative λ (× the mean eigenvalue of HᵀH)
    closed_form_direct_max_k: int = 1000  # also run solve_pranc_head at the chosen λ up to this k
    # SupSup (PermutedMNIST)
    supsup_n_tasks: tuple[int, ...] = (5, 10)
    supsup_sizes: tuple[int, ...] = (784, 1024, 1024, 10)
    supsup_sparsity: float = 0.5
    supsup_epochs: int = 1
    supsup_max_steps: int | None = 1000
    supsup_optimizer: str = "rmsprop"
    supsup_lr: float = 1e-4
    supsup_batch_size: int = 128
    supsup_infer_batches: int | None = 20  # test batches of 128 per task for task inference (None: all)
    # NOLA vs LoRA (BBC News, all-MiniLM-L6-v2)
    nola_train_docs: int | None = 320
    nola_val_fraction: float = 0.15
    nola_val_docs: int | None = None
    nola_test_docs: int | None = None
    nola_max_length: int = 128
    nola_epochs: int = 2
    nola_batch_size: int = 16
    nola_lrs: tuple[float, ...] = (3e-3, 1e-2)  # few steps at small scale: the zero-initialized head needs these
    nola_rank: int = 8
    nola_n_basis: int = 200  # k_A = k_B per adapted layer
    nola_targets: tuple[str, ...] = ("query", "value")
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None


SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(n_val=500, n_train=2000, n_test=1000, budgets=(100, 500), epochs=1, batch_size=128,
                  closed_form_direct_max_k=500, supsup_n_tasks=(2,), supsup_sizes=(784, 64, 10), supsup_max_steps=15,
                  supsup_infer_batches=2, nola_train_docs=24, nola_val_docs=10, nola_test_docs=20,
                  nola_max_length=32, nola_epochs=1, nola_batch_size=8, nola_lrs=(1e-2,), nola_n_basis=16),
    "small": {},
    "full": dict(epochs=30, closed_form_direct_max_k=10000, supsup_epochs=3, supsup_infer_batches=None,
                 nola_train_docs=None, nola_max_length=256, nola_epochs=5, nola_lrs=(1e-3, 3e-3, 1e-2)),
}

_TUPLE_FIELDS = ("groups", "budgets", "mcnc_hidden", "closed_form_lams", "supsup_n_tasks", "supsup_sizes", "nola_lrs",
                 "nola_targets")


def make_config(scale: Scale = "small", **overrides: Any) -> ReparamConfig:
    """The config of a scale, with ``overrides``; unknown keys raise ``TypeError``, bad values ``ValueError``."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    known = {f.name for f in fields(ReparamConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown ReparamConfig field(s) {unknown}; valid fields: {sorted(known)}")
    values = {**SCALES[scale], **overrides}
    for name in _TUPLE_FIELDS:  # one value for a tuple field (--set budgets=5000) is a tuple of one
        v = values.get(name)
        if v is not None and not isinstance(v, (tuple, list)):
            values[name] = (v,)
        elif isinstance(v, list):
            values[name] = tuple(v)
    cfg = replace(ReparamConfig(scale=scale), **values)
    _validate(cfg)
    return cfg


def _validate(cfg: ReparamConfig) -> None:
    if cfg.groups is not None:
        bad = sorted(set(cfg.groups) - set(GROUPS))
        if bad:
            raise ValueError(f"groups must be among {GROUPS}, got unknown {bad}")

    def positive_int(name: str, v: object, low: int = 1) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")

    def positive(name: str, v: object) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a number > 0, got {v!r}")

    for name in ("n_val", "epochs", "batch_size", "mcnc_k", "closed_form_direct_max_k", "supsup_epochs",
                 "supsup_batch_size", "nola_max_length", "nola_epochs", "nola_batch_size", "nola_rank",
                 "nola_n_basis"):
        positive_int(name, getattr(cfg, name))
    positive_int("seed", cfg.seed, 0)
    for name in ("n_train", "n_test", "supsup_max_steps", "supsup_infer_batches", "nola_train_docs", "nola_val_docs",
                 "nola_test_docs"):
        if getattr(cfg, name) is not None:
            positive_int(name, getattr(cfg, name))
    for name in ("lr_lenet", "lr_pranc", "lr_mcnc", "lr_head", "mcnc_omega", "supsup_lr"):
        positive(name, getattr(cfg, name))
    for name in ("budgets", "mcnc_hidden", "supsup_n_tasks", "supsup_sizes", "closed_form_lams", "nola_lrs",
                 "nola_targets"):
        if not getattr(cfg, name):
            raise ValueError(f"{name} must be a non-empty tuple, got {getattr(cfg, name)!r}")
    for b in cfg.budgets:
        positive_int("budgets entries", b)
    if min(cfg.budgets) < cfg.mcnc_k + 1:
        raise ValueError(f"every budget must be >= mcnc_k + 1 = {cfg.mcnc_k + 1} (one MCNC segment), got "
                         f"budgets={cfg.budgets!r}")
    for v in cfg.mcnc_hidden:
        positive_int("mcnc_hidden entries", v)
    for v in cfg.supsup_n_tasks:
        positive_int("supsup_n_tasks entries", v)
    for v in cfg.supsup_sizes:
        positive_int("supsup_sizes entries", v)
    if len(cfg.supsup_sizes) < 2 or cfg.supsup_sizes[0] != 784 or cfg.supsup_sizes[-1] != 10:
        raise ValueError(f"supsup_sizes must run from 784 inputs to 10 classes, got {cfg.supsup_sizes!r}")
    for v in (*cfg.closed_form_lams, *cfg.nola_lrs):
        positive("closed_form_lams and nola_lrs entries", v)
    if not 0.0 < cfg.supsup_sparsity < 1.0:
        raise ValueError(f"supsup_sparsity must be in (0, 1), got {cfg.supsup_sparsity!r}")
    if not 0.0 < cfg.nola_val_fraction < 1.0:
        raise ValueError(f"nola_val_fraction must be in (0, 1), got {cfg.nola_val_fraction!r}")
    if cfg.supsup_optimizer not in ("adam", "rmsprop", "sgd"):
        raise ValueError(f"supsup_optimizer must be 'adam', 'rmsprop' or 'sgd', got {cfg.supsup_optimizer!r}")


def _on(cfg: ReparamConfig, group: str) -> bool:
    return cfg.groups is None or group in cfg.groups


def _progress(msg: str) -> None:
    print(f"[reparam {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- MNIST


@dataclass
class _MNIST:
    X: torch.Tensor  # (N, 1, 28, 28) normalized
    y: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    Xt: torch.Tensor
    yt: torch.Tensor

    def info(self) -> dict[str, int]:
        return {"n_train": len(self.X), "n_val": len(self.Xv), "n_test": len(self.Xt)}


def _load_mnist(cfg: ReparamConfig) -> _MNIST:
    """A seeded hold-out of ``n_val`` training images; inputs standardized by the MNIST mean and std."""
    X, y = load_mnist("train")
    Xt, yt = load_mnist("test")
    order = np.random.default_rng(cfg.seed).permutation(len(X))
    val, train = order[: cfg.n_val], order[cfg.n_val :]
    if cfg.n_train is not None:
        train = train[: cfg.n_train]
    if cfg.n_test is not None:
        Xt, yt = Xt[: cfg.n_test], yt[: cfg.n_test]

    def prep(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(np.ascontiguousarray(a)) - _MNIST_MEAN) / _MNIST_STD).to(cfg.device)

    def lab(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(cfg.device)

    return _MNIST(prep(X[train]), lab(y[train]), prep(X[val]), lab(y[val]), prep(Xt), lab(yt))


def _base_lenet(seed: int) -> nn.Module:
    """A default-initialized LeNet-5 drawn from ``seed`` alone: PRANC's basis network 0, where PRANC runs start."""
    return PRANC(LeNet5(), 1, seed=seed).materialize()


@torch.no_grad()
def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    net = model.materialize() if isinstance(model, FlatReparam) else model  # θ computed once, not per batch
    was = net.training
    net.eval()
    correct = sum(int((net(X[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(X), batch))
    net.train(was)
    return correct / max(len(X), 1)


def _train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor, *, epochs: int,
           lr: float, batch_size: int, seed: int, device: str, label: str) -> dict[str, Any]:
    """Adam on the model's trainable parameters, cosine schedule to 0 over all steps, seeded shuffling.

    The validation accuracy after each epoch is measured outside the timed part.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps_per_epoch = math.ceil(len(X) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    curve, seconds = [], 0.0
    for epoch in range(epochs):
        model.train()
        loss_sum = torch.zeros((), device=X.device)
        with Stopwatch(device) as sw:
            for idx in torch.randperm(len(X), generator=gen).split(batch_size):
                idx = idx.to(X.device)
                loss = F.cross_entropy(model(X[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach() * len(idx)
        seconds += sw.seconds
        point = {"epoch": epoch + 1, "seconds": seconds, "epoch_seconds": sw.seconds,
                 "train_loss": float(loss_sum) / len(X), "val_accuracy": _accuracy(model, Xv, yv)}
        curve.append(point)
        _progress(f"{label}: epoch {epoch + 1}/{epochs}, {sw.seconds:.1f} s, loss {point['train_loss']:.4f}, "
                  f"val acc {point['val_accuracy']:.4f}")
    return {"train_seconds": seconds, "curve": curve, "steps": epochs * steps_per_epoch, "learned": sum(
        p.numel() for p in params)}


def mcnc_shape(budget: int, k: int, n_params: int = LENET_PARAMS) -> tuple[int, int, int]:
    """(segment_size d, segments S, stored S·(k+1)): the most MCNC segments of k+1 numbers within ``budget``.

    S_max = ⌊budget/(k+1)⌋ segments need d = ⌈D/S_max⌉; that d gives S = ⌈D/d⌉ ≤ S_max segments.
    """
    s_max = budget // (k + 1)
    if s_max < 1:
        raise ValueError(f"budget must be >= k + 1 = {k + 1}, got {budget!r}")
    d = math.ceil(n_params / s_max)
    s = math.ceil(n_params / d)
    return d, s, s * (k + 1)


def _fit_row(cfg: ReparamConfig, data: _MNIST, model: nn.Module, *, lr: float, label: str) -> dict[str, Any]:
    """Train ``model`` with the suite's trainer; the row's accuracy, time and memory."""
    with PeakMemory(device=cfg.device) as mem:
        basis_seconds = 0.0
        if isinstance(model, FlatReparam):  # draw (and cache) the basis before the clock of the steps starts
            with Stopwatch(cfg.device) as sw, torch.no_grad():
                model.theta()
            basis_seconds = sw.seconds
        rep = _train(model, data.X, data.y, data.Xv, data.yv, epochs=cfg.epochs, lr=lr, batch_size=cfg.batch_size,
                     seed=derive_seed(cfg.seed, "shuffle"), device=cfg.device, label=label)
    stored = model.n_stored if isinstance(model, FlatReparam) else sum(p.numel() for p in model.parameters())
    return {"accuracy": _accuracy(model, data.Xt, data.yt), "val_accuracy": rep["curve"][-1]["val_accuracy"],
            "n_stored": stored, "compression": LENET_PARAMS / stored,
            "train_seconds": basis_seconds + rep["train_seconds"], "basis_seconds": basis_seconds,
            "epoch_seconds": [p["epoch_seconds"] for p in rep["curve"]], "peak_mb": mem.peak_mb,
            "cuda_peak_mb": None if mem.cuda_peak_bytes is None else mem.cuda_peak_bytes / 2**20,
            "epochs": cfg.epochs, "lr": lr, "batch_size": cfg.batch_size, "steps": rep["steps"], "curve": rep["curve"]}


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _pranc_rows(cfg: ReparamConfig, data: _MNIST, add: Callable[..., None]) -> None:
    net = _base_lenet(cfg.seed).to(cfg.device)
    add("pranc", f"LeNet-5, Adam, {_epochs(cfg.epochs)} (all {LENET_PARAMS:,} numbers)", "reference",
        _fit_row(cfg, data, net, lr=cfg.lr_lenet, label="LeNet-5"))
    for k in cfg.budgets:
        model = PRANC(LeNet5(), k, seed=cfg.seed, cache_basis=True).to(cfg.device)
        add("pranc", f"PRANC k={k}", "PRANC", _fit_row(cfg, data, model, lr=cfg.lr_pranc, label=f"PRANC k={k}"),
            n_basis=k)
        del model


def _mcnc_rows(cfg: ReparamConfig, data: _MNIST, add: Callable[..., None]) -> None:
    for budget in cfg.budgets:
        d, s, _ = mcnc_shape(budget, cfg.mcnc_k)
        model = MCNC(LeNet5(), cfg.mcnc_k, d, seed=cfg.seed, hidden=cfg.mcnc_hidden, omega=cfg.mcnc_omega)
        model = model.to(cfg.device)
        label = f"MCNC k={cfg.mcnc_k}, d={d} ({s} segments)"
        add("mcnc", label, "MCNC", _fit_row(cfg, data, model, lr=cfg.lr_mcnc, label=label), budget=budget,
            mcnc_k=cfg.mcnc_k, segment_size=d, n_segments=s)
        del model


# ---------------------------------------------------------------------------------------------- closed form


@torch.no_grad()
def _body_features(body: nn.Module, X: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    """The 84-wide input of LeNet-5's last layer, for images X."""
    return torch.cat([body(X[i : i + batch]) for i in range(0, len(X), batch)])


def _frozen_body(seed: int, device: str) -> nn.Module:
    net = _base_lenet(seed)
    body = nn.Sequential(net.features, *list(net.classifier)[:-1]).to(device).eval()
    return body.requires_grad_(False)


def _bias_stats(feats: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """X̄ᵀX̄ (f+1, f+1) and X̄ᵀY (f+1, c) of X̄ = [features, 1], accumulated by RidgeStats in float64."""
    stats = RidgeStats(feats.shape[1] + 1, Y.shape[1], fit_intercept=False, dual=False, device=feats.device)
    ones = torch.ones(len(feats), 1, dtype=feats.dtype, device=feats.device)
    for i in range(0, len(feats), 8192):
        stats.update(torch.cat([feats[i : i + 8192], ones[i : i + 8192]], 1), Y[i : i + 8192])
    G, C, _ = stats.centered()
    return G, C


def pranc_head_path(nets: torch.Tensor, xtx: torch.Tensor, xty: torch.Tensor, lams: list[float], *,
                    relative: bool = False) -> tuple[list[torch.Tensor], list[float]]:
    """Ridge coefficients of a PRANC linear head for several λ, from the head's input statistics alone.

    The head maps f inputs to c outputs, θ = [vec W (c·f, row-major), b (c)] = Gα with G = ``nets``ᵀ (the k basis
    networks s ⊙ bⱼ as rows of ``nets``, (k, c·f + c)). :func:`~pilearn.reparam.solve_pranc_head` solves
    (HᵀH + λI)α = Hᵀt with one row of H per (sample, output); that Gram is N·c·k² work. It equals

        HᵀH = Σ_o G_oᵀ (X̄ᵀX̄) G_o,   Hᵀt = Σ_o G_oᵀ (X̄ᵀY)_o,

    G_o the (f+1, k) rows of G that feed output o (its weight row and its bias). With X̄ᵀX̄ = L Lᵀ
    (eigh, L = V√Λ) and A = [Lᵀ G_o]_o (c(f+1), k), z = [L⁺(X̄ᵀY)_o]_o, HᵀH = AᵀA and Hᵀt = Aᵀz, so

        α(λ) = (AᵀA + λI)⁻¹ Aᵀz = Aᵀ (AAᵀ + λI)⁻¹ z     (push-through identity),

    a system of size min(k, c(f+1)) whatever N is, one Cholesky per λ.

    Args:
        nets: (k, c·f + c) basis networks of the head (``pranc.basis_networks(0, k)``).
        xtx: (f+1, f+1) X̄ᵀX̄ of the head inputs with a ones column last.
        xty: (f+1, c) X̄ᵀY.
        lams: λ values, absolute, or with ``relative=True`` multiples of tr(HᵀH)/k (the mean eigenvalue of HᵀH).

    Returns:
        (α for each λ, each (k,) float64; the absolute λ values).
    """
    f1, c = xty.shape
    f = f1 - 1
    if nets.shape[1] != c * f + c:
        raise ValueError(f"nets must have c·f + c = {c * f + c} columns for xty of shape {tuple(xty.shape)}, "
                         f"got {tuple(nets.shape)}")
    nets = nets.to(torch.float64)
    evals, V = torch.linalg.eigh(xtx.to(torch.float64))
    keep = evals > evals.max() * 1e-12  # dead features make X̄ᵀX̄ singular; X̄ᵀY lies in its range
    V, root = V[:, keep], evals[keep].sqrt()
    blocks, zs = [], []
    for o in range(c):
        idx = torch.cat([torch.arange(o * f, (o + 1) * f), torch.tensor([c * f + o])]).to(nets.device)
        G_o = nets[:, idx].T  # (f+1, k)
        blocks.append((V * root).T @ G_o)  # Lᵀ G_o (r, k)
        zs.append((V.T @ xty[:, o].to(torch.float64)) / root)
    A, z = torch.cat(blocks), torch.cat(zs)
    primal = A.shape[1] <= A.shape[0]  # solve with the smaller of AᵀA (k, k) and AAᵀ
    gram = A.T @ A if primal else A @ A.T
    rhs = (A.T @ z if primal else z)[:, None]
    if relative:
        lams = [lam * float(gram.diagonal().sum()) / nets.shape[0] for lam in lams]
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    # one Cholesky per λ: a multi-threaded eigh of the same matrix was 100× slower on a busy 2-core machine
    sols = [spd_solve(gram + lam * eye, rhs)[0][:, 0] for lam in lams]
    return [s if primal else A.T @ s for s in sols], [float(lam) for lam in lams]


def _head_accuracy(theta: torch.Tensor, feats: torch.Tensor, y: torch.Tensor, c: int = 10) -> float:
    f = feats.shape[1]
    W, b = theta[: c * f].view(c, f), theta[c * f :]
    return float(((feats.to(theta.dtype) @ W.T + b).argmax(1) == y).double().mean())


def _closed_form_rows(cfg: ReparamConfig, data: _MNIST, add: Callable[..., None]) -> None:
    body = _frozen_body(cfg.seed, cfg.device)
    with Stopwatch(cfg.device) as sw:
        F_tr, F_va, F_te = (_body_features(body, X) for X in (data.X, data.Xv, data.Xt))
    feat_seconds = sw.seconds
    Y_tr = F.one_hot(data.y, 10).to(F_tr.dtype)
    with Stopwatch(cfg.device) as sw:
        xtx, xty = _bias_stats(F_tr, Y_tr)
    stats_seconds = sw.seconds
    common = {"features_seconds": feat_seconds, "stats_seconds": stats_seconds, "feature_dim": F_tr.shape[1],
              "head_params": 850, "random_features": True}
    _plain_ridge_head(cfg, F_tr, F_va, data, F_te, add, common)
    for k in cfg.budgets:
        head_seed = derive_seed(cfg.seed, "closed-form-head")
        head = PRANC(nn.Linear(84, 10), k, seed=head_seed).to(cfg.device)
        with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
            nets = head.basis_networks(0, k).double()
            rel = sorted(cfg.closed_form_lams, reverse=True)
            alphas, lams = pranc_head_path(nets, xtx, xty, rel, relative=True)
            val = [_head_accuracy(nets.T @ a, F_va, data.yv) for a in alphas]
            best = int(np.argmax(val))  # ties: the larger λ (the grid runs from large to small)
        with torch.no_grad():
            head.alpha.copy_(alphas[best].to(head.alpha.dtype))
        row = {"accuracy": _accuracy(head, F_te, data.yt), "val_accuracy": val[best], "n_stored": head.n_stored,
               "compression": LENET_PARAMS / head.n_stored, "train_seconds": feat_seconds + stats_seconds + sw.seconds,
               "solve_seconds": sw.seconds, "peak_mb": mem.peak_mb, "lam": lams[best], "lam_rel": rel[best],
               "lam_path": {f"{r:g}": v for r, v in zip(rel, val)}, **common}
        row.update(_direct_check(cfg, k, head_seed, F_tr, Y_tr, lams[best], alphas[best], F_te, data.yt))
        add("closed-form", f"random LeNet-5 body + PRANC head k={k}, ridge (λ on validation)", "closed-form ridge",
            row, n_basis=k)
        # (b) the gradient counterpart: the same head, k coefficients trained by Adam on the same features
        head = PRANC(nn.Linear(84, 10), k, seed=head_seed).to(cfg.device)
        with PeakMemory(device=cfg.device) as mem:
            rep = _train(head, F_tr, data.y, F_va, data.yv, epochs=cfg.epochs, lr=cfg.lr_head,
                         batch_size=cfg.batch_size, seed=derive_seed(cfg.seed, "shuffle"), device=cfg.device,
                         label=f"closed-form group: PRANC head k={k}, Adam")
        add("closed-form", f"random LeNet-5 body + PRANC head k={k}, Adam {_epochs(cfg.epochs)}", "closed-form Adam",
            {"accuracy": _accuracy(head, F_te, data.yt), "val_accuracy": rep["curve"][-1]["val_accuracy"],
             "n_stored": head.n_stored, "compression": LENET_PARAMS / head.n_stored,
             "train_seconds": feat_seconds + rep["train_seconds"], "peak_mb": mem.peak_mb, "lr": cfg.lr_head,
             "epochs": cfg.epochs, "curve": rep["curve"], **common}, n_basis=k)


def ridge_by_accuracy(X: torch.Tensor, y: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor, n_classes: int,
                      rel_grid: tuple[float, ...]) -> tuple[RidgeSolution, float, dict[str, float]]:
    """Ridge on one-hot targets with an intercept, λ (relative to the mean eigenvalue of the centred Gram) chosen by
    validation accuracy; ties go to the larger λ. Returns (solution, relative λ, {relative λ: val accuracy})."""
    stats = RidgeStats(X.shape[1], n_classes, dual=False, device=X.device)
    stats.update(X, F.one_hot(y, n_classes).to(X.dtype))
    rel = sorted(rel_grid, reverse=True)
    path, best = {}, None
    for r, sol in zip(rel, stats.solve_many(v * lam_scale(stats) for v in rel)):
        acc = float(((Xv.to(sol.coef.dtype) @ sol.coef + sol.intercept).argmax(1) == yv.to(X.device)).double().mean())
        path[f"{r:g}"] = acc
        if best is None or acc > best[2]:
            best = (sol, r, acc)
    return best[0], best[1], path


def _plain_ridge_head(cfg: ReparamConfig, F_tr, F_va, data: _MNIST, F_te, add, common: dict) -> None:
    """The unconstrained last layer (850 numbers) by ridge on the same random features: the family's ceiling."""
    with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
        sol, rel, path = ridge_by_accuracy(F_tr, data.y, F_va, data.yv, 10, cfg.closed_form_lams)
    pred = (F_te.double() @ sol.coef + sol.intercept).argmax(1)
    add("closed-form", "random LeNet-5 body + plain ridge head (λ on validation)", "closed-form ridge (plain head)",
        {"accuracy": float((pred == data.yt).double().mean()), "val_accuracy": path[f"{rel:g}"], "n_stored": 850,
         "compression": LENET_PARAMS / 850, "train_seconds": common["features_seconds"] + sw.seconds,
         "solve_seconds": sw.seconds, "peak_mb": mem.peak_mb, "lam": sol.lam, "lam_rel": rel, "lam_path": path,
         **common})


def _direct_check(cfg: ReparamConfig, k: int, head_seed: int, F_tr, Y_tr, lam: float, alpha: torch.Tensor,
                  F_te, yt) -> dict[str, Any]:
    """solve_pranc_head at the chosen λ (one pass, N·10·k² work) beside the factored solve of the same equations."""
    if k > cfg.closed_form_direct_max_k:
        return {"direct": None}
    head = PRANC(nn.Linear(84, 10), k, seed=head_seed).to(cfg.device)
    with warnings.catch_warnings(record=True) as caught, Stopwatch(cfg.device) as sw:
        warnings.simplefilter("always")
        solve_pranc_head(head, F_tr, Y_tr, lam)
    a = head.alpha.detach().double()
    return {"direct": {"seconds": sw.seconds, "accuracy": _accuracy(head, F_te, yt),
                       "alpha_rel_diff": float((a - alpha).norm() / alpha.norm().clamp_min(1e-300)),
                       "warnings": [str(w.message) for w in caught]}}


# ---------------------------------------------------------------------------------------------- SupSup


def _supsup_rows(cfg: ReparamConfig, data: _MNIST, add: Callable[..., None], results: dict) -> None:
    n_max = max(cfg.supsup_n_tasks)
    X, Xt = data.X.reshape(len(data.X), -1), data.Xt.reshape(len(data.Xt), -1)
    perms = [p.to(cfg.device) for p in permuted_mnist(X, n_max, seed=cfg.seed)]
    model = SupSupMLP(cfg.supsup_sizes, n_max, sparsity=cfg.supsup_sparsity, seed=cfg.seed).to(cfg.device)
    tasks = []
    with PeakMemory(device=cfg.device) as mem:
        for t in range(n_max):
            with Stopwatch(cfg.device) as sw:
                rep = train_supermask(model, t, (X[:, perms[t]], data.y), epochs=cfg.supsup_epochs, lr=cfg.supsup_lr,
                                      optimizer=cfg.supsup_optimizer, batch_size=cfg.supsup_batch_size,
                                      max_steps=cfg.supsup_max_steps, seed=derive_seed(cfg.seed, "supsup-shuffle", t))
            model.eval().set_task(t)
            with torch.no_grad():
                acc = float((model(Xt[:, perms[t]]).argmax(1) == data.yt).double().mean())
            tasks.append({"task": t, "accuracy": acc, "train_seconds": sw.seconds, "steps": rep["n_steps"],
                          "train_loss": rep["loss"][-1]})
            _progress(f"SupSup task {t}: {rep['n_steps']} steps in {sw.seconds:.1f} s, test acc {acc:.4f} (task given)")
    results["supsup_tasks"] = tasks
    bits_per_task = sum(layer.weight.numel() for _, layer in model.masked_layers())
    for n in cfg.supsup_n_tasks:
        row = {"n_tasks": n, "accuracy": float(np.mean([r["accuracy"] for r in tasks[:n]])),
               "task_accuracies": [r["accuracy"] for r in tasks[:n]],
               "train_seconds": sum(r["train_seconds"] for r in tasks[:n]), "peak_mb": mem.peak_mb,
               "bits_per_task": bits_per_task, "stored_bits": 64 + n * bits_per_task,
               "steps_per_task": tasks[0]["steps"]}
        for method in ("one_shot", "binary", "min_entropy"):
            row.update(_infer(cfg, model, Xt, perms, n, method))
        model.clear_mask_cache()
        add("supsup", f"SupSup {'-'.join(map(str, cfg.supsup_sizes))}, {n} tasks", "SupSup", row)


def _infer(cfg: ReparamConfig, model: SupSupMLP, Xt: torch.Tensor, perms: list[torch.Tensor], n: int,
           method: str) -> dict[str, Any]:
    """Task-inference accuracy over test batches of 128 of each of the first n tasks."""
    n_batches = len(Xt) // 128 if cfg.supsup_infer_batches is None else min(cfg.supsup_infer_batches, len(Xt) // 128)
    n_batches = max(n_batches, 1)
    hits, total = 0, 0
    with Stopwatch(cfg.device) as sw:
        for t in range(n):
            for b in range(n_batches):
                xb = Xt[b * 128 : (b + 1) * 128][:, perms[t]]
                hits += int(infer_task(model, xb, method, n_learned=n) == t)
                total += 1
    _progress(f"SupSup {n} tasks: {method} task inference {hits}/{total} in {sw.seconds:.1f} s")
    return {f"infer_{method}_accuracy": hits / total, f"infer_{method}_seconds": sw.seconds,
            "infer_batches": total}


# ---------------------------------------------------------------------------------------------- NOLA vs LoRA


class _LoRALinear(nn.Module):
    """Minimal LoRA (used only when peft is missing): y = base(x) + (α/r) x Aᵀ Bᵀ, A Kaiming-uniform, B = 0."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base_layer = base.requires_grad_(False)
        self.scaling = alpha / r
        A = torch.empty(r, base.in_features)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(A.to(base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)


def _apply_lora(model: nn.Module, targets: tuple[str, ...], r: int, seed: int) -> str:
    """LoRA (r, α = r) on the target Linear layers, every other parameter frozen; returns which implementation."""
    try:
        import peft
    except ImportError:
        model.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets]
        for name in names:
            parent, _, leaf = name.rpartition(".")
            owner = model.get_submodule(parent)
            setattr(owner, leaf, _LoRALinear(getattr(owner, leaf), r, float(r), gen))
        return "local minimal LoRA"
    apply_peft_lora(model, targets, r, float(r), seed)
    return f"peft {peft.__version__}"


def _tokenize(tok, texts: list[str], cfg: ReparamConfig) -> dict[str, torch.Tensor]:
    enc = tok(texts, padding=True, truncation=True, max_length=cfg.nola_max_length, return_tensors="pt")
    return {k: v.to(cfg.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _text_accuracy(clf: TextClassifier, tok, texts: list[str], labels: np.ndarray, cfg: ReparamConfig) -> float:
    from ..models import encode_texts

    feats = encode_texts(clf.encoder, tok, texts, batch_size=32, max_length=cfg.nola_max_length, device=cfg.device)
    with torch.no_grad():
        pred = clf.head(feats.to(cfg.device)).argmax(1).cpu().numpy()
    return float((pred == labels).mean())


def _train_text(clf: TextClassifier, tok, texts: list[str], labels: np.ndarray, lr: float, cfg: ReparamConfig,
                label: str) -> dict[str, Any]:
    """AdamW on the adapter and the head, cosine schedule, seeded shuffling."""
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    steps = cfg.nola_epochs * math.ceil(len(texts) / cfg.nola_batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "nola-shuffle"))
    y = torch.from_numpy(labels).to(cfg.device)
    clf.train()
    epoch_seconds = []
    for epoch in range(cfg.nola_epochs):
        loss_sum = 0.0
        with Stopwatch(cfg.device) as sw:
            for idx in torch.randperm(len(texts), generator=gen).split(cfg.nola_batch_size):
                loss = F.cross_entropy(clf(_tokenize(tok, [texts[i] for i in idx], cfg)), y[idx.to(cfg.device)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
        epoch_seconds.append(sw.seconds)
        _progress(f"{label}: epoch {epoch + 1}/{cfg.nola_epochs}, {sw.seconds:.1f} s, loss {loss_sum / len(texts):.4f}")
    clf.eval()
    return {"train_seconds": sum(epoch_seconds), "epoch_seconds": epoch_seconds, "steps": steps,
            "trainable": sum(p.numel() for p in params)}


def _nola_split(cfg: ReparamConfig):
    data = load_bbc_news(seed=cfg.seed)
    tr, va = stratified_split(data.train_labels, cfg.nola_val_fraction, seed=cfg.seed)
    tr, va = tr[: cfg.nola_train_docs], va[: cfg.nola_val_docs]
    n_test = len(data.test_texts) if cfg.nola_test_docs is None else min(cfg.nola_test_docs, len(data.test_texts))
    pick = lambda idx: ([data.train_texts[i] for i in idx], data.train_labels[idx])  # noqa: E731
    return pick(tr), pick(va), (data.test_texts[:n_test], data.test_labels[:n_test]), data.classes


def _nola_rows(cfg: ReparamConfig, add: Callable[..., None], results: dict) -> None:
    from ..models import ModelNotFoundError, encode_texts, load_minilm

    try:
        base, tok = load_minilm(cfg.device)
    except ModelNotFoundError as err:
        results.setdefault("skipped", {})["nola"] = str(err)
        _progress(f"nola: skipped: {err}")
        return
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y), classes = _nola_split(cfg)
    c = len(classes)
    results["nola_data"] = {"dataset": "BBC News", "classes": classes, "n_train_docs": len(tr_x),
                            "n_val_docs": len(va_x), "n_test_docs": len(te_x), "max_length": cfg.nola_max_length}
    width = base.config.hidden_size
    head_numbers = width * c + c
    common = {"n_train_docs": len(tr_x), "max_length": cfg.nola_max_length, "epochs": cfg.nola_epochs,
              "stored_head": head_numbers}
    # the floor: ridge on frozen mean-pooled features of the same documents
    with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
        feats = [encode_texts(base, tok, x, batch_size=32, max_length=cfg.nola_max_length, device=cfg.device)
                 .double() for x in (tr_x, va_x, te_x)]
        sol, rel, path = ridge_by_accuracy(feats[0], torch.from_numpy(tr_y), feats[1], torch.from_numpy(va_y), c,
                                           DEFAULT_HOLDOUT_GRID)
    pred = (feats[2] @ sol.coef + sol.intercept).argmax(1).numpy()
    add("nola", "frozen MiniLM + ridge probe on mean-pooled features (closed form)", "closed-form floor",
        {"accuracy": float((pred == te_y).mean()), "val_accuracy": path[f"{rel:g}"], "stored_adapter": 0,
         "n_stored": head_numbers, "train_seconds": sw.seconds, "peak_mb": mem.peak_mb, "lam": sol.lam,
         "lam_rel": rel, "lam_path": path, **common, "epochs": None})
    del feats
    for arm in ("LoRA", "NOLA"):
        runs, best = [], None
        for lr in cfg.nola_lrs:
            encoder = copy.deepcopy(base)  # the pretrained weights, untouched by earlier runs
            if arm == "LoRA":
                impl = _apply_lora(encoder, cfg.nola_targets, cfg.nola_rank, derive_seed(cfg.seed, "lora"))
            else:
                apply_nola(encoder, NOLAConfig(target_modules=list(cfg.nola_targets), rank=cfg.nola_rank,
                                               n_basis_a=cfg.nola_n_basis, n_basis_b=cfg.nola_n_basis,
                                               alpha=float(cfg.nola_rank), seed=derive_seed(cfg.seed, "nola")))
                impl = "pilearn.reparam.apply_nola"
            clf = TextClassifier(encoder, width, c).to(cfg.device)
            adapter = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
            with PeakMemory(device=cfg.device) as mem:
                rep = _train_text(clf, tok, tr_x, tr_y, lr, cfg, f"{arm} lr={lr:g}")
            val = _text_accuracy(clf, tok, va_x, va_y, cfg)
            runs.append({"lr": lr, "val_accuracy": val, "train_seconds": rep["train_seconds"],
                         "epoch_seconds": rep["epoch_seconds"], "peak_mb": mem.peak_mb})
            _progress(f"{arm} lr={lr:g}: val acc {val:.4f}")
            if best is None or val > best[0]:
                best = (val, clf, runs[-1])
            else:
                del clf
        val, clf, run = best
        label = (f"LoRA r={cfg.nola_rank} on {'/'.join(cfg.nola_targets)} + head, AdamW" if arm == "LoRA" else
                 f"NOLA r={cfg.nola_rank}, k_A=k_B={cfg.nola_n_basis} on {'/'.join(cfg.nola_targets)} + head, AdamW")
        add("nola", label, arm,
            {"accuracy": _text_accuracy(clf, tok, te_x, te_y, cfg), "val_accuracy": val, "stored_adapter": adapter,
             "n_stored": adapter + head_numbers, "train_seconds": run["train_seconds"], "peak_mb": run["peak_mb"],
             "lr": run["lr"], "lr_runs": runs, "grid_seconds": sum(r["train_seconds"] for r in runs),
             "implementation": impl, **common})
        del clf, best


# ---------------------------------------------------------------------------------------------- run


def run_reparam(cfg: ReparamConfig, command: str = "pilearn bench reparam") -> dict:
    """Run the suite; write ``results.json``, ``results.md`` and ``accuracy_vs_stored.png``; return the results."""
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("reparam")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    results: dict[str, Any] = {"suite": "reparam", "command": command, "config": asdict(cfg),
                               "environment": environment(cfg.device), "rows": [], "group_seconds": {}}
    t0 = time.perf_counter()

    def add(group: str, method: str, family: str, row: dict, **info: Any) -> None:
        row = {"group": group, "method": method, "family": family, **row, **info}
        results["rows"].append(row)
        write_results(out, results)
        _progress(f"{group}: {method}: test acc {row['accuracy']:.4f}, stored {row.get('n_stored', '—')}, "
                  f"train {row['train_seconds']:.1f} s")

    data = None
    if any(_on(cfg, g) for g in ("pranc", "mcnc", "closed-form", "supsup")):
        data = _load_mnist(cfg)
        results["mnist"] = data.info()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("pranc", lambda: _pranc_rows(cfg, data, add)),
        ("mcnc", lambda: _mcnc_rows(cfg, data, add)),
        ("closed-form", lambda: _closed_form_rows(cfg, data, add)),
        ("supsup", lambda: _supsup_rows(cfg, data, add, results)),
        ("nola", lambda: _nola_rows(cfg, add, results)),
    ]
    for group, step in steps:
        if _on(cfg, group):
            _progress(f"group {group}")
            with Stopwatch(cfg.device) as sw:
                step()
            results["group_seconds"][group] = sw.seconds
            write_results(out, results)
    results["total_seconds"] = time.perf_counter() - t0
    write_results(out, results)
    render(out)
    _progress(f"wrote {out / 'results.json'}, results.md, accuracy_vs_stored.png")
    return results


# ---------------------------------------------------------------------------------------------- report


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _display(rows: list[dict]) -> list[dict]:
    return [{**r, "acc_pct": _pct(r.get("accuracy")), "val_pct": _pct(r.get("val_accuracy")),
             "one_shot_pct": _pct(r.get("infer_one_shot_accuracy")), "binary_pct": _pct(r.get("infer_binary_accuracy")),
             "min_entropy_pct": _pct(r.get("infer_min_entropy_accuracy")),
             "stored_fmt": f"{r['n_stored']:,}" if r.get("n_stored") is not None else None,
             "adapter_fmt": f"{r['stored_adapter']:,}" if r.get("stored_adapter") is not None else None,
             "tasks_fmt": " / ".join(f"{100 * a:.2f}" for a in r.get("task_accuracies", [])) or None}
            for r in rows]


COLUMNS = {
    "mnist": [("method", "method"), ("stored_fmt", "stored numbers"), ("compression", f"× vs {LENET_PARAMS:,}"),
              ("acc_pct", "test acc %"), ("val_pct", "val acc %"), ("train_seconds", "train s"),
              ("peak_mb", "peak MB"), ("epochs", "epochs"), ("lr", "lr")],
    "closed-form": [("method", "method"), ("stored_fmt", "stored numbers"), ("acc_pct", "test acc %"),
                    ("val_pct", "val acc %"), ("train_seconds", "time s"), ("peak_mb", "peak MB"),
                    ("lam_rel", "λ (rel.)")],
    "supsup": [("method", "method"), ("acc_pct", "avg acc % (task given)"), ("tasks_fmt", "per task %"),
               ("one_shot_pct", "task inference % (one-shot)"), ("binary_pct", "task inference % (binary)"),
               ("min_entropy_pct", "task inference % (min-entropy, k passes)"),
               ("bits_per_task", "bits per task"), ("train_seconds", "train s"),
               ("infer_one_shot_seconds", "one-shot infer s"), ("peak_mb", "peak MB")],
    "nola": [("method", "method"), ("adapter_fmt", "stored adapter numbers"), ("stored_fmt", "stored incl. head"),
             ("acc_pct", "test acc %"), ("val_pct", "val acc %"), ("lr", "lr"), ("train_seconds", "train s"),
             ("peak_mb", "peak MB")],
}
_TITLES = {"pranc": "PRANC: LeNet-5 / MNIST", "mcnc": "MCNC: LeNet-5 / MNIST, same budgets",
           "closed-form": "Closed form vs gradient: random-feature heads (LeNet-5 body frozen at its seeded init)",
           "supsup": "SupSup: PermutedMNIST", "nola": "NOLA vs LoRA: all-MiniLM-L6-v2 on BBC News"}


def _row_at(rows: list[dict], family: str, budget: int) -> dict | None:
    """The row of ``family`` at ``budget`` stored numbers (MCNC: the row built for that budget)."""
    for r in rows:
        if r["family"] == family and (r.get("n_basis") == budget or r.get("budget") == budget):
            return r
    return None


def bars(results: dict) -> list[str]:
    """The issue's bars, each 'met' / 'NOT met' from the numbers (or 'not run')."""
    rows = results["rows"]
    out = []
    pranc, mcnc = _row_at(rows, "PRANC", 5000), _row_at(rows, "MCNC", 5000)
    if pranc:
        ok = pranc["accuracy"] >= 0.985
        line = f"PRANC k=5000 test accuracy {100 * pranc['accuracy']:.2f} % ≥ 98.5 %: {'met' if ok else 'NOT met'}"
        if mcnc:
            line += (f"; MCNC at the same budget ({mcnc['n_stored']:,} stored): {100 * mcnc['accuracy']:.2f} % "
                     f"({'met' if mcnc['accuracy'] >= 0.985 else 'NOT met'} against the same bar)")
        out.append(line)
    else:
        out.append("PRANC k=5000 ≥ 98.5 %: not run (no PRANC row with k=5000)")
    ss = next((r for r in rows if r["family"] == "SupSup" and r["n_tasks"] == 5), None)
    if ss:
        ok_a, ok_i = ss["accuracy"] >= 0.924, ss["infer_one_shot_accuracy"] >= 0.99
        out.append(f"SupSup 5 tasks average accuracy {100 * ss['accuracy']:.2f} % ≥ 92.4 %: "
                   f"{'met' if ok_a else 'NOT met'}; one-shot task inference {100 * ss['infer_one_shot_accuracy']:.2f} "
                   f"% ≥ 99 %: {'met' if ok_i else 'NOT met'} ({ss['infer_batches']} batches of 128)")
    else:
        out.append("SupSup 5 tasks: not run")
    lora = next((r for r in rows if r["family"] == "LoRA"), None)
    nola = next((r for r in rows if r["family"] == "NOLA"), None)
    if lora and nola:
        gap = 100 * (lora["accuracy"] - nola["accuracy"])
        ratio = lora["stored_adapter"] / nola["stored_adapter"]
        ratio_all = lora["n_stored"] / nola["n_stored"]
        ok = gap <= 1.0 and ratio >= 10
        out.append(f"NOLA {100 * nola['accuracy']:.2f} % vs LoRA {100 * lora['accuracy']:.2f} % "
                   f"(at most 1 point below: {'yes' if gap <= 1.0 else 'no'}) with {ratio:.1f}× fewer stored adapter "
                   f"numbers ({ratio_all:.1f}× counting the head): {'met' if ok else 'NOT met'}")
    else:
        out.append("NOLA vs LoRA: not run" + (f" ({results['skipped']['nola']})" if "nola" in results.get("skipped", {})
                                              else ""))
    return out


def render_markdown(results: dict) -> str:
    """The Markdown report of a results dict (tables only from results files)."""
    env, cfg = results["environment"], results["config"]
    parts = [f"# reparam benchmark ({cfg['scale']})", "", f"Command: `{results['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} threads), "
             f"device {env['device']}  ", f"Revision: {env['git_revision']}, {env['time_utc']}, seed {cfg['seed']}", ""]
    if "mnist" in results:
        m = results["mnist"]
        parts += [f"MNIST: train {m['n_train']:,}, validation {m['n_val']:,} (held out of the training split), "
                  f"test {m['n_test']:,}.", ""]
    parts += ["## Bars", ""] + [f"- {b}" for b in bars(results)] + [""]
    for group in GROUPS:
        rows = [r for r in results["rows"] if r["group"] == group]
        if not rows:
            continue
        cols = COLUMNS["mnist" if group in ("pranc", "mcnc") else group]
        parts += [f"## {_TITLES[group]}", "", markdown_table(_display(rows), cols), ""]
        parts += _notes(group, rows, results)
    if results.get("group_seconds"):
        per_group = [{"group": g, "s": s} for g, s in results["group_seconds"].items()]
        parts += ["## Wall-clock per group", "", markdown_table(per_group, [("group", "group"), ("s", "seconds")]),
            "", f"Total: {results.get('total_seconds', float('nan')):.0f} s", ""]
    return "\n".join(parts)


def _notes(group: str, rows: list[dict], results: dict) -> list[str]:
    cfg = results["config"]
    if group == "pranc":
        return [f"Adam, cosine schedule to 0, batch {cfg['batch_size']}; LeNet-5 starts from PRANC's basis network 0. "
                "Train time includes drawing the cached basis (`basis_seconds` in results.json).", ""]
    if group == "mcnc":
        return [f"Sine generator hidden {cfg['mcnc_hidden']}, ω = {cfg['mcnc_omega']}; stored = segments·(k+1), the "
                "largest count within each budget.", ""]
    if group == "closed-form":
        direct = [r for r in rows if r.get("direct")]
        out = ["These are **random-feature heads**: the LeNet-5 body is frozen at its seeded random init and only the "
               "84→10 layer (850 parameters) is fitted, so k ≥ 850 spans the whole head. Time includes the body's "
               "features of the training split.", ""]
        for r in direct:
            d = r["direct"]
            out.append(f"- `solve_pranc_head` at the chosen λ, k={r['n_basis']}: {d['seconds']:.1f} s, test acc "
                       f"{100 * d['accuracy']:.2f} %, relative difference of α to the factored solve "
                       f"{d['alpha_rel_diff']:.1e}" + (f", warnings: {d['warnings']}" if d["warnings"] else ""))
        return out + ([""] if direct else [])
    if group == "supsup":
        tasks = results.get("supsup_tasks", [])
        return [f"{cfg['supsup_optimizer']} lr {cfg['supsup_lr']:g}, batch {cfg['supsup_batch_size']}, "
                f"{tasks[0]['steps'] if tasks else '?'} steps per task, masks keep {cfg['supsup_sparsity']:g} of each "
                "layer; stored bits = 64 (seed) + one bit per weight per task.", ""]
    if group == "nola":
        d = results.get("nola_data", {})
        return [f"{d.get('n_train_docs')} training documents (subsampled), {d.get('n_val_docs')} validation, "
                f"{d.get('n_test_docs')} test, truncated to {d.get('max_length')} tokens; lr grid {cfg['nola_lrs']} "
                "chosen per arm on validation; the head is trained in both arms and counted in 'stored incl. head'.",
                ""]
    return []


_STYLES = {"PRANC": ("o", "-", "tab:red"), "MCNC": ("s", "-", "tab:blue"),
           "closed-form ridge": ("^", "--", "tab:green"), "closed-form Adam": ("v", ":", "tab:olive"),
           "closed-form ridge (plain head)": ("D", "", "tab:green")}


def plot(results: dict, path: Path) -> None:
    """Test accuracy against stored numbers (log x) for PRANC, MCNC and the closed-form heads, LeNet-5 as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for family, (marker, ls, color) in _STYLES.items():
        pts = sorted((r["n_stored"], 100 * r["accuracy"]) for r in results["rows"] if r["family"] == family)
        if pts:
            ax.plot(*zip(*pts), marker=marker, ls=ls or "none", color=color, label=family)
    ref = next((r for r in results["rows"] if r["family"] == "reference"), None)
    if ref:
        ax.axhline(100 * ref["accuracy"], ls="--", lw=1, color="gray")
        ax.plot([ref["n_stored"]], [100 * ref["accuracy"]], marker="*", ms=12, color="black",
                label=f"LeNet-5, all {ref['n_stored']:,} numbers")
    ax.set_xscale("log")
    ax.set_xlabel("stored numbers (log scale)")
    ax.set_ylabel("MNIST test accuracy (%)")
    env = results["environment"]
    ax.set_title(f"reparam ({results['config']['scale']}): {env['device']}, {env['cpu_count']} cores", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def render(out: Path) -> None:
    """Rebuild ``results.md`` and ``accuracy_vs_stored.png`` in ``out`` from its ``results.json``."""
    results = json.loads((Path(out) / "results.json").read_text())
    (Path(out) / "results.md").write_text(render_markdown(results) + "\n")
    plot(results, Path(out) / "accuracy_vs_stored.png")
