"""The layer side of task residuals: from the desired change of the residual stream to each adapter's target.

A path is the linearised map J from one adapted layer's output to the stream inside its own block, with a
least-squares pull-back (see :mod:`._task` for the list of rules and what they neglect).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._fit import Recorder
from ._layer import PILLoraLinear
from ._pushback import AttentionPath, Elementwise, LinearLS, derivative, rope
from ._readout import OutputReadout

_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Softplus)
_PASSTHROUGH = (nn.Identity, nn.Dropout)


def _weight(module: nn.Module) -> torch.Tensor:
    """The base weight (out, in) of a Linear, or of a PILLoraLinear's base layer (its own adapter is neglected)."""
    if isinstance(module, PILLoraLinear):
        return module.base_layer.weight
    if isinstance(module, nn.Linear):
        return module.weight
    raise TypeError(f"expected an nn.Linear, got {type(module).__name__}")


class StreamPath:
    """The layer's output is added to the residual stream: its target is δh itself."""

    def register(self, rec: Recorder) -> None:
        pass

    def pull(self, dh: torch.Tensor, rec: Recorder) -> tuple[torch.Tensor, float | None]:
        return dh, None


class AttnPath:
    """q/k/v of a Llama-style (q_proj, k_proj, v_proj, o_proj, RoPE, GQA) or BERT-style (query, key, value, then
    attention.output.dense) attention block: :class:`~._pushback.AttentionPath` solved by CGLS."""

    def __init__(self, kind: str, attn_name: str, attn: nn.Module, projections: dict[str, tuple[str, nn.Module]],
                 W_o: torch.Tensor, head_dim: int, rope_: bool, iters: int, mu: float) -> None:
        self.kind, self.attn_name, self.attn = kind, attn_name, attn
        self.projections = projections  # "q"/"k"/"v" -> (name, module)
        self.W_o = W_o.detach()
        self.head_dim = head_dim
        self.n_kv = projections["k"][1].out_features // head_dim
        self.scaling = float(getattr(attn, "scaling", head_dim ** -0.5))
        self.rope, self.iters, self.mu = rope_, iters, mu

    def register(self, rec: Recorder) -> None:
        rec.add(f"attn:{self.attn_name}", self.attn, "attn")
        for key in {"q": ("k", "v"), "k": ("q", "v"), "v": ()}[self.kind]:
            name, module = self.projections[key]
            rec.add(name, module, "io")

    def _heads(self, y: torch.Tensor) -> torch.Tensor:
        B, T = y.shape[:2]
        return y.reshape(B, T, -1, self.head_dim).transpose(1, 2)

    def build(self, rec: Recorder) -> AttentionPath:
        """The linearised attention map at the recorded forward pass."""
        A, pe = rec.get(f"attn:{self.attn_name}")
        if self.rope and pe is None:
            raise RuntimeError(f"attention {self.attn_name!r} received no position_embeddings; cannot apply RoPE")
        cos, sin = (pe[0], pe[1]) if self.rope else (None, None)
        kw: dict[str, torch.Tensor] = {}
        if self.kind in ("q", "k"):
            kw["v"] = self._heads(rec.get(self.projections["v"][0])[1])
            other = "k" if self.kind == "q" else "q"
            t = self._heads(rec.get(self.projections[other][0])[1])
            kw["k_rot" if other == "k" else "q_rot"] = rope(t, cos, sin) if self.rope else t
        dtype = A.dtype if A.dtype == torch.float64 else torch.float32
        kw = {k: v.to(dtype) for k, v in kw.items()}
        cos, sin = (None, None) if cos is None else (cos.to(dtype), sin.to(dtype))
        return AttentionPath(self.kind, A=A.to(dtype), W_o=self.W_o.to(dtype), scaling=self.scaling, n_kv=self.n_kv,
                             cos=cos, sin=sin, **kw)

    def pull(self, dh: torch.Tensor, rec: Recorder) -> tuple[torch.Tensor, float | None]:
        path = self.build(rec)
        delta, rel = path.pull(dh.to(path.A.dtype), iters=self.iters, mu_rel=self.mu)
        return delta, float(rel.mean())


class GatePath:
    """An elementwise map then a Linear: Llama's gate_proj/up_proj (y = W_down(act(g) ⊙ u)) and BERT's
    intermediate.dense (y = W_out·act(a)). Pull-back: the ridge pseudo-inverse of the Linear, then the diagonal."""

    def __init__(self, which: str, act: Any, W_next: torch.Tensor, keys: dict[str, tuple[str, nn.Module]],
                 mu: float) -> None:
        self.which, self.act, self.keys, self.mu = which, act, keys, mu
        self.ls = LinearLS(W_next, mu)

    def register(self, rec: Recorder) -> None:
        for name, module in self.keys.values():
            rec.add(name, module, "io")

    def pull(self, dh: torch.Tensor, rec: Recorder) -> tuple[torch.Tensor, float | None]:
        da = self.ls.pull(dh.float())
        if self.which == "up":
            c = self.act(rec.get(self.keys["gate"][0])[1].float())
        elif self.which == "gate":
            c = derivative(self.act, rec.get(self.keys["gate"][0])[1].float()) * rec.get(self.keys["up"][0])[1].float()
        else:  # "ffn_in": the layer's own output is the activation's input
            c = derivative(self.act, rec.get(self.keys["self"][0])[1].float())
        return Elementwise(c, self.mu).pull(da), None


class ChainPath:
    """A direct child of an nn.Sequential: pull back through every later child (Linear: ridge pseudo-inverse of its
    base weight; elementwise activation: its derivative at the recorded input; Identity/Dropout: nothing).

    Step-by-step inverses reproduce any reachable output change exactly (μ → 0), but their composition is not the
    pseudo-inverse of the composite map, so the target is not the minimum-norm change when a Linear widens."""

    def __init__(self, model: nn.Sequential, index: int, mu: float) -> None:
        self.steps: list[tuple[str, Any]] = []
        for j in range(index + 1, len(model)):
            child = model[j]
            if isinstance(child, (nn.Linear, PILLoraLinear)):
                self.steps.append(("linear", LinearLS(_weight(child), mu)))
            elif isinstance(child, _ELEMENTWISE):
                self.steps.append((f"act:{j}", child))
            elif not isinstance(child, _PASSTHROUGH):
                raise ValueError(f"cannot pull task residuals back through child {j} of the nn.Sequential "
                                 f"({type(child).__name__}); supported: Linear, elementwise activations, Identity, "
                                 "Dropout")
        self.mu = mu

    def register(self, rec: Recorder) -> None:
        for key, step in self.steps:
            if key.startswith("act:"):
                rec.add(key, step, "io")

    def pull(self, dz: torch.Tensor, rec: Recorder) -> tuple[torch.Tensor, float | None]:
        delta = dz
        for key, step in reversed(self.steps):
            if key == "linear":
                delta = step.pull(delta)
            else:
                delta = Elementwise(derivative(step, rec.get(key)[0].to(delta.dtype)), self.mu).pull(delta)
        return delta, None


class DownstreamPath:
    """``pushback="downstream"``: only the adapted layer's own downstream Linear, δ = argmin ‖δ W_effᵀ − δh‖² + μ‖δ‖²
    (closed form, no CG). For v_proj, W_eff = W_o R with R the GQA repeat of kv heads: the attention mixing is
    neglected (A = I: a value change at t reaches the stream only at t); for up/gate_proj and BERT's
    intermediate.dense the gate or activation between is neglected too."""

    def __init__(self, W_eff: torch.Tensor, mu: float) -> None:
        self.ls = LinearLS(W_eff, mu)

    def register(self, rec: Recorder) -> None:
        pass

    def pull(self, dh: torch.Tensor, rec: Recorder) -> tuple[torch.Tensor, float | None]:
        return self.ls.pull(dh), None


def _grouped_o_proj(W_o: torch.Tensor, n_kv: int, head_dim: int) -> torch.Tensor:
    """W_o R (d, Hkv·dh): o_proj applied after each kv head is repeated for its n_rep query heads."""
    d = W_o.shape[0]
    n_rep = W_o.shape[1] // (n_kv * head_dim)
    return W_o.reshape(d, n_kv, n_rep, head_dim).sum(2).reshape(d, n_kv * head_dim)


def make_path(model: nn.Module, name: str, layer: PILLoraLinear, readout: Any, iters: int, mu: float,
              pushback: str = "attention") -> Any:
    """The pull-back rule of layer ``name`` (see :mod:`._task`); ValueError when there is none."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(readout, OutputReadout):
        if not isinstance(model, nn.Sequential) or parent is not model:
            raise ValueError(f"task residuals on a model without a head or an LM head need an nn.Sequential whose "
                             f"adapted layers are its direct children; layer {name!r} of {type(model).__name__} is not")
        return ChainPath(model, int(leaf), mu)
    downstream = pushback == "downstream"
    sub = lambda n: (f"{parent_name}.{n}", getattr(parent, n))  # noqa: E731
    has = lambda *names: all(hasattr(parent, a) for a in names)  # noqa: E731
    no_downstream = (f"layer {name!r}: pushback='downstream' has no rule for a query or key projection (it reaches the "
                     "stream only through the attention softmax); use pushback='attention'")
    if leaf in ("q_proj", "k_proj", "v_proj") and has("q_proj", "k_proj", "v_proj", "o_proj"):
        head_dim = int(getattr(parent, "head_dim"))
        if downstream:
            if leaf != "v_proj":
                raise ValueError(no_downstream)
            n_kv = parent.k_proj.out_features // head_dim
            return DownstreamPath(_grouped_o_proj(_weight(parent.o_proj), n_kv, head_dim), mu)
        if leaf != "v_proj" and (hasattr(parent, "q_norm") or hasattr(parent, "k_norm")):
            raise ValueError(f"layer {name!r}: attention with q_norm/k_norm is not supported for q/k task residuals")
        return AttnPath(leaf[0], parent_name, parent, {k: sub(f"{k}_proj") for k in "qkv"},
                        _weight(parent.o_proj), head_dim, True, iters, mu)
    if leaf in ("query", "key", "value") and has("query", "key", "value"):
        dense = f"{parent_name.rpartition('.')[0]}.output.dense"
        try:
            W_o = _weight(model.get_submodule(dense))
        except AttributeError:
            raise ValueError(f"layer {name!r}: BERT-style attention without {dense!r}") from None
        if downstream:
            if leaf != "value":
                raise ValueError(no_downstream)
            return DownstreamPath(W_o, mu)
        head_dim = int(getattr(parent, "attention_head_size"))
        return AttnPath(leaf[0], parent_name, parent, {"q": sub("query"), "k": sub("key"), "v": sub("value")},
                        W_o, head_dim, False, iters, mu)
    if leaf in ("gate_proj", "up_proj") and has("gate_proj", "up_proj", "down_proj", "act_fn"):
        if downstream:
            return DownstreamPath(_weight(parent.down_proj), mu)
        return GatePath(leaf.split("_")[0], parent.act_fn, _weight(parent.down_proj),
                        {"gate": sub("gate_proj"), "up": sub("up_proj")}, mu)
    if name.endswith("intermediate.dense") and hasattr(parent, "intermediate_act_fn"):
        W_next = _weight(model.get_submodule(f"{parent_name.rpartition('.')[0]}.output.dense"))
        if downstream:
            return DownstreamPath(W_next, mu)
        return GatePath("ffn_in", parent.intermediate_act_fn, W_next, {"self": (name, layer)}, mu)
    writes_stream = leaf in ("o_proj", "down_proj", "out_proj", "fc2") or (
        leaf == "dense" and type(parent).__name__.endswith("Output"))
    if writes_stream and layer.out_features == readout.stream_dim:
        return StreamPath()
    raise ValueError(f"fit_task_residuals has no pull-back rule for layer {name!r} ({type(parent).__name__}.{leaf}); "
                     "supported: attention q/k/v/o and MLP gate/up/down of Llama-style blocks, BERT query/key/value/"
                     "dense layers, children of an nn.Sequential. Use fit_distill for other layers")
