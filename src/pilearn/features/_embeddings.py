"""Fixed (non-random) embeddings of scalars, e.g. diffusion and flow time steps."""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["sinusoidal_embedding"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalars (Vaswani et al. 2017; the DDPM / guided-diffusion time embedding).

    With ``half = dim // 2`` and frequencies ``f_k = max_period^(-k / half)``, ``k = 0, ..., half - 1``:

        ``emb(t) = [cos(t f_0), ..., cos(t f_{half-1}), sin(t f_0), ..., sin(t f_{half-1})]``

    and, for odd ``dim``, a final column of zeros.

    Args:
        t: ``(n,)`` real values (integer time steps are cast to float32).
        dim: positive int, the embedding width.
        max_period: ``> 0``; the slowest frequency is ``max_period^(-(half-1)/half)``.

    Returns:
        ``(n, dim)`` in ``t``'s floating dtype (float32 for integer ``t``), on ``t``'s device.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 1:
        raise ValueError(f"t must have shape (n,), got {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"t must be a real tensor, got dtype {t.dtype}")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if isinstance(max_period, bool) or not isinstance(max_period, numbers.Real) or not 0 < max_period < math.inf:
        raise ValueError(f"max_period must be a finite float > 0, got {max_period!r}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    half = int(dim) // 2
    k = torch.arange(half, dtype=torch.float64, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1)).to(t.dtype)  # (half,)
    args = t[:, None] * freqs[None, :]  # (n, half)
    parts = [torch.cos(args), torch.sin(args)]
    if dim % 2:
        parts.append(torch.zeros_like(t)[:, None])
    return torch.cat(parts, dim=1)
