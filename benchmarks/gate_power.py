"""How small a drop does `check` catch? Plants drops into a copy of a baseline folder and gates the copy against
the baseline, as the tox matrix does (`--either-way`, alpha 0.01), once paired (both folders with examples.csv)
and once against the bare results.json (Fisher on pooled counts, unpaired bootstraps of the ratio).

A planted drop of d points in one (model, attack) makes round(d% of the cell's images at the largest size, all
seeds) of its adversarially correct images wrong, drawn at random, and recomputes the cells from the edited
examples (benchmark.examples.recompute). Each cell of the baseline is planted in turn, `--repeats` random draws
each; the table gives the share of plantings that fail the gate on adv_acc and on the ratio.

    .venv/bin/python benchmarks/gate_power.py reports/baselines/smoke-cpu --drops 1 2 3 4 6 8
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark import check
from benchmark import examples as examples_csv


def plant(results: dict, table: pd.DataFrame, model: str, attack: str, points: float,
          rng: np.random.Generator) -> tuple[dict, pd.DataFrame]:
    size = max(c["size"] for c in results["cells"])
    cell = (table["model"] == model) & (table["attack"] == attack) & (table["position"] < size)
    candidates = np.flatnonzero(cell & table["correct_adv"])
    k = min(len(candidates), round(points / 100 * int(cell.sum())))
    flip = np.zeros(len(table), dtype=bool)
    flip[rng.choice(candidates, size=k, replace=False)] = True
    edited = table.assign(correct_adv=table["correct_adv"] & ~flip,
                          pred_adv=table["pred_adv"].where(~flip, (table["label"] + 1) % 10))
    return {**results, "cells": examples_csv.recompute(results["cells"], edited)}, edited


def only(results: dict, table: pd.DataFrame, model: str, attack: str) -> tuple[dict, pd.DataFrame]:
    keep = [c for c in results["cells"] if (c["model"], c["attack"]) == (model, attack)]
    return {**results, "cells": keep}, table[(table["model"] == model) & (table["attack"] == attack)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("--drops", type=float, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    results = json.loads((args.baseline / "results.json").read_text())
    table = examples_csv.load(args.baseline)
    pairs = list(dict.fromkeys((c["model"], c["attack"]) for c in results["cells"]))
    rng = np.random.default_rng(0)
    rows = []
    for points in args.drops:
        caught = {(mode, metric): 0 for mode in ("paired", "unpaired") for metric in ("adv_acc", "ratio")}
        for model, attack in pairs:
            base, base_table = only(results, table, model, attack)
            for _ in range(args.repeats):
                run, run_table = plant(base, base_table, model, attack, points, rng)
                for mode, tables in (("paired", (run_table, base_table)), ("unpaired", (run_table, None))):
                    gate = check.compare(run, base, alpha=args.alpha, either_way=True, run_examples=tables[0],
                                         baseline_examples=tables[1])
                    for metric in ("adv_acc", "ratio"):
                        caught[(mode, metric)] += bool(gate.loc[gate["metric"] == metric, "regression"].any())
        plantings = len(pairs) * args.repeats
        rows.append({"drop (points)": points, "plantings": plantings,
                     **{f"{mode} {metric} caught": f"{100 * n / plantings:.0f}%"
                        for (mode, metric), n in caught.items()}})
    size = max(c["size"] for c in results["cells"])
    seeds = len({c["seed"] for c in results["cells"]})
    print(f"{args.baseline}: {len(pairs)} cells, {size} images x {seeds} seeds at the largest size; alpha "
          f"{args.alpha}, either way\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
