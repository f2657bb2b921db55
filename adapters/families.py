"""Attack families: each registers, in its own module, how to build its attacks from a name and parameters.

    @attack_family("torchattacks", prefixed=True, members=every_class_with_defaults)
    def build(member: str, **params) -> Attack: ...          # "torchattacks.FGSM": member "FGSM"

    @attack_family("jsma-origin", members=lambda: {"jsma-origin": PARAMETERS})
    def build(member: None, **params) -> Attack: ...         # a family of one attack: its name is the family's

`get_attack(name, **params)` finds the family (a name equal to a one-attack family, else the part before the
first dot) and calls its `build`. Another package adds a family with one module and one entry point in the group
`adv_transfer_bench.attack_families` (adapters.registry). `members()` lists every attack name the family accepts
with its parameters and defaults, for `python -m benchmark attacks` (adapters.catalog).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from adapters.base import Attack
from adapters.registry import Registry, RegistryError

@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., Attack]  # build(member, **params): member None for a one-attack family
    members: Callable[[], dict[str, dict[str, Any]]]  # attack name -> parameters with defaults
    prefixed: bool  # its attacks are named "<family>.<member>"


ATTACK_FAMILIES = Registry("attack family", group="adv_transfer_bench.attack_families", item_type=Family,
                           builtin=("adapters.jsma_origin", "adapters.via_torchattacks", "adapters.via_art"))


def attack_family(name: str, *, members: Callable[[], dict[str, dict[str, Any]]], prefixed: bool = False):
    """Register the decorated `build(member, **params)` as the attack family `name` (no dots: a prefixed family's
    attacks are `name.<member>`, and a dotted one-attack name could shadow one of them)."""
    if "." in name or not name:
        raise RegistryError(f"attack family name {name!r}: give a name without dots")

    def register(build: Callable[..., Attack]) -> Callable[..., Attack]:
        ATTACK_FAMILIES.register(name, Family(name, build, members, prefixed))
        return build

    return register


def get_attack(name: str, **params: Any) -> Attack:
    """Build an attack; an unknown name or parameter raises ValueError listing the valid ones."""
    family = ATTACK_FAMILIES.get(name)
    if family is not None and not family.prefixed:
        return family.build(None, **params)
    prefix, _, member = name.partition(".")
    family = ATTACK_FAMILIES.get(prefix)
    if family is not None and family.prefixed and member:
        return family.build(member, **params)
    spelled = ", ".join(f"{f.name}.<Class>" if f.prefixed else f.name for _, f in ATTACK_FAMILIES.items())
    raise ValueError(f"unknown attack {name!r}; valid: {spelled} (list them with `python -m benchmark attacks`)")
