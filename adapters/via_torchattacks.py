"""Any torchattacks attack by class name: `torchattacks.FGSM`, `torchattacks.PGD`, `torchattacks.JSMA`, ...

Distance measure, epsilon and defaults are torchattacks' own (FGSM: Linf, eps in the space given by `space`,
default 8/255, output clamped to [0,1]). Parameters are forwarded unchanged. We never call
`set_normalization_used`: our models normalize inside, so torchattacks sees the [0,1] images it expects.
`space="normalized"` needs torchattacks >= 3.5: older versions reject inputs outside [0,1].
`n_classes` (APGDT, FAB, AutoAttack) is the model's output width, read on each call; every toolkit `seed`
parameter (APGD, APGDT, FAB, Square: default 0; AutoAttack: a time-based draw) gets our `seed`, the
evaluation's, so `describe()` names the seed the attack ran with.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adapters.base import Attack, check_params, signature_defaults
from adapters.families import attack_family


def _module():
    import torchattacks

    return torchattacks


def _version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("torchattacks").split(".")[:2] if p.isdigit())


def classes() -> dict[str, type]:
    ta = _module()
    return {name: getattr(ta, name) for name in getattr(ta, "__all__", dir(ta))
            if isinstance(getattr(ta, name, None), type) and issubclass(getattr(ta, name), ta.attack.Attack)
            and name not in ("Attack", "MultiAttack", "VANILA", "LGV")}


def parameters(cls_name: str) -> dict[str, Any]:
    return signature_defaults(classes()[cls_name].__init__, skip=("self", "model", "n_classes"))


class TorchattacksAttack(Attack):
    def __init__(self, cls_name: str, *, space: str = "pixel", seed: int = 0, **params: Any):
        self.name = f"torchattacks.{cls_name}"
        known = classes()
        if cls_name not in known:
            raise ValueError(f"unknown torchattacks attack {cls_name!r}; valid: {', '.join(sorted(known))}")
        super().__init__(space=space, seed=seed)
        check_params(self.name, params, parameters(cls_name))
        if space == "normalized" and _version() < (3, 5):
            raise ValueError(f"{self.name}: space='normalized' needs torchattacks >= 3.5 (older versions reject "
                             "inputs outside [0,1])")
        self.cls, self.params, self.defaults = known[cls_name], params, parameters(cls_name)

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **_) -> torch.Tensor:
        return self.cls(model, **self.params, **self._from_model(model, images))(images, labels)

    def _from_model(self, model: nn.Module, images: torch.Tensor) -> dict[str, Any]:
        own = signature_defaults(self.cls.__init__, skip=("self", "model"))
        extra: dict[str, Any] = {}
        if "n_classes" in own:
            with torch.no_grad():
                extra["n_classes"] = int(model(images[:1]).shape[1])
        if "seed" in own:  # APGD, APGDT, FAB, Square default to 0 and AutoAttack to a time-based draw: ours
            extra["seed"] = self.seed
        return extra

    def describe(self) -> dict[str, Any]:
        return {**self.defaults, **self.params, **super().describe()}


def members() -> dict[str, dict[str, Any]]:
    return {f"torchattacks.{c}": {**parameters(c), "space": "pixel", "seed": 0} for c in sorted(classes())}


@attack_family("torchattacks", prefixed=True, members=members)
def build(member: str, **params: Any) -> TorchattacksAttack:
    return TorchattacksAttack(member, **params)
