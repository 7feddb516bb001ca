"""The default random convolutional feature map of ``features='conv'``."""

from __future__ import annotations

import torch

from ..features import FeatureMap, RandomConvFeatures


def conv_features(
    image_shape: tuple[int, int, int],
    *,
    seed: int,
    n_filters: int = 224,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> FeatureMap:
    """Random convolutional features for images of ``image_shape = (C, H, W)``.

    ``n_filters`` seeded unit-norm 5×5 filters on contrast-normalized patches (Coates, Lee & Ng 2011),
    a random threshold b ~ U(−0.5, 0.5), ReLU, 4×4 average pooling, flattened: d = 224·6·6 = 8,064 for
    28×28 images. Chosen on a 50k/10k split of the MNIST training set (never the test set) among
    64–224 filters, max/avg pooling, sign-split activations, overlapping pooling, ZCA-whitened filters
    and a second random conv stage; patch normalization and more filters were what paid.
    """
    k = min(5, image_shape[1], image_shape[2])
    pool = max(1, min(4, image_shape[1] - k + 1, image_shape[2] - k + 1))
    return RandomConvFeatures(tuple(image_shape), n_filters=n_filters, kernel_size=k, normalize_patches=True,
                              bias_scale=0.5, activation="relu", pool="avg", pool_size=pool, seed=seed,
                              dtype=dtype, device=device)
