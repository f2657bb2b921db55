"""Which files are ours and what their code is, as benchmark.fingerprint records it: a file's kind (ours, a
library's, or the standard library's), the distribution and version of a library file, and hashes of the syntax
trees of our modules' top-level statements and of each function or method (docstrings left out, so comments,
formatting and docstrings never count).
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import os
import sys
import sysconfig
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
_OWN: dict[str, tuple] = {}  # installed files hashed as ours (own_distribution): real path -> (name, version)

@lru_cache(maxsize=None)
def kind(path: str) -> str:
    """'ours' (hash its source), 'library' (record its distribution's version) or 'skip' (no file: <frozen>,
    <string>, a notebook cell; or the standard library, which the Python version fixes)."""
    if not os.path.isfile(path):
        return "skip"
    real = os.path.realpath(path)
    if real in _OWN:
        return "ours"
    if real.startswith(_STDLIB) and "site-packages" not in real and "dist-packages" not in real:
        return "skip"
    return "library" if real.startswith(_LIBRARY_ROOTS) else "ours"


@lru_cache(maxsize=None)
def distribution(path: str) -> tuple[str, str] | None:
    from importlib.metadata import version

    real = os.path.realpath(path)
    root = next(r for r in _LIBRARY_ROOTS if real.startswith(r))
    top = real[len(root):].split(os.sep)[0].removesuffix(".py")
    names = _top_level_distributions().get(top)
    return (names[0], version(names[0])) if names else None


def own_distribution(path: str) -> tuple[str, str | None] | None:
    """Count the installed distribution that holds `path` (a model factory's module) as ours from now on in this
    process: its Python files are hashed like this project's, wherever it is installed, so the user's package
    installed without -e, edited and reinstalled at the same version, no longer matches what its old files
    computed (a version names a release's content only for a release). Every other library stays keyed by its
    name and version. Which files: those the distribution's RECORD lists, or, for a file no distribution lists
    (copied into site-packages), every file of its top-level package. (name, version), the version None for an
    unlisted file; None where `path` is no library's file (ours already, or the standard library's)."""
    real = os.path.realpath(path)
    if real in _OWN:
        return _OWN[real]
    if kind(path) != "library":
        return None
    root = next(r for r in _LIBRARY_ROOTS if real.startswith(r))
    top = real[len(root):].split(os.sep)[0].removesuffix(".py")
    found = _listing(real, top)
    if found is None:
        base = Path(root, top)
        files = {real} if not base.is_dir() else {os.path.realpath(p) for p in base.rglob("*.py")}
        found = top, None, files
    _OWN.update(dict.fromkeys(found[2], (found[0], found[1])))
    kind.cache_clear()
    return found[0], found[1]


def _listing(real: str, top: str) -> tuple[str, str, set[str]] | None:
    """(name, version, real paths of its Python files) of the installed distribution whose RECORD lists `real`
    (several installs of one name may lie on the path: the one this file belongs to)."""
    from importlib.metadata import distributions

    for name in _top_level_distributions().get(top, []):
        for dist in distributions(name=name):
            files = {os.path.realpath(f.locate()) for f in dist.files or () if str(f).endswith(".py")}
            if real in files:
                return dist.metadata["Name"], dist.version, files
    return None


@lru_cache(maxsize=None)
def _top_level_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


@lru_cache(maxsize=None)
def version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def as_on_disk(code: types.CodeType) -> bool:
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


def imports(module: str, path: str) -> list[tuple[str, str]]:
    """(name, file) of every module that `module`'s top-level import statements name, where it can be found."""
    import importlib.util

    parsed = parse(path)
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


def module_file(module: str, recorded: str) -> str:
    loaded = sys.modules.get(module)
    path = getattr(loaded, "__file__", None)
    return path if path and os.path.isfile(path) else recorded


def parse(path: str) -> tuple[str, list[tuple[int, int, str, str]], list[str]] | None:
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


def unit_at(units: list[tuple[int, int, str, str]], line: int) -> tuple[str, str] | None:
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
