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

import hashlib
import json
import sys
import threading
from typing import Any

from benchmark import code_hashes
from benchmark.code_hashes import code, packages

__all__ = ["Recorder", "record", "include", "merge", "active_manifest", "unchanged", "digest", "code", "packages"]

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
        for ran, module in list(self.codes.items()):
            path = ran.co_filename
            kind = code_hashes.kind(path)
            if kind == "ours" and module not in (__name__, code_hashes.__name__):  # the recorder computes nothing
                parsed = code_hashes.parse(path)
                if parsed is None or not code_hashes.as_on_disk(ran):
                    # The file was edited (or broken) after this process imported it: what ran is not what the
                    # file says, so no later run may match this manifest.
                    unverifiable.append(path)
                    continue
                entry = modules.setdefault(module, {"file": path, "module": parsed[0], "units": {}})
                unit = code_hashes.unit_at(parsed[1], ran.co_firstlineno)
                if unit is not None:
                    entry["units"][unit[0]] = unit[1]
            elif kind == "library":
                dist = code_hashes.distribution(path)
                if dist is not None:
                    libraries[dist[0]] = dist[1]
        for module in list(modules):  # constants the code that ran may have read from the modules it imports
            for imported, path in code_hashes.imports(module, modules[module]["file"]):
                if imported not in modules and code_hashes.kind(path) == "ours":
                    parsed = code_hashes.parse(path)
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
        parsed = code_hashes.parse(code_hashes.module_file(module, entry["file"]))
        if parsed is None or parsed[0] != entry["module"]:
            return False
        units = {name: digest for _, _, name, digest in parsed[1]}
        if any(units.get(name) != digest for name, digest in entry["units"].items()):
            return False
    return all(code_hashes.version(dist) == version for dist, version in manifest.get("libraries", {}).items())


def digest(manifest: dict) -> str:
    """A hash of what a manifest says the code is, not where it lies: module names and files left out (a suite
    folder's factory module is named after its path), so a moved checkout or suite folder hashes the same."""
    content = {"modules": sorted([entry["module"], sorted(entry["units"].items())]
                                 for entry in manifest.get("modules", {}).values()),
               "libraries": manifest.get("libraries", {}), "unverifiable": bool(manifest.get("unverifiable"))}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
