"""The attack interface every adapter implements.

    attack = get_attack("torchattacks.FGSM", eps=0.01)
    x_adv = attack(model, images, labels)                       # or positions=range(start, start + n)

`images`: float NCHW in [0,1] on the model's device; `labels`: int64 true labels; `model`: maps [0,1] images to
logits (normalization inside it). The result has the images' shape, dtype and device and never aliases them.

`space` says where the attack's epsilon and clip range live:
- "pixel" (default): on the [0,1] images themselves; the right semantic.
- "normalized": on the model's normalized input `(x - mean) / std`, and a [0,1] clip then acts on that
  normalized tensor. This is the paper authors' code (their eps 0.01 is 0.005 in pixels at std 0.5, and the
  clamp pushes every pixel into [0.5, 1]); the result is mapped back to pixels. Needs a `benchmark.models.Normalized`.
  The clip acts on every output, also the images an attack returns unchanged: the authors ran FGSM and their
  one-step JSMA this way, extending it to every attack is ours, so that attacks compare like for like. It is not
  within an L0 or L2 attack's budget: there the budget no longer bounds the change.

`seed` and `positions` fix every random draw per image (adapters.rng): an evaluation cut into batches of any
size gives the same adversarial images. Attacks run in exact fp32 (no TF32) with the model's parameters frozen.
`describe()` lists every parameter that determines the output, defaults resolved: what cache keys hash.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Sequence

import torch
from torch import nn

from adapters.rng import per_image_rng

SPACES = ("pixel", "normalized")
NON_NEGATIVE = ("eps", "alpha", "theta_abs", "gamma", "steps", "max_steps", "top_k", "batch_size")
# Iteration and query budgets (torchattacks' and ART's names): at 0 the attack cannot search, so 0 is an error.
SEARCH_BUDGETS = ("steps", "max_steps", "max_iter", "max_iterations", "n_queries", "n_restarts", "restarts",
                  "nb_iter", "nb_restarts", "nb_steps", "n_steps", "eot_iter", "num_of_iterations", "query_limit",
                  "max_eval")


class Attack:
    """Base class: subclasses implement `perturb(model, images, labels)` on whatever space they are handed, and
    `describe()` with every parameter that determines their output, defaults resolved."""

    name = "attack"

    def __init__(self, *, space: str = "pixel", seed: int = 0):
        if space not in SPACES:
            raise ValueError(f"{self.name}: space must be one of {', '.join(SPACES)}, got {space!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"{self.name}: seed must be an integer, got {seed!r}")
        self.space, self.seed = space, seed
        self.batch_invariant = True  # False once a call drew randomness not tied to one image (adapters.rng)

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                positions: Sequence[int]) -> torch.Tensor:
        """`positions` only for adapters that draw randomness themselves (adapters.rng.image_generators)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                 positions: Sequence[int] | None = None) -> torch.Tensor:
        """`positions[i]`: where images[i] sits in the whole evaluation (default 0..n-1). Random draws depend on
        the seed and these positions only, so cutting an evaluation into batches of any size gives the same
        images (adapters.rng)."""
        if not images.is_floating_point() or images.dim() != 4:
            raise ValueError(f"{self.name}: images must be a float NCHW tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"{self.name}: labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        positions = range(len(images)) if positions is None else positions
        if len(positions) != len(images):
            raise ValueError(f"{self.name}: {len(positions)} positions for {len(images)} images")
        was_training = model.training
        frozen = [p for p in model.parameters() if p.requires_grad]
        model.eval()
        try:
            # Parameters frozen: toolkits that call backward (ART) would otherwise also compute weight gradients.
            for p in frozen:
                p.requires_grad_(False)
            with exact_fp32(), per_image_rng(self.seed, positions, images[0].numel()) as draws:
                images, labels = images.detach().clone(), labels.detach().long()
                if self.space == "normalized":
                    if not hasattr(model, "normalize"):
                        raise ValueError(f"{self.name}: space='normalized' needs a model with its normalization "
                                         "as a separate layer (benchmark.models.Normalized)")
                    # Every output clipped to the normalized tensor's [0,1], the authors' clip: attacks that hand
                    # back images unchanged (Square: those already misclassified and those it fails on; CW) would
                    # otherwise escape the clamp FGSM and PGD apply to every image, which a model fine-tuned on
                    # clamped images classifies differently.
                    adv = model.denormalize(self.perturb(model.net, model.normalize(images), labels,
                                                         positions=positions).clamp(0, 1))
                else:
                    adv = self.perturb(model, images, labels, positions=positions)
            self.batch_invariant &= draws.batch_invariant
        finally:
            for p in frozen:
                p.requires_grad_(True)
            model.train(was_training)
        return adv.detach().to(dtype=images.dtype, device=images.device)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.describe().items())})"

    def describe(self) -> dict[str, Any]:
        return {"space": self.space, "seed": self.seed}


@contextlib.contextmanager
def exact_fp32():
    """Full fp32 on CUDA: cuDNN and cuBLAS otherwise run fp32 convolutions and matmuls in TF32 (10-bit mantissa),
    which flips the sign of small gradient components, i.e. changes FGSM itself. Used for attacks, predictions
    and validation losses; a no-op on the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_params(owner: str, params: dict[str, Any], valid: dict[str, Any]) -> None:
    """Unknown names, negative budgets and search budgets below 1 raise ValueError naming the valid parameters."""
    unknown = sorted(set(params) - set(valid))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" if v is not inspect.Parameter.empty else k for k, v in valid.items())
        raise ValueError(f"{owner}: unknown parameter(s) {', '.join(unknown)}; valid: {listing}")
    for key, value in params.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        default = valid.get(key)
        if isinstance(value, bool) and isinstance(default, (int, float)) and not isinstance(default, bool):
            raise ValueError(f"{owner}: {key} must be a number (default {default!r}), got {str(value).lower()}")
        if key in NON_NEGATIVE and number and value < 0:
            raise ValueError(f"{owner}: {key} must be >= 0, got {value}")
        if key in SEARCH_BUDGETS and number and value < 1:
            raise ValueError(f"{owner}: {key} = {value} leaves the attack nothing to search; give at least 1")


def signature_defaults(fn, skip: tuple[str, ...]) -> dict[str, Any]:
    """Keyword parameters of `fn` and their defaults (inspect.Parameter.empty where none)."""
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = p.default
    return out
