"""Attacks behind one interface: `get_attack(name, **params)(model, images, labels) -> adversarial images`.

Names: `torchattacks.<Class>`, `art.<Class>`, the in-house `jsma-origin`, and any family another package
registers (adapters.families). Layout, lowest first (a module imports only those above it in this list):
- rng.py: per-image random streams and the global-RNG guard every attack runs under;
- base.py: the Attack contract (float NCHW in [0,1], `space`, `seed`, `describe()`), parameter checks;
- registry.py: named components open to entry points (also used by benchmark's registries);
- families.py: the attack-family registry and `get_attack`;
- jsma_origin.py, via_torchattacks.py, via_art.py: one family each, registered where defined;
- catalog.py: what runs here, trial runs of parameters, the `attacks` listing.
"""
from __future__ import annotations

from adapters.base import Attack
from adapters.families import attack_family, get_attack

__all__ = ["Attack", "attack_family", "get_attack"]
