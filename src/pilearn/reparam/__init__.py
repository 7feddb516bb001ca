"""Reparameterizations of a network's weights: PRANC, NOLA, MCNC (coefficients of seeded random bases) and
SupSup (supermasks over fixed seeded random weights)."""

from ._basis import DISTRIBUTIONS, RandomBasis, basis_rows, derive_seed
from ._closed_form import fit_linear_coefficients, fit_nola_layer, solve_pranc_head
from ._flat import FlatReparam
from ._io import load_reparam, save_reparam
from ._mcnc import MCNC, SineGenerator
from ._models import LeNet5
from ._nola import (
    NOLAConfig,
    NOLALinear,
    apply_nola,
    load_nola_state_dict,
    merge_nola,
    nola_layers,
    nola_state_dict,
)
from ._pranc import PRANC
from ._supsup import (
    HopfieldMaskStore,
    MaskedConv2d,
    MaskedLinear,
    SupSupMLP,
    SupSupModel,
    SupSupNet,
    infer_task,
    load_supsup,
    permuted_mnist,
    save_supsup,
    supermask,
    train_supermask,
)

__all__ = [
    # random bases: PRANC, NOLA, MCNC
    "DISTRIBUTIONS",
    "FlatReparam",
    "LeNet5",
    "MCNC",
    "NOLAConfig",
    "NOLALinear",
    "PRANC",
    "RandomBasis",
    "SineGenerator",
    "apply_nola",
    "basis_rows",
    "derive_seed",
    "fit_linear_coefficients",
    "fit_nola_layer",
    "load_nola_state_dict",
    "load_reparam",
    "merge_nola",
    "nola_layers",
    "nola_state_dict",
    "save_reparam",
    "solve_pranc_head",
    # supermasks: SupSup
    "HopfieldMaskStore",
    "MaskedConv2d",
    "MaskedLinear",
    "SupSupMLP",
    "SupSupModel",
    "SupSupNet",
    "infer_task",
    "load_supsup",
    "permuted_mnist",
    "save_supsup",
    "supermask",
    "train_supermask",
]
