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
import types
from importlib.metadata import entry_points
from typing import Any, Iterator


class RegistryError(ValueError):
    """A component registered twice, or an entry point that does not import or names the wrong kind of object:
    one line, which the CLI prints as a user error (exit 2)."""


class Registry:
    def __init__(self, kind: str, *, group: str, builtin: tuple[str, ...] = (), item_type: type | None = None):
        self.kind, self.group, self.builtin, self.item_type = kind, group, builtin, item_type
        self._items: dict[str, Any] = {}
        self._loaded = self._loading = False

    def register(self, name: str, obj: Any = None) -> Any:
        """`@registry.register("name")` on a definition, or `registry.register("name", obj)`; a name taken by
        another object raises RegistryError (a second package cannot silently replace a component)."""
        def add(target: Any) -> Any:
            known = self._items.get(name)
            if known is not None and known is not target:
                raise RegistryError(f"{self.kind} {name!r} is registered twice ({_where(known)} and "
                                    f"{_where(target)})")
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
        """The built-in modules, then every entry point of the group; a failure raises RegistryError naming the
        entry point, on this lookup and every later one (nothing is half-loaded and then forgotten)."""
        if self._loaded or self._loading:  # loading: a module being imported looked the registry up
            return
        self._loading = True
        try:
            for module in self.builtin:
                importlib.import_module(module)
            for point in entry_points(group=self.group):
                origin = f"entry point {point.name} = {point.value!r}" + (
                    f" of {point.dist.name}" if getattr(point, "dist", None) is not None else "")
                try:
                    obj = point.load()
                except Exception as exc:  # noqa: BLE001  (another package's import: any failure, one line)
                    text = str(exc).strip().splitlines()
                    raise RegistryError(f"{self.kind} {origin} does not import: {type(exc).__name__}"
                                        + (f": {text[0]}" if text else "")) from None
                if isinstance(obj, types.ModuleType):
                    continue  # its decorators registered what it defines
                if self.item_type is not None and not isinstance(obj, self.item_type):
                    raise RegistryError(f"{self.kind} {origin} names a {type(obj).__name__}, not a "
                                        f"{self.item_type.__name__}: point it at the module whose decorator "
                                        "registers it")
                self.register(point.name, obj)
            self._loaded = True
        finally:
            self._loading = False


def _where(obj: Any) -> str:
    """Where a component was defined: its function's module and name (a registered wrapper names what it wraps)."""
    inner = next((getattr(obj, a) for a in ("build", "render") if callable(getattr(obj, a, None))), obj)
    return f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', type(inner).__name__)}"
