"""The methods a user would otherwise pick, run in the same process on the same data as PIL."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MLPResult", "train_mlp", "kernel_ridge_baseline", "hpelm_baseline"]


@dataclass
class MLPResult:
    accuracy: float
    seconds: float
    epochs: float
    steps: int
    n_params: int
    best_val_accuracy: float | None


def _mlp(n_in: int, n_hidden: int, n_out: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.GELU(), nn.Linear(n_hidden, n_out))


@torch.no_grad()
def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    model.eval()
    correct = sum(int((model(X[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(X), batch))
    model.train()
    return correct / len(X)


def train_mlp(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    n_hidden: int,
    time_budget: float | None = None,
    max_epochs: int = 20,
    patience: int = 3,
    val_fraction: float = 1 / 12,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
) -> MLPResult:
    """A one-hidden-layer GELU MLP of the same shape as a dense PIL network, trained with AdamW.

    Two regimes: ``time_budget`` (seconds) stops training when that much wall time has been spent
    (time-matched to a PIL fit; all training rows are used); without it, training runs to
    convergence: up to ``max_epochs`` with early stopping on a held-out ``val_fraction`` of the
    training rows (patience ``patience`` epochs), and the test accuracy of the best-validation
    weights is reported.
    """
    g = np.random.default_rng(seed)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    Xv = yv = None
    if time_budget is None:
        perm = g.permutation(len(X))
        n_val = int(round(val_fraction * len(X)))
        Xv, yv = Xt[perm[:n_val]], yt[perm[:n_val]]
        Xt, yt = Xt[perm[n_val:]], yt[perm[n_val:]]
    n_classes = int(max(y.max(), y_test.max())) + 1
    model = _mlp(X.shape[1], n_hidden, n_classes, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    steps, epochs, best_val, best_state, bad = 0, 0.0, -1.0, None, 0
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    done = False
    for epoch in range(max_epochs if time_budget is None else 10**6):
        order = torch.randperm(len(Xt), generator=gen)
        for i in range(0, len(Xt), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(Xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if time_budget is not None and time.perf_counter() - t0 >= time_budget:
                epochs = epoch + (i + batch_size) / len(Xt)
                done = True
                break
        if done:
            break
        epochs = epoch + 1
        if Xv is not None:
            val = _accuracy(model, Xv, yv)
            if val > best_val:
                best_val, bad = val, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    break
    seconds = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    acc = _accuracy(model, torch.as_tensor(X_test, dtype=torch.float32), torch.as_tensor(y_test, dtype=torch.long))
    return MLPResult(acc, seconds, float(epochs), steps, n_params, None if best_val < 0 else best_val)


def kernel_ridge_baseline(
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *, method: str, n_components: int,
    seed: int = 0,
) -> dict:
    """scikit-learn's kernel approximation (``Nystroem`` or ``RBFSampler``) followed by ``RidgeCV``.

    RBF kernel, ``gamma = 1 / (n_features · Var(X))`` (scikit-learn's ``'scale'`` heuristic); RidgeCV
    picks α by efficient leave-one-out over a log grid. The features are float32 like PIL's.
    """
    from sklearn.kernel_approximation import Nystroem, RBFSampler
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline

    gamma = 1.0 / (X.shape[1] * float(X.var()))
    approx = (Nystroem(gamma=gamma, n_components=n_components, random_state=seed) if method == "nystroem"
              else RBFSampler(gamma=gamma, n_components=n_components, random_state=seed))
    onehot = np.eye(int(y.max()) + 1)[y]
    model = make_pipeline(approx, RidgeCV(alphas=np.logspace(-6, 2, 9)))
    t0 = time.perf_counter()
    model.fit(X, onehot)
    seconds = time.perf_counter() - t0
    acc = float((model.predict(X_test).argmax(1) == y_test).mean())
    return {"accuracy": acc, "fit_seconds": seconds, "lam": float(model[-1].alpha_), "gamma": gamma}


def hpelm_available() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import hpelm  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False


def hpelm_baseline(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *, n_hidden: int) -> dict:
    """hpelm's ELM (Akusok et al. 2015): sigmoid random neurons, its own pseudoinverse solver."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hpelm

        onehot = np.eye(int(y.max()) + 1, dtype=np.float32)[y]
        elm = hpelm.ELM(X.shape[1], onehot.shape[1], classification="c", precision="single")
        elm.add_neurons(n_hidden, "sigm")
        t0 = time.perf_counter()
        elm.train(np.ascontiguousarray(X, dtype=np.float32), onehot, "c")
        seconds = time.perf_counter() - t0
        pred = elm.predict(np.ascontiguousarray(X_test, dtype=np.float32)).argmax(1)
    return {"accuracy": float((pred == y_test).mean()), "fit_seconds": seconds}


def gram_floor(H64: torch.Tensor, repeats: int = 1) -> dict:
    """Seconds to form HᵀH of a float64 ``H`` by each route; the floor is the fastest.

    Routes: BLAS ``dsyrk`` on the whole matrix (one triangle, half the flops), ``H.T @ H`` (torch
    GEMM). Each is the best of ``repeats`` runs.
    """
    from ..solvers import gram_update_

    d = H64.shape[1]
    out: dict[str, float] = {}
    for name in ("syrk", "matmul"):
        best = math.inf
        for _ in range(repeats):
            if name == "syrk":
                G = torch.zeros(d, d, dtype=H64.dtype)
                t0 = time.perf_counter()
                gram_update_(G, H64)
            else:
                t0 = time.perf_counter()
                G = H64.T @ H64
            best = min(best, time.perf_counter() - t0)
            del G
        out[name] = best
    out["floor"] = min(out.values())
    return out


# ---------------------------------------------------------------------------------------------- adapters on text


def apply_peft_lora(model: nn.Module, targets: tuple[str, ...] | list[str], r: int, alpha: float, seed: int) -> nn.Module:
    """peft LoRA (A Kaiming-uniform from the seeded global generator, B = 0, no dropout, no bias) on ``targets``;
    every other parameter frozen. Returns peft's wrapper."""
    import peft

    torch.manual_seed(seed)  # peft draws A from the global generator
    with warnings.catch_warnings():  # peft 0.21 calls a transformers API that transformers 5 marks deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                          target_modules=list(targets), bias="none"))


class TextClassifier(nn.Module):
    """Encoder → mean pooling over real tokens → linear head (zero-initialized): the gradient arms' classifier."""

    def __init__(self, encoder: nn.Module, width: int, n_classes: int) -> None:
        super().__init__()
        from ..models import mean_pool

        self.encoder, self._pool = encoder, mean_pool
        self.head = nn.Linear(width, n_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self._pool(self.encoder(**enc).last_hidden_state, enc["attention_mask"]))
