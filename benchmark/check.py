"""Regression gate: a run's accuracies against a baseline's, cell by cell, with the report's statistics.

A cell is (model, attack) at the largest size, pooled over seeds: the same images in both runs (indices come
from the seeds); smaller sizes are prefixes of it and would only repeat the test on less evidence. For each of
orig_acc and adv_acc the gate tests whether the run differs from the baseline:
- paired per image where both runs have examples.csv: McNemar's exact test on the images' correctness (each
  test image once, as in the report's paired tests);
- otherwise (a bare results.json, e.g. reports/baselines/smoke-cpu.json): Fisher's exact test on the two
  pooled counts, which ignores the pairing and so errs on the side of passing.
A regression is a drop with p < alpha (two-sided p-value; default 0.01, one test per cell and metric);
`either_way` also fails significant rises (an attack grown weaker changes a benchmark as much as a stronger
one). `tolerance` replaces the test by an absolute bound on the drop (fractions, e.g. 0.02).
Exit 0: no regression; 1: a regression (cells printed with both values and the p-value); 2: bad input.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from scipy.stats import fisher_exact
from tabulate import tabulate

from benchmark import examples as examples_csv
from benchmark import stats
from benchmark.errors import UserError
from benchmark.report import cells, load_results

KEYS = ["model", "attack", "size"]
METRICS = {"orig_acc": "correct_orig", "adv_acc": "correct_adv"}


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


def compare(run: dict, baseline: dict, *, alpha: float = 0.01, tolerance: float | None = None,
            either_way: bool = False, run_examples: pd.DataFrame | None = None,
            baseline_examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per baseline cell and metric: baseline, run, delta, the test, its p-value and n, regression."""
    mine, base = pooled(run), pooled(baseline)
    missing = base.index.difference(mine.index)
    if len(missing):
        raise UserError(f"run lacks {len(missing)} baseline cell(s), e.g. {' / '.join(map(str, missing[0]))}")
    paired = run_examples is not None and baseline_examples is not None
    rows = []
    for key, b in base.iterrows():
        m = mine.loc[key]
        for metric, column in METRICS.items():
            delta = m[metric] - b[metric]
            if tolerance is not None:
                test, p, n = f"|drop| > {tolerance:g}", float("nan"), int(b["n"])
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
    return pd.DataFrame(rows)


def main(run_dir: Path, baseline_path: Path, *, alpha: float = 0.01, tolerance: float | None = None,
         either_way: bool = False) -> int:
    if not 0 < alpha < 1 or (tolerance is not None and tolerance < 0):
        raise UserError("--alpha must lie in (0, 1) and --tolerance be non-negative")
    baseline, baseline_dir = _load(baseline_path)
    run = load_results(run_dir)
    run_examples = examples_csv.load(run_dir)
    baseline_examples = examples_csv.load(baseline_dir) if baseline_dir is not None else None
    table = compare(run, baseline, alpha=alpha, tolerance=tolerance, either_way=either_way,
                    run_examples=run_examples, baseline_examples=baseline_examples)
    bad = table[table["regression"]]
    kind = "drop" + (" or rise" if either_way else "")
    rule = (f"a {kind} beyond {tolerance:g}" if tolerance is not None
            else f"a {kind} significant at alpha = {alpha:g} ({', '.join(sorted(set(table['test'])))})")
    print(f"checked {len(table)} values in {len(table) // len(METRICS)} cells (largest size, pooled over seeds) "
          f"against {baseline_path}; a regression is {rule}: {len(bad)} found")
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
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a results JSON ({exc})") from None
    if not isinstance(results, dict) or "cells" not in results:
        raise UserError(f"{path}: not a results JSON (no cells)")
    return results, (path.parent if path.name == "results.json" else None)

