"""Suite files: the schema, its validation, and the expanded plan. Read with tomllib; nothing runs here.

A suite names models (a base recipe, or a fine-tune of another model on N images perturbed by a named attack),
attacks (an adapter and its parameters; a list-valued parameter expands into one attack per value, which is how
a robustness curve is asked for), the models x attacks matrix, evaluation sizes and seeds, and the reference
numbers to compare with. See suites/paper.toml for a commented example.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark import extends, sources
from benchmark.data import SOURCES, SYNTHETIC_SIZE, resolved
from benchmark.errors import UserError
from benchmark.evaluate import BATCH as ATTACK_BATCH
from benchmark.models import ARCHITECTURES
from benchmark.train import SCHEDULES

SCHEMA = 1
TOP_KEYS = {"schema", "name", "description", "profile", "data", "models", "attacks", "matrix", "evaluation",
            "reference"}
TOP_TYPES = {"name": str, "description": str, "profile": str}
# Split sizes (train, test) of the sources whose size is known before loading them.
KNOWN_SPLITS = {"cifar10": (50000, 10000), "cifar100": (50000, 10000)}
PROFILES = ("paper", "paper-code", "custom")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
SYNTHETIC_MAX = 1_000_000  # images per split of the synthetic source (3 KiB each: 3 GiB)
MAX_NAME = 100  # bytes: two of them and a prefix stay below the 255 a file name may have
BASE_KEYS = {"arch": str, "mean": list, "std": list, "lr": float, "batch_size": int, "epochs": int,
             "augment": bool, "seed": int, "early_stop": dict, "train_images": int}
FINETUNE_KEYS = {"from": str, "attack": str, "images": int, "split": str, "schedule": str, "lr": float,
                 "batch_size": int, "epochs": int, "seed": int, "warmup": float, "final": float}
EARLY_STOP_KEYS = {"patience": int, "val_size": int}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    entry: dict[str, Any]  # the suite's entry with defaults filled in: what the model's key hashes

    @property
    def parent(self) -> str | None:
        return self.entry.get("from")

    @property
    def loaded(self) -> bool:
        """Loaded from a checkpoint or handed in as a module (benchmark.sources), not trained from a recipe."""
        return "source" in self.entry


@dataclass(frozen=True)
class AttackSpec:
    name: str  # unique, e.g. "fgsm" or "fgsm@eps=0.005" for one point of a sweep
    family: str  # the suite's attack name before expansion
    adapter: str
    params: dict[str, Any]
    sweep: tuple[str, Any] | None = None


@dataclass
class Suite:
    path: Path
    raw: dict[str, Any]
    name: str
    profile: str
    data: dict[str, Any]
    models: dict[str, ModelSpec]  # in dependency order
    attacks: dict[str, AttackSpec]  # expanded
    matrix_models: list[str]
    matrix_attacks: list[str]  # expanded names
    sizes: list[int]
    seeds: list[int]
    eval_batch_size: int  # the attack batch: rounding can follow it, so keys carry it
    reference: dict[str, Any] = field(default_factory=dict)
    chain: list[str] = field(default_factory=list)  # the suite file, then each file it extends

    def root(self, name: str) -> ModelSpec:
        """The base model a model descends from (itself for a base model)."""
        spec = self.models[name]
        while spec.parent is not None:
            spec = self.models[spec.parent]
        return spec

    @property
    def hash(self) -> str:
        return digest(self.raw)[:16]

    def plan(self) -> dict[str, Any]:
        base = [m for m in self.models.values() if m.parent is None and not m.loaded]
        tuned = [m for m in self.models.values() if m.parent is not None]
        evaluations = len(self.matrix_models) * len(self.matrix_attacks) * len(self.seeds)
        return {"suite": self.name, "profile": self.profile, "data": self.data["source"],
                "base_models": [m.name for m in base],
                "loaded_models": {m.name: m.entry.get("file", m.entry["source"]) for m in self.models.values()
                                  if m.loaded},
                "adversarial_sets": [f"{m.entry['images']} x {m.entry['attack']} on {m.parent} "
                                     f"({m.entry['split']} split)" for m in tuned],
                "finetuned_models": [m.name for m in tuned],
                "attacks": list(self.matrix_attacks),
                "evaluations": evaluations, "cells": evaluations * len(self.sizes)}


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def load(path: str | Path) -> Suite:
    """A suite file, with every `extends` it names merged in (benchmark.extends)."""
    path = Path(path)
    raw, chain = extends.resolve(path)
    suite = parse(raw, path)
    suite.chain = chain
    return suite


def parse(raw: dict[str, Any], path: Path) -> Suite:
    where = str(path)

    def fail(msg: str) -> UserError:
        return UserError(f"{where}: {msg}")

    _unknown(raw, TOP_KEYS, "", fail)
    _finite(raw, "", fail)
    for key, kind in TOP_TYPES.items():
        if key in raw and not isinstance(raw[key], kind):
            raise fail(f"{key} must be a {kind.__name__}, got {raw[key]!r}")
    if raw.get("name") is not None and (raw["name"].strip(". ") == "" or any(c in raw["name"] for c in "/\\")
                                        or any(ord(c) < 32 for c in raw["name"]) or len(raw["name"].encode()) > 200):
        raise fail(f"name must be usable as a folder name (no slashes or control characters, not empty, at most 200 "
                   f"bytes), got {raw['name'][:40]!r}")
    if not _is_int(raw.get("schema")) or raw.get("schema") != SCHEMA:
        raise fail(f"schema must be {SCHEMA}, got {raw.get('schema')!r}")
    profile = raw.get("profile", "custom")
    if profile not in PROFILES:
        raise fail(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    for section in ("data", "models", "attacks", "matrix", "evaluation"):
        if not isinstance(raw.get(section), dict):
            raise fail(f"missing [{section}] table")

    data = dict(raw["data"])
    _unknown(data, {"source", "train", "test", "path"}, "data.", fail)
    if data.get("source") not in SOURCES:
        raise fail(f"data.source must be one of {', '.join(SOURCES)}, got {data.get('source')!r}")
    for key in ("train", "test"):
        if key in data and (not _is_int(data[key]) or not 1 <= data[key] <= SYNTHETIC_MAX):
            raise fail(f"data.{key} must be a positive integer of at most {SYNTHETIC_MAX:,}")
        if key in data and data["source"] != "synthetic":
            raise fail(f"data.{key} applies to the synthetic source only")
    if "path" in data:  # relative to the suite; --data-dir, where given, takes its place
        if not isinstance(data["path"], str) or data["source"] == "synthetic":
            raise fail("data.path must be a string, for a source other than synthetic")
        if data["source"] == "folder" and not (path.parent / data["path"]).exists():
            raise fail(f"data.path not found: {resolved(path.parent / data['path'])}")

    attacks = _attacks(raw["attacks"], fail)
    models = _models(raw["models"], raw["attacks"], fail, path.parent)

    matrix = raw["matrix"]
    _unknown(matrix, {"models", "attacks"}, "matrix.", fail)
    matrix_models = _names(matrix.get("models"), "matrix.models", fail)
    for name in matrix_models:
        if name not in models:
            raise fail(f"matrix.models names unknown model {name!r}; defined: {', '.join(models)}")
    matrix_attacks = []
    for name in _names(matrix.get("attacks"), "matrix.attacks", fail):
        expanded = [a.name for a in attacks.values() if a.family == name]
        if not expanded:
            raise fail(f"matrix.attacks names unknown attack {name!r}; defined: {', '.join(raw['attacks'])}")
        matrix_attacks += expanded

    evaluation = raw["evaluation"]
    _unknown(evaluation, {"sizes", "seeds", "batch_size"}, "evaluation.", fail)
    sizes = evaluation.get("sizes")
    if not isinstance(sizes, list) or not sizes or not all(_is_int(s) and s > 0 for s in sizes):
        raise fail("evaluation.sizes must be a non-empty list of positive integers")
    seeds = evaluation.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise fail("evaluation.seeds must be a non-empty list of non-negative integers")
    if len(set(sizes)) != len(sizes) or len(set(seeds)) != len(seeds):
        raise fail("evaluation.sizes and evaluation.seeds must not repeat")
    batch = evaluation.get("batch_size", ATTACK_BATCH)
    if not _is_int(batch) or batch < 1:
        raise fail(f"evaluation.batch_size (the attack batch) must be a positive integer (default {ATTACK_BATCH}; "
                   f"it is part of every evaluation's key), got {batch!r}")

    reference = _reference(raw.get("reference"), path, sorted(sizes), fail)
    suite = Suite(path=path, raw=raw, name=str(raw.get("name", path.stem)), profile=profile, data=data,
                  models=models, attacks=attacks, matrix_models=matrix_models, matrix_attacks=matrix_attacks,
                  sizes=sorted(sizes), seeds=list(seeds), eval_batch_size=batch,
                  reference=reference)
    splits = known_splits(data)
    if splits is not None:
        check_sizes(suite, *splits)
    return suite


def known_splits(data: dict[str, Any]) -> tuple[int, int] | None:
    """(train, test) sizes of the suite's data source where known without loading it, else None."""
    if data["source"] == "synthetic":
        return data.get("train", SYNTHETIC_SIZE[0]), data.get("test", SYNTHETIC_SIZE[1])
    return KNOWN_SPLITS.get(data["source"])


def check_sizes(suite: Suite, n_train: int, n_test: int) -> None:
    """Evaluation sizes, fine-tune image counts and early-stop splits against the data's split sizes."""
    if max(suite.sizes) > n_test:
        raise UserError(f"{suite.path}: evaluation size {max(suite.sizes)} exceeds the test split ({n_test} images)")
    for spec in suite.models.values():
        if spec.parent is not None:
            held = (suite.root(spec.name).entry.get("early_stop") or {}).get("val_size", 0)
            pool = n_train - held if spec.entry["split"] == "train" else n_test
            if spec.entry["images"] > pool:
                raise UserError(f"{suite.path}: models.{spec.name}.images = {spec.entry['images']} exceeds the "
                                f"{spec.entry['split']} split" + (f" less the base model's {held} validation "
                                                                  "images" if held else "") + f" ({pool} images)")
        elif not spec.loaded and ((spec.entry["early_stop"] or {}).get("val_size", 0)
                                  + (spec.entry["train_images"] or 1) > n_train):
            raise UserError(f"{suite.path}: models.{spec.name}: early_stop.val_size + train_images exceed the "
                            f"training split ({n_train} images)")


def _finite(value: Any, where: str, fail) -> None:
    """Every number anywhere in the suite finite, every integer within 64 bits (seeds go to torch and numpy)."""
    if isinstance(value, float) and not math.isfinite(value):
        hint = ' (ART takes norm = "inf")' if where.rpartition(".")[2] == "norm" else ""
        raise fail(f"{where} must be a finite number, got {value}{hint}")
    if _is_int(value) and not -2 ** 63 <= value < 2 ** 63:
        raise fail(f"{where} = {value} does not fit in 64 bits (seeds: 0 <= seed < 2**63)")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f"{where}.{key}" if where else str(key), fail)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _finite(item, f"{where}[{i}]", fail)


def _identifier(name: str, where: str, fail) -> None:
    """Model and attack names go into report headings, figure file names and sweep names (`fgsm@eps=0.01`)."""
    if not NAME.fullmatch(name) or ".." in name:
        raise fail(f"{where} {name!r}: a name must be letters, digits and _ . + - (starting with a letter or digit; "
                   "no '/', '..', '@' or spaces)")
    if len(name.encode()) > MAX_NAME:
        raise fail(f"{where} {name[:20]!r}...: a name must be at most {MAX_NAME} bytes (figure file names join a "
                   "model's and an attack's)")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unknown(table: dict, valid, prefix: str, fail) -> None:
    extra = sorted(set(table) - set(valid))
    if extra:
        raise fail(f"unknown key {prefix}{extra[0]}; valid: {', '.join(sorted(valid))}")


def _names(value, where: str, fail) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise fail(f"{where} must be a non-empty list of names")
    repeated = [v for i, v in enumerate(value) if v in value[:i]]
    if repeated:
        raise fail(f"{where} names {repeated[0]!r} twice")
    return list(value)


def _typed(entry: dict, types: dict[str, type], where: str, fail) -> None:
    _unknown(entry, types, where, fail)
    for key, kind in types.items():
        if key not in entry:
            continue
        value = entry[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else (
            _is_int(value) if kind is int else isinstance(value, kind))
        if not ok:
            raise fail(f"{where}{key} must be {kind.__name__}, got {value!r}")
        if kind in (int, float) and value < 0:
            raise fail(f"{where}{key} must be >= 0, got {value}")


def _attacks(table: dict, fail) -> dict[str, AttackSpec]:
    from adapters import get_attack
    from adapters.catalog import culprit, describe_failure, trial

    out: dict[str, AttackSpec] = {}
    tried = set()
    for name, entry in tqdm(table.items(), desc="validate: attacks", unit="attack", leave=False,
                            disable=len(table) < 50, file=sys.stderr):
        _identifier(name, "attack", fail)
        if not isinstance(entry, dict) or not isinstance(entry.get("adapter"), str):
            raise fail(f"attacks.{name} needs adapter = \"...\" (see `python -m benchmark attacks`)")
        params = {k: v for k, v in entry.items() if k != "adapter"}
        swept = [k for k, v in params.items() if isinstance(v, list)]
        if len(swept) > 1:
            raise fail(f"attacks.{name}: sweep one parameter at a time (lists given for {', '.join(swept)})")
        values = [(swept[0], v) for v in params[swept[0]]] if swept else [None]
        if swept and not values:
            raise fail(f"attacks.{name}.{swept[0]}: empty list")
        repeated = [v for i, v in enumerate(params[swept[0]]) if v in params[swept[0]][:i]] if swept else []
        if repeated:  # compared as numbers: 0 and 0.0 are the same point
            raise fail(f"attacks.{name}.{swept[0]} repeats the value {repeated[0]!r}")
        for sweep in values:
            concrete = dict(params) if sweep is None else {**params, sweep[0]: sweep[1]}
            for key, value in concrete.items():
                if key.startswith("eps") and isinstance(value, (int, float)) and value < 0:
                    raise fail(f"attacks.{name}.{key} must be >= 0, got {value}")
            try:
                attack = get_attack(entry["adapter"], **concrete)
            except (ValueError, TypeError) as exc:
                raise fail(f"attacks.{name}: {exc}") from None
            # The toolkit's own type and value checks fire only when it runs: once per adapter, parameter names and
            # types, and non-numeric values (a sweep of 20,000 eps values is one trial).
            signature = (entry["adapter"], tuple(sorted((k, type(v).__name__ if _is_number(v) else repr(v))
                                                        for k, v in concrete.items())))
            if signature not in tried:
                tried.add(signature)
                try:
                    trial(attack)
                except Exception as exc:  # noqa: BLE001  (whatever a toolkit raises on these parameters)
                    key = culprit(entry["adapter"], concrete)
                    what = (f"{key} = {concrete[key]!r} ({type(concrete[key]).__name__}) is refused by" if key
                            else "these parameters fail in")
                    raise fail(f"attacks.{name}: {what} {entry['adapter']} on a stand-in classifier: "
                               f"{describe_failure(exc)}") from None
            full = name if sweep is None else f"{name}@{sweep[0]}={sweep[1]}"
            if full in out:
                raise fail(f"attacks.{name}: expands to {full!r}, which another attack is already called")
            out[full] = AttackSpec(full, name, entry["adapter"], concrete, sweep)
    return out


def _models(table: dict, attack_table: dict, fail, suite_dir: Path) -> dict[str, ModelSpec]:
    entries: dict[str, dict] = {}
    for name, entry in table.items():
        _identifier(name, "model", fail)
        if not isinstance(entry, dict):
            raise fail(f"models.{name} must be a table")
        where = f"models.{name}."
        if "from" in entry:
            _typed(entry, FINETUNE_KEYS, where, fail)
            if entry.get("attack") not in attack_table:
                raise fail(f"{where}attack must name an attack; defined: {', '.join(attack_table)}")
            if any(isinstance(v, list) for v in attack_table[entry["attack"]].values()):
                raise fail(f"{where}attack {entry['attack']!r} sweeps a parameter; fine-tune on one attack")
            full = {"from": entry["from"], "attack": entry["attack"],
                    "attack_spec": attack_table[entry["attack"]], "images": entry.get("images", 500),
                    "split": entry.get("split", "train"), "schedule": entry.get("schedule", "constant"),
                    "lr": entry.get("lr", 1e-3), "batch_size": entry.get("batch_size", 64),
                    "epochs": entry.get("epochs", 1), "seed": entry.get("seed", 0),
                    "warmup": entry.get("warmup", 0.3), "final": entry.get("final", 0.01)}
            if full["split"] not in ("train", "test"):
                raise fail(f"{where}split must be 'train' or 'test', got {full['split']!r}")
            if full["schedule"] not in SCHEDULES:
                raise fail(f"{where}schedule must be one of {', '.join(SCHEDULES)}, got {full['schedule']!r}")
            if full["images"] < 1 or full["epochs"] < 1 or full["batch_size"] < 1:
                raise fail(f"{where}images, epochs and batch_size must be positive")
        elif sources.is_loaded(entry):
            full = sources.parse(entry, where, fail, suite_dir)
        else:
            _typed(entry, BASE_KEYS, where, fail)
            if entry.get("arch") not in ARCHITECTURES:
                raise fail(f"{where}arch must be one of {', '.join(ARCHITECTURES)}, got {entry.get('arch')!r}")
            early = entry.get("early_stop")
            if early is not None:
                _typed(early, EARLY_STOP_KEYS, f"{where}early_stop.", fail)
                if early.get("patience", 1) < 1 or early.get("val_size", 1) < 1:
                    raise fail(f"{where}early_stop: patience and val_size must be at least 1 (leave early_stop out "
                               "to train every epoch)")
            full = {"arch": entry["arch"], "mean": entry.get("mean", [0.5, 0.5, 0.5]),
                    "std": entry.get("std", [0.5, 0.5, 0.5]), "lr": entry.get("lr", 1e-3),
                    "batch_size": entry.get("batch_size", 256), "epochs": entry.get("epochs", 10),
                    "augment": entry.get("augment", True), "seed": entry.get("seed", 0),
                    "early_stop": {"patience": 2, "val_size": 5000, **early} if early is not None else None,
                    "train_images": entry.get("train_images")}
            for key in ("mean", "std"):
                v = full[key]
                if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                    raise fail(f"{where}{key} must be three numbers")
            if any(s <= 0 for s in full["std"]):
                raise fail(f"{where}std must be positive")
            if full["epochs"] < 1 or full["batch_size"] < 1:
                raise fail(f"{where}epochs and batch_size must be positive")
        entries[name] = full
    ordered: dict[str, ModelSpec] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in trail:
            raise fail(f"models.{trail[0]}: fine-tune chain refers to itself ({' -> '.join(trail + (name,))})")
        parent = entries[name].get("from")
        if parent is not None:
            if parent not in entries:
                raise fail(f"models.{name}.from names missing model {parent!r}; defined: {', '.join(entries)}")
            visit(parent, trail + (name,))
        ordered[name] = ModelSpec(name, entries[name])

    for name in entries:
        visit(name, ())
    return ordered


def _reference(table, path: Path, sizes: list[int], fail) -> dict[str, Any]:
    """[reference] file = "...": tables of the paper (model -> attack -> orig/adv per size); `models` and
    `attacks` map the suite's names onto the file's (identity where absent)."""
    if table is None:
        return {}
    _unknown(table, {"file", "models", "attacks"}, "reference.", fail)
    if not isinstance(table.get("file"), str):
        raise fail("reference.file must be a file name (a string)")
    for key in ("models", "attacks"):
        renames = table.get(key, {})
        if not isinstance(renames, dict) or not all(isinstance(v, str) for v in renames.values()):
            raise fail(f"reference.{key} must be a table of names (suite name = \"reference name\")")
    file = path.parent / str(table.get("file", ""))
    if not file.is_file():
        raise fail(f"reference.file not found: {file}")
    try:
        tables = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"reference file {file}: malformed TOML: {exc}") from None
    return {"source": tables.get("source", file.name), "sizes": tables.get("sizes", sizes),
            "ratios": tables.get("ratios", {}), "tables": tables.get("tables", {}),
            "models": dict(table.get("models", {})), "attacks": dict(table.get("attacks", {}))}
