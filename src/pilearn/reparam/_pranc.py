"""PRANC: a network as a linear combination of seeded random networks (Nooralinejad et al., ICCV 2023)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._basis import Distribution, RandomBasis
from ._flat import FlatReparam, default_init_bounds

__all__ = ["PRANC"]


class PRANC(FlatReparam):
    """Pseudo-RAndom Network Compression: only the mixing coefficients of k random networks are learned.

    Notation (paper → code)::

        θ ∈ R^D        all trainable parameters of ``module``, flattened     theta()
        θ̂ⱼ ∈ R^D       basis network j = s ⊙ bⱼ, regenerated from the seed    s = self.scale, bⱼ = basis row j
        α ∈ R^k        the only learned numbers                               self.alpha
        θ = Σⱼ αⱼ θ̂ⱼ  = s ⊙ (Bᵀα)                                            scale * basis.combine(alpha)

    Basis networks. Each θ̂ⱼ is drawn like a freshly initialized copy of the module, as PRANC's code does
    (``kaiming_uniform_(a=√5)`` per layer): with ``distribution="uniform"`` (bⱼ ~ U[-1, 1)) the per-coordinate
    scale s is PyTorch's default-init bound (1/√fan_in for weights and their biases, 1 for normalization
    parameters; :func:`~pilearn.reparam._flat.default_init_bounds`), so every θ̂ⱼ *is* a default-initialized
    network; with ``"normal"`` s is that bound / √3, the same variance. Why: the combination then lives at
    the scale a network trains well from, and the coefficients of all layers are comparable. (PRANC's code
    gives 1-D parameters the bound of the preceding weight; here normalization parameters get 1.)

    Initialization. α = e₀ (α₀ = 1, the rest 0), as in PRANC's code: the network starts as basis network 0,
    i.e. a default-initialized network, and training moves it within span{θ̂ⱼ}.

    Training. All k coefficients are trained together by any optimizer over ``wrapper.parameters()``
    (PRANC's code also offers coordinate descent over random windows of m coefficients, to bound GPU memory;
    here memory is bounded by ``chunk_size`` instead). Batch-norm running statistics are ordinary buffers,
    updated in train mode and stored in checkpoints, as in the paper.

    Storage. A checkpoint is the seed plus α plus the buffers: :attr:`n_stored` numbers for
    :attr:`n_params` parameters.

    Args:
        module: any ``nn.Module``; taken over in place (see :class:`~pilearn.reparam._flat.FlatReparam`).
        n_basis: k, the number of basis networks (and of learned numbers).
        seed: the basis seed; row j uses ``derive_seed(seed, j)``.
        distribution: ``"uniform"`` (default; bit-identical on every CPU) or ``"normal"``.
        chunk_size: basis rows per block (memory ``chunk_size · D`` without the cache).
        cache_basis: keep the (k, D) basis after first use (fast; k·D·4 bytes) or regenerate it at every
            forward and backward (slow; bounded memory). They agree to float rounding (see
            :class:`~pilearn.reparam.RandomBasis`).

    Example:
        >>> net = PRANC(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), n_basis=16)
        >>> net(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
        >>> [name for name, _ in net.named_parameters()]
        ['alpha']
    """

    def __init__(
        self,
        module: nn.Module,
        n_basis: int,
        *,
        seed: int = 0,
        distribution: Distribution = "uniform",
        chunk_size: int | None = None,
        cache_basis: bool = True,
    ) -> None:
        super().__init__(module)
        self.basis = RandomBasis(seed, n_basis, self.n_params, distribution=distribution, chunk_size=chunk_size,
                                 cache=cache_basis)
        bounds = default_init_bounds(module, list(self.specs))
        if distribution == "normal":
            bounds = bounds / math.sqrt(3.0)
        device = self.device
        self.register_buffer("scale", bounds.to(device=device, dtype=self.param_dtype), persistent=False)
        alpha = torch.zeros(self.basis.n_basis, dtype=self.param_dtype, device=device)
        alpha[0] = 1.0
        self.alpha = nn.Parameter(alpha)

    def theta(self) -> torch.Tensor:
        """θ = s ⊙ Σⱼ αⱼ bⱼ (D,), differentiable in α."""
        return self.scale * self.basis.combine(self.alpha)

    def basis_networks(self, start: int, stop: int) -> torch.Tensor:
        """θ̂ⱼ for j in [start, stop): (stop - start, D) rows s ⊙ bⱼ (not differentiable)."""
        return self.basis.rows(start, stop, device=self.alpha.device, dtype=self.alpha.dtype) * self.scale

    def reparam_config(self) -> dict:
        return {"n_basis": self.basis.n_basis, "seed": self.basis.seed, "distribution": self.basis.distribution,
                "chunk_size": self.basis.chunk_size, "cache_basis": self.basis.cache}

    def extra_repr(self) -> str:
        return f"n_params={self.n_params}, n_basis={self.basis.n_basis}, n_stored={self.n_stored}"
