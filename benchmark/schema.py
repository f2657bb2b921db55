"""A suite's shape, checked before anything heavy is imported: `validate` and `run` answer a misspelt key, a
missing table or a wrong type in about the time Python takes to start, not after torch and the toolkits load
(seconds more). The full checks (benchmark.suite, benchmark.entries) run after this one and find the same errors
too; these names must agree with theirs (tests/test_cli_and_suites.py checks that they do).

    precheck(path)      # UserError (one line) for a structural error of the suite file or what it extends
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark import extends
from benchmark.errors import UserError

TOP_KEYS = {"schema", "name", "description", "profile", "data", "models", "attacks", "matrix", "evaluation",
            "reference", "checks"}
SECTION_KEYS = {"data": {"source", "train", "test", "path"}, "matrix": {"models", "attacks"},
                "evaluation": {"sizes", "seeds", "batch_size"}}
BASE_KEYS = {"arch", "mean", "std", "lr", "batch_size", "epochs", "augment", "seed", "early_stop", "train_images",
             "pretrained", "repeats"}
FINETUNE_KEYS = {"from", "attack", "images", "split", "schedule", "lr", "batch_size", "epochs", "seed", "warmup",
                 "final", "repeats"}
LOADED = ("checkpoint", "robustbench", "provided")  # a loaded model's keys are its builders': checked later
SCHEMA = 1


def precheck(path: str | Path) -> None:
    path = Path(path)
    raw, _ = extends.resolve(path)

    def fail(msg: str) -> UserError:
        return UserError(f"{path}: {msg}")

    _unknown(raw, TOP_KEYS, "", fail)
    if raw.get("schema") != SCHEMA or isinstance(raw.get("schema"), bool):
        raise fail(f"schema must be {SCHEMA}, got {raw.get('schema')!r}")
    for section in ("data", "models", "attacks", "matrix", "evaluation"):
        if not isinstance(raw.get(section), dict):
            raise fail(f"missing [{section}] table")
    for section, keys in SECTION_KEYS.items():
        _unknown(raw[section], keys, f"{section}.", fail)
    for name, entry in raw["models"].items():
        if not isinstance(entry, dict):
            raise fail(f"models.{name} must be a table")
        if not any(k in entry for k in LOADED):
            _unknown(entry, FINETUNE_KEYS if "from" in entry else BASE_KEYS, f"models.{name}.", fail)
    for name, entry in raw["attacks"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("adapter"), str):
            raise fail(f"attacks.{name} needs adapter = \"...\" (see `python -m benchmark attacks`)")


def _unknown(table: dict[str, Any], valid: set[str], prefix: str, fail) -> None:
    extra = sorted(set(table) - valid)
    if extra:
        raise fail(f"unknown key {prefix}{extra[0]}; valid: {', '.join(sorted(valid))}")
