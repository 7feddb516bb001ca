"""Small reference networks for the reparameterization benchmarks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LeNet5"]


class LeNet5(nn.Module):
    """LeNet-5 for 28 × 28 inputs (LeCun et al. 1998), with ReLU and max-pooling: 61,706 parameters.

    conv 6@5×5 (padding 2) → ReLU → max-pool 2 → conv 16@5×5 → ReLU → max-pool 2 → fc 400→120 → ReLU →
    fc 120→84 → ReLU → fc 84→10. ReLU and max-pooling (not the original tanh and trainable subsampling) are
    the variant PRANC's code and most compression papers use.

    Args:
        num_classes: output width.
        in_channels: input channels (1 for MNIST).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for images (B, in_channels, 28, 28)."""
        return self.classifier(self.features(x))
