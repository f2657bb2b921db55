"""Named components, registered where they are defined and open to other packages.

    ATTACK_FAMILIES = Registry("attack family", group="adv_transfer_bench.attack_families",
                               builtin=("adapters.jsma_origin", ...))

    @ATTACK_FAMILIES.register("my-attack")       # in its own module
    def build(member, **params): ...

A registry looks a name up among what was registered by decorator at import time: its built-in modules (imported
on first use, so a light command imports no toolkit it does not need) and every module an installed package
names under the registry's entry-point group in its pyproject.toml:

    [project.entry-points."adv_transfer_bench.attack_families"]
    my-attack = "my_package.my_attack"        # a module whose decorators register, or "module:object"

An entry point naming an object that its module did not register is registered under the entry point's name.
As lm-evaluation-harness's `lm_eval/api/registry.py` registers models and inspect_ai its components; a dozen
lines of importlib.metadata, so no plugin library.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Iterator


class Registry:
    def __init__(self, kind: str, *, group: str, builtin: tuple[str, ...] = ()):
        self.kind, self.group, self.builtin = kind, group, builtin
        self._items: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, obj: Any = None) -> Any:
        """`@registry.register("name")` on a definition, or `registry.register("name", obj)`; a name taken by
        another object raises ValueError (a second package cannot silently replace a component)."""
        def add(target: Any) -> Any:
            known = self._items.get(name)
            if known is not None and known is not target:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({_where(known)} and {_where(target)})")
            self._items[name] = target
            return target

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> Any | None:
        self._load()
        return self._items.get(name)

    def names(self) -> list[str]:
        self._load()
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def items(self) -> Iterator[tuple[str, Any]]:
        self._load()
        return iter(list(self._items.items()))

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: a module being imported may look the registry up
        for module in self.builtin:
            importlib.import_module(module)
        for point in entry_points(group=self.group):
            obj = point.load()
            if point.name not in self._items and not isinstance(obj, type(importlib)):
                self.register(point.name, obj)


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"

