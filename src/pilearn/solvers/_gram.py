"""The Gram product HᵀH, formed the fastest way the device allows.

On the CPU a symmetric rank-k update (BLAS ``?syrk``) computes one triangle of HᵀH in half the
flops of a general product; torch does not expose it, so we call scipy's BLAS on the tensor's memory
(no copy: a C-ordered H of shape (n, d) *is* the Fortran-ordered Hᵀ that ``syrk`` wants). On this
project's 2-core reference machine ``dsyrk`` forms a 16,384 × 4,096 float64 Gram in 3.4 s against
6.7 s for ``H.T @ H`` (see ``pilearn bench solver``).

Convention: an accumulator ``G`` holds the **lower** triangle of the Gram (diagonal included) and
zeros above it; :func:`symmetrize` returns the full matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas as _blas

__all__ = ["gram_update_", "symmetrize"]

_SYRK = {torch.float64: _blas.dsyrk, torch.float32: _blas.ssyrk}


def gram_update_(G: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Add the lower triangle of ``HᵀH`` to ``G`` in place.

    Args:
        G: (d, d) accumulator, C-contiguous, lower triangle used, zeros above.
        H: (n, d) batch of features, same dtype and device as ``G``.

    Returns:
        ``G``.
    """
    if H.shape[0] == 0:
        return G
    if G.device.type == "cpu" and G.dtype in _SYRK and G.is_contiguous():
        h = H.detach().contiguous().numpy()  # (n, d) C-order == Hᵀ in Fortran order, shared memory
        g = G.numpy().T  # Fortran view of Gᵀ: its upper triangle is G's lower triangle
        out = _SYRK[G.dtype](1.0, h.T, beta=1.0, c=g, trans=0, lower=0, overwrite_c=1)
        if not np.shares_memory(out, g):  # scipy copied: fold the result back in
            g[...] = np.triu(out)
        return G
    # GPU or other dtypes: a general product, keeping the lower-triangle convention.
    G += torch.tril(H.T @ H)
    return G


def symmetrize(G_lower: torch.Tensor) -> torch.Tensor:
    """Full symmetric matrix from a lower-triangle accumulator (a new tensor).

    The zeros above the diagonal make ``G + Gᵀ`` the full matrix off the diagonal (each entry is one
    stored value plus an exact zero); the diagonal, counted twice there, is copied back. One d × d
    allocation, where ``G + G.tril(-1).T`` needs a second for the strict triangle.
    """
    out = G_lower + G_lower.T
    out.diagonal().copy_(G_lower.diagonal())
    return out
