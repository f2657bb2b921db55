"""Attacks behind one interface: `get_attack(name, **params)(model, images, labels) -> adversarial images`.

Names: `torchattacks.<Class>`, `art.<Class>` and the in-house `jsma-origin`. See adapters.base for the contract.
"""
from __future__ import annotations

from typing import Any

from adapters.base import Attack

IN_HOUSE = ("jsma-origin",)


def get_attack(name: str, **params: Any) -> Attack:
    """Build an attack; an unknown name or parameter raises ValueError listing the valid ones."""
    family, _, cls_name = name.partition(".")
    if name == "jsma-origin":
        from adapters.base import check_params
        from adapters.jsma_origin import PARAMETERS, JsmaOrigin

        check_params(name, params, PARAMETERS)
        return JsmaOrigin(**params)
    if family == "torchattacks" and cls_name:
        from adapters.via_torchattacks import TorchattacksAttack

        return TorchattacksAttack(cls_name, **params)
    if family == "art" and cls_name:
        from adapters.via_art import ArtAttack

        return ArtAttack(cls_name, **params)
    raise ValueError(f"unknown attack {name!r}; valid: jsma-origin, torchattacks.<Class>, art.<Class> "
                     "(list them with `python -m benchmark attacks`)")


def list_attacks() -> dict[str, dict[str, Any]]:
    """Every attack that runs here, with its parameters and defaults (`space` and `seed` apply to all); see
    adapters.catalog."""
    from adapters.catalog import runnable

    return {name: dict(params) for name, params in runnable().items()}
