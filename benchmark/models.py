"""Model registry. Every model takes [0,1] images: normalization is its first layer, never the data's job."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from benchmark.errors import UserError


class Normalized(nn.Module):
    """`net((x - mean) / std)`. `normalize` and `net` stay separate so an attack can work in normalized space
    (the paper's code did) and map back to pixels. The buffers are not called `mean`/`std` on purpose:
    torchattacks < 3.5 finds attributes of those names and normalizes a second time."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("norm_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("norm_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.norm_mean) / self.norm_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.norm_std + self.norm_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def resnet18_cifar(num_classes: int) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 3x3 stride-1 stem and no max-pool (the usual CIFAR variant)."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def resnet18_torchvision(num_classes: int) -> nn.Module:
    """torchvision's ImageNet ResNet-18 (7x7 stride-2 stem, max-pool) fed 32x32 images: the paper's code."""
    from torchvision.models import resnet18

    return resnet18(num_classes=num_classes)


def small_cnn(num_classes: int) -> nn.Module:
    """Two conv layers and a linear head: for tests and the smoke suite (trains in seconds on a CPU)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, num_classes),
    )


ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "resnet18-cifar": resnet18_cifar,
    "resnet18-torchvision": resnet18_torchvision,
    "small-cnn": small_cnn,
}


def build(arch: str, *, mean: Sequence[float], std: Sequence[float], num_classes: int = 10) -> Normalized:
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    return Normalized(ARCHITECTURES[arch](num_classes), mean, std)
