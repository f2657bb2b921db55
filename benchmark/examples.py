"""Per-example results: `examples.csv` beside results.json, one row per attacked image at the largest size.

Columns: model (a trained model: its recipe's name, or recipe@repeat where the recipe repeats), recipe, repeat
(benchmark.repeats: 'r0', 'r1.3'), attack, attack_family, seed, position (0-based place in the seed's evaluation order; size s is
positions < s), index (into the test split), label, pred_orig, pred_adv, correct_orig, correct_adv, and the
perturbation's l0 (changed pixel-channels), l2 and linf in pixel space ([0,1] images), and where a run has an
attack with `minimal_eps`, min_eps and min_eps_reversals (empty for the other attacks). Every accuracy cell of
results.json is the mean of `correct_orig` or `correct_adv` over positions < size of one (model, attack, seed).
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable

import pandas as pd

from benchmark.errors import UserError, one_line
from benchmark.store import atomic_write

FILE = "examples.csv"
COLUMNS = ["model", "recipe", "repeat", "attack", "attack_family", "seed", "position", "index", "label",
           "pred_orig", "pred_adv", "correct_orig", "correct_adv", "l0", "l2", "linf"]
# Columns a file written before repeated training lacks; load() fills them in (one repeat of each model).
ADDED = {"recipe": lambda table: table["model"], "repeat": lambda table: "r0"}
# An attack with minimal_eps (benchmark.minimal): min_eps (0 already wrong, inf not fooled at max) and
# min_eps_reversals (grid points where success turned into failure: not monotone in eps where > 0).
OPTIONAL = ["min_eps", "min_eps_reversals"]


def frame(jobs: Iterable, outcomes: Iterable[dict], coordinates: dict[str, tuple[str, str]] | None = None
          ) -> pd.DataFrame:
    """One row per image of each evaluation; `jobs` are context.Evaluation (model, attack spec, seed) and
    `outcomes` the per-image lists evaluate.run_evaluation returns, with the evaluated `indices`; `coordinates`
    gives each model's (recipe, repeat) (benchmark.repeats; default: its own name, 'r0')."""
    coordinates = coordinates or {}
    parts = []
    for job, outcome in zip(jobs, outcomes):
        n = len(outcome["label"])
        part = pd.DataFrame({"position": range(n), "index": outcome["indices"][:n], "label": outcome["label"],
                             "pred_orig": outcome["orig_pred"], "pred_adv": outcome["adv_pred"],
                             "l0": outcome["l0"], "l2": outcome["l2"], "linf": outcome["linf"],
                             **{c: outcome[c] for c in OPTIONAL if c in outcome}})
        part.insert(0, "seed", job.seed)
        part.insert(0, "attack_family", job.attack.family)
        part.insert(0, "attack", job.attack.name)
        recipe, repeat = coordinates.get(job.model, (job.model, "r0"))
        part.insert(0, "repeat", repeat)
        part.insert(0, "recipe", recipe)
        part.insert(0, "model", job.model)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    out["correct_orig"] = out["pred_orig"] == out["label"]
    out["correct_adv"] = out["pred_adv"] == out["label"]
    return out[COLUMNS + [c for c in OPTIONAL if c in out]]


def write(path: Path, jobs: Iterable, outcomes: Iterable[dict],
          coordinates: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """Build the frame and write it atomically as CSV to `path`."""
    table = frame(jobs, outcomes, coordinates)
    atomic_write(Path(path), table.to_csv(index=False).encode())
    return table


def load(run_dir: Path) -> pd.DataFrame | None:
    """The examples of a run folder (or None where the run predates them); bad files are a UserError. A committed
    folder may hold it gzipped (examples.csv.gz: a repeated full-scale run's is tens of MB), read as it is."""
    plain, packed = Path(run_dir) / FILE, Path(run_dir) / (FILE + ".gz")
    if plain.is_file() and packed.is_file():
        raise UserError(f"{run_dir}: holds both {FILE} and {FILE}.gz; keep one (which is the run's is not known)")
    path = plain if plain.is_file() else packed
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={c: str for c in ("model", "recipe", "repeat", "attack", "attack_family")})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: not a readable CSV ({one_line(exc).partition(': ')[2]})") from None
    for column, fill in ADDED.items():
        if column not in table.columns:
            table.insert(list(COLUMNS).index(column), column, fill(table))
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise UserError(f"{path}: no rows")
    for column in ("correct_orig", "correct_adv"):
        if table[column].dtype != bool:
            raise UserError(f"{path}: column {column} must hold True/False only (a damaged file?)")
    for column in ("seed", "position", "index", "label", "pred_orig", "pred_adv"):
        if not pd.api.types.is_integer_dtype(table[column]):
            raise UserError(f"{path}: column {column} must hold integers only (a damaged file?)")
    return table


def accuracies(table: pd.DataFrame, sizes: Iterable[int]) -> pd.DataFrame:
    """orig_acc and adv_acc per (model, attack, seed, size), recomputed from the examples."""
    rows = []
    for size in sizes:
        head = table[table["position"] < size]
        acc = head.groupby(["model", "attack", "seed"], sort=False)[["correct_orig", "correct_adv"]].mean()
        rows.append(acc.rename(columns={"correct_orig": "orig_acc", "correct_adv": "adv_acc"})
                    .assign(size=size).reset_index())
    return pd.concat(rows, ignore_index=True)


def recompute(cells: list[dict], table: pd.DataFrame) -> list[dict]:
    """results.json cells with orig_acc, adv_acc, ratio and success_rate taken from the examples (a planted
    change to examples.csv made consistent, as in benchmarks/gate_power.py)."""
    keyed = table.set_index(["model", "attack", "seed"]).sort_index()
    out = []
    for cell in cells:
        rows = keyed.loc[(cell["model"], cell["attack"], cell["seed"])]
        rows = rows[rows["position"] < cell["size"]]
        orig, adv = rows["correct_orig"].to_numpy(bool), rows["correct_adv"].to_numpy(bool)
        out.append({**cell, "orig_acc": float(orig.mean()), "adv_acc": float(adv.mean()),
                    "ratio": float(adv.mean() / orig.mean()) if orig.any() else float("nan"),
                    "success_rate": float(1 - (orig & adv).sum() / orig.sum()) if orig.any() else float("nan")})
    return out
