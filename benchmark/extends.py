"""Suite files that extend each other: `extends = "other.toml"` (relative to the file that says it).

    extends = "paper-code.toml"
    drop = ["models.base.early_stop"]      # inherited keys or whole tables to remove, by dotted path
    [models.base]
    epochs = 8                              # set again: overrides the inherited value

Tables merge key by key, at every depth; any other value (a number, a string, a list) set again replaces the
inherited one whole. `drop` is applied to the inherited suite before the overlay's own keys go on, so an overlay
can drop a table and define it anew. Paths the parent gives relative to its own folder (data.path,
reference.file, a model's checkpoint, model_dir, pretrained and the folder its factory's module is in) are rebased onto the overlay's folder, so they keep naming
the same file. The overlay's name defaults to its own file's stem, never the parent's. Cycles and missing files
are refused in one line. As lm-evaluation-harness's `include` does for task YAML; written here because TOML has
no include of its own.
"""
from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any

from benchmark.errors import UserError

# (table path, key) of the values that are paths relative to the suite's folder.
PATH_KEYS = (("data", "path"), ("reference", "file"))
MAX_DEPTH = 32  # files in one chain of extends
MODEL_PATH_KEYS = ("checkpoint", "model_dir", "pretrained")  # factory_dir: below


def read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a suite file (pick one of its .toml files)")
    if not path.is_file():
        raise UserError(f"suite file not found: {path}")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))  # a byte-order mark, as editors write, is dropped
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None


def resolve(path: Path, trail: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """The suite at `path` with every `extends` applied, and the chain of files it was merged from (the file
    itself first)."""
    raw = read_toml(path)
    chain = [str(path)]
    parent_name = raw.pop("extends", None)
    drops = raw.pop("drop", None)
    if parent_name is None:
        if drops is not None:
            raise UserError(f"{path}: drop applies to an inherited suite; add extends = \"<file>\"")
        return raw, chain
    if not isinstance(parent_name, str) or not parent_name:
        raise UserError(f"{path}: extends must name a suite file (a string), got {parent_name!r}")
    parent_path = Path(os.path.normpath(path.parent / parent_name))  # recorded as the user would write it
    here = path.resolve()
    if len(trail) >= MAX_DEPTH:
        raise UserError(f"{path}: extends chains more than {MAX_DEPTH} files")
    if parent_path.resolve() in trail + (here,):
        names = " -> ".join(p.name for p in trail + (here, parent_path.resolve()))
        raise UserError(f"{path}: extends forms a cycle ({names})")
    if parent_path.is_dir():
        raise UserError(f"{path}: extends names {parent_name!r}, a directory, not a suite file")
    if not parent_path.is_file():
        raise UserError(f"{path}: extends names {parent_name!r}, not found at {parent_path}")
    parent, parent_chain = resolve(parent_path, trail + (here,))
    _rebase(parent, parent_path.parent, path.parent)
    if drops is not None:
        if not isinstance(drops, list) or not all(isinstance(d, str) and d for d in drops):
            raise UserError(f"{path}: drop must be a list of dotted keys, e.g. [\"attacks.jsma-art\"]")
        for dotted in drops:
            _drop(parent, dotted, path, parent_path)
    parent.pop("name", None)  # an overlay is its own suite: its name is its own, or its file's stem
    return merge(parent, raw), chain + parent_chain


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` on `base`: tables merged key by key, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _drop(table: dict[str, Any], dotted: str, path: Path, parent_path: Path) -> None:
    """Remove `dotted` from `table`. Names may hold dots themselves (`models.res.v2`), so every way of reading the
    path against the keys that exist is tried: exactly one must name something, else the drop is refused."""
    def readings(node: Any, rest: str) -> list[tuple[dict, str]]:
        if not isinstance(node, dict):
            return []
        found = [(node, rest)] if rest in node else []
        for key in node:
            if rest.startswith(f"{key}."):
                found += readings(node[key], rest[len(key) + 1:])
        return found

    found = readings(table, dotted)
    if not found:
        raise UserError(f"{path}: drop names {dotted!r}, which {parent_path.name} does not define")
    if len(found) > 1:
        raise UserError(f"{path}: drop {dotted!r} is ambiguous in {parent_path.name} (names with dots): it could "
                        f"mean {len(found)} different entries; rename them")
    node, key = found[0]
    del node[key]


def _rebase(raw: dict[str, Any], old: Path, new: Path) -> None:
    """Relative paths written for a suite in folder `old` rewritten to name the same files from folder `new`."""
    old, new = old.resolve(), new.resolve()
    if old == new:
        return

    def moved(value: Any) -> Any:
        if not isinstance(value, str) or os.path.isabs(value):
            return value
        target = os.path.normpath(old / value)
        # Relative while the two folders share more than the root; across trees the absolute path reads better.
        return target if os.path.commonpath([target, new]) == os.sep else os.path.relpath(target, new)

    for table, key in PATH_KEYS:
        if isinstance(raw.get(table), dict) and key in raw[table]:
            raw[table][key] = moved(raw[table][key])
    models = raw.get("models")
    for entry in models.values() if isinstance(models, dict) else ():
        if isinstance(entry, dict):
            for key in MODEL_PATH_KEYS:
                if key in entry:
                    entry[key] = moved(entry[key])
            # Folders the parent named by default: its own folder for a factory's module, ./models for RobustBench.
            if "factory" in entry:
                entry["factory_dir"] = moved(entry.get("factory_dir", "."))
            if "robustbench" in entry and "model_dir" not in entry:
                entry["model_dir"] = moved("models")
