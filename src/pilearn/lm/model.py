"""The PIL-LM transformer: a decoder-only GPT (nanoGPT's layout) whose feed-forward networks can be Bi-PIL blocks.

One readable file, top to bottom: config, attention, the two kinds of FFN, the block, the model, generation.
The model is plain PyTorch; how it is fitted lives elsewhere (:mod:`pilearn.lm._pil` solves it in closed form,
:mod:`pilearn.lm._train` trains it with AdamW). Shapes: ``B`` batch, ``T`` time, ``C`` channels (``n_embd``),
``V`` vocabulary.

Two FFNs share the block:

* ``ffn="mlp"``: the standard ``W₂·GELU(W₁x)`` of width ``expansion·C``, trained by gradient (the baseline).
* ``ffn="pil"``: the seed's Bi-PIL block (seed ``001`` §3.2–3.3). Fixed seeded projections ``W_fwd``, ``W_bwd``
  (``C × expansion·C``, never trained, regenerated from ``seed``) give ``H = [act(xW_fwd + b_fwd); act(xW_bwd +
  b_bwd)]`` (``fusion="concat"``), ``act(xW_fwd + b_fwd) + act(xW_bwd + b_bwd)`` (``"add"``) or one projection
  (``"single"``); only the output map ``W_out`` (``width × C``) is a parameter, and it is solved by ridge.

The output head may be the usual linear ``lm_head`` followed by a softmax, or, for a closed-form model, a
calibrated mixture ``p = (1−α)·relu(s)/Σrelu(s) + α·p_uni`` of the linear scores ``s`` with the unigram
distribution (``head="mixture"``): a least-squares read-out estimates ``E[onehot(y) | x] = p(y | x)`` directly,
so it is turned into probabilities by clipping and smoothing, not by a softmax (see :mod:`pilearn.lm._pil`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..features import derive_seed, get_activation, random_matrix

__all__ = ["LMConfig", "PILLM", "CONFIGS", "PILFeedForward", "MLP"]

#: The seed's three model sizes (seed ``001`` §4.1): layers, width, heads.
CONFIGS: dict[str, dict[str, int]] = {
    "small": dict(n_layer=4, n_embd=256, n_head=4),
    "medium": dict(n_layer=6, n_embd=384, n_head=6),
    "large": dict(n_layer=8, n_embd=512, n_head=8),
}


@dataclass
class LMConfig:
    """Hyper-parameters of a :class:`PILLM`; validated in ``__post_init__``."""

    vocab_size: int = 10000
    block_size: int = 64  # the longest context the position table holds
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    ffn: Literal["pil", "mlp"] = "pil"
    expansion: int = 4  # FFN width per branch = expansion · n_embd
    fusion: Literal["concat", "add", "single"] = "concat"
    activation: str = "gelu"
    dropout: float = 0.0
    tie_weights: bool = True  # lm_head shares wte (gradient models); a closed-form head is untied
    seed: int = 0  # seeds the PIL FFNs' fixed projections

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "expansion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd must be divisible by n_head, got n_embd={self.n_embd}, n_head={self.n_head}")
        if self.ffn not in ("pil", "mlp"):
            raise ValueError(f"ffn must be 'pil' or 'mlp', got {self.ffn!r}")
        if self.fusion not in ("concat", "add", "single"):
            raise ValueError(f"fusion must be 'concat', 'add' or 'single', got {self.fusion!r}")
        get_activation(self.activation)
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "LMConfig":
        """``LMConfig.from_name("small", vocab_size=10000)``: one of :data:`CONFIGS` plus overrides."""
        if name not in CONFIGS:
            raise ValueError(f"config name must be one of {sorted(CONFIGS)}, got {name!r}")
        return cls(**{**CONFIGS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LMConfig fields {unknown}")
        return cls(**d)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, nanoGPT's: one ``c_attn`` for q, k, v and one ``c_proj``."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, nh, T, hs)
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    """The gradient-trained FFN: ``W₂ · GELU(W₁ x)``, width ``expansion · C``."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.expansion * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.expansion * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class PILFeedForward(nn.Module):
    """The Bi-PIL FFN: fixed seeded random features, then one solved linear map.

    ``features(x)`` is ``H`` of shape ``(..., width)``; ``forward(x) = H @ W_out + b_out``. The projections are
    buffers drawn from ``derive_seed(seed, "ffn", layer, branch)`` (Gaussian with variance ``1/C``, so a
    layer-normed input gives unit-variance pre-activations) and the biases from ``U(−1, 1)``-like Gaussians
    scaled by 0.5; they are rebuilt bit for bit from the config, so a checkpoint stores only ``out``.
    """

    def __init__(self, cfg: LMConfig, layer: int) -> None:
        super().__init__()
        C, width = cfg.n_embd, cfg.expansion * cfg.n_embd
        branches = 1 if cfg.fusion == "single" else 2
        w = torch.stack([random_matrix((C, width), seed=derive_seed(cfg.seed, "ffn", layer, b)) / math.sqrt(C)
                         for b in range(branches)])
        bias = torch.stack([0.5 * random_matrix((1, width), seed=derive_seed(cfg.seed, "ffn-bias", layer, b))[0]
                            for b in range(branches)])
        self.register_buffer("w_in", w, persistent=False)  # (branches, C, width)
        self.register_buffer("b_in", bias, persistent=False)  # (branches, width)
        self.fusion = cfg.fusion
        self.act = get_activation(cfg.activation)
        self.width = width * (2 if cfg.fusion == "concat" else 1)
        self.out = nn.Linear(self.width, C)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        hs = [self.act(x @ self.w_in[b] + self.b_in[b]) for b in range(self.w_in.shape[0])]
        if self.fusion == "concat":
            return torch.cat(hs, dim=-1)
        if self.fusion == "add":
            return hs[0] + hs[1]
        return hs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = PILFeedForward(cfg, layer) if cfg.ffn == "pil" else MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class PILLM(nn.Module):
    """Decoder-only transformer language model; ``ffn="pil"`` makes every FFN a closed-form Bi-PIL block.

    ``forward(idx)`` returns log-probabilities ``(B, T, V)`` of the next token at every position (not raw
    logits: with ``head="mixture"`` the model's distribution is not a softmax). ``loss(idx, targets)`` is the
    mean negative log-likelihood in nats, so ``exp(loss)`` is the perplexity.
    """

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=not cfg.tie_weights)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        # head="softmax": log_softmax(temperature · lm_head(x)); head="mixture": see the module docstring.
        self.head = "softmax"
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("mix_alpha", torch.zeros(()))
        self.register_buffer("log_unigram", torch.full((cfg.vocab_size,), -math.log(cfg.vocab_size)))
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, PILFeedForward):  # applied after its children: a PIL FFN starts at zero
            nn.init.zeros_(module.out.weight)
            nn.init.zeros_(module.out.bias)

    def n_params(self, *, trainable_only: bool = False) -> int:
        """Parameters counted once (a tied head is not counted twice); fixed PIL projections are buffers, excluded."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_idx(self, idx: torch.Tensor, name: str = "idx") -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32) or idx.dim() != 2:
            got = f"{idx.dtype} tensor of shape {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"{name} must be an integer tensor of shape (batch, time), got {got}")
        T = idx.shape[1]
        if not 1 <= T <= self.config.block_size:
            raise ValueError(f"{name} has {T} positions; the model's context (block_size) is "
                             f"{self.config.block_size}; feed at most that many tokens (generate() crops for you)")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(f"{name} holds token ids outside [0, {self.config.vocab_size}): "
                             f"min {int(idx.min())}, max {int(idx.max())}")
        return idx.long()

    def hidden(self, idx: torch.Tensor, *, upto: int | None = None) -> torch.Tensor:
        """The residual stream ``(B, T, C)`` after ``upto`` blocks (all of them by default), before ``ln_f``."""
        idx = self._check_idx(idx)
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.h[: self.config.n_layer if upto is None else upto]:
            x = block(x)
        return x

    def log_probs_from_hidden(self, x: torch.Tensor) -> torch.Tensor:
        s = self.lm_head(self.ln_f(x))  # (B, T, V)
        if self.head == "softmax":
            return F.log_softmax(self.temperature * s, dim=-1)
        p = s.clamp_min(0)
        p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        a = self.mix_alpha
        return torch.log((1 - a) * p + a * self.log_unigram.exp())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.log_probs_from_hidden(self.hidden(idx))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token negative log-likelihood (nats) of ``targets`` ``(B, T)`` given ``idx`` ``(B, T)``."""
        targets = self._check_idx(targets, "targets")
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        logp = self(idx)
        return F.nll_loss(logp.reshape(-1, logp.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` continuations of ``idx`` ``(B, T)``; the context is cropped to ``block_size``.

        ``temperature`` rescales the log-probabilities (``0`` is greedy decoding); ``top_k`` keeps the ``k`` most
        likely tokens. Pass a seeded ``generator`` for reproducible samples.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if isinstance(idx, torch.Tensor) and idx.dim() == 2 and idx.shape[1] == 0:
            raise ValueError("idx is empty: generation needs a prompt of at least one token")
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logp = self(idx[:, -self.config.block_size:])[:, -1, :]  # (B, V)
            if temperature == 0:
                nxt = logp.argmax(-1, keepdim=True)
            else:
                logits = logp / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        self.train(was_training)
        return idx
