"""Architectures a base recipe trains (`arch = "..."`), registered by name here or in another package's module
under the entry-point group `adv_transfer_bench.architectures`:

    @architecture("my-net")
    def my_net(num_classes: int) -> nn.Module: ...

Every model takes [0,1] images: normalization is its first layer (`Normalized`), never the data's job."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from adapters.registry import Registry
from benchmark.errors import UserError, one_line

ARCHITECTURES = Registry("architecture", group="adv_transfer_bench.architectures")


def architecture(name: str) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Register the decorated `fn(num_classes) -> nn.Module` (taking normalized images) as `arch = name`."""
    return ARCHITECTURES.register(name)


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


@architecture("resnet18-cifar")
def resnet18_cifar(num_classes: int) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 3x3 stride-1 stem and no max-pool (the usual CIFAR variant)."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


@architecture("resnet18-torchvision")
def resnet18_torchvision(num_classes: int) -> nn.Module:
    """torchvision's ImageNet ResNet-18 (7x7 stride-2 stem, max-pool) fed 32x32 images: the paper's code."""
    from torchvision.models import resnet18

    return resnet18(num_classes=num_classes)


class Resized(nn.Module):
    """`net(resize(x))`: images resized (bilinear) to `size` x `size` inside the model, so the data stays 32x32
    and every attack's eps means what it says on the images the benchmark hands in."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                  align_corners=False))


@architecture("resnet18-imagenet")
def resnet18_imagenet(num_classes: int) -> nn.Module:
    """torchvision's ImageNet ResNet-18 at its own 224x224 input (the paper's text: "ResNet-18 pretrained on
    ImageNet, 224x224 input"): inputs resized inside; `pretrained = "<file>"` in the recipe loads the ImageNet
    weights into everything but the head (`fc`, replaced for the data's classes)."""
    from torchvision.models import resnet18

    return Resized(resnet18(num_classes=num_classes), 224)


# Architectures whose recipe can start from published weights: the file torchvision publishes, and where.
PRETRAINED = {"resnet18-imagenet": ("resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                                    "torchvision.models.ResNet18_Weights.IMAGENET1K_V1")}
HEADS = ("fc.weight", "fc.bias")  # replaced for the data's classes, never loaded


def load_pretrained(model: Normalized, state: dict[str, torch.Tensor], where: str) -> list[str]:
    """Published weights into the network inside `model` (under its resize), all but the head; a file of another
    layout is refused naming a few keys (`pretrained_mismatch`). Returns the layers left as built: the head, and
    batch-norm step counters where the file has none (torchvision's older files do not; training never reads
    them with the default momentum)."""
    target = model.net.net if isinstance(model.net, Resized) else model.net
    own = target.state_dict()
    why = pretrained_mismatch(own, state)
    if why:
        raise UserError(f"{where}: the pretrained file does not fit the architecture ({why})")
    body = {k: v for k, v in state.items() if k not in HEADS}
    target.load_state_dict({**own, **body})
    return [k for k in own if k not in body]


def pretrained_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """What keeps `state` (a published file's tensors) from filling `own` (a network's state) but its head, or
    None."""
    body = {k: v for k, v in state.items() if k not in HEADS}
    missing = sorted(k for k in set(own) - set(body) - set(HEADS) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(body) - set(own))
    wrong = sorted(k for k in set(body) & set(own) if tuple(body[k].shape) != tuple(own[k].shape))
    if not (missing or unexpected or wrong):
        return None
    few = ", ".join((missing + unexpected + wrong)[:3])
    return f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape: {few}"


@architecture("small-cnn")
def small_cnn(num_classes: int) -> nn.Module:
    """Two conv layers and a linear head: for tests and the smoke suite (trains in seconds on a CPU)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, num_classes),
    )


def build(arch: str, *, mean: Sequence[float], std: Sequence[float], num_classes: int = 10) -> Normalized:
    make = ARCHITECTURES.get(arch)
    if make is None:
        raise UserError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES.names())}")
    try:
        net = make(num_classes)
    except Exception as exc:  # noqa: BLE001  (a registered architecture's own code: one line)
        raise UserError(f"architecture {arch} failed to build: {one_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"architecture {arch} returned {type(net).__name__}, not a torch.nn.Module")
    return Normalized(net, mean, std)
