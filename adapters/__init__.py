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
    """Every attack name with its parameters and defaults (`space` and `seed` apply to all)."""
    from adapters import via_art, via_torchattacks
    from adapters.jsma_origin import PARAMETERS

    out: dict[str, dict[str, Any]] = {"jsma-origin": dict(PARAMETERS)}
    common = {"space": "pixel", "seed": 0}
    for cls_name in sorted(via_torchattacks.classes()):
        out[f"torchattacks.{cls_name}"] = {**via_torchattacks.parameters(cls_name), **common}
    for cls_name in sorted(via_art.classes()):
        out[f"art.{cls_name}"] = {**via_art.parameters(cls_name), **common}
    return out
