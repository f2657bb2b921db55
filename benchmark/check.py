"""Regression gate: a run's accuracies and ADV/ORIG ratios against a baseline results.json.

Cells are (model, attack, size), pooled over seeds: n = size x seeds images, the same images in both runs
(indices come from the seeds). The tolerance for an accuracy is z binomial standard errors of the baseline,
    z * sqrt(p (1 - p) / n),   p = (k + 2) / (n + 4)   (plus-four estimate: never zero at 0% or 100%)
and for a ratio r = adv / orig, z times its delta-method standard error
    r * sqrt(se_adv^2 / adv^2 + se_orig^2 / orig^2).
z defaults to 3; `tolerance` replaces all of this by one absolute number. Exit 0: all within; 1: a regression
(offending cells printed); 2: bad input. With z = 3 a 10-point change is caught at any accuracy once
n >= 225 (3 * sqrt(0.25 / 225) = 0.10); the smoke suite's largest cells hold 200 x 3 = 600 images.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from benchmark.errors import UserError
from benchmark.report import cells, load_results

KEYS = ["model", "attack", "size"]


def pooled(results: dict) -> pd.DataFrame:
    frame = cells(results)
    out = frame.groupby(KEYS, sort=False).agg(orig_acc=("orig_acc", "mean"), adv_acc=("adv_acc", "mean"),
                                              seeds=("seed", "nunique"))
    out["n"] = out.index.get_level_values("size") * out["seeds"]
    out["ratio"] = out["adv_acc"] / out["orig_acc"]
    return out


def _se(p: float, n: int) -> float:
    p = (p * n + 2) / (n + 4)
    return math.sqrt(p * (1 - p) / n)


def compare(run: dict, baseline: dict, *, z: float = 3.0, tolerance: float | None = None) -> pd.DataFrame:
    mine, base = pooled(run), pooled(baseline)
    missing = base.index.difference(mine.index)
    if len(missing):
        raise UserError(f"run lacks {len(missing)} baseline cell(s), e.g. {' / '.join(map(str, missing[0]))}")
    rows = []
    for key, b in base.iterrows():
        m = mine.loc[key]
        se = {"orig_acc": _se(b["orig_acc"], b["n"]), "adv_acc": _se(b["adv_acc"], b["n"])}
        r = b["ratio"]
        se["ratio"] = r * math.sqrt((se["adv_acc"] / max(b["adv_acc"], 1e-9)) ** 2
                                    + (se["orig_acc"] / max(b["orig_acc"], 1e-9)) ** 2)
        for metric in ("orig_acc", "adv_acc", "ratio"):
            allowed = tolerance if tolerance is not None else z * se[metric]
            delta = m[metric] - b[metric]
            rows.append({**dict(zip(KEYS, key)), "metric": metric, "baseline": b[metric], "run": m[metric],
                         "delta": delta, "tolerance": allowed, "ok": bool(abs(delta) <= allowed + 1e-12)})
    return pd.DataFrame(rows)


def main(run_dir: Path, baseline_path: Path, *, z: float = 3.0, tolerance: float | None = None) -> int:
    if z <= 0 or (tolerance is not None and tolerance < 0):
        raise UserError("--z must be positive and --tolerance non-negative")
    if not baseline_path.is_file():
        raise UserError(f"baseline not found: {baseline_path}")
    table = compare(load_results(run_dir), _load(baseline_path), z=z, tolerance=tolerance)
    bad = table[~table["ok"]]
    print(f"checked {len(table)} values in {len(table) // 3} cells against {baseline_path}: "
          f"{len(bad)} outside tolerance")
    if len(bad):
        print(tabulate(bad.drop(columns="ok"), headers="keys", tablefmt="github", floatfmt=".4f", showindex=False))
        return 1
    return 0


def _load(path: Path) -> dict:
    import json

    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a results JSON ({exc})") from None
    if not isinstance(results, dict) or "cells" not in results:
        raise UserError(f"{path}: not a results JSON (no cells)")
    return results
