"""The default random convolutional feature map of ``features='conv'``."""

from __future__ import annotations

import torch

from ..features import FeatureMap, RandomConvFeatures


def conv_features(
    image_shape: tuple[int, int, int],
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> FeatureMap:
    """Random convolutional features for images of ``image_shape = (C, H, W)``.

    Seeded unit-norm 5×5 filters, ReLU with a random threshold, 4×4 average pooling, flattened.
    """
    return RandomConvFeatures(tuple(image_shape), n_filters=64, kernel_size=5, activation="relu",
                              pool="avg", pool_size=4, seed=seed, dtype=dtype, device=device)
