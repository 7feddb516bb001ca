"""The output side of task residuals: the change the loss asks for, pulled back to the residual stream.

A readout knows how a batch becomes scores and a loss, and turns the scores' residual into δh, the desired change
of the stream before the final norm (see :mod:`._task` for the math): causal LMs (head = the output embedding),
encoders with a classifier head on mean-pooled states, and models whose output is the score itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import mean_pool
from ._fit import Recorder, call_model
from ._head import ClosedFormHead
from ._layer import PILLoraLinear
from ._model import _output_embedding
from ._pushback import LinearLS, MeanPool, NormLinearization

def _residual(scores: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """δz: e_y − softmax(z) ("ce") or Y − z ("mse"; Y one-hot for int labels)."""
    scores = scores.float()
    if loss == "ce":
        return F.one_hot(y, scores.shape[-1]).to(scores.dtype) - scores.softmax(-1)
    Y = F.one_hot(y, scores.shape[-1]).to(scores.dtype) if not y.is_floating_point() else y.to(scores.dtype)
    return Y - scores


def loss_sum(scores: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    if loss == "ce":
        return float(F.cross_entropy(scores.float(), y, reduction="sum"))
    return float(_residual(scores, y, "mse").pow(2).sum())


def newton_terms(z0: torch.Tensor, dzs: list[torch.Tensor], y: torch.Tensor, loss: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(g (K,), H (K, K)) of the loss along z(c) = z0 + Σₖ cₖ Δzₖ to second order: L(c) ≈ L(0) − gᵀc + cᵀHc/2.

    "ce": gₖ = Σ ⟨e_y − p, Δzₖ⟩, Hₖₗ = Σ Δzₖᵀ(diag p − ppᵀ)Δzₗ (the softmax Hessian, summed over rows);
    "mse" (L = Σ‖y − z‖², halved so the same formula holds): gₖ = Σ ⟨y − z0, Δzₖ⟩, Hₖₗ = Σ ⟨Δzₖ, Δzₗ⟩.
    """
    r = _residual(z0, y, loss)
    K = len(dzs)
    g = torch.tensor([float((r * dz).sum()) for dz in dzs], dtype=torch.float64)
    H = torch.zeros(K, K, dtype=torch.float64)
    p = z0.float().softmax(-1) if loss == "ce" else None
    pdz = [(p * dz).sum(-1) for dz in dzs] if p is not None else None
    for k in range(K):
        for m in range(k, K):
            if p is None:
                v = float((dzs[k] * dzs[m]).sum())
            else:
                v = float((p * dzs[k] * dzs[m]).sum() - (pdz[k] * pdz[m]).sum())
            H[k, m] = H[m, k] = v
    return g, H


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or "RMSNorm" in name or "LayerNorm" in name


def _norm_kind(module: nn.Module) -> str:
    return "layer" if isinstance(module, nn.LayerNorm) or "LayerNorm" in type(module).__name__ else "rms"


def probe(model: nn.Module, inputs: object, layers: Mapping[str, nn.Module], readout: Any) -> list[str]:
    """One forward of the first batch: the adapted layers in the order of their first call, and ``readout.norm``,
    the last norm module whose output is the tensor the head reads (the LM head's input, or the encoder's
    ``last_hidden_state``), checked to compute g ⊙ normalize(h) (+ β) so that its linearisation is the right one
    (None when no norm feeds the head)."""
    norms = {n: m for n, m in model.named_modules() if _is_norm(m)} if readout.norm_reference else {}
    outs: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    order: list[str] = []
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: outs.append((n, a[0], o))) for n, m in norms.items()]
    handles += [m.register_forward_hook(lambda mod, a, o, n=n: order.append(n) if n not in order else None)
                for n, m in layers.items()]
    if readout.norm_reference == "head_input":
        handles.append(readout.head.register_forward_hook(lambda mod, a, o: seen.__setitem__("ref", a[0])))
    try:
        output = call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in order]
    if missing:
        raise ValueError(f"adapted layer(s) {missing[:5]} were not called by the model's forward on the first batch; "
                         "they cannot be fitted")
    readout.norm = None
    if readout.norm_reference:
        ref = seen["ref"] if readout.norm_reference == "head_input" else EncoderReadout._hidden(output)
        for name, h, u in reversed(outs):
            if u.shape == ref.shape and torch.equal(u, ref):
                _check_norm(name, norms[name], h, u)
                readout.norm = norms[name]
                break
    return order


def _check_norm(name: str, module: nn.Module, h: torch.Tensor, u: torch.Tensor) -> None:
    h = h.double()
    if _norm_kind(module) == "layer":
        hc = h - h.mean(-1, keepdim=True)
        n = hc / hc.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-30)
    else:
        n = h / h.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-30)
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    pred = n * (w.double() if isinstance(w, torch.Tensor) else 1.0)
    pred = pred + (b.double() if isinstance(b, torch.Tensor) else 0.0)
    err = float((pred - u.double()).norm() / u.double().norm().clamp_min(1e-30))
    if err > 1e-2:
        raise ValueError(f"final norm {name!r} ({type(module).__name__}) does not compute weight·normalize(h) (+ bias) "
                         f"(relative mismatch {err:.2g}); task residuals cannot linearise it")


class CausalLMReadout:
    """Next-token targets of a causal LM: logits z = W_head·norm(h); batches are dicts with ``input_ids``
    (optionally ``attention_mask`` and ``labels``, -100 = ignore)."""

    kind = "causal_lm"

    def __init__(self, model: nn.Module, mu: float) -> None:
        head = _output_embedding(model)
        if not isinstance(head, (nn.Linear, PILLoraLinear)):
            raise TypeError("a causal LM needs get_output_embeddings() to return an nn.Linear, got "
                            f"{type(head).__name__}")
        if isinstance(head, PILLoraLinear):
            raise ValueError("the output embedding (lm_head) is adapted; task residuals need it fixed")
        self.head = head
        self.W = head.weight.detach()
        self.ls = LinearLS(self.W, mu)
        self.loss_kind = "ce"
        self.norm: nn.Module | None = None  # set by probe
        self.norm_reference = "head_input"
        self.stream_dim = self.W.shape[1]

    def inputs(self, batch: object) -> Mapping:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise TypeError(f"causal LM batches must be dicts with 'input_ids', got {type(batch).__name__}")
        return batch

    def register(self, rec: Recorder) -> None:
        rec.add("__head__", self.head, "io")
        if self.norm is not None:
            rec.add("__norm__", self.norm, "io")

    def _next_tokens(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token ids (B, T−1), valid (B, T−1) bool)."""
        ids = batch["input_ids"]
        labels = batch.get("labels", ids)
        mask = batch.get("attention_mask")
        y = labels[:, 1:]
        valid = y != -100
        if mask is not None:
            valid &= mask[:, 1:].bool() & mask[:, :-1].bool()
        return y.clamp_min(0), valid

    def row_mask(self, batch: Mapping) -> torch.Tensor | None:
        mask = batch.get("attention_mask")
        return None if mask is None else mask.bool()

    def stream_target(self, batch: Mapping, output: Any, rec: Recorder) -> torch.Tensor:
        u, z = rec.get("__head__")
        y, valid = self._next_tokens(batch)
        v = valid[..., None].to(torch.float32)
        W = self.W.to(torch.float32)
        p = z[:, :-1].float().softmax(-1) * v
        rhs = W[y] * v - p @ W  # W_headᵀ(e_y − p), (B, T−1, d)
        du = torch.zeros(*u.shape[:-1], W.shape[1], dtype=torch.float32, device=u.device)
        du[:, :-1] = self.ls.solve_normal(rhs)
        if self.norm is None:
            return du
        h = rec.get("__norm__")[0]
        return NormLinearization(h, getattr(self.norm, "weight", None), _norm_kind(self.norm)).pull(du)

    def scores(self, batch: Mapping, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at the positions with a next token (N, V), those tokens (N,))."""
        logits = output.logits if hasattr(output, "logits") else output
        y, valid = self._next_tokens(batch)
        return logits[:, :-1][valid], y[valid]


class EncoderReadout:
    """Classification with an encoder: scores = head(mean_pool(last_hidden_state)); batches are (inputs, labels)."""

    kind = "classification"

    def __init__(self, head: nn.Module, loss: str, mu: float) -> None:
        if isinstance(head, ClosedFormHead):
            self.W = head.weight.detach()
            self.loss_kind = "mse" if loss == "auto" else loss
        elif isinstance(head, nn.Linear):
            self.W = head.weight.detach()
            self.loss_kind = "ce" if loss == "auto" else loss
        else:
            raise TypeError(f"head must be a ClosedFormHead or an nn.Linear, got {type(head).__name__}")
        self.head = head
        self.ls = LinearLS(self.W, mu)
        self.stream_dim = self.W.shape[1]
        self.norm: nn.Module | None = None  # set by probe
        self.norm_reference = "hidden"

    @staticmethod
    def _hidden(output: Any) -> torch.Tensor:
        hidden = output if isinstance(output, torch.Tensor) else getattr(output, "last_hidden_state", None)
        if hidden is None or hidden.ndim != 3:
            raise TypeError("with a head, the model must return last_hidden_state (B, T, d) (e.g. a BertModel)")
        return hidden

    def inputs(self, batch: object) -> object:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"classification batches must be (inputs, labels) pairs, got {type(batch).__name__}")
        return batch[0]

    def _labels(self, batch: Any) -> torch.Tensor:
        y = torch.as_tensor(batch[1])
        return self.head.label_index(y) if isinstance(self.head, ClosedFormHead) else y.long()

    def _mask(self, batch: Any, hidden: torch.Tensor) -> torch.Tensor:
        inputs = batch[0]
        if isinstance(inputs, Mapping) and inputs.get("attention_mask") is not None:
            return inputs["attention_mask"]
        return torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)

    def row_mask(self, batch: Any) -> torch.Tensor | None:
        inputs = batch[0]
        return inputs["attention_mask"].bool() if isinstance(inputs, Mapping) and "attention_mask" in inputs else None

    def register(self, rec: Recorder) -> None:
        if self.norm is not None:
            rec.add("__norm__", self.norm, "io")

    def _scores(self, batch: Any, output: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self._hidden(output)
        mask = self._mask(batch, hidden)
        return self.head(mean_pool(hidden, mask)), hidden, mask

    def stream_target(self, batch: Any, output: Any, rec: Recorder) -> torch.Tensor:
        scores, hidden, mask = self._scores(batch, output)
        df = self.ls.pull(_residual(scores, self._labels(batch), self.loss_kind))
        du = MeanPool(mask).pull(df)
        if self.norm is None:
            return du
        h = rec.get("__norm__")[0]
        return NormLinearization(h, getattr(self.norm, "weight", None), _norm_kind(self.norm)).pull(du)

    def scores(self, batch: Any, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._scores(batch, output)[0], self._labels(batch)


class OutputReadout:
    """A model whose output is the score itself (e.g. an nn.Sequential MLP); batches are (inputs, targets), targets
    int labels ("ce") or float (n, k) regression targets ("mse")."""

    kind = "output"
    stream_dim = None
    norm = None
    norm_reference = None

    def __init__(self, first: object, loss: str) -> None:
        y = torch.as_tensor(self._pair(first)[1])
        self.loss_kind = ("mse" if y.is_floating_point() else "ce") if loss == "auto" else loss
        if self.loss_kind == "ce" and y.is_floating_point():
            raise ValueError("loss='ce' needs integer class labels")

    @staticmethod
    def _pair(batch: object) -> tuple[Any, Any]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"batches must be (inputs, targets) pairs for this model, got {type(batch).__name__}")
        return batch[0], batch[1]

    def inputs(self, batch: object) -> object:
        return self._pair(batch)[0]

    def register(self, rec: Recorder) -> None:
        pass

    def row_mask(self, batch: object) -> None:
        return None

    def stream_target(self, batch: Any, output: Any, rec: Recorder) -> torch.Tensor:
        return _residual(output, torch.as_tensor(batch[1]), self.loss_kind)

    def scores(self, batch: Any, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return output, torch.as_tensor(batch[1])


def make_readout(model: nn.Module, head: nn.Module | None, first: object, loss: str, mu: float) -> Any:
    if head is not None:
        return EncoderReadout(head, loss, mu)
    if isinstance(first, Mapping) and "input_ids" in first and _output_embedding(model) is not None:
        if loss not in ("auto", "ce"):
            raise ValueError(f"a causal LM's task residuals use loss='ce', got loss={loss!r}")
        return CausalLMReadout(model, mu)
    return OutputReadout(first, loss)
