"""Linear maps between an adapted layer's output and the model's output, each with a least-squares pull-back.

Every operator here is the (linearised) map ``push: Δ_in -> Δ_out`` of one piece of the network, together with
``pull: Δ_out -> Δ_in``, the least-squares inverse

    pull(δ) = argmin_Δ ‖push(Δ) − δ‖² + μ‖Δ‖²,

in closed form where the map is small or diagonal, else by damped conjugate gradients on the normal equations
(CGLS; iterations are a regularizer too). ``push(pull(δ)) = δ`` whenever δ is in the range of ``push`` and μ → 0:
the tests check exactly that, against the real modules. Plain tensor math on recorded activations (an
activation function is only evaluated, for its derivative); no autograd graph is built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["LinearLS", "Elementwise", "NormLinearization", "MeanPool", "AttentionPath", "cgls", "rope", "rope_adjoint"]

_F64 = torch.float64


class LinearLS:
    """y = x Wᵀ (+ b) with W (out, in).  pull(δy) = δy W (WᵀW + μI)⁻¹, μ = mu_rel · tr(WᵀW)/in.

    With W of full column rank and μ → 0 this is the pseudo-inverse (exact when δy ∈ range(W)); when out < in
    (a head with fewer classes than features) the ridge picks the minimum-norm Δx.
    """

    def __init__(self, weight: torch.Tensor, mu_rel: float) -> None:
        W = weight.detach().to(_F64)
        G = W.T @ W
        mu = mu_rel * float(G.diagonal().sum()) / G.shape[0]
        G.diagonal().add_(max(mu, 1e-300))
        self.weight = weight.detach()
        self.W64 = W
        self.chol = torch.linalg.cholesky(G)

    def solve_normal(self, rhs: torch.Tensor) -> torch.Tensor:
        """(WᵀW + μI)⁻¹ applied to the rows of rhs = δy W (n, in)."""
        out = torch.cholesky_solve(rhs.reshape(-1, rhs.shape[-1]).to(_F64).T, self.chol).T
        return out.reshape(rhs.shape).to(rhs.dtype)

    def pull(self, dy: torch.Tensor) -> torch.Tensor:
        # the right-hand side in float64: with a small μ, float32 rounding of δy W would leave components in the
        # null space of W that (WᵀW + μI)⁻¹ amplifies by up to 1/μ
        return self.solve_normal(dy.to(_F64) @ self.W64).to(dy.dtype)

    def push(self, dx: torch.Tensor) -> torch.Tensor:
        return dx @ self.weight.to(dx.dtype).T


class Elementwise:
    """y = φ(a) elementwise, linearised: δy = c ⊙ δa with c = φ'(a) (or any fixed multiplier, e.g. a gate).

    pull(δy) = c ⊙ δy / (c² + μ·mean(c²)): the ridge inverse of a diagonal map, exact where c² ≫ μ·mean(c²).
    """

    def __init__(self, c: torch.Tensor, mu_rel: float) -> None:
        self.c = c
        self.damp = mu_rel * float((c.to(_F64) ** 2).mean()) + 1e-30

    def pull(self, dy: torch.Tensor) -> torch.Tensor:
        return self.c * dy / (self.c * self.c + self.damp)

    def push(self, da: torch.Tensor) -> torch.Tensor:
        return self.c * da


def derivative(fn: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    """φ'(a) by a central difference in float64 (step 1e-4·(1 + |a|), error O(step²)): any elementwise φ."""
    a64 = a.to(_F64)
    h = 1e-4 * (1.0 + a64.abs())
    return ((fn(a64 + h) - fn(a64 - h)) / (2 * h)).to(a.dtype)


class NormLinearization:
    """The final RMSNorm or LayerNorm u = g ⊙ P(h)/r(h) (+ β), linearised at h, and its exact least-squares inverse.

    Jacobian (ε neglected): J = D·Π with D = diag(g)/r and Π the orthogonal projector onto K⊥, where K = [h]
    (RMSNorm, r = rms(h)) or K = [1, h − mean(h)] (LayerNorm, r = std(h)): the norm ignores a change along K.
    The least-squares pull-back is the constrained problem min_{v ⊥ K} ‖D v − δu‖, solved per row in O(d):

        v = D⁻¹δu − D⁻²K (KᵀD⁻²K)⁻¹ KᵀD⁻¹δu.

    It is the minimum-norm δh with J δh = Π-consistent part of δu (exact when δu ∈ range(J)).
    """

    def __init__(self, h: torch.Tensor, weight: torch.Tensor | None, kind: str) -> None:
        if kind not in ("rms", "layer"):
            raise ValueError(f"kind must be 'rms' or 'layer', got {kind!r}")
        h = h.to(_F64)
        d = h.shape[-1]
        g = torch.ones(d, dtype=_F64, device=h.device) if weight is None else weight.detach().to(_F64)
        gmax = float(g.abs().max()) if g.numel() else 1.0
        g = torch.where(g.abs() < 1e-6 * gmax, torch.full_like(g, 1e-6 * gmax), g)
        if kind == "rms":
            r = h.pow(2).mean(-1, keepdim=True).sqrt()
            K = h[..., None]  # (..., d, 1)
        else:
            hc = h - h.mean(-1, keepdim=True)
            r = hc.pow(2).mean(-1, keepdim=True).sqrt()
            K = torch.stack([torch.ones_like(hc), hc], dim=-1)  # (..., d, 2)
        r = r.clamp_min(1e-30)
        self.dinv = r / g  # D⁻¹ (..., d)
        self.d = g / r
        self.K = K
        KtD2K = K.transpose(-1, -2) @ (self.dinv.pow(2)[..., None] * K)  # (..., m, m)
        self.KtD2K = KtD2K + 1e-12 * KtD2K.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] * torch.eye(
            K.shape[-1], dtype=_F64, device=h.device)
        self.Q = K / K.norm(dim=-2, keepdim=True).clamp_min(1e-30)  # for push: orthonormal when m = 1 or K ⟂ 1

    def pull(self, du: torch.Tensor) -> torch.Tensor:
        du64 = du.to(_F64)
        a = self.dinv * du64  # D⁻¹δu
        lam = torch.linalg.solve(self.KtD2K, (self.K.transpose(-1, -2) @ a[..., None]))  # (..., m, 1)
        v = a - self.dinv.pow(2) * (self.K @ lam)[..., 0]
        return v.to(du.dtype)

    def push(self, dh: torch.Tensor) -> torch.Tensor:
        dh64 = dh.to(_F64)
        # Π dh: the columns of K are orthogonal (h − mean ⟂ 1), so project them out one by one
        proj = dh64 - (self.Q @ (self.Q.transpose(-1, -2) @ dh64[..., None]))[..., 0]
        return (self.d * proj).to(dh.dtype)


class MeanPool:
    """f = Σₜ mₜ uₜ / Σₜ mₜ (masked mean over tokens). pull(δf) = δf at every unmasked token (the minimum-norm
    solution, and exact: push(pull(δf)) = δf)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask.to(torch.bool)  # (B, T)

    def pull(self, df: torch.Tensor) -> torch.Tensor:
        return df[:, None, :] * self.mask[..., None].to(df.dtype)

    def push(self, du: torch.Tensor) -> torch.Tensor:
        m = self.mask[..., None].to(du.dtype)
        return (du * m).sum(1) / m.sum(1).clamp_min(1.0)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (B, H, T, dh) with cos, sin (B, T, dh), as Llama applies it: x∘cos + R(x)∘sin."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def rope_adjoint(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The transpose of :func:`rope` (Rᵀ = −R): y∘cos − R(y∘sin)."""
    return y * cos[:, None] - _rotate_half(y * sin[:, None])


def _batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sequence inner products: (B, ...) × (B, ...) -> (B, 1, ..., 1)."""
    return (a * b).reshape(a.shape[0], -1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def cgls(push: Callable[[torch.Tensor], torch.Tensor], adjoint: Callable[[torch.Tensor], torch.Tensor],
         b: torch.Tensor, *, iters: int, mu_rel: float) -> tuple[torch.Tensor, torch.Tensor]:
    """min_x ‖J x − b‖² + μ‖x‖² per sequence (leading dim) by CGLS (Hestenes–Stiefel on the normal equations).

    μ = mu_rel · ‖J s₀‖²/‖s₀‖² with s₀ = Jᵀb (a Rayleigh quotient of JᵀJ, so μ is relative to the map's scale).
    Returns (x, relative residual ‖J x − b‖/‖b‖ per sequence).
    """
    x = None
    r = b.clone()
    s = adjoint(r)
    p = s.clone()
    gamma = _batch_dot(s, s)
    damp = None
    for _ in range(iters):
        q = push(p)
        pp = _batch_dot(p, p)
        if damp is None:
            damp = mu_rel * _batch_dot(q, q) / pp.clamp_min(1e-300)
        delta = _batch_dot(q, q) + damp * pp
        alpha = torch.where(delta > 0, gamma / delta.clamp_min(1e-300), torch.zeros_like(delta))
        x = alpha * p if x is None else x + alpha * p
        r = r - alpha * q
        s = adjoint(r) - damp * x
        gamma_new = _batch_dot(s, s)
        beta = torch.where(gamma > 0, gamma_new / gamma.clamp_min(1e-300), torch.zeros_like(gamma))
        p = s + beta * p
        gamma = gamma_new
    if x is None:
        x = torch.zeros_like(s)
    rel = (_batch_dot(r, r) / _batch_dot(b, b).clamp_min(1e-300)).sqrt().reshape(-1)
    return x, rel


class AttentionPath:
    """Attention from q/k/v projections to the residual stream, linearised at the captured forward pass.

    Notation (per head h, kv group g = h // n_rep; shapes per sequence)::

        A_h   (T, T)   attention probabilities (captured, causal/padding masks included)
        q̃_h, k̃_g       rotated queries/keys (T, dh);  v_g (T, dh) values;  W_o (d, H·dh) the output projection
        S_h = scaling · q̃_h k̃_gᵀ,   A_h = softmax(S_h),   out = concat_h(A_h v_g) W_oᵀ  (T, d)

    Linearisations (δ at the projection's output, before RoPE):

        v:  δout = concat_h(A_h δv_g) W_oᵀ                                           (exact: linear in v)
        q:  δS_h = scaling · rope(δq_h) k̃_gᵀ,  δA = A ⊙ (δS − rowsum(A ⊙ δS)),  δout = concat_h(δA_h v_g) W_oᵀ
        k:  δS_h = scaling · q̃_h rope(δk_g)ᵀ, then as for q

    The pull-back min ‖J δ − δs‖² + μ‖δ‖² couples positions (a value at s reaches every t ≥ s through A), so it is
    solved by :func:`cgls` per sequence; ``iters`` steps interpolate between the transposed map (1 step: the
    gradient direction) and the least-squares solution.
    """

    def __init__(self, kind: str, *, A: torch.Tensor, W_o: torch.Tensor, scaling: float, n_kv: int,
                 q_rot: torch.Tensor | None = None, k_rot: torch.Tensor | None = None, v: torch.Tensor | None = None,
                 cos: torch.Tensor | None = None, sin: torch.Tensor | None = None) -> None:
        if kind not in ("q", "k", "v"):
            raise ValueError(f"kind must be 'q', 'k' or 'v', got {kind!r}")
        self.kind = kind
        self.B, self.H, self.T = A.shape[0], A.shape[1], A.shape[2]
        self.n_kv = n_kv
        self.n_rep = self.H // n_kv
        self.W_o = W_o.to(A.dtype)
        self.dh = self.W_o.shape[1] // self.H
        self.scaling = float(scaling)
        # grouped layout: the n_rep query heads of kv group g stacked along the rows, (B, Hkv, n_rep·T, ·), so every
        # product with keys or values is one batched matmul and GQA needs no repeated copies of k and v
        self.A = A.reshape(self.B, n_kv, self.n_rep * self.T, self.T)
        self.q_rot = None if q_rot is None else q_rot.reshape(self.B, n_kv, self.n_rep * self.T, self.dh)
        self.k_rot, self.v = k_rot, v  # (B, Hkv, T, dh)
        self.cos, self.sin = cos, sin  # (B, T, dh)

    # layouts: (B, T, H·dh) <-> grouped (B, Hkv, n_rep·T, dh); (B, T, Hkv·dh) <-> (B, Hkv, T, dh)
    def _group(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(self.B, self.T, self.n_kv, self.n_rep, self.dh).permute(0, 2, 3, 1, 4)
        return x.reshape(self.B, self.n_kv, self.n_rep * self.T, self.dh)

    def _ungroup(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(self.B, self.n_kv, self.n_rep, self.T, self.dh).permute(0, 3, 1, 2, 4)
        return x.reshape(self.B, self.T, self.H * self.dh)

    def _kv(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.B, self.T, self.n_kv, self.dh).transpose(1, 2)

    def _unkv(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(self.B, self.T, self.n_kv * self.dh)

    def _rope(self, x: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
        """RoPE (or its transpose) of a grouped (B, Hkv, n·T, dh) tensor, n = n_rep or 1."""
        if self.cos is None:
            return x
        n = x.shape[2] // self.T
        x5 = x.reshape(self.B, self.n_kv, n, self.T, self.dh)
        f = rope_adjoint if adjoint else rope
        return f(x5.reshape(self.B, -1, self.T, self.dh), self.cos, self.sin).reshape(x.shape)

    def _softmax_lin(self, dS: torch.Tensor) -> torch.Tensor:  # self-adjoint: A ⊙ (X − rowsum(A ⊙ X))
        AdS = self.A * dS
        return AdS - self.A * AdS.sum(-1, keepdim=True)

    def push(self, delta: torch.Tensor) -> torch.Tensor:
        """δ (B, T, out of the projection) -> δ at the stream (B, T, d)."""
        delta = delta.to(self.A.dtype)
        if self.kind == "v":
            o = self.A @ self._kv(delta)
        else:
            if self.kind == "q":
                dS = self.scaling * (self._rope(self._group(delta)) @ self.k_rot.transpose(-1, -2))
            else:
                dS = self.scaling * (self.q_rot @ self._rope(self._kv(delta)).transpose(-1, -2))
            o = self._softmax_lin(dS) @ self.v
        return self._ungroup(o) @ self.W_o.T

    def adjoint(self, ds: torch.Tensor) -> torch.Tensor:
        """Jᵀ: δ at the stream (B, T, d) -> (B, T, out of the projection)."""
        G = self._group(ds.to(self.A.dtype) @ self.W_o)  # (B, Hkv, n_rep·T, dh)
        if self.kind == "v":
            return self._unkv(self.A.transpose(-1, -2) @ G)
        M = self.scaling * self._softmax_lin(G @ self.v.transpose(-1, -2))  # (B, Hkv, n_rep·T, T)
        if self.kind == "q":
            return self._ungroup(self._rope(M @ self.k_rot, adjoint=True))
        return self._unkv(self._rope(M.transpose(-1, -2) @ self.q_rot, adjoint=True))

    def pull(self, ds: torch.Tensor, *, iters: int, mu_rel: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(least-squares δ at the projection's output, relative residual per sequence)."""
        return cgls(self.push, self.adjoint, ds.to(self.A.dtype), iters=iters, mu_rel=mu_rel)
