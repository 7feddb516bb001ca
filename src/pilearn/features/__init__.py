"""Seeded random feature maps: the fixed ``H`` that every closed-form fit in pilearn solves against.

Every random tensor comes from a CPU :class:`torch.Generator` built from an explicit seed (see
:func:`random_matrix`), so a map is rebuilt bit for bit from its :meth:`FeatureMap.get_config`.
This layer imports only torch; it knows nothing of targets or solving.
"""

from ._activations import ACTIVATIONS, get_activation, get_activation_
from ._conv import RandomConvFeatures
from ._embeddings import sinusoidal_embedding
from ._maps import (
    BiPILFeatures,
    ComposedFeatures,
    ConcatFeatures,
    FeatureMap,
    RandomFourierFeatures,
    RandomProjection,
    feature_map_from_config,
    register_feature_map,
    stream_features,
)
from ._random import MATRIX_KINDS, derive_seed, make_generator, random_matrix

__all__ = [
    "ACTIVATIONS",
    "MATRIX_KINDS",
    "BiPILFeatures",
    "ComposedFeatures",
    "ConcatFeatures",
    "FeatureMap",
    "RandomConvFeatures",
    "RandomFourierFeatures",
    "RandomProjection",
    "derive_seed",
    "feature_map_from_config",
    "get_activation",
    "get_activation_",
    "make_generator",
    "random_matrix",
    "register_feature_map",
    "sinusoidal_embedding",
    "stream_features",
]
