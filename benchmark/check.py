"""Regression gate: a run's accuracies and accuracy ratios against a baseline's, cell by cell, with the report's
statistics.

A run must hold every (model, attack, seed, size) of the baseline (missing ones are bad input, exit 2, named),
and where a folder holds examples.csv its results.json must agree with it (recomputed; a disagreement is exit 2).
Then, per (model, attack):
- orig_acc and adv_acc at the largest size, pooled over seeds (smaller sizes are prefixes of it and would only
  repeat the test on less evidence): paired per image where both folders have examples.csv, McNemar's exact test
  on each distinct test image's correctness; otherwise Fisher's exact test on the two pooled counts, which
  ignores the pairing and so errs on the side of passing. A regression is a drop with p < alpha.
- ratio, the paper's ADV/ORIG (mean over sizes of ADV / ORIG on seed means): where both folders have examples.csv,
  a paired sign-flip randomization test (each image's run and baseline outcomes swapped at random, as McNemar's
  test does for an accuracy: a few images that all moved one way are not significant); a regression is a drop
  with p < alpha. Otherwise the difference's percentile interval at level 1 - alpha from independent bootstraps
  of each run; a regression is an interval below zero.
`either_way` also fails significant rises (an attack grown weaker changes a benchmark as much as a stronger
one). `tolerance` replaces the tests by an absolute bound on the change (fractions for accuracies, ratio units).
Exit 0: no regression; 1: a regression (cells printed with the metric, both values and p); 2: bad input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact
from tabulate import tabulate

from benchmark import examples as examples_csv
from benchmark import stats
from benchmark.errors import UserError
from benchmark.report import cells, load_results
from benchmark.report.frames import read_results

KEYS = ["model", "attack", "size"]
METRICS = {"orig_acc": "correct_orig", "adv_acc": "correct_adv"}
CELL = ["model", "attack", "seed", "size"]


def pooled(results: dict) -> pd.DataFrame:
    """Per (model, attack) at its largest size: accuracies pooled over seeds, the number of images n and the
    correct counts."""
    frame = cells(results)
    largest = frame.groupby(["model", "attack"], sort=False)["size"].transform("max")
    frame = frame[frame["size"] == largest]
    out = frame.groupby(KEYS, sort=False).agg(orig_acc=("orig_acc", "mean"), adv_acc=("adv_acc", "mean"),
                                              seeds=("seed", "nunique"))
    out["n"] = out.index.get_level_values("size") * out["seeds"]
    for metric in METRICS:
        out[f"{metric}_k"] = (frame.assign(k=(frame[metric] * frame["size"]).round())
                              .groupby(KEYS, sort=False)["k"].sum())
    return out


def require_cells(run: dict, baseline: dict) -> None:
    """Every (model, attack, seed, size) of the baseline is in the run, or a UserError naming what is missing."""
    have = set(map(tuple, cells(run)[CELL].itertuples(index=False)))
    missing = [c for c in map(tuple, cells(baseline)[CELL].itertuples(index=False)) if c not in have]
    if missing:
        listed = ", ".join(f"{m} / {a} / seed {s} / size {z}" for m, a, s, z in missing[:3])
        raise UserError(f"run lacks {len(missing)} of the baseline's cells (model / attack / seed / size): {listed}"
                        + (", ..." if len(missing) > 3 else ""))


def agree(results: dict, table: pd.DataFrame | None, where: Path) -> None:
    """A folder's results.json against the accuracies its examples.csv gives (UserError where they differ)."""
    if table is None:
        return
    frame = cells(results)
    recomputed = examples_csv.accuracies(table, sorted(frame["size"].unique())).set_index(CELL)
    joined = frame.set_index(CELL)[["orig_acc", "adv_acc"]].join(recomputed.add_suffix("_examples"), how="left")
    off = joined[~(np.isclose(joined["orig_acc"], joined["orig_acc_examples"], atol=1e-9)
                   & np.isclose(joined["adv_acc"], joined["adv_acc_examples"], atol=1e-9))]
    if len(off):
        (model, attack, seed, size), row = next(iter(off.iterrows()))
        raise UserError(f"{where}: results.json and examples.csv disagree in {len(off)} cell(s), e.g. {model} / "
                        f"{attack} / seed {seed} / size {size}: adv_acc {row['adv_acc']:.4f} in results.json, "
                        f"{row['adv_acc_examples']:.4f} from examples.csv; regenerate the folder")


def _paired_p(mine: pd.DataFrame, base: pd.DataFrame, model: str, attack: str, size: int,
              column: str) -> tuple[float, int] | None:
    """McNemar's exact p-value on the distinct images of one cell, or None where the runs' images differ."""
    def select(table: pd.DataFrame) -> pd.DataFrame:
        sel = table[(table["model"] == model) & (table["attack"] == attack) & (table["position"] < size)]
        return sel.set_index(["seed", "position"])[["index", column]]

    joined = select(mine).merge(select(base), left_index=True, right_index=True, suffixes=("", "_base"))
    if len(joined) == 0 or (joined["index"] != joined["index_base"]).any():
        return None
    joined = stats.distinct_images(joined)
    return stats.mcnemar_p(joined[column], joined[f"{column}_base"]), len(joined)


def _like(run: dict, run_examples: pd.DataFrame | None, baseline: dict) -> tuple[dict, pd.DataFrame | None]:
    """The run's cells and examples that the baseline has: its (model, attack, seed, size) cells, and per
    (model, attack) the images below the baseline's largest size."""
    wanted = set(map(tuple, cells(baseline)[CELL].itertuples(index=False)))
    kept = [c for c in run["cells"] if (c["model"], c["attack"], c["seed"], c["size"]) in wanted]
    if run_examples is None:
        return {**run, "cells": kept}, None
    largest = cells(baseline).groupby(["model", "attack", "seed"])["size"].max()
    limit = run_examples.set_index(["model", "attack", "seed"]).index.map(largest.to_dict().get)
    keep = ~pd.isna(limit) & (run_examples["position"].to_numpy() < np.nan_to_num(limit.to_numpy(float), nan=-1))
    return {**run, "cells": kept}, run_examples[keep]


def _ratio_replicates(run: dict, baseline: dict, run_examples: pd.DataFrame | None,
                      baseline_examples: pd.DataFrame | None) -> dict[tuple[str, str], tuple[np.ndarray, str]]:
    """Per (model, attack): bootstrap replicates (index 0 observed) of ratio(run) - ratio(baseline), and how they
    were drawn: paired (the same images resampled in both) where both folders have the cell's images, else from
    independent bootstraps of each run's counts."""
    sizes = sorted(cells(baseline)["size"].unique())
    theirs = stats.cell_replicates(stats.outcomes_from_cells(cells(baseline)))
    mine = stats.cell_replicates(stats.outcomes_from_cells(cells(run)), salt="run")  # independent of theirs
    out = {}
    for key in theirs:
        joint = None
        if run_examples is not None and baseline_examples is not None:
            joint = stats.joint_outcomes([(run_examples, *key), (baseline_examples, *key)],
                                         theirs[key].outcomes.seeds, max(sizes))
        if joint is None:
            out[key] = mine[key].ratio - theirs[key].ratio, "unpaired bootstrap"
            continue
        out[key] = stats.sign_flip_ratio_test(joint, sizes, stats.generator(*key, "check")), "paired sign-flip"
    return out


def compare(run: dict, baseline: dict, *, alpha: float = 0.01, tolerance: float | None = None,
            either_way: bool = False, run_examples: pd.DataFrame | None = None,
            baseline_examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per baseline cell and metric: baseline, run, delta, the test, its p-value and n, regression. Like
    for like: the run is cut to the baseline's cells (seeds, sizes) and images before anything is compared."""
    require_cells(run, baseline)
    run, run_examples = _like(run, run_examples, baseline)
    mine, base = pooled(run), pooled(baseline)
    paired = run_examples is not None and baseline_examples is not None
    rows = []
    for key, b in base.iterrows():
        m = mine.loc[key]
        for metric, column in METRICS.items():
            delta = m[metric] - b[metric]
            if tolerance is not None:
                test, p, n = f"|change| > {tolerance:g}", float("nan"), int(b["n"])
                flagged = (abs(delta) if either_way else -delta) > tolerance + 1e-12
            else:
                result = _paired_p(run_examples, baseline_examples, *key, column) if paired else None
                if result is not None:
                    (p, n), test = result, "McNemar exact (paired)"
                else:
                    counts = [[int(m[f"{metric}_k"]), int(m["n"] - m[f"{metric}_k"])],
                              [int(b[f"{metric}_k"]), int(b["n"] - b[f"{metric}_k"])]]
                    p, n, test = float(fisher_exact(counts).pvalue), int(b["n"]), "Fisher exact (unpaired)"
                flagged = p < alpha and (delta < 0 or either_way) and delta != 0
            rows.append({**dict(zip(KEYS, key)), "metric": metric, "baseline": b[metric], "run": m[metric],
                         "delta": delta, "p": p, "n": n, "test": test, "regression": bool(flagged)})
    rows += _ratio_rows(run, baseline, alpha=alpha, tolerance=tolerance, either_way=either_way,
                        run_examples=run_examples, baseline_examples=baseline_examples)
    return pd.DataFrame(rows)


def _ratio_rows(run: dict, baseline: dict, *, alpha: float, tolerance: float | None, either_way: bool,
                run_examples, baseline_examples) -> list[dict]:
    replicates = _ratio_replicates(run, baseline, run_examples, baseline_examples)
    rows = []
    for key, group in cells(baseline).groupby(["model", "attack"], sort=False):
        diff, how = replicates[key]
        base_ratio = float(_paper_ratio(group))
        paired = how == "paired sign-flip"
        observed, p = diff if paired else (float(diff[0]), float("nan"))
        if tolerance is not None:
            test, p = f"|change| > {tolerance:g}", float("nan")
            flagged = (abs(observed) if either_way else -observed) > tolerance + 1e-12
        elif paired:
            test = "sign-flip randomization (paired)"
            flagged = p < alpha and (observed < 0 or either_way) and observed != 0
        else:
            tail = 100 * alpha / 2
            lo, hi = np.nanpercentile(diff[1:], [tail, 100 - tail])
            p = float(min(1.0, 2 * min(np.mean(diff[1:] >= 0), np.mean(diff[1:] <= 0))))
            test = f"{how} ({100 * (1 - alpha):g}% interval [{lo:+.3f}, {hi:+.3f}])"
            flagged = bool(hi < 0 or (either_way and lo > 0))
        rows.append({"model": key[0], "attack": key[1], "size": "mean over sizes", "metric": "ratio",
                     "baseline": base_ratio, "run": base_ratio + observed, "delta": observed, "p": p,
                     "n": int(group.groupby("seed")["size"].max().sum()), "test": test,
                     "regression": bool(flagged)})
    return rows


def _paper_ratio(group: pd.DataFrame) -> float:
    means = group.groupby("size")[["orig_acc", "adv_acc"]].mean()
    return float((means["adv_acc"] / means["orig_acc"]).mean())


def main(run_dir: Path, baseline_path: Path, *, alpha: float = 0.01, tolerance: float | None = None,
         either_way: bool = False) -> int:
    if not 0 < alpha < 1 or (tolerance is not None and not 0 <= tolerance < float("inf")):
        raise UserError("--alpha must lie in (0, 1) and --tolerance be non-negative")
    baseline, baseline_dir = _load(baseline_path)
    run = load_results(run_dir)
    run_examples = examples_csv.load(run_dir)
    baseline_examples = examples_csv.load(baseline_dir) if baseline_dir is not None else None
    agree(run, run_examples, Path(run_dir))
    agree(baseline, baseline_examples, baseline_dir or baseline_path)
    table = compare(run, baseline, alpha=alpha, tolerance=tolerance, either_way=either_way,
                    run_examples=run_examples, baseline_examples=baseline_examples)
    bad = table[table["regression"]]
    kind = "drop" + (" or rise" if either_way else "")
    rule = (f"a {kind} beyond {tolerance:g}" if tolerance is not None
            else f"a {kind} significant at alpha = {alpha:g}")
    tests = sorted({t.split(" (")[0] if "bootstrap" in t else t for t in table["test"]})
    found = ", ".join(f"{metric} {count}" for metric, count in bad["metric"].value_counts(sort=False).items())
    print(f"checked {len(table)} values in {len(table) // (len(METRICS) + 1)} cells (accuracies at the largest "
          f"size pooled over seeds, and the ADV/ORIG ratio) against {baseline_path}; a regression is {rule} "
          f"({', '.join(tests)}): {len(bad)} found" + (f" ({found})" if found else ""))
    ours, theirs = run.get("device") or "", baseline.get("device") or ""
    if ours and theirs and not (ours.startswith(theirs) or theirs.startswith(ours)):  # older results: no threads
        # Another device, or on a CPU another thread count, rounds differently: differences need not be the code's.
        print(f"note: run on {ours}, baseline on {theirs}")
    if len(bad):
        shown = bad.drop(columns="regression")
        print(tabulate(shown, headers="keys", tablefmt="github", floatfmt=".4g", showindex=False))
        return 1
    return 0


def _load(path: Path) -> tuple[dict, Path | None]:
    """A baseline: a results JSON file, or a run folder holding results.json (and perhaps examples.csv).
    Returns the results and the folder to look for examples.csv in (None for a bare JSON file)."""
    if path.is_dir():
        return load_results(path), path
    if not path.is_file():
        raise UserError(f"baseline not found: {path}")
    return read_results(path, "not a results JSON"), (path.parent if path.name == "results.json" else None)
