"""The code a node runs, recorded as it runs, so a stored artefact is served only while that code is unchanged.

    with fingerprint.record() as ran:
        value = compute()                 # train, perturb, evaluate...
    stored = {**value, "code": ran.manifest()}
    ...
    fingerprint.unchanged(stored["code"])   # on a later lookup: False once any of that code was edited

`record()` traces every Python function that starts inside it (sys.settrace, call events only: no line
tracing). The manifest names, for each module of ours that ran (any file outside the standard library and
site-packages: this project, a suite folder's factory, the user's own package or script), a hash of its
top-level statements (constants, class attributes, signatures and defaults; not function bodies) and one of
each top-level function or method that ran (a nested function or lambda counts as its enclosing one); for each
installed distribution whose code ran (tqdm, ART, torch...), its version. Hashes are of the syntax tree without
docstrings, so comments, formatting and docstrings never count. So an edit of `train.to_float` re-runs the
evaluations that called it, an edit of a factory's helper module re-runs what used the model, and an edit of a
report-only function re-runs nothing. Recomputing too much is safe, reusing a stale result is not: a node's
manifest covers every line that ran for it, whatever else it covers.

Why in-house: no library records which source a computation executed for cache validation (joblib.Memory and
lm-eval's caches hash the called function alone, which misses what it calls).
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

_LIBRARY_ROOTS = tuple(sorted({os.path.realpath(p) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib")
                               if (p := sysconfig.get_paths().get(key))}
                              | {os.path.realpath(p) + os.sep for p in sys.path
                                 if p.endswith(("site-packages", "dist-packages"))},
                              key=len, reverse=True))
_STDLIB = tuple(os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib"))
_active: list["Recorder"] = []


class Recorder:
    """The code objects that started while it was active (and in any recorder nested inside it)."""

    def __init__(self):
        self.codes: dict[Any, str] = {}  # code object -> its module's __name__
        self.merged: list[dict] = []  # manifests of work this one builds on (a resumed checkpoint's)

    def _trace(self, frame, event, arg):
        code = frame.f_code
        if code not in self.codes:
            self.codes[code] = frame.f_globals.get("__name__", "")
        return self._chained(frame, event, arg) if self._chained is not None else None

    def __enter__(self) -> "Recorder":
        self._previous = sys.gettrace()
        # A debugger's or coverage's tracer keeps running under the outermost recorder and any nested in it.
        self._chained = _active[0]._chained if _active else self._previous
        _active.append(self)
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self._previous)
        _active.pop()
        if _active:  # what ran in a nested recorder ran in the enclosing one too
            _active[-1].codes.update(self.codes)
            _active[-1].merged += self.merged

    def include(self, codes: dict) -> None:
        """Code that ran before, elsewhere, for what this computation uses (a model built once and reused)."""
        self.codes.update(codes)

    def manifest(self) -> dict[str, Any]:
        modules: dict[str, dict] = {}
        libraries: dict[str, str] = {}
        for code, module in list(self.codes.items()):
            path = code.co_filename
            kind = _kind(path)
            if kind == "ours" and module != __name__:  # the recorder itself computes nothing
                parsed = _parse(path)
                if parsed is None:
                    continue
                entry = modules.setdefault(module, {"file": path, "module": parsed[0], "units": {}})
                unit = _unit_at(parsed[1], code.co_firstlineno)
                if unit is not None:
                    entry["units"][unit[0]] = unit[1]
            elif kind == "library":
                dist = _distribution(path)
                if dist is not None:
                    libraries[dist[0]] = dist[1]
        for earlier in self.merged:
            for module, entry in earlier.get("modules", {}).items():
                mine = modules.setdefault(module, {**entry, "units": {}})
                mine["units"] = {**entry["units"], **mine["units"]}
            libraries = {**earlier.get("libraries", {}), **libraries}
        return {"modules": {m: modules[m] for m in sorted(modules)}, "libraries": dict(sorted(libraries.items()))}


def record() -> Recorder:
    return Recorder()


def include(codes: dict) -> None:
    """Add code that ran earlier to the recorder now active (none: nothing to do)."""
    if _active:
        _active[-1].include(codes)


def merge(manifest: dict) -> None:
    """Count a stored manifest (a checkpoint's: the epochs before a kill) as run by the active recorder."""
    if _active and manifest:
        _active[-1].merged.append(manifest)


def active_manifest() -> dict:
    """The manifest of what the active recorder has seen so far (a checkpoint saved mid-training carries it)."""
    return _active[-1].manifest() if _active else {}


def unchanged(manifest: dict | None) -> bool:
    """Whether every module, function and library version a stored manifest names is as it was."""
    if not manifest or "modules" not in manifest:
        return False  # made before manifests, or by nothing we can vouch for
    for module, entry in manifest["modules"].items():
        parsed = _parse(_module_file(module, entry["file"]))
        if parsed is None or parsed[0] != entry["module"]:
            return False
        units = {name: digest for _, _, name, digest in parsed[1]}
        if any(units.get(name) != digest for name, digest in entry["units"].items()):
            return False
    return all(_version(dist) == version for dist, version in manifest.get("libraries", {}).items())


def digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


# --- files, modules and their hashes ---------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _kind(path: str) -> str:
    """'ours' (hash its source), 'library' (record its distribution's version) or 'skip' (no file: <frozen>,
    <string>, a notebook cell; or the standard library, which the Python version fixes)."""
    if not os.path.isfile(path):
        return "skip"
    real = os.path.realpath(path)
    if real.startswith(_STDLIB) and "site-packages" not in real and "dist-packages" not in real:
        return "skip"
    return "library" if real.startswith(_LIBRARY_ROOTS) else "ours"


@lru_cache(maxsize=None)
def _distribution(path: str) -> tuple[str, str] | None:
    from importlib.metadata import version

    real = os.path.realpath(path)
    root = next(r for r in _LIBRARY_ROOTS if real.startswith(r))
    top = real[len(root):].split(os.sep)[0].removesuffix(".py")
    names = _top_level_distributions().get(top)
    return (names[0], version(names[0])) if names else None


@lru_cache(maxsize=None)
def _top_level_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


@lru_cache(maxsize=None)
def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _module_file(module: str, recorded: str) -> str:
    loaded = sys.modules.get(module)
    path = getattr(loaded, "__file__", None)
    return path if path and os.path.isfile(path) else recorded


def _parse(path: str) -> tuple[str, list[tuple[int, int, str, str]]] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _parse_file(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _parse_file(path: str, mtime_ns: int, size: int) -> tuple[str, list[tuple[int, int, str, str]]] | None:
    """(hash of the module's top-level statements, [(first line, last line, unit name, hash)] for every top-level
    function and method), from the syntax tree without docstrings."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    units: list[tuple[int, int, str, str]] = []

    def take(node, prefix: str) -> None:
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                units.append((first, child.end_lineno, prefix + child.name, _hash(_strip_docstring(child))))
            elif isinstance(child, ast.ClassDef):
                take(child, f"{prefix}{child.name}.")

    take(tree, "")
    return _hash(_skeleton(tree)), units


def _unit_at(units: list[tuple[int, int, str, str]], line: int) -> tuple[str, str] | None:
    for first, last, name, digest_ in units:
        if first <= line <= last:
            return name, digest_
    return None


def _strip_docstring(node):
    body = list(node.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:] or [ast.Pass()]
    clone = type(node)(**{**{f: getattr(node, f) for f in node._fields}, "body": body})
    return clone


def _skeleton(tree: ast.Module) -> ast.Module:
    """The module with every function body emptied and docstrings dropped: what runs at import."""

    class Hollow(ast.NodeTransformer):
        def visit_FunctionDef(self, node):
            return type(node)(**{**{f: getattr(node, f) for f in node._fields}, "body": [ast.Pass()]})

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_ClassDef(self, node):
            self.generic_visit(node)
            return _strip_docstring(node)

    import copy

    return _strip_docstring(Hollow().visit(copy.deepcopy(tree)))


def _hash(node) -> str:
    return hashlib.sha256(ast.dump(node, include_attributes=False).encode()).hexdigest()[:16]


# --- identities that are not executions --------------------------------------------------------------------------

def code(*objects: Any) -> str:
    """sha256 over the source of each module, class or function (order-independent): what identifies an
    in-memory module's classes, whose construction ran outside any node."""
    digest_ = hashlib.sha256()
    for source in sorted(_source(obj) for obj in objects):
        digest_.update(source.encode())
        digest_.update(b"\0")
    return digest_.hexdigest()[:16]


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):  # built in or without a file: its qualified name is all there is
        return f"<{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}>"


def packages() -> str:
    """sha256 over every source file of our two packages as they are on disk: a worker whose checkout differs
    from the driver's refuses to compute (it would compute nodes with other code)."""
    import adapters
    import benchmark

    digest_ = hashlib.sha256()
    for package in (benchmark, adapters):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest_.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest_.hexdigest()[:16]
