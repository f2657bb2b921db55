"""Suite files that extend each other: `extends = "other.toml"` (relative to the file that says it).

    extends = "paper-code.toml"
    drop = ["models.base.early_stop"]      # inherited keys or whole tables to remove, by dotted path
    [models.base]
    epochs = 8                              # set again: overrides the inherited value

Tables merge key by key, at every depth; any other value (a number, a string, a list) set again replaces the
inherited one whole. `drop` is applied to the inherited suite before the overlay's own keys go on, so an overlay
can drop a table and define it anew. Paths the parent gives relative to its own folder (data.path,
reference.file, a model's checkpoint, model_dir and pretrained) are rebased onto the overlay's folder, so they keep naming
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
MODEL_PATH_KEYS = ("checkpoint", "model_dir", "pretrained")


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
    parent_path = path.parent / parent_name
    here = path.resolve()
    if parent_path.resolve() in trail + (here,):
        names = " -> ".join(p.name for p in trail + (here, parent_path.resolve()))
        raise UserError(f"{path}: extends forms a cycle ({names})")
    if not parent_path.is_file():
        raise UserError(f"{path}: extends names {parent_name!r}, not found at {parent_path}")
    parent, parent_chain = resolve(parent_path, trail + (here,))
    _rebase(parent, parent_path.parent, path.parent)
    parent.pop("name", None)  # an overlay is its own suite: its name is its own, or its file's stem
    if drops is not None:
        if not isinstance(drops, list) or not all(isinstance(d, str) and d for d in drops):
            raise UserError(f"{path}: drop must be a list of dotted keys, e.g. [\"attacks.jsma-art\"]")
        for dotted in drops:
            _drop(parent, dotted, path, parent_path)
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
    """Remove `dotted` from `table`; names may hold dots themselves, so each step takes the longest key that
    matches."""
    rest, node = dotted, table
    while True:
        matches = [k for k in node if rest == k or rest.startswith(f"{k}.")]
        if not matches:
            raise UserError(f"{path}: drop names {dotted!r}, which {parent_path.name} does not define")
        key = max(matches, key=len)
        if rest == key:
            del node[key]
            return
        rest = rest[len(key) + 1:]
        if not isinstance(node[key], dict):
            raise UserError(f"{path}: drop names {dotted!r}, but {dotted[:len(dotted) - len(rest) - 1]} is not a "
                            "table")
        node = node[key]


def _rebase(raw: dict[str, Any], old: Path, new: Path) -> None:
    """Relative paths written for a suite in folder `old` rewritten to name the same files from folder `new`."""
    old, new = old.resolve(), new.resolve()
    if old == new:
        return

    def moved(value: Any) -> Any:
        if not isinstance(value, str) or os.path.isabs(value):
            return value
        return os.path.relpath(os.path.normpath(old / value), new)

    for table, key in PATH_KEYS:
        if isinstance(raw.get(table), dict) and key in raw[table]:
            raw[table][key] = moved(raw[table][key])
    models = raw.get("models")
    for entry in models.values() if isinstance(models, dict) else ():
        if isinstance(entry, dict):
            for key in MODEL_PATH_KEYS:
                if key in entry:
                    entry[key] = moved(entry[key])
