"""Fingerprints of the code that computes a node, for cache keys: a rerun after a code change recomputes exactly
what that code determines (a change in an attack re-runs its evaluations, not the base model's training).

A fingerprint hashes the source text of modules, classes and functions (inspect.getsource), so an edit of a
comment counts as a change too: recomputing too much is safe, reusing a stale result is not.
"""
from __future__ import annotations

import hashlib
import inspect
import sys
from typing import Any

from adapters.base import Attack


def code(*objects: Any) -> str:
    """sha256 over the source of each module, class or function (order-independent)."""
    digest = hashlib.sha256()
    for source in sorted(_source(obj) for obj in objects):
        digest.update(source.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):  # built in or without a file: its qualified name is all there is
        return f"<{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}>"


def attack_modules(attack: Attack) -> list[Any]:
    """The modules of our code an attack's output depends on: every adapters module in its class hierarchy and
    the ones they import from (the interface and the per-image RNG)."""
    names = {cls.__module__ for cls in type(attack).__mro__ if cls.__module__.startswith("adapters")}
    names |= {"adapters.base", "adapters.rng"}
    return [sys.modules[name] for name in sorted(names)]


def packages() -> str:
    """sha256 over every source file of our two packages as they are on disk: a worker whose checkout differs
    from the driver's refuses to compute (it would key and compute nodes with other code)."""
    from pathlib import Path

    import adapters
    import benchmark

    digest = hashlib.sha256()
    for package in (benchmark, adapters):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
