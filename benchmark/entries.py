"""A suite's entries, checked and with defaults filled in: model and attack tables, the reference, and the checks
every value goes through (types, finite numbers, names usable in file names). benchmark.suite assembles them.
"""
from __future__ import annotations

import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark import repeats, sources
from benchmark.errors import UserError
from benchmark.models import ARCHITECTURES
from benchmark.train import SCHEDULES

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
MAX_NAME = 100  # bytes: two of them and a prefix stay below the 255 a file name may have
BASE_KEYS = {"arch": str, "mean": list, "std": list, "lr": float, "batch_size": int, "epochs": int,
             "augment": bool, "seed": int, "early_stop": dict, "train_images": int, "pretrained": str,
             "repeats": int}
FINETUNE_KEYS = {"from": str, "attack": str, "images": int, "split": str, "schedule": str, "lr": float,
                 "batch_size": int, "epochs": int, "seed": int, "warmup": float, "final": float, "repeats": int}
EARLY_STOP_KEYS = {"patience": int, "val_size": int}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the suite: a recipe's instance (benchmark.repeats), its entry with defaults filled in and the
    instance's training seed, `from` naming the parent's instance: what the model's key hashes."""
    name: str  # the instance: the recipe's name, or e.g. "aft-fgsm@r1.3" where the recipe has several
    entry: dict[str, Any]
    recipe: str = ""  # the suite's model name ("" : the same as `name`)
    repeat: tuple[int, ...] = (0,)  # the repeat path: one index per level of the fine-tune chain

    def __post_init__(self):
        if not self.recipe:
            object.__setattr__(self, "recipe", self.name)

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
    # A transfer attack's images are crafted on this model and evaluated on every model of the matrix;
    # PARENT: on each model's parent (a check's transfer from the parent).
    source: str | None = None
    check: str | None = None  # the robustness check (benchmark.checks) that derived it from a suite attack
    checks: str | None = None  # that suite attack's name
    minimal_eps: dict[str, Any] | None = None  # {"max", "steps"}: per-image smallest eps (benchmark.minimal)


PARENT = "@parent"


def check_finite(value: Any, where: str, fail) -> None:
    """Every number anywhere in the suite finite, every integer within 64 bits (seeds go to torch and numpy)."""
    if isinstance(value, float) and not math.isfinite(value):
        hint = ' (ART takes norm = "inf")' if where.rpartition(".")[2] == "norm" else ""
        raise fail(f"{where} must be a finite number, got {value}{hint}")
    if is_int(value) and not -2 ** 63 <= value < 2 ** 63:
        raise fail(f"{where} = {value} does not fit in 64 bits (seeds: 0 <= seed < 2**63)")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}" if where else str(key), fail)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_finite(item, f"{where}[{i}]", fail)


def check_identifier(name: str, where: str, fail) -> None:
    """Model and attack names go into report headings, figure file names and sweep names (`fgsm@eps=0.01`)."""
    if not NAME.fullmatch(name) or ".." in name:
        raise fail(f"{where} {name!r}: a name must be letters, digits and _ . + - (starting with a letter or digit; "
                   "no '/', '..', '@' or spaces)")
    if len(name.encode()) > MAX_NAME:
        raise fail(f"{where} {name[:20]!r}...: a name must be at most {MAX_NAME} bytes (figure file names join a "
                   "model's and an attack's)")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_unknown(table: dict, valid, prefix: str, fail) -> None:
    extra = sorted(set(table) - set(valid))
    if extra:
        raise fail(f"unknown key {prefix}{extra[0]}; valid: {', '.join(sorted(valid))}")


def name_list(value, where: str, fail) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise fail(f"{where} must be a non-empty list of names")
    repeated = [v for i, v in enumerate(value) if v in value[:i]]
    if repeated:
        raise fail(f"{where} names {repeated[0]!r} twice")
    return list(value)


def check_typed(entry: dict, types: dict[str, type], where: str, fail) -> None:
    check_unknown(entry, types, where, fail)
    for key, kind in types.items():
        if key not in entry:
            continue
        value = entry[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else (
            is_int(value) if kind is int else isinstance(value, kind))
        if not ok:
            raise fail(f"{where}{key} must be {kind.__name__}, got {value!r}")
        if kind in (int, float) and value < 0:
            raise fail(f"{where}{key} must be >= 0, got {value}")


def parse_attacks(table: dict, fail) -> dict[str, AttackSpec]:
    from adapters import get_attack
    from adapters.catalog import culprit, describe_failure, trial

    out: dict[str, AttackSpec] = {}
    tried = set()
    for name, entry in tqdm(table.items(), desc="validate: attacks", unit="attack", leave=False,
                            disable=len(table) < 50, file=sys.stderr):
        check_identifier(name, "attack", fail)
        if not isinstance(entry, dict) or not isinstance(entry.get("adapter"), str):
            raise fail(f"attacks.{name} needs adapter = \"...\" (see `python -m benchmark attacks`)")
        params = {k: v for k, v in entry.items() if k not in ("adapter", "source", "minimal_eps")}
        source = entry.get("source")
        if source is not None and (not isinstance(source, str) or not source):
            raise fail(f"attacks.{name}.source must name a model of the suite, got {source!r}")
        minimal = parse_minimal_eps(entry, params, name, fail)
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
            if minimal is not None:  # the search sets eps per image; the spec (and describe()) carry its upper end
                concrete["eps"] = minimal["max"]
            for key, value in concrete.items():
                if key.startswith("eps") and isinstance(value, (int, float)) and value < 0:
                    raise fail(f"attacks.{name}.{key} must be >= 0, got {value}")
            linf_eps = concrete.get("eps")
            if (is_number(linf_eps) and linf_eps > 1 and minimal is None
                    and entry["adapter"].rpartition(".")[2] in _linf_attacks()):
                # Images and the clamped normalized tensor both lie in [0,1]: an Linf eps above 1 changes nothing
                # more (an L2 or L1 eps has no such bound without the image size).
                raise fail(f"attacks.{name}.eps = {linf_eps!r}: an Linf eps above 1 exceeds the input range of its "
                           f"space ([0,1] images, or the [0,1]-clamped normalized tensor); give at most 1")
            try:
                attack = get_attack(entry["adapter"], **concrete)
            except (ValueError, TypeError) as exc:
                if minimal is not None and "unknown parameter(s) eps" in str(exc):
                    raise fail(f"attacks.{name}: minimal_eps needs an attack whose eps bounds its perturbation "
                               f"(Linf or L2: FGSM, PGD, ...); {entry['adapter']} has no eps") from None
                raise fail(f"attacks.{name}: {exc}") from None
            except Exception as exc:  # noqa: BLE001  (a registered family's own code: any failure, one line)
                raise fail(f"attacks.{name}: {entry['adapter']} failed to build: {describe_failure(exc)}") from None
            # The toolkit's own type and value checks fire only when it runs: once per adapter, parameter names and
            # types, and non-numeric values (a sweep of 20,000 eps values is one trial).
            signature = (entry["adapter"], tuple(sorted((k, type(v).__name__ if is_number(v) else repr(v))
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
            out[full] = AttackSpec(full, name, entry["adapter"], concrete, sweep, source=source, minimal_eps=minimal)
    return out


def _linf_attacks() -> list[str]:
    from adapters.catalog import NORMS

    return NORMS["Linf"]


def parse_minimal_eps(entry: dict, params: dict, name: str, fail) -> dict[str, Any] | None:
    """`minimal_eps = { max = 0.05, grid = 8, steps = 8 }`: per image, the smallest eps in [0, max] (the attack's
    own eps space) that fools the model: every point of `grid` equal intervals of [0, max] tried first, then `steps`
    bisections below the first that succeeds (benchmark.minimal; grid 1 is bisection over [0, max] alone)."""
    value = entry.get("minimal_eps")
    if value is None:
        return None
    where = f"attacks.{name}.minimal_eps"
    if not isinstance(value, dict):
        raise fail(f"{where} must be a table, e.g. minimal_eps = {{ max = 0.05, steps = 8 }}")
    check_unknown(value, {"max", "steps", "grid"}, f"{where}.", fail)
    top, steps, grid = value.get("max"), value.get("steps", 8), value.get("grid", 8)
    if top is None:
        raise fail(f"{where} needs max (the largest eps searched), e.g. minimal_eps = {{ max = 0.05, steps = 8 }}")
    if not isinstance(top, (int, float)) or isinstance(top, bool) or not top > 0:
        raise fail(f"{where}.max must be a positive number (the largest eps searched), got {top!r}")
    if not is_int(steps) or not 1 <= steps <= 24:
        raise fail(f"{where}.steps must be an integer from 1 to 24 (bisection steps inside one grid interval: "
                   f"precision max / (grid * 2**steps)), got {steps!r}")
    if not is_int(grid) or not 1 <= grid <= 256:
        raise fail(f"{where}.grid must be an integer from 1 to 256 (equal intervals of [0, max] tried on every "
                   f"image before bisecting), got {grid!r}")
    if "eps" in params:
        raise fail(f"attacks.{name}: minimal_eps searches eps itself; leave eps out")
    from adapters.catalog import NORMS

    member = entry.get("adapter", "").rpartition(".")[2]
    if member not in NORMS["Linf"] + NORMS["L2"]:  # an eps that bounds the perturbation (FGSM-, PGD-type)
        raise fail(f"attacks.{name}: minimal_eps needs an attack whose eps bounds its perturbation (Linf or L2: "
                   f"FGSM, PGD, ...); {entry.get('adapter')} is not one")
    if "source" in entry:
        raise fail(f"attacks.{name}: minimal_eps and source together are not supported")
    if member in NORMS["Linf"] and params.get("space", "pixel") == "pixel" and top > 1:
        raise fail(f"{where}.max = {top!r}: an Linf eps in pixel space above 1 changes nothing more; give at most 1")
    return {"max": float(top), "steps": steps, "grid": grid}


def parse_models(table: dict, attack_table: dict, fail, suite_dir: Path) -> dict[str, ModelSpec]:
    entries: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for name, entry in table.items():
        check_identifier(name, "model", fail)
        if not isinstance(entry, dict):
            raise fail(f"models.{name} must be a table")
        where = f"models.{name}."
        counts[name] = repeat_count(entry, where, fail)
        entry = {k: v for k, v in entry.items() if k != "repeats"}
        if "from" in entry:
            check_typed(entry, FINETUNE_KEYS, where, fail)
            if entry.get("attack") not in attack_table:
                raise fail(f"{where}attack must name an attack; defined: {', '.join(attack_table)}")
            if "minimal_eps" in attack_table[entry["attack"]]:
                raise fail(f"{where}attack {entry['attack']!r} searches its eps per image (minimal_eps); fine-tune "
                           "on an attack with one eps")
            if "source" in attack_table[entry["attack"]]:
                raise fail(f"{where}attack {entry['attack']!r} is a transfer attack (source = ...); a fine-tune "
                           "perturbs its images against its parent: name an attack without source")
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
            check_typed(entry, BASE_KEYS, where, fail)
            if not isinstance(entry.get("arch"), str) or ARCHITECTURES.get(entry["arch"]) is None:
                raise fail(f"{where}arch must be one of {', '.join(ARCHITECTURES.names())}, got {entry.get('arch')!r}")
            early = entry.get("early_stop")
            if early is not None:
                check_typed(early, EARLY_STOP_KEYS, f"{where}early_stop.", fail)
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
            if "pretrained" in entry:
                full["pretrained"] = pretrained_weights(entry, where, fail, suite_dir)
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
    return expand(ordered, counts, fail)


def repeat_count(entry: dict, where: str, fail) -> int:
    """A recipe's `repeats`: independent trainings, 1 (the default) to repeats.MAX_REPEATS."""
    if "repeats" not in entry:
        return 1
    value = entry["repeats"]
    if sources.is_loaded(entry):
        raise fail(f"{where}repeats: a loaded model is one trained model (one repeat); a fine-tune from it can "
                   "repeat")
    if not is_int(value) or not 1 <= value <= repeats.MAX_REPEATS:
        raise fail(f"{where}repeats must be an integer from 1 to {repeats.MAX_REPEATS} (independent trainings of "
                   f"this recipe), got {value!r}")
    return value


def expand(recipes: dict[str, ModelSpec], counts: dict[str, int], fail) -> dict[str, ModelSpec]:
    """Every recipe's instances (benchmark.repeats), parents before their fine-tunes: a fine-tune's repeats
    within every instance of its parent, each with its own training seed."""
    totals: dict[str, int] = {}
    for name, spec in recipes.items():
        totals[name] = counts[name] * (totals[spec.parent] if spec.parent is not None else 1)
    if sum(totals.values()) > repeats.MAX_INSTANCES:
        raise fail(f"the repeats ask for {sum(totals.values()):,} trained models; at most "
                   f"{repeats.MAX_INSTANCES:,} (repeats multiply down a fine-tune chain)")
    out: dict[str, ModelSpec] = {}
    by_recipe: dict[str, list[ModelSpec]] = {}
    for name, spec in recipes.items():
        parents = by_recipe[spec.parent] if spec.parent is not None else [None]
        made = []
        for parent in parents:
            for r in range(counts[name]):
                path = (parent.repeat if parent is not None else ()) + (r,)
                entry = dict(spec.entry)
                if "seed" in entry:
                    entry["seed"] = repeats.training_seed(entry["seed"], path)
                if parent is not None:
                    entry["from"] = parent.name
                made.append(ModelSpec(repeats.instance_name(name, path, totals[name] == 1), entry, name, path))
        by_recipe[name] = made
        out.update((m.name, m) for m in made)
    return out


def pretrained_weights(entry: dict, where: str, fail, suite_dir: Path) -> dict[str, str]:
    """A recipe's `pretrained` file (relative to the suite): {"file", "sha256"}; keys hash the sha256 only.
    Offline and without the file: one line naming the file to download and where."""
    from benchmark.models import PRETRAINED, pretrained_mismatch

    if entry["arch"] not in PRETRAINED:
        raise fail(f"{where}pretrained: {entry['arch']} has no published weights here; pretrained needs arch = one "
                   f"of {', '.join(PRETRAINED)}")
    name, url, weights = PRETRAINED[entry["arch"]]
    if not entry["pretrained"].strip():
        raise fail(f"{where}pretrained must name a file ({name}, from {url})")
    file = (suite_dir / entry["pretrained"]).resolve()
    if file.is_dir():
        raise fail(f"{where}pretrained: {file} is a directory, not a weights file ({name})")
    if not file.is_file():
        raise fail(f"{where}pretrained: {file} not found; download torchvision's {weights} weights, {name}, from "
                   f"{url} (any machine with internet) and put it there")
    try:
        state = sources.read_state(file)
    except UserError as exc:
        raise fail(f"{where}pretrained: {exc}") from None
    from benchmark.models import Resized

    net = ARCHITECTURES.get(entry["arch"])(10)  # the head's width does not matter: it is never loaded
    why = pretrained_mismatch((net.net if isinstance(net, Resized) else net).state_dict(), state)
    if why:
        raise fail(f"{where}pretrained: {file.name} does not fit {entry['arch']} ({why})")
    return {"file": str(file), "sha256": sources.file_sha256(file)}


def parse_reference(table, path: Path, sizes: list[int], fail) -> dict[str, Any]:
    """[reference] file = "...": tables of the paper (model -> attack -> orig/adv per size); `models` and
    `attacks` map the suite's names onto the file's (identity where absent)."""
    if table is None:
        return {}
    check_unknown(table, {"file", "models", "attacks"}, "reference.", fail)
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
