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
import threading
import types
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
        self._previous_threads = threading.gettrace()
        _active.append(self)
        sys.settrace(self._trace)
        threading.settrace(self._trace)  # threads the computation starts (not ones already running)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self._previous)
        threading.settrace(self._previous_threads)
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
        unverifiable = []
        for code, module in list(self.codes.items()):
            path = code.co_filename
            kind = _kind(path)
            if kind == "ours" and module != __name__:  # the recorder itself computes nothing
                parsed = _parse(path)
                if parsed is None or not _as_on_disk(code):
                    # The file was edited (or broken) after this process imported it: what ran is not what the
                    # file says, so no later run may match this manifest.
                    unverifiable.append(path)
                    continue
                entry = modules.setdefault(module, {"file": path, "module": parsed[0], "units": {}})
                unit = _unit_at(parsed[1], code.co_firstlineno)
                if unit is not None:
                    entry["units"][unit[0]] = unit[1]
            elif kind == "library":
                dist = _distribution(path)
                if dist is not None:
                    libraries[dist[0]] = dist[1]
        for module in list(modules):  # constants the code that ran may have read from the modules it imports
            for imported, path in _imports(module, modules[module]["file"]):
                if imported not in modules and _kind(path) == "ours":
                    parsed = _parse(path)
                    if parsed is None:
                        unverifiable.append(path)
                    else:
                        modules[imported] = {"file": path, "module": parsed[0], "units": {}}
        for earlier in self.merged:
            for module, entry in earlier.get("modules", {}).items():
                mine = modules.setdefault(module, {**entry, "units": {}})
                mine["units"] = {**entry["units"], **mine["units"]}
            libraries = {**earlier.get("libraries", {}), **libraries}
        out = {"modules": {m: modules[m] for m in sorted(modules)}, "libraries": dict(sorted(libraries.items()))}
        return {**out, "unverifiable": sorted(set(unverifiable))} if unverifiable else out


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
    if not manifest or "modules" not in manifest or manifest.get("unverifiable"):
        return False  # made before manifests, or by code whose source was edited while it ran
    for module, entry in manifest["modules"].items():
        parsed = _parse(_module_file(module, entry["file"]))
        if parsed is None or parsed[0] != entry["module"]:
            return False
        units = {name: digest for _, _, name, digest in parsed[1]}
        if any(units.get(name) != digest for name, digest in entry["units"].items()):
            return False
    return all(_version(dist) == version for dist, version in manifest.get("libraries", {}).items())


def digest(manifest: dict) -> str:
    """A hash of what a manifest says the code is, not where it lies: module names and files left out (a suite
    folder's factory module is named after its path), so a moved checkout or suite folder hashes the same."""
    content = {"modules": sorted([entry["module"], sorted(entry["units"].items())]
                                 for entry in manifest.get("modules", {}).values()),
               "libraries": manifest.get("libraries", {}), "unverifiable": bool(manifest.get("unverifiable"))}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


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


def _as_on_disk(code: types.CodeType) -> bool:
    """Whether the file a code object came from still compiles to it (Python keeps running what it imported, so a
    file edited during a run no longer describes the code that ran)."""
    compiled = _compiled(code.co_filename)
    return compiled is not None and _shape(code) in compiled.get(code.co_qualname, ())


def _compiled(path: str) -> dict[str, set] | None:
    return _current(_compiled_file, path)


def _current(reader, path: str):
    """`reader(path, mtime, size)`, cached per file version: a file edited since is read again."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return reader(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _compiled_file(path: str, mtime_ns: int, size: int) -> dict[str, set] | None:
    try:
        module = compile(Path(path).read_bytes(), path, "exec", dont_inherit=True)
    except (OSError, SyntaxError, ValueError):
        return None
    shapes: dict[str, set] = {}
    stack = [module]
    while stack:
        code = stack.pop()
        shapes.setdefault(code.co_qualname, set()).add(_shape(code))
        stack += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return shapes


def _shape(code: types.CodeType) -> tuple:
    """A code object without its line numbers: what it does, not where it stands."""
    return (code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
            tuple(_shape(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts))


def _imports(module: str, path: str) -> list[tuple[str, str]]:
    """(name, file) of every module that `module`'s top-level import statements name, where it can be found."""
    import importlib.util

    parsed = _parse(path)
    package = getattr(sys.modules.get(module), "__package__", None) or module.rpartition(".")[0]
    out = []
    for name in (parsed[2] if parsed else ()):
        try:
            resolved = importlib.util.resolve_name(name, package) if name.startswith(".") else name
        except (ImportError, ValueError):
            continue
        for candidate in (resolved, resolved.rpartition(".")[0]):  # `from pkg import mod` or `from mod import x`
            found = getattr(sys.modules.get(candidate), "__file__", None)
            if found and os.path.isfile(found):
                out.append((candidate, found))
                break
    return out


def _module_file(module: str, recorded: str) -> str:
    loaded = sys.modules.get(module)
    path = getattr(loaded, "__file__", None)
    return path if path and os.path.isfile(path) else recorded


def _parse(path: str) -> tuple[str, list[tuple[int, int, str, str]], list[str]] | None:
    return _current(_parse_file, path)


@lru_cache(maxsize=256)
def _parse_file(path: str, mtime_ns: int, size: int
                ) -> tuple[str, list[tuple[int, int, str, str]], list[str]] | None:
    """(hash of the module's top-level statements, [(first line, last line, unit name, hash)] for every function
    and method not nested in another function, the module names its top-level imports name), from the syntax
    tree without docstrings. A name defined twice (a property's setter, singledispatch's `_`) is numbered."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    units: list[tuple[int, int, str, str]] = []
    seen: dict[str, int] = {}
    imports: list[str] = []

    def take(statements, prefix: str) -> None:
        for child in statements:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                name = prefix + child.name
                seen[name] = seen.get(name, 0) + 1
                name += f"#{seen[name]}" if seen[name] > 1 else ""
                units.append((first, child.end_lineno, name, _hash(_strip_docstring(child))))
            elif isinstance(child, ast.ClassDef):
                take(child.body, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.If, ast.Try, ast.With, ast.For, ast.While)):  # defs under `if`, `try`...
                for block in ("body", "orelse", "handlers", "finalbody"):
                    for item in getattr(child, block, []):
                        take(item.body if isinstance(item, ast.ExceptHandler) else [item], prefix)
            elif isinstance(child, ast.Import) and not prefix:
                imports.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and not prefix:
                base = "." * child.level + (child.module or "")
                imports.extend(f"{base}.{alias.name}" if base.strip(".") else base + alias.name
                               for alias in child.names)

    take(tree.body, "")
    return _hash(_skeleton(tree)), units, imports


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
    """The module without its functions and docstrings: the statements that run at import (constants, imports,
    class attributes). A function's signature, defaults and decorators are in its own unit, so a function added,
    or edited, that a computation never calls leaves its manifest matching."""

    class Hollow(ast.NodeTransformer):
        def visit_FunctionDef(self, node):
            return None

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
    except (OSError, TypeError):  # no file (a notebook cell, exec): the bytecode of its functions, else its name
        name = f"<{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}>"
        members = vars(obj).values() if isinstance(obj, type) else [obj]
        codes = [getattr(getattr(m, "__func__", m), "__code__", None) for m in members]
        return name + repr(sorted(repr(_shape(c)) for c in codes if c is not None))


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
