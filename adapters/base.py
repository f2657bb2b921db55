"""The attack interface every adapter implements.

    attack = get_attack("torchattacks.FGSM", eps=0.01)
    x_adv = attack(model, images, labels)

`images`: float NCHW in [0,1] on the model's device; `labels`: int64 true labels; `model`: maps [0,1] images to
logits (normalization inside it). The result has the images' shape, dtype and device and never aliases them.

`space` says where the attack's epsilon and clip range live:
- "pixel" (default): on the [0,1] images themselves; the right semantic.
- "normalized": on the model's normalized input `(x - mean) / std`, and the attack's own [0,1] clip then acts on
  that normalized tensor. This is the paper authors' code (their eps 0.01 is 0.005 in pixels at std 0.5, and the
  clamp pushes every pixel into [0.5, 1]); the result is mapped back to pixels. Needs a `benchmark.models.Normalized`.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

SPACES = ("pixel", "normalized")
NON_NEGATIVE = ("eps", "alpha", "theta_abs", "gamma", "steps", "max_steps", "top_k", "batch_size")


class Attack:
    """Base class: subclasses implement `perturb(model, images, labels)` on whatever space they are handed."""

    name = "attack"

    def __init__(self, *, space: str = "pixel", seed: int = 0):
        if space not in SPACES:
            raise ValueError(f"{self.name}: space must be one of {', '.join(SPACES)}, got {space!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"{self.name}: seed must be an integer, got {seed!r}")
        self.space, self.seed = space, seed

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not images.is_floating_point() or images.dim() != 4:
            raise ValueError(f"{self.name}: images must be a float NCHW tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"{self.name}: labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        was_training = model.training
        model.eval()
        devices = [images.device] if images.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):  # seeded, without touching the caller's RNG state
                torch.manual_seed(self.seed)
                images, labels = images.detach().clone(), labels.detach().long()
                if self.space == "normalized":
                    if not hasattr(model, "normalize"):
                        raise ValueError(f"{self.name}: space='normalized' needs a model with its normalization "
                                         "as a separate layer (benchmark.models.Normalized)")
                    adv = model.denormalize(self.perturb(model.net, model.normalize(images), labels))
                else:
                    adv = self.perturb(model, images, labels)
        finally:
            model.train(was_training)
        return adv.detach().to(dtype=images.dtype, device=images.device)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.describe().items())})"

    def describe(self) -> dict[str, Any]:
        return {"space": self.space, "seed": self.seed}


def check_params(owner: str, params: dict[str, Any], valid: dict[str, Any]) -> None:
    """Unknown names and negative budgets raise ValueError naming the valid parameters."""
    unknown = sorted(set(params) - set(valid))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" if v is not inspect.Parameter.empty else k for k, v in valid.items())
        raise ValueError(f"{owner}: unknown parameter(s) {', '.join(unknown)}; valid: {listing}")
    for key, value in params.items():
        if key in NON_NEGATIVE and isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{owner}: {key} must be >= 0, got {value}")


def signature_defaults(fn, skip: tuple[str, ...]) -> dict[str, Any]:
    """Keyword parameters of `fn` and their defaults (inspect.Parameter.empty where none)."""
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = p.default
    return out
