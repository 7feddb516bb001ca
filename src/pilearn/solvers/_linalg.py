"""Symmetric positive (semi-)definite solves: Cholesky first, eigendecomposition when it fails."""

from __future__ import annotations

import warnings

import torch

__all__ = ["IllConditionedWarning", "spd_solve", "pinv_solve", "cholesky_solve_", "cholesky_lower_", "MAX_CONDITION"]

#: Panel width of :func:`cholesky_lower_`'s blocked factorization on the CPU.
CHOLESKY_BLOCK = 512

#: Condition number above which a Cholesky solve is not trusted (float64 has ~16 digits;
#: past 1e12 fewer than 4 of them survive in the solution).
MAX_CONDITION = 1e12


class IllConditionedWarning(RuntimeWarning):
    """The regularized system was singular or ill-conditioned; a pseudo-inverse was used."""


def spd_solve(A: torch.Tensor, B: torch.Tensor, *, max_condition: float = MAX_CONDITION) -> tuple[torch.Tensor, str]:
    """Solve ``A X = B`` for symmetric positive semi-definite ``A`` (float64).

    Only the lower triangle of ``A`` is read (the upper one may hold anything), as LAPACK's ``potrf`` and
    ``syevd`` read it. Cholesky is tried first. It is rejected when it fails or when the condition number
    estimated from its diagonal, ``(max Lᵢᵢ / min Lᵢᵢ)²`` (a lower bound of cond₂(A)), exceeds
    ``max_condition``. The fallback is the eigendecomposition ``A = V diag(s) Vᵀ`` and the
    pseudo-inverse ``X = V diag(1/sᵢ if sᵢ > rtol·s_max else 0) Vᵀ B``, with an
    :class:`IllConditionedWarning` that states the condition number. The result is always finite.

    Args:
        A: (d, d) symmetric PSD matrix.
        B: (d, k) right-hand sides.

    Returns:
        ``(X, method)`` with X of shape (d, k) and method ``"cholesky"`` or ``"eigh"``.
    """
    if _blocked(A, CHOLESKY_BLOCK):  # factor a copy in place (the blocked routine)
        X = cholesky_solve_(A.clone(memory_format=torch.contiguous_format), B, max_condition=max_condition)
    else:  # LAPACK / cuSOLVER on their own copy, as before
        L, info = torch.linalg.cholesky_ex(A)
        X = None if int(info) else _factor_solve(L, B, max_condition)
    if X is not None:
        return X, "cholesky"
    return pinv_solve(A, B, stacklevel=4), "eigh"


def pinv_solve(A: torch.Tensor, B: torch.Tensor, *, stacklevel: int = 2) -> torch.Tensor:
    """:func:`spd_solve`'s fallback alone: the eigendecomposition pseudo-inverse of symmetric ``A`` (lower triangle
    read) applied to ``B``, with an :class:`IllConditionedWarning` that states the condition number. ``stacklevel``:
    of the warning, counted from this function."""
    s, V = torch.linalg.eigh(A, UPLO="L")
    s_max = float(s.abs().max()) if s.numel() else 0.0
    rtol = A.shape[0] * torch.finfo(A.dtype).eps
    keep = s > rtol * s_max
    s_min_kept = float(s[keep].min()) if bool(keep.any()) else 0.0
    cond = float("inf") if float(s.min()) <= 0 else s_max / float(s.min())
    warnings.warn(
        f"regularized Gram matrix is ill-conditioned (condition number {cond:.3g}, "
        f"{int((~keep).sum())} of {A.shape[0]} eigenvalues below {rtol * s_max:.3g}); "
        f"used the eigendecomposition pseudo-inverse (smallest kept eigenvalue {s_min_kept:.3g}). "
        "Increase lam to regularize.",
        IllConditionedWarning,
        stacklevel=stacklevel,
    )
    inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    return V @ (inv[:, None] * (V.T @ B))


def _blocked(A: torch.Tensor, block: int) -> bool:
    """Whether :func:`cholesky_lower_` runs its own blocked loop on ``A`` (else LAPACK via torch)."""
    return A.device.type == "cpu" and A.is_contiguous() and A.dtype == torch.float64 and A.shape[0] > 2 * block


def _factor_solve(L: torch.Tensor, B: torch.Tensor, max_condition: float) -> torch.Tensor | None:
    """``(L Lᵀ)⁻¹B`` for a lower Cholesky factor, or None when its diagonal bounds cond₂ above ``max_condition``."""
    diag = L.diagonal()
    if float((diag.max() / diag.min()) ** 2) > max_condition:
        return None
    # two triangular solves: torch.cholesky_solve copies L to its own layout first (3× slower at d = 4,096)
    Z = torch.linalg.solve_triangular(L, B, upper=False)
    return torch.linalg.solve_triangular(L.mT, Z, upper=True)


def cholesky_lower_(A: torch.Tensor, *, block: int = CHOLESKY_BLOCK) -> int:
    """Factor a symmetric positive definite ``A`` in place: its lower triangle becomes L with ``A = L Lᵀ``.

    Only the lower triangle is read; on return the upper triangle is zero. On the CPU, for a contiguous float64
    matrix wider than two panels, this is a left-looking blocked Cholesky: each panel of ``block`` columns is first
    updated by one GEMM with the columns already factored (the lower trapezoid only: d³/3 flops in all, as
    LAPACK's ``potrf``), then its diagonal block is factored by LAPACK and the rows below it by a triangular solve.
    The GEMMs run at the machine's matrix-product rate, and no second d × d matrix is allocated (torch's
    ``cholesky`` runs MKL's ``dpotrf`` on its own copy). Elsewhere (GPU, small or non-contiguous matrices) it is ``torch.linalg.cholesky_ex`` copied back.

    Returns:
        LAPACK's ``info``: 0 on success, ``k > 0`` when the leading minor of order k is not positive definite
        (``A`` then holds a partial factorization and must be rebuilt before any other use).
    """
    d = A.shape[0]
    if not _blocked(A, block):
        L, info = torch.linalg.cholesky_ex(A)
        A.copy_(L)
        return int(info)
    for j0 in range(0, d, block):
        j1 = min(j0 + block, d)
        if j0:  # this panel minus the product of its rows' factored columns (rows j0: only)
            A[j0:, j0:j1].addmm_(A[j0:, :j0], A[j0:j1, :j0].T, alpha=-1.0)
        L11, info = torch.linalg.cholesky_ex(A[j0:j1, j0:j1])
        if int(info):
            return j0 + int(info)
        A[j0:j1, j0:j1] = L11
        if j1 < d:  # L21 = A21 L11⁻ᵀ
            A[j1:, j0:j1] = torch.linalg.solve_triangular(L11.mT, A[j1:, j0:j1], upper=True, left=False)
    A.tril_()  # L alone: the diagonal blocks' upper halves still hold input values
    return 0


def cholesky_solve_(A: torch.Tensor, B: torch.Tensor, *, max_condition: float = MAX_CONDITION) -> torch.Tensor | None:
    """``A⁻¹B`` by an in-place Cholesky of ``A`` (lower triangle read, ``A`` overwritten), or None when the
    factorization fails or its diagonal bounds the condition number above ``max_condition`` (the test of
    :func:`spd_solve`, which falls back to an eigendecomposition then). For a caller that owns ``A`` and can
    rebuild it: it saves :func:`spd_solve`'s d × d copy."""
    return None if cholesky_lower_(A) else _factor_solve(A, B, max_condition)
