"""``pilearn bench lora``: PIL-LoRA (closed-form adapters) against peft LoRA trained by AdamW, on real models.

Row groups (``--only``):

* ``lm``: domain adaptation of SmolLM2-135M (frozen, from the offline GGUF package) to each corpus of ``lm_corpora``
  (Shakespeare, and the Penn Treebank's news text as a second domain), text re-tokenized by SmolLM2's own tokenizer
  and cut into blocks of ``seq_len`` tokens: ``lm_train_tokens`` from the corpus' training split, ``lm_valid_tokens``
  from its validation split (PIL's step search, LoRA's early stopping), ``lm_test_tokens`` from its test split (the
  reported perplexity). Rows:

  - the frozen model;
  - PIL-LoRA, rank r on ``lm_targets`` (the seed's ``q_proj``/``v_proj``): :func:`~pilearn.adapters.fit_task_residuals`
    (next-token residuals pulled back to every adapter, ridge per layer, one step search on the validation blocks);
    and the same on ``lm_extra_targets`` (``o_proj``/``down_proj``, whose outputs write straight into the residual
    stream) when that is non-empty. Each PIL-LoRA row comes once per ``pil_downs`` entry: ``"random"`` (the seed's
    fixed seeded W_down, activation ``pil_activation``) and ``"rrr"`` (W_down chosen from the same statistics by
    reduced-rank ridge regression, a linear adapter: ``PILLoraConfig.down``);
  - peft LoRA of the same rank on the same modules, AdamW with a cosine schedule, validation perplexity every
    ``lora_eval_every`` steps, stopped after ``lora_patience`` evaluations without a gain or at ``lora_max_epochs``
    ("to convergence": the best validation point is the reported model); and the same run's adapter at the moment its
    training time first passed each PIL fit's time ("time-matched").

* ``cls``: all-MiniLM-L6-v2 on each data set of ``cls_datasets`` (BBC News, tweets), mean-pooled output, ``cls_train_docs``
  stratified training documents, ``cls_val_docs`` validation, ``cls_test_docs`` test. Rows: the frozen model with a
  closed-form ridge probe (:class:`~pilearn.adapters.ClosedFormHead`, λ on validation); PIL-LoRA rank r on
  ``query``/``value`` fitted to the probe's task residuals and the head re-solved on the adapted features (time
  includes the probe); peft LoRA of the same rank and modules with a zero-initialized linear head, AdamW, early
  stopping on validation accuracy, plus its time-matched snapshot. On the first data set, determinism (seed §3.5): the
  PIL-LoRA fit is repeated from scratch and compared bit for bit, and LoRA is trained again with another seed.

Time is wall-clock of fitting/training only (evaluations excluded); peak memory is the resident-set increase during
it (:class:`PeakMemory`); stored parameters are what a checkpoint must hold (PIL-LoRA: W_up and b, plus W_down for
``"rrr"``; a seeded W_down is regenerated from its seed; LoRA: A and B; classifiers add their head).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..features import derive_seed
from ._baselines import TextClassifier, apply_peft_lora
from ._results import PeakMemory, Stopwatch, default_out_dir, environment, markdown_table, write_results

__all__ = ["LoraBenchConfig", "SCALES", "GROUPS", "make_config", "run_lora", "render", "bars"]

Scale = Literal["smoke", "small", "full"]
GROUPS = ("lm", "cls")
LM_CORPORA = ("shakespeare", "ptb")
CLS_DATASETS = ("bbc", "tweets")


@dataclass
class LoraBenchConfig:
    """One run of the lora suite. ``scale`` picks the sizes below; fields override them."""

    scale: Scale = "small"
    groups: tuple[str, ...] | None = None  # None: every group of GROUPS
    rank: int = 8
    # lm: SmolLM2-135M domain adaptation
    lm_corpora: tuple[str, ...] = LM_CORPORA
    lm_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lm_extra_targets: tuple[str, ...] = ("o_proj", "down_proj")  # a second PIL-LoRA row; () to skip
    seq_len: int = 256
    lm_batch_size: int = 4  # blocks per batch (PIL's streaming batch and LoRA's optimizer batch)
    lm_train_tokens: int = 16384
    lm_valid_tokens: int = 4096
    lm_test_tokens: int = 8192
    pil_schedule: str = "parallel"
    pil_cg_iters: int = 1
    pil_n_step_groups: int = 1
    pil_activation: str = "gelu"
    # W_down of the PIL-LoRA arms: "random" (the seed's fixed projection, activation pil_activation) and/or "rrr"
    # (chosen by reduced-rank ridge, linear; PILLoraConfig.down)
    pil_downs: tuple[str, ...] = ("random", "rrr")
    # re-linearized rounds of the task-residual fit: round k+1 adds to the adapters (reset=False) a fit to the residuals
    # of the model after round k (classification: with the head re-solved after each round); random W_down only
    pil_rounds: int = 1
    lora_lr: float = 1e-3
    lora_alpha_ratio: float = 2.0  # lora_alpha = ratio · r (the common α = 16 at r = 8)
    lora_max_epochs: int = 4
    lora_eval_every: int = 4  # optimizer steps between validation evaluations
    lora_patience: int = 3  # evaluations without a validation gain before stopping
    # cls: all-MiniLM-L6-v2 classification
    cls_datasets: tuple[str, ...] = CLS_DATASETS
    cls_targets: tuple[str, ...] = ("query", "value")
    cls_train_docs: int = 600
    cls_val_docs: int = 200
    cls_test_docs: int = 600
    cls_max_length: int = 128
    cls_batch_size: int = 16
    cls_lr: float = 1e-3
    cls_max_epochs: int = 4
    cls_patience: int = 1  # epochs without a validation gain before stopping
    determinism: bool = True
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None


SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(lm_corpora=("shakespeare",), lm_extra_targets=(), seq_len=32, lm_batch_size=2, lm_train_tokens=128,
                  lm_valid_tokens=64, lm_test_tokens=64, lora_max_epochs=1, lora_eval_every=1, lora_patience=1,
                  cls_datasets=("bbc",), cls_train_docs=15, cls_val_docs=10, cls_test_docs=10, cls_max_length=16,
                  cls_batch_size=5, cls_max_epochs=1, determinism=True),
    "small": {},
    "full": dict(lm_train_tokens=262144, lm_valid_tokens=16384, lm_test_tokens=65536, lm_batch_size=8,
                 lora_max_epochs=10, lora_eval_every=16, cls_train_docs=None, cls_val_docs=400, cls_test_docs=None,
                 cls_max_length=256, cls_max_epochs=8, cls_patience=2),
}

_TUPLE_FIELDS = ("groups", "lm_corpora", "lm_targets", "lm_extra_targets", "cls_datasets", "cls_targets", "pil_downs")


def make_config(scale: Scale = "small", **overrides: Any) -> LoraBenchConfig:
    """The config of a scale, with ``overrides``; unknown keys raise ``TypeError``, bad values ``ValueError``."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    if "datasets" in overrides:  # --datasets: corpora and classification sets by name
        names = tuple(overrides.pop("datasets"))
        bad = sorted(set(names) - set(LM_CORPORA) - set(CLS_DATASETS))
        if bad:
            raise ValueError(f"datasets must be among {LM_CORPORA + CLS_DATASETS}, got unknown {bad}")
        overrides["lm_corpora"] = tuple(n for n in names if n in LM_CORPORA)
        overrides["cls_datasets"] = tuple(n for n in names if n in CLS_DATASETS)
    known = {f.name for f in fields(LoraBenchConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown LoraBenchConfig field(s) {unknown}; valid fields: {sorted(known)}")
    values = {**SCALES[scale], **overrides}
    for name in _TUPLE_FIELDS:
        v = values.get(name)
        if isinstance(v, str):
            values[name] = (v,)
        elif isinstance(v, list):
            values[name] = tuple(v)
    cfg = replace(LoraBenchConfig(scale=scale), **values)
    _validate(cfg)
    return cfg


def _validate(cfg: LoraBenchConfig) -> None:
    def one_of(name: str, values: tuple, allowed: tuple) -> None:
        bad = sorted(set(values) - set(allowed))
        if bad:
            raise ValueError(f"{name} must be among {allowed}, got unknown {bad}")

    if cfg.groups is not None:
        one_of("groups", cfg.groups, GROUPS)
    one_of("lm_corpora", cfg.lm_corpora, LM_CORPORA)
    one_of("cls_datasets", cfg.cls_datasets, CLS_DATASETS)
    one_of("pil_downs", cfg.pil_downs, ("random", "rrr"))
    if cfg.pil_rounds > 1 and "rrr" in cfg.pil_downs:
        raise ValueError(f"pil_rounds={cfg.pil_rounds} needs pil_downs=('random',): an rrr adapter is fitted once")
    if not cfg.pil_downs or len(set(cfg.pil_downs)) != len(cfg.pil_downs):
        raise ValueError(f"pil_downs must name each W_down kind at most once and at least one, got {cfg.pil_downs!r}")
    for name in ("rank", "seq_len", "lm_batch_size", "lm_train_tokens", "lm_valid_tokens", "lm_test_tokens",
                 "pil_cg_iters", "pil_n_step_groups", "pil_rounds", "lora_max_epochs", "lora_eval_every", "lora_patience",
                 "cls_val_docs", "cls_max_length", "cls_batch_size", "cls_max_epochs", "cls_patience"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    for name in ("cls_train_docs", "cls_test_docs"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
            raise ValueError(f"{name} must be an int >= 2 or None (all), got {v!r}")
    for name in ("lora_lr", "lora_alpha_ratio", "cls_lr"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a number > 0, got {v!r}")
    if not cfg.lm_targets or not cfg.cls_targets:
        raise ValueError("lm_targets and cls_targets must name at least one module")
    if cfg.pil_schedule not in ("parallel", "sequential"):
        raise ValueError(f"pil_schedule must be 'parallel' or 'sequential', got {cfg.pil_schedule!r}")
    for name in ("lm_train_tokens", "lm_valid_tokens", "lm_test_tokens"):
        if getattr(cfg, name) < cfg.seq_len * cfg.lm_batch_size:
            raise ValueError(f"{name} must be at least seq_len·lm_batch_size = {cfg.seq_len * cfg.lm_batch_size} "
                             f"(one batch), got {getattr(cfg, name)}")


def _on(cfg: LoraBenchConfig, group: str) -> bool:
    return cfg.groups is None or group in cfg.groups


def _progress(msg: str) -> None:
    print(f"[lora {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _load_or_skip(loader: Callable[..., Any], group: str, cfg: LoraBenchConfig, results: dict) -> Any:
    """``loader(cfg.device)``, or None with the reason recorded under ``results["skipped"][group]``."""
    from ..models import ModelNotFoundError

    try:
        return loader(cfg.device)
    except ModelNotFoundError as err:
        results.setdefault("skipped", {})[group] = str(err)
        _progress(f"{group}: skipped: {err}")
        return None


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


# ---------------------------------------------------------------------------------------------- lm


def _corpus_text(name: str, split: str, n_chars: int) -> str:
    from ..data import load_ptb, load_shakespeare

    if name == "shakespeare":
        c = load_shakespeare(level="char")
        return c.decode(getattr(c, split)[:n_chars])
    c = load_ptb(level="word")
    ids = getattr(c, split)[: n_chars // 4]  # ≈ 5 characters per PTB word with its space
    return c.decode(ids).replace(" <eos> ", "\n").replace("<eos>", "\n")


def _lm_blocks(tok: Any, corpus: str, split: str, n_tokens: int, cfg: LoraBenchConfig) -> list[dict[str, torch.Tensor]]:
    """``n_tokens`` rounded down to whole batches of ``lm_batch_size`` blocks of ``seq_len`` tokens."""
    per_batch = cfg.seq_len * cfg.lm_batch_size
    n_batches = n_tokens // per_batch
    need = n_batches * per_batch
    ids: list[int] = []
    n_chars = 8 * need + 1000
    for _ in range(4):
        ids = tok(_corpus_text(corpus, split, n_chars), add_special_tokens=False)["input_ids"]
        if len(ids) >= need:
            break
        n_chars *= 2
    if len(ids) < need:
        raise ValueError(f"the {split} split of {corpus} has {len(ids)} SmolLM2 tokens, fewer than the {need} asked")
    x = torch.tensor(ids[:need], dtype=torch.long).view(n_batches, cfg.lm_batch_size, cfg.seq_len)
    return [{"input_ids": b.to(cfg.device), "attention_mask": torch.ones_like(b).to(cfg.device)} for b in x]


@torch.no_grad()
def perplexity(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """exp of the mean next-token cross-entropy over every position of every block (the first has no target)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        logits = model(**b).logits[:, :-1].float()
        y = b["input_ids"][:, 1:]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        count += y.numel()
    model.train(was)
    return math.exp(total / count)


def _pil_config(cfg: LoraBenchConfig, targets: tuple[str, ...], down: str, seed: int) -> Any:
    from ..adapters import PILLoraConfig

    return PILLoraConfig(target_modules=list(targets), rank=cfg.rank, lam="auto", seed=seed, down=down,
                         activation=cfg.pil_activation if down == "random" else "identity")


def _pil_name(cfg: LoraBenchConfig, down: str) -> str:
    if down == "rrr":
        return f"PIL-LoRA r={cfg.rank}, W_down by reduced-rank ridge (linear),"
    return f"PIL-LoRA r={cfg.rank}"


def _lm_rows(cfg: LoraBenchConfig, add: Callable[..., dict], results: dict) -> None:
    from ..adapters import fit_task_residuals, get_pil_model
    from ..models import load_smollm2

    loaded = _load_or_skip(load_smollm2, "lm", cfg, results)
    if loaded is None:
        return
    base, tok = loaded
    base.requires_grad_(False)
    n_params = sum(p.numel() for p in base.parameters())
    for corpus in cfg.lm_corpora:
        train = _lm_blocks(tok, corpus, "train", cfg.lm_train_tokens, cfg)
        valid = _lm_blocks(tok, corpus, "valid", cfg.lm_valid_tokens, cfg)
        test = _lm_blocks(tok, corpus, "test", cfg.lm_test_tokens, cfg)
        tokens = {s: sum(b["input_ids"].numel() for b in bs) for s, bs in (("train", train), ("valid", valid),
                                                                           ("test", test))}
        results.setdefault("lm_data", {})[corpus] = {"tokens": tokens, "seq_len": cfg.seq_len,
                                                     "batch_blocks": cfg.lm_batch_size, "model_parameters": n_params}
        common = {"dataset": corpus, "train_tokens": tokens["train"]}
        ppl0 = perplexity(base, test)
        add("lm", "SmolLM2-135M, frozen", "frozen",
            {**common, "test_ppl": ppl0, "valid_ppl": perplexity(base, valid), "stored": 0, "train_seconds": 0.0})
        pil_times = []
        for down, targets in [(dn, t) for dn in cfg.pil_downs for t in (cfg.lm_targets, cfg.lm_extra_targets) if t]:
            model = copy.deepcopy(base)
            pil = get_pil_model(model, _pil_config(cfg, targets, down, derive_seed(cfg.seed, "pil-lora", corpus)))
            with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
                round_losses = []
                for r in range(cfg.pil_rounds):
                    rep = fit_task_residuals(pil, train, schedule=cfg.pil_schedule, valid_batches=valid,
                                             cg_iters=cfg.pil_cg_iters, n_step_groups=cfg.pil_n_step_groups,
                                             reset=r == 0)
                    round_losses.append((rep.loss_before, rep.loss_after))
            pil_times.append(sw.seconds)
            lay = list(rep.layers.values())
            add("lm", f"{_pil_name(cfg, down)} on {'/'.join(targets)}, task residuals", "PIL-LoRA",
                {**common, "targets": list(targets), "down": down, "test_ppl": perplexity(pil, test),
                 "valid_ppl": perplexity(pil, valid), "stored": pil.n_adapter_parameters,
                 "train_seconds": sw.seconds, "peak_mb": mem.peak_mb, "passes": cfg.pil_rounds * rep.n_passes,
                 "step": rep.step,
                 "loss_before": round_losses[0][0], "loss_after": rep.loss_after, "rounds": cfg.pil_rounds,
                 "round_losses": round_losses,
                 "layer_r2_mean": float(np.mean([l.r2 for l in lay])) if lay else None,
                 "lam_rel": sorted({l.lam_rel for l in lay})})
            del pil, model
        _lora_lm(cfg, base, corpus, train, valid, test, pil_times, common, add)


def _lora_lm(cfg: LoraBenchConfig, base: nn.Module, corpus: str, train: list, valid: list, test: list,
             match_seconds: list[float], common: dict, add: Callable[..., dict]) -> None:
    model = apply_peft_lora(copy.deepcopy(base), cfg.lm_targets, cfg.rank, cfg.lora_alpha_ratio * cfg.rank,
                             derive_seed(cfg.seed, "lora", corpus))
    stored = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lora_lr)
    total_steps = cfg.lora_max_epochs * len(train)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "lora-order", corpus))
    curve = [{"step": 0, "seconds": 0.0, "valid_ppl": perplexity(model, valid)}]
    best = (curve[0]["valid_ppl"], 0, 0.0, _trainable(model))
    matched: dict[float, tuple[int, dict]] = {}
    seconds, step, since_best, stopped = 0.0, 0, 0, "max_epochs"
    with PeakMemory(device=cfg.device) as mem:
        for epoch in range(cfg.lora_max_epochs):
            for i in torch.randperm(len(train), generator=gen).tolist():
                model.train()
                with Stopwatch(cfg.device) as sw:
                    b = train[i]
                    logits = model(**b).logits[:, :-1]
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b["input_ids"][:, 1:].reshape(-1))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                seconds += sw.seconds
                step += 1
                for t in match_seconds:
                    if t not in matched and seconds >= t:
                        matched[t] = (step, seconds, _trainable(model))
                if step % cfg.lora_eval_every == 0:
                    v = perplexity(model, valid)
                    curve.append({"step": step, "seconds": seconds, "valid_ppl": v, "train_loss": float(loss.detach())})
                    _progress(f"lm {corpus}: LoRA step {step}, {seconds:.0f} s, valid PPL {v:.3f}")
                    if v < best[0]:
                        best, since_best = (v, step, seconds, _trainable(model)), 0
                    else:
                        since_best += 1
                    if since_best >= cfg.lora_patience:
                        stopped = "patience"
                        break
            if stopped == "patience":
                break
    final = _trainable(model)
    _, best_step, best_seconds, best_state = best
    _load_trainable(model, best_state)
    label = f"LoRA r={cfg.rank} on {'/'.join(cfg.lm_targets)} (peft), AdamW lr {cfg.lora_lr:g}"
    add("lm", f"{label}, to convergence (best validation point)", "LoRA",
        {**common, "targets": list(cfg.lm_targets), "test_ppl": perplexity(model, test), "valid_ppl": best[0],
         "stored": stored, "train_seconds": best_seconds, "total_train_seconds": seconds, "steps": best_step,
         "total_steps": step, "stopped": stopped, "peak_mb": mem.peak_mb, "curve": curve, "lr": cfg.lora_lr,
         "alpha": cfg.lora_alpha_ratio * cfg.rank})
    for t in match_seconds:
        if t in matched:
            s, at, state = matched[t]
            _load_trainable(model, state)
            add("lm", f"{label}, time-matched to {t:.0f} s", "LoRA time-matched",
                {**common, "targets": list(cfg.lm_targets), "test_ppl": perplexity(model, test),
                 "valid_ppl": perplexity(model, valid), "stored": stored, "train_seconds": at, "steps": s,
                 "matched_to": t})
        else:
            _load_trainable(model, final)
            add("lm", f"{label}, time-matched to {t:.0f} s (all {step} steps took {seconds:.0f} s)",
                "LoRA time-matched", {**common, "targets": list(cfg.lm_targets), "test_ppl": perplexity(model, test),
                                      "stored": stored, "train_seconds": seconds, "steps": step, "matched_to": t})


# ---------------------------------------------------------------------------------------------- cls


def _cls_split(cfg: LoraBenchConfig, name: str):
    from ..data import load_bbc_news, load_tweets, stratified_split

    data = load_bbc_news(seed=cfg.seed) if name == "bbc" else load_tweets(seed=cfg.seed)
    n = len(data.train_labels)
    val_fraction = min(0.5, cfg.cls_val_docs / n) if cfg.cls_train_docs is None else \
        min(0.5, cfg.cls_val_docs / min(n, cfg.cls_train_docs + cfg.cls_val_docs))
    tr, va = stratified_split(data.train_labels, val_fraction, seed=cfg.seed)
    rng = np.random.default_rng(derive_seed(cfg.seed, "cls-subsample", name))
    tr, va = rng.permutation(tr), rng.permutation(va)
    if cfg.cls_train_docs is not None:
        tr = np.sort(_stratified_take(tr, data.train_labels, cfg.cls_train_docs))
    va = np.sort(_stratified_take(va, data.train_labels, cfg.cls_val_docs))
    te = np.arange(len(data.test_labels))
    if cfg.cls_test_docs is not None:
        te = np.sort(_stratified_take(rng.permutation(te), data.test_labels, cfg.cls_test_docs))
    pick = lambda texts, labels, idx: ([texts[i] for i in idx], labels[idx])  # noqa: E731
    return (pick(data.train_texts, data.train_labels, tr), pick(data.train_texts, data.train_labels, va),
            pick(data.test_texts, data.test_labels, te), data.classes)


def _stratified_take(idx: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of the (shuffled) ``idx`` taken class by class in proportion to the class sizes."""
    if n >= len(idx):
        return idx
    classes, counts = np.unique(labels[idx], return_counts=True)
    want = np.maximum(1, np.floor(counts * n / len(idx)).astype(int))
    for c in np.argsort(-counts)[: n - want.sum()]:  # hand the rounding remainder to the largest classes
        want[c] += 1
    return np.concatenate([idx[labels[idx] == c][:k] for c, k in zip(classes, want)])


def _tokenized(tok: Any, texts: list[str], labels: np.ndarray, cfg: LoraBenchConfig) -> list[tuple[dict, torch.Tensor]]:
    out = []
    for s in range(0, len(texts), cfg.cls_batch_size):
        enc = tok(texts[s: s + cfg.cls_batch_size], padding=True, truncation=True, max_length=cfg.cls_max_length,
                  return_tensors="pt")
        enc = {k: v.to(cfg.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out.append((enc, torch.from_numpy(labels[s: s + cfg.cls_batch_size]).to(cfg.device)))
    return out


@torch.no_grad()
def _features(model: nn.Module, batches: list[tuple[dict, torch.Tensor]]) -> torch.Tensor:
    from ..models import mean_pool

    model.eval()
    return torch.cat([mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]) for enc, _ in batches])


def _labels(batches: list[tuple[dict, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([y for _, y in batches])


@torch.no_grad()
def _clf_accuracy(clf: TextClassifier, batches: list) -> float:
    clf.eval()
    pred = torch.cat([clf(enc).argmax(1) for enc, _ in batches])
    return float((pred == _labels(batches)).double().mean())


def _cls_rows(cfg: LoraBenchConfig, add: Callable[..., dict], results: dict) -> None:
    from ..adapters import ClosedFormHead, fit_task_residuals, get_pil_model
    from ..models import load_minilm

    loaded = _load_or_skip(load_minilm, "cls", cfg, results)
    if loaded is None:
        return
    base, tok = loaded
    base.requires_grad_(False)
    width = base.config.hidden_size
    for d_index, name in enumerate(cfg.cls_datasets):
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y), classes = _cls_split(cfg, name)
        c = len(classes)
        train, val, test = (_tokenized(tok, x, y, cfg) for x, y in ((tr_x, tr_y), (va_x, va_y), (te_x, te_y)))
        results.setdefault("cls_data", {})[name] = {"classes": classes, "n_train_docs": len(tr_x),
                                                    "n_val_docs": len(va_x), "n_test_docs": len(te_x),
                                                    "max_length": cfg.cls_max_length}
        head_numbers = width * c + c
        common = {"dataset": name, "n_train_docs": len(tr_x)}
        y_tr, y_va, y_te = _labels(train), _labels(val), _labels(test)

        def probe(encoder: nn.Module) -> ClosedFormHead:
            return ClosedFormHead(lam="auto").fit(_features(encoder, train).double(), y_tr,
                                                  valid=(_features(encoder, val).double(), y_va))

        def head_accuracy(encoder: nn.Module, head: ClosedFormHead, batches: list, y: torch.Tensor) -> float:
            return float((head.predict(_features(encoder, batches).double()) == y).double().mean())

        with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
            head0 = probe(base)
        probe_seconds = sw.seconds
        add("cls", "MiniLM frozen + closed-form ridge probe (mean-pooled)", "probe",
            {**common, "accuracy": head_accuracy(base, head0, test, y_te),
             "val_accuracy": head_accuracy(base, head0, val, y_va), "stored": head_numbers,
             "train_seconds": probe_seconds, "peak_mb": mem.peak_mb, "lam_rel": head0.lam_})

        def fit_pil(down: str) -> tuple[nn.Module, ClosedFormHead, Any, float, float]:
            pil = get_pil_model(copy.deepcopy(base),
                                _pil_config(cfg, cfg.cls_targets, down, derive_seed(cfg.seed, "pil-lora", name)))
            with PeakMemory(device=cfg.device) as mem, Stopwatch(cfg.device) as sw:
                head, round_losses = head0, []
                for r in range(cfg.pil_rounds):
                    rep = fit_task_residuals(pil, train, head=head, valid_batches=val, schedule=cfg.pil_schedule,
                                             cg_iters=cfg.pil_cg_iters, reset=r == 0)
                    head = probe(pil)  # round r + 1 pulls back the residuals of the re-solved head
                    round_losses.append((rep.loss_before, rep.loss_after))
            rep.round_losses = round_losses
            return pil, head, rep, sw.seconds + probe_seconds, mem.peak_mb

        determinism = cfg.determinism and d_index == 0
        match_seconds = None
        for k, down in enumerate(cfg.pil_downs):
            pil, head, rep, pil_seconds, pil_mb = fit_pil(down)
            match_seconds = pil_seconds if match_seconds is None else match_seconds  # LoRA matches the first arm
            pil_row = add("cls", f"{_pil_name(cfg, down)} on {'/'.join(cfg.cls_targets)}, task residuals + ridge "
                          "head", "PIL-LoRA",
                          {**common, "down": down, "accuracy": head_accuracy(pil, head, test, y_te),
                           "accuracy_probe_head": head_accuracy(pil, head0, test, y_te),
                           "val_accuracy": head_accuracy(pil, head, val, y_va),
                           "stored": pil.n_adapter_parameters + head_numbers,
                           "stored_adapter": pil.n_adapter_parameters, "train_seconds": pil_seconds,
                           "peak_mb": pil_mb, "passes": cfg.pil_rounds * (rep.n_passes + 1) + 1, "step": rep.step,
                           "lam_rel": head.lam_,
                           "loss_before": rep.round_losses[0][0], "loss_after": rep.loss_after,
                           "rounds": cfg.pil_rounds, "round_losses": rep.round_losses,
                           "layer_r2_mean": float(np.mean([l.r2 for l in rep.layers.values()])) if rep.layers
                           else None})
            if determinism and k == 0:
                pil2, head2, _, _, _ = fit_pil(down)
                a, b = pil.adapter_state_dict(), pil2.adapter_state_dict()
                diff = max(float((a[k2] - b[k2]).abs().max()) for k2 in a)
                pil_row["refit_max_abs_diff"] = diff
                pil_row["refit_head_max_abs_diff"] = float((head.coef - head2.coef).abs().max())
                pil_row["refit_accuracy"] = head_accuracy(pil2, head2, test, y_te)
                del pil2, head2
            del pil
        seeds = (cfg.seed, cfg.seed + 1) if determinism else (cfg.seed,)
        for seed in seeds:
            _lora_cls(cfg, base, name, train, val, test, width, c, head_numbers, match_seconds, common, add, seed,
                      time_matched=seed == cfg.seed)


def _lora_cls(cfg: LoraBenchConfig, base: nn.Module, name: str, train: list, val: list, test: list, width: int,
              c: int, head_numbers: int, match: float, common: dict, add: Callable[..., dict], seed: int,
              time_matched: bool) -> None:
    encoder = apply_peft_lora(copy.deepcopy(base), cfg.cls_targets, cfg.rank, cfg.lora_alpha_ratio * cfg.rank,
                               derive_seed(seed, "lora", name))
    clf = TextClassifier(encoder, width, c).to(cfg.device)
    adapter = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.cls_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.cls_max_epochs * len(train))
    gen = torch.Generator().manual_seed(derive_seed(seed, "lora-order", name))
    best = (-1.0, 0, 0.0, None)
    matched = None
    seconds, step, since_best, stopped, curve = 0.0, 0, 0, "max_epochs", []
    with PeakMemory(device=cfg.device) as mem:
        for epoch in range(cfg.cls_max_epochs):
            for i in torch.randperm(len(train), generator=gen).tolist():
                clf.train()
                with Stopwatch(cfg.device) as sw:
                    enc, y = train[i]
                    loss = F.cross_entropy(clf(enc), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                seconds += sw.seconds
                step += 1
                if matched is None and seconds >= match:
                    matched = (step, seconds, _trainable(clf))
            acc = _clf_accuracy(clf, val)
            curve.append({"epoch": epoch + 1, "step": step, "seconds": seconds, "val_accuracy": acc})
            _progress(f"cls {name}: LoRA seed {seed} epoch {epoch + 1}, {seconds:.0f} s, val acc {acc:.4f}")
            if acc > best[0]:
                best, since_best = (acc, step, seconds, _trainable(clf)), 0
            else:
                since_best += 1
                if since_best >= cfg.cls_patience:
                    stopped = "patience"
                    break
    final = _trainable(clf)
    val_acc, best_step, best_seconds, state = best
    _load_trainable(clf, state)
    label = f"LoRA r={cfg.rank} on {'/'.join(cfg.cls_targets)} (peft) + head, AdamW lr {cfg.cls_lr:g}"
    if seed != cfg.seed:
        label += f", seed {seed}"
    add("cls", label + ", to convergence (best validation epoch)", "LoRA" if seed == cfg.seed else "LoRA other seed",
        {**common, "accuracy": _clf_accuracy(clf, test), "val_accuracy": val_acc, "stored": adapter + head_numbers,
         "stored_adapter": adapter, "train_seconds": best_seconds, "total_train_seconds": seconds, "steps": best_step,
         "total_steps": step, "stopped": stopped, "peak_mb": mem.peak_mb, "curve": curve, "lr": cfg.cls_lr,
         "seed": seed})
    if time_matched:
        s, at, st = matched if matched is not None else (step, seconds, final)
        _load_trainable(clf, st)
        add("cls", f"{label}, time-matched to {match:.0f} s", "LoRA time-matched",
            {**common, "accuracy": _clf_accuracy(clf, test), "val_accuracy": _clf_accuracy(clf, val),
             "stored": adapter + head_numbers, "stored_adapter": adapter, "train_seconds": at, "steps": s,
             "matched_to": match})


# ---------------------------------------------------------------------------------------------- run


def run_lora(cfg: LoraBenchConfig, command: str = "pilearn bench lora") -> dict:
    """Run the suite; write ``results.json``, ``results.md`` and ``lora_curves.png``; return the results."""
    out = Path(cfg.out) if cfg.out is not None else default_out_dir("lora")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    results: dict[str, Any] = {"suite": "lora", "command": command, "config": asdict(cfg),
                               "environment": environment(cfg.device), "rows": [], "group_seconds": {}}
    t0 = time.perf_counter()

    def add(group: str, method: str, family: str, row: dict) -> dict:
        row = {"group": group, "method": method, "family": family, **row}
        results["rows"].append(row)
        write_results(out, results)
        metric = f"test PPL {row['test_ppl']:.3f}" if "test_ppl" in row else f"test acc {row['accuracy']:.4f}"
        _progress(f"{group} {row['dataset']}: {method}: {metric}, {row.get('train_seconds', 0):.1f} s")
        return row

    for group, step in (("lm", lambda: _lm_rows(cfg, add, results)), ("cls", lambda: _cls_rows(cfg, add, results))):
        if _on(cfg, group):
            _progress(f"group {group}")
            with Stopwatch(cfg.device) as sw:
                step()
            results["group_seconds"][group] = sw.seconds
            write_results(out, results)
    results["total_seconds"] = time.perf_counter() - t0
    write_results(out, results)
    render(out)
    _progress(f"wrote {out / 'results.json'}, results.md, lora_curves.png")
    return results


# ---------------------------------------------------------------------------------------------- report


def _kind(row: dict) -> str:
    """The label of a PIL-LoRA row in bars and plots: its W_down kind."""
    return "PIL-LoRA-RRR" if row.get("down") == "rrr" else "PIL-LoRA"


def _find(rows: list[dict], group: str, dataset: str, family: str, method_part: str | None = None) -> dict | None:
    for r in rows:
        if r["group"] == group and r["dataset"] == dataset and r["family"] == family and (
                method_part is None or method_part in r["method"]):
            return r
    return None


def bars(results: dict) -> list[str]:
    """The issue's bars per corpus / data set, each 'met' / 'NOT met' from the numbers."""
    rows, cfg = results["rows"], results["config"]
    groups = cfg.get("groups") or GROUPS
    out = []
    for corpus in (cfg["lm_corpora"] if "lm" in groups else ()):
        frozen = _find(rows, "lm", corpus, "frozen")
        lora = _find(rows, "lm", corpus, "LoRA")
        pil = _find(rows, "lm", corpus, "PIL-LoRA", "/".join(cfg["lm_targets"]))
        if not (frozen and lora and pil):
            out.append(f"SmolLM2 {corpus}: not run")
            continue
        red_lora = frozen["test_ppl"] - lora["test_ppl"]
        red_pil = frozen["test_ppl"] - pil["test_ppl"]
        share = red_pil / red_lora if red_lora > 0 else float("nan")
        t_ratio = pil["train_seconds"] / lora["train_seconds"] if lora["train_seconds"] > 0 else float("nan")
        ok = share >= 0.9 and t_ratio <= 0.1
        line = (f"SmolLM2 {corpus} ({'/'.join(cfg['lm_targets'])}): PIL-LoRA PPL {frozen['test_ppl']:.2f} → "
                f"{pil['test_ppl']:.2f}, LoRA → {lora['test_ppl']:.2f}; PIL gets {100 * share:.0f} % of LoRA's "
                f"reduction (≥ 90 %) in {100 * t_ratio:.0f} % of its time (≤ 10 %): {'met' if ok else 'NOT met'}")
        extra = [r for r in rows if r["group"] == "lm" and r["dataset"] == corpus and r["family"] == "PIL-LoRA"
                 and r is not pil]
        for r in extra:
            s = (frozen["test_ppl"] - r["test_ppl"]) / red_lora if red_lora > 0 else float("nan")
            kind = _kind(r)
            line += (f"; {kind} on {'/'.join(r['targets'])}: {r['test_ppl']:.2f} ({100 * s:.0f} % of the reduction, "
                     f"{100 * r['train_seconds'] / lora['train_seconds']:.0f} % of the time)")
        out.append(line)
    for name in (cfg["cls_datasets"] if "cls" in groups else ()):
        lora = _find(rows, "cls", name, "LoRA")
        pils = [r for r in rows if r["group"] == "cls" and r["dataset"] == name and r["family"] == "PIL-LoRA"]
        if not (lora and pils):
            out.append(f"MiniLM {name}: not run")
            continue
        for pil in pils:
            out.append(_cls_bar(name, pil, lora))
    return out


def _cls_bar(name: str, pil: dict, lora: dict) -> str:
    kind = _kind(pil)
    gap = 100 * (lora["accuracy"] - pil["accuracy"])
    mem_ok = pil["peak_mb"] < lora["peak_mb"]
    return (f"MiniLM {name}: {kind} {100 * pil['accuracy']:.2f} % vs LoRA {100 * lora['accuracy']:.2f} % "
            f"(within 1 point: {'yes' if gap <= 1.0 else 'no'}); fitting memory {pil['peak_mb']:.0f} MB vs LoRA "
            f"training {lora['peak_mb']:.0f} MB (below: {'yes' if mem_ok else 'no'}): "
            f"{'met' if gap <= 1.0 and mem_ok else 'NOT met'}")


def _advantages(results: dict) -> list[str]:
    """Seed §3.5's table, from the numbers of the first classification data set and the first corpus."""
    rows, cfg = results["rows"], results["config"]
    lines = []
    for group, datasets in (("lm", cfg["lm_corpora"]), ("cls", cfg["cls_datasets"])):
        for name in datasets[:1]:
            pil, lora = _find(rows, group, name, "PIL-LoRA"), _find(rows, group, name, "LoRA")
            if not (pil and lora):
                continue
            other = _find(rows, group, name, "LoRA other seed")
            det_pil = ("not measured" if "refit_max_abs_diff" not in pil else
                       f"refit from scratch: max |ΔW_up| = {pil['refit_max_abs_diff']:.1e}, test accuracy "
                       f"{100 * pil['refit_accuracy']:.2f} % vs {100 * pil['accuracy']:.2f} %")
            det_lora = ("not measured" if other is None else
                        f"seed {other['seed']}: {100 * other['accuracy']:.2f} % vs {100 * lora['accuracy']:.2f} %")
            lines += [f"### {group} / {name}", "",
                      "| aspect | LoRA (measured) | PIL-LoRA (measured) |", "|---|---|---|",
                      f"| training steps | {lora['steps']} AdamW steps to the best validation point "
                      f"({lora['total_steps']} run) | {pil['passes']} passes over the data, no gradient step |",
                      f"| hyper-parameters set by hand | lr {lora['lr']:g}, epochs/patience, batch, α | none: λ by "
                      "validation/GCV per layer, step η by line search |",
                      f"| training memory (peak RSS increase) | {lora.get('peak_mb', float('nan')):.0f} MB | "
                      f"{pil['peak_mb']:.0f} MB |",
                      f"| wall-clock | {lora['train_seconds']:.0f} s | {pil['train_seconds']:.0f} s |",
                      f"| deterministic | {det_lora} | {det_pil} |", ""]
    return lines


COLUMNS = {
    "lm": [("dataset", "corpus"), ("method", "method"), ("test_ppl", "test PPL"), ("valid_ppl", "valid PPL"),
           ("stored", "stored params"), ("train_seconds", "fit/train s (†)"), ("steps", "steps"), ("passes", "passes"),
           ("peak_mb", "peak MB")],
    "cls": [("dataset", "data"), ("method", "method"), ("acc_pct", "test acc %"), ("val_pct", "val acc %"),
            ("stored", "stored params"), ("train_seconds", "fit/train s (†)"), ("steps", "steps"), ("passes", "passes"),
            ("peak_mb", "peak MB")],
}
_TIME_NOTE = ("(†) PIL-LoRA: the whole fit, its validation step search included (classification: the ridge probe and "
              "the head re-solve too). LoRA: its optimizer steps up to the reported point (to convergence: the best "
              "validation point); its validation passes and the steps after the best point are not counted "
              "(`total_train_seconds` in results.json has all steps). Time-matched rows: the LoRA adapter at the "
              "first step whose cumulated training time reached the PIL fit's time.")


def render_markdown(results: dict) -> str:
    env, cfg = results["environment"], results["config"]
    parts = [f"# lora benchmark ({cfg['scale']})", "", f"Command: `{results['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} threads), "
             f"device {env['device']}  ", f"Revision: {env['git_revision']}, {env['time_utc']}, seed {cfg['seed']}", "",
             "## Bars", ""] + [f"- {b}" for b in bars(results)] + [""]
    for group, title in (("lm", "SmolLM2-135M domain adaptation"), ("cls", "all-MiniLM-L6-v2 classification")):
        rows = [r for r in results["rows"] if r["group"] == group]
        if not rows:
            continue
        disp = [{**r, "acc_pct": None if r.get("accuracy") is None else 100 * r["accuracy"],
                 "val_pct": None if r.get("val_accuracy") is None else 100 * r["val_accuracy"],
                 "stored": f"{r['stored']:,}" if r.get("stored") is not None else None} for r in rows]
        parts += [f"## {title}", "", markdown_table(disp, COLUMNS[group]), "", _TIME_NOTE, ""]
        data = results.get(f"{group}_data", {})
        for name, d in data.items():
            parts.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in d.items() if k != "classes"))
        parts.append("")
    adv = _advantages(results)
    if adv:
        parts += ["## Seed §3.5's table, measured", ""] + adv
    if results.get("skipped"):
        parts += ["## Skipped", ""] + [f"- {g}: {why}" for g, why in results["skipped"].items()] + [""]
    if results.get("group_seconds"):
        per_group = [{"group": g, "s": s} for g, s in results["group_seconds"].items()]
        parts += ["## Wall-clock per group", "", markdown_table(per_group, [("group", "group"), ("s", "seconds")]),
                  "", f"Total: {results.get('total_seconds', float('nan')):.0f} s", ""]
    return "\n".join(parts)


def plot(results: dict, path: Path) -> None:
    """LoRA's validation perplexity against training seconds per corpus, PIL-LoRA fits as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = [c for c in results["config"]["lm_corpora"] if _find(results["rows"], "lm", c, "LoRA")]
    fig, axes = plt.subplots(1, max(1, len(corpora)), figsize=(6 * max(1, len(corpora)), 4.5), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        lora = _find(results["rows"], "lm", corpus, "LoRA")
        pts = [(p["seconds"], p["valid_ppl"]) for p in lora["curve"]]
        ax.plot(*zip(*pts), marker=".", color="tab:blue", label="LoRA (AdamW), validation")
        frozen = _find(results["rows"], "lm", corpus, "frozen")
        if frozen:
            ax.axhline(frozen["valid_ppl"], ls="--", color="gray", lw=1, label="frozen")
        for r, color in zip([r for r in results["rows"] if r["group"] == "lm" and r["dataset"] == corpus
                             and r["family"] == "PIL-LoRA"], ("tab:red", "tab:orange", "tab:purple", "tab:brown")):
            kind = _kind(r)
            ax.plot([r["train_seconds"]], [r["valid_ppl"]], marker="*", ms=12, ls="none", color=color,
                    label=f"{kind} {'/'.join(r['targets'])}")
        ax.set_xlabel("training / fitting seconds")
        ax.set_ylabel("validation perplexity")
        ax.set_title(f"SmolLM2-135M on {corpus}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def render(out: Path) -> None:
    """Rebuild ``results.md`` and ``lora_curves.png`` in ``out`` from its ``results.json``."""
    results = json.loads((Path(out) / "results.json").read_text())
    (Path(out) / "results.md").write_text(render_markdown(results) + "\n")
    plot(results, Path(out) / "lora_curves.png")
