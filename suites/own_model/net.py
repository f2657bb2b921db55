"""The own-model suite's stand-in for "your model": any module that maps [0,1] images to logits will do.

`build(num_classes)` is the suite's factory (`factory = "own_model.net:build"`); normalization is inside, and the
adaptive pool lets it take images of any size.
"""
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.register_buffer("center", torch.full((1, 3, 1, 1), 0.5))
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - self.center) / 0.5).flatten(1))


def build(num_classes: int) -> nn.Module:
    return TinyNet(num_classes)
