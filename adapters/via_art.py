"""Any ART evasion attack by class name (`art.SaliencyMapMethod`, `art.FastGradientMethod`, ...), run through
`PyTorchClassifier(clip_values=(0, 1))`, so ART clips to the [0,1] range of the space the attack works in.

Targets: `targets` picks the target class rule, never the true label: `random` (uniform over the other classes,
drawn per image from `seed` and the image's position, so batching does not change it), `next` ((y + 1) mod K) or
`least-likely` (lowest logit but y). ART's own draws from numpy's global RNG (PGD's random init, ...) are made
per image too, and the global RNG is seeded and restored around each call (adapters.rng).
`art.SaliencyMapMethod` is a targeted attack and always gets explicit targets (default rule `random`): ART's own
fallback draws them from numpy's global RNG, which no seed of ours controls. Other attacks get the true labels
(untargeted) unless `targets` is set, which also sets their `targeted=True`.
`batch_size` defaults to the whole batch handed in (ART's default of 1 is slow); progress bars are off.
Refused by name (`unsupported`): ART classes that are not evasion attacks on a PyTorch image classifier.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from adapters.base import Attack, check_params, signature_defaults
from adapters.families import attack_family
from adapters.rng import image_generators

TARGET_RULES = ("random", "next", "least-likely")
HOW_NOT_WHAT = ("batch_size", "summary_writer")  # change speed or logging, not the adversarial images
ALWAYS_TARGETED = ("SaliencyMapMethod",)
# Evasion classes whose `generate` does not return adversarial versions of the images it is given (why a table:
# ART marks this nowhere); the estimator type each class requires is checked from ART's own metadata.
NOT_IMAGE_EVASION = {
    **dict.fromkeys(("AdversarialPatch", "AdversarialPatchNumpy", "AdversarialPatchPyTorch", "DPatch",
                     "RobustDPatch", "AdversarialTexturePyTorch"), "makes a patch, not adversarial images"),
    **dict.fromkeys(("FeatureAdversariesNumpy", "FeatureAdversariesPyTorch"),
                    "matches another image's features and needs guide images"),
    **dict.fromkeys(("OverTheAirFlickeringPyTorch", "FrameSaliencyAttack"), "attacks video classifiers"),
    **dict.fromkeys(("LowProFool", "DecisionTreeAttack", "HighConfidenceLowUncertainty"),
                    "attacks tabular or non-neural classifiers"),
    "MalwareGDTensorFlow": "attacks malware classifiers",
}


def classes() -> dict[str, type]:
    from art.attacks import EvasionAttack
    import art.attacks.evasion as evasion

    return {name: obj for name, obj in vars(evasion).items()
            if isinstance(obj, type) and issubclass(obj, EvasionAttack) and obj is not EvasionAttack}


def unsupported(cls_name: str) -> str | None:
    """Why ART's `cls_name` cannot run through this adapter, or None when it can."""
    from art.estimators.classification import PyTorchClassifier

    if "TensorFlow" in cls_name:
        return "needs TensorFlow"
    if cls_name in NOT_IMAGE_EVASION:
        return NOT_IMAGE_EVASION[cls_name]
    for need in getattr(classes()[cls_name], "_estimator_requirements", ()):
        options = need if isinstance(need, tuple) else (need,)
        if not any(isinstance(o, type) and issubclass(PyTorchClassifier, o) for o in options):
            return f"needs a {options[0].__name__} estimator, not an image classifier"
    return None


def parameters(cls_name: str) -> dict[str, Any]:
    """ART's parameters and defaults for `cls_name`, as this adapter applies them (batch_size None: the whole
    batch handed in)."""
    own = signature_defaults(classes()[cls_name].__init__, skip=("self", "classifier", "estimator", "verbose"))
    if "batch_size" in own:
        own["batch_size"] = None
    default_rule = "random" if cls_name in ALWAYS_TARGETED else None
    return {**own, "targets": default_rule}


def choose_targets(rule: str, labels: torch.Tensor, logits: torch.Tensor, seed: int,
                   positions: Sequence[int] | None = None) -> torch.Tensor:
    """Target classes, never the true label; `random` draws image i's from (seed, positions[i]) alone."""
    k = logits.shape[1]
    if rule == "next":
        return (labels + 1) % k
    if rule == "least-likely":
        return logits.masked_fill(nn.functional.one_hot(labels, k).bool(), float("inf")).argmin(1)
    positions = range(len(labels)) if positions is None else positions
    # Draw 0 of each image's stream: the attack's own draws inside adapters.rng.per_image_rng start at 1.
    offsets = np.array([g.integers(1, k) for g in image_generators(seed, positions, draw=0)])  # 1..K-1
    return (labels + torch.from_numpy(offsets).to(labels.device)) % k


class ArtAttack(Attack):
    def __init__(self, cls_name: str, *, space: str = "pixel", seed: int = 0, **params: Any):
        self.name = f"art.{cls_name}"
        known = classes()
        if cls_name not in known:
            raise ValueError(f"unknown ART evasion attack {cls_name!r}; valid: {', '.join(sorted(known))}")
        why = unsupported(cls_name)
        if why:
            raise ValueError(f"{self.name} cannot run here: it {why}")
        super().__init__(space=space, seed=seed)
        valid = parameters(cls_name)
        check_params(self.name, params, valid)
        self.targets = params.pop("targets", valid["targets"])
        if self.targets is not None and self.targets not in TARGET_RULES:
            raise ValueError(f"{self.name}: targets must be one of {', '.join(TARGET_RULES)}, got {self.targets!r}")
        self.cls, self.cls_name, self.params = known[cls_name], cls_name, params

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                positions: Sequence[int]) -> torch.Tensor:
        from art.estimators.classification import PyTorchClassifier

        with torch.no_grad():
            logits = model(images)
        k = logits.shape[1]
        classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]),
                                       nb_classes=k, clip_values=(0.0, 1.0),
                                       device_type="gpu" if images.is_cuda else "cpu")
        kwargs = dict(self.params)
        own = signature_defaults(self.cls.__init__, skip=("self",))
        if "batch_size" in own:
            kwargs.setdefault("batch_size", len(images))
        if "verbose" in own:
            kwargs["verbose"] = False
        if self.targets is not None and "targeted" in own and self.cls_name not in ALWAYS_TARGETED:
            kwargs["targeted"] = True
        attack = self.cls(classifier, **kwargs)
        y = labels if self.targets is None else choose_targets(self.targets, labels, logits, self.seed, positions)
        one_hot = nn.functional.one_hot(y, k).cpu().numpy().astype(np.float32)
        adv = attack.generate(images.cpu().numpy().astype(np.float32), y=one_hot)
        return torch.from_numpy(adv).to(images.device)

    def describe(self) -> dict[str, Any]:
        own = {k: v for k, v in parameters(self.cls_name).items() if k not in HOW_NOT_WHAT}
        return {**own, **self.params, "targets": self.targets, **super().describe()}


def members() -> dict[str, dict[str, Any]]:
    """ART's evasion attacks that can run through this adapter, with parameters and defaults."""
    return {f"art.{c}": {**parameters(c), "space": "pixel", "seed": 0} for c in sorted(classes())
            if unsupported(c) is None}


@attack_family("art", prefixed=True, members=members)
def build(member: str, **params: Any) -> ArtAttack:
    return ArtAttack(member, **params)
