"""Suite files: the schema, its validation, and the expanded plan. Read with tomllib; nothing runs here.

A suite names models (a base recipe, or a fine-tune of another model on N images perturbed by a named attack),
attacks (an adapter and its parameters; a list-valued parameter expands into one attack per value, which is how
a robustness curve is asked for), the models x attacks matrix, evaluation sizes and seeds, and the reference
numbers to compare with. See suites/paper.toml for a commented example.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark import extends, repeats
from benchmark.checks import Checks, parse_checks
from benchmark.data import KNOWN_SHAPES, SOURCES, SYNTHETIC_SIZE, resolved
from benchmark.entries import (PARENT, AttackSpec, ModelSpec, check_finite, check_unknown, is_int, name_list,
                               parse_attacks, parse_models, parse_reference)
from benchmark.errors import UserError
from benchmark.evaluate import BATCH as ATTACK_BATCH

SCHEMA = 1
TOP_KEYS = {"schema", "name", "description", "profile", "data", "models", "attacks", "matrix", "evaluation",
            "reference", "checks"}
TOP_TYPES = {"name": str, "description": str, "profile": str}
PROFILES = ("paper", "paper-code", "custom")
SYNTHETIC_MAX = 1_000_000  # images per split of the synthetic source (3 KiB each: 3 GiB)


@dataclass
class Suite:
    path: Path
    raw: dict[str, Any]
    name: str
    profile: str
    data: dict[str, Any]
    models: dict[str, ModelSpec]  # every recipe's instances (benchmark.repeats), in dependency order
    attacks: dict[str, AttackSpec]  # expanded
    matrix_models: list[str]  # instances of the recipes [matrix] names
    matrix_attacks: list[str]  # expanded names
    sizes: list[int]
    seeds: list[int]
    eval_batch_size: int  # the attack batch: rounding can follow it, so keys carry it
    reference: dict[str, Any] = field(default_factory=dict)
    chain: list[str] = field(default_factory=list)  # the suite file, then each file it extends
    checks: Checks = field(default_factory=Checks)
    check_attacks: list[str] = field(default_factory=list)  # attacks the checks derive (in `attacks` too)

    @property
    def evaluated_attacks(self) -> list[str]:
        """The matrix's attacks, then those its checks derive: every model of the matrix is evaluated under each."""
        return self.matrix_attacks + self.check_attacks

    def source_of(self, attack: AttackSpec, model: str) -> str | None:
        """The model a transfer attack crafts its images on when evaluated on `model` (None: on `model` itself,
        or for a check's transfer from the parent on a model without one: not evaluated). A source recipe with
        repeats gives the instance on `model`'s branch of them (repeats.pick)."""
        if attack.source == PARENT:
            return self.models[model].parent
        if attack.source is None:
            return None
        candidates = [(s.name, s.repeat) for s in self.instances(attack.source)]
        return repeats.pick(candidates, self.models[model].repeat)

    def instances(self, recipe: str) -> list[ModelSpec]:
        """A recipe's trained models, in repeat order."""
        return [s for s in self.models.values() if s.recipe == recipe]

    @property
    def recipes(self) -> dict[str, list[str]]:
        """Each recipe's instance names, in dependency order."""
        out: dict[str, list[str]] = {}
        for spec in self.models.values():
            out.setdefault(spec.recipe, []).append(spec.name)
        return out

    def evaluates(self, model: str, attack: AttackSpec) -> bool:
        return attack.source != PARENT or self.models[model].parent is not None

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
        evaluations = len(self.seeds) * sum(self.evaluates(m, self.attacks[a]) for m in self.matrix_models
                                            for a in self.evaluated_attacks)
        return {"suite": self.name, "profile": self.profile, "data": self.data["source"],
                "trainings": {recipe: len(names) for recipe, names in self.recipes.items()},
                "base_models": [m.name for m in base],
                "loaded_models": {m.name: m.entry.get("file", m.entry["source"]) for m in self.models.values()
                                  if m.loaded},
                "adversarial_sets": [f"{m.entry['images']} x {m.entry['attack']} on {m.parent} "
                                     f"({m.entry['split']} split)" for m in tuned],
                "finetuned_models": [m.name for m in tuned],
                "attacks": list(self.matrix_attacks), "check_attacks": list(self.check_attacks),
                "checks": self.checks.describe(),
                "evaluations": evaluations, "cells": evaluations * len(self.sizes)}


def with_provided(suite: Suite, modules: dict[str, Any]) -> Suite:
    """The suite with the modules handed to run_suite: a name the suite declares `provided = true` takes its
    module; a name it does not declare joins as a loaded model and the matrix's models."""
    declared = {n for n, s in suite.models.items() if s.entry.get("source") == "in-memory"}
    absent = sorted(declared - set(modules))
    if absent:
        raise UserError(f"{suite.path}: models.{absent[0]} is provided = true: pass its module as "
                        f"run_suite(suite, models={{{absent[0]!r}: module}})")
    clash = sorted(n for n in modules if n in suite.models and n not in declared)
    if clash:
        raise UserError(f"{suite.path}: run_suite(models=...) names {clash[0]!r}, which the suite defines "
                        "otherwise (declare it `provided = true`)")
    new = [n for n in modules if n not in suite.models]
    if not new:
        return suite
    raw = copy.deepcopy(suite.raw)
    raw["models"].update({n: {"provided": True} for n in new})
    raw["matrix"]["models"] = raw["matrix"]["models"] + new
    return dataclasses.replace(suite, raw=raw, models={**{n: ModelSpec(n, {"source": "in-memory"}) for n in new},
                                                       **suite.models},
                               matrix_models=suite.matrix_models + new)


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

    check_unknown(raw, TOP_KEYS, "", fail)
    check_finite(raw, "", fail)
    for key, kind in TOP_TYPES.items():
        if key in raw and not isinstance(raw[key], kind):
            raise fail(f"{key} must be a {kind.__name__}, got {raw[key]!r}")
    if raw.get("name") is not None and (raw["name"].strip(". ") == "" or any(c in raw["name"] for c in "/\\")
                                        or any(ord(c) < 32 for c in raw["name"]) or len(raw["name"].encode()) > 200):
        raise fail(f"name must be usable as a folder name (no slashes or control characters, not empty, at most 200 "
                   f"bytes), got {raw['name'][:40]!r}")
    if not is_int(raw.get("schema")) or raw.get("schema") != SCHEMA:
        raise fail(f"schema must be {SCHEMA}, got {raw.get('schema')!r}")
    profile = raw.get("profile", "custom")
    if profile not in PROFILES:
        raise fail(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    for section in ("data", "models", "attacks", "matrix", "evaluation"):
        if not isinstance(raw.get(section), dict):
            raise fail(f"missing [{section}] table")

    data = dict(raw["data"])
    check_unknown(data, {"source", "train", "test", "path"}, "data.", fail)
    if data.get("source") not in SOURCES:
        raise fail(f"data.source must be one of {', '.join(SOURCES)}, got {data.get('source')!r}")
    for key in ("train", "test"):
        if key in data and (not is_int(data[key]) or not 1 <= data[key] <= SYNTHETIC_MAX):
            raise fail(f"data.{key} must be a positive integer of at most {SYNTHETIC_MAX:,}")
        if key in data and data["source"] != "synthetic":
            raise fail(f"data.{key} applies to the synthetic source only")
    if "path" in data:  # relative to the suite; --data-dir, where given, takes its place
        if not isinstance(data["path"], str) or data["source"] == "synthetic":
            raise fail("data.path must be a string, for a source other than synthetic")
        if data["source"] == "folder" and not (path.parent / data["path"]).exists():
            raise fail(f"data.path not found: {resolved(path.parent / data['path'])}")

    attacks = parse_attacks(raw["attacks"], fail)
    models = parse_models(raw["models"], raw["attacks"], fail, path.parent)

    matrix = raw["matrix"]
    check_unknown(matrix, {"models", "attacks"}, "matrix.", fail)
    matrix_recipes = name_list(matrix.get("models"), "matrix.models", fail)
    recipes = list(dict.fromkeys(m.recipe for m in models.values()))
    for name in matrix_recipes:
        if name not in recipes:
            raise fail(f"matrix.models names unknown model {name!r}; defined: {', '.join(recipes)}")
    matrix_models = [m.name for recipe in matrix_recipes for m in models.values() if m.recipe == recipe]
    matrix_attacks = []
    for name in name_list(matrix.get("attacks"), "matrix.attacks", fail):
        expanded = [a.name for a in attacks.values() if a.family == name]
        if not expanded:
            raise fail(f"matrix.attacks names unknown attack {name!r}; defined: {', '.join(raw['attacks'])}")
        matrix_attacks += expanded
    for spec in attacks.values():
        if spec.source is not None and spec.source not in recipes:
            raise fail(f"attacks.{spec.family}.source names unknown model {spec.source!r}; defined: "
                       f"{', '.join(recipes)}")
    checks, derived = parse_checks(raw.get("checks"), attacks, name_list(matrix.get("attacks"), "matrix.attacks", fail),
                                   fail)
    if checks.from_parent and not any(models[m].parent for m in matrix_models):
        raise fail("checks.from_parent crafts on each fine-tuned model's parent, but matrix.models has no "
                   "fine-tuned model")
    attacks = {**attacks, **derived}

    evaluation = raw["evaluation"]
    check_unknown(evaluation, {"sizes", "seeds", "batch_size"}, "evaluation.", fail)
    sizes = evaluation.get("sizes")
    if not isinstance(sizes, list) or not sizes or not all(is_int(s) and s > 0 for s in sizes):
        raise fail("evaluation.sizes must be a non-empty list of positive integers")
    seeds = evaluation.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(is_int(s) and s >= 0 for s in seeds):
        raise fail("evaluation.seeds must be a non-empty list of non-negative integers")
    if len(set(sizes)) != len(sizes) or len(set(seeds)) != len(seeds):
        raise fail("evaluation.sizes and evaluation.seeds must not repeat")
    batch = evaluation.get("batch_size", ATTACK_BATCH)
    if not is_int(batch) or batch < 1:
        raise fail(f"evaluation.batch_size (the attack batch) must be a positive integer (default {ATTACK_BATCH}; "
                   f"it is part of every evaluation's key), got {batch!r}")

    reference = parse_reference(raw.get("reference"), path, sorted(sizes), fail)
    suite = Suite(path=path, raw=raw, name=str(raw.get("name", path.stem)), profile=profile, data=data,
                  models=models, attacks=attacks, matrix_models=matrix_models, matrix_attacks=matrix_attacks,
                  sizes=sorted(sizes), seeds=list(seeds), eval_batch_size=batch,
                  reference=reference, checks=checks, check_attacks=list(derived))
    check_sources(suite, fail)
    splits = known_splits(data)
    if splits is not None:
        check_sizes(suite, *splits)
    return suite


def check_sources(suite: Suite, fail) -> None:
    """Every transfer attack's source recipe gives each model of the matrix one instance to craft on."""
    for attack in suite.evaluated_attacks:
        spec = suite.attacks[attack]
        if spec.source is None or spec.source == PARENT:
            continue
        for model in suite.matrix_models:
            if suite.source_of(spec, model) is None:
                n = len(suite.instances(spec.source))
                raise fail(f"attacks.{spec.family}.source = {spec.source!r} has {n} repeats, and none of them lies "
                           f"on the branch of {model} (repeat {repeats.label(suite.models[model].repeat)}): give "
                           f"the source 1 repeat, or repeats that pair with the target's (benchmark.repeats)")


def known_splits(data: dict[str, Any]) -> tuple[int, int] | None:
    """(train, test) sizes of the suite's data source where known without loading it, else None."""
    if data["source"] == "synthetic":
        return data.get("train", SYNTHETIC_SIZE[0]), data.get("test", SYNTHETIC_SIZE[1])
    known = KNOWN_SHAPES.get(data["source"])
    return (known.train, known.test) if known else None


def check_sizes(suite: Suite, n_train: int, n_test: int) -> None:
    """Evaluation sizes, fine-tune image counts and early-stop splits against the data's split sizes."""
    if max(suite.sizes) > n_test:
        raise UserError(f"{suite.path}: evaluation size {max(suite.sizes)} exceeds the test split ({n_test} images)")
    if (suite.checks.probe_images or 0) > n_test:
        raise UserError(f"{suite.path}: checks.probe_images = {suite.checks.probe_images} exceeds the test split "
                        f"({n_test} images)")
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

