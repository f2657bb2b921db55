"""Section (with `report --against`): this run against another, cell by cell."""
from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark.report import Report, section
from benchmark.report.frames import cells, fmt, paper_ratio, seed_means


@section("comparison", order=90)
def comparison_section(report: Report) -> list[str]:
    return comparison(report.results, report.means, report.against) if report.against is not None else []


def comparison(results: dict, means: pd.DataFrame, other: dict) -> list[str]:
    """This run against another (e.g. paper-code against paper), cell by cell where model and attack names
    match; a cell only one run has is listed with blanks for the other."""
    keys = ["model", "attack"]

    def summary(m: pd.DataFrame) -> pd.DataFrame:
        largest = m[m["size"] == m["size"].max()].set_index(keys)[["orig_acc", "adv_acc"]]
        return paper_ratio(m).set_index(keys).join(largest)

    mine, theirs = summary(means), summary(seed_means(cells(other)))
    merged = mine.add_suffix("_this").join(theirs.add_suffix("_other"), how="outer")
    order = list(dict.fromkeys(list(mine.index) + list(theirs.index)))
    rows = []
    for model, attack in order:
        r = merged.loc[(model, attack)]
        delta = r["ratio_this"] - r["ratio_other"]
        rows.append([model, attack, fmt(r["orig_acc_this"]), fmt(r["adv_acc_this"]), fmt(r["ratio_this"], 3),
                     fmt(r["orig_acc_other"]), fmt(r["adv_acc_other"]), fmt(r["ratio_other"], 3),
                     "" if np.isnan(delta) else f"{delta:+.3f}"])
    this, that = results.get("suite_name"), other.get("suite_name")
    return [f"## Against {that} ({other.get('profile')})\n",
            f"Cells matched by model and attack name. ORIG/ADV: accuracy (%) at the largest size, mean over seeds; "
            f"ratio: mean over sizes of ADV/ORIG (the paper's definition); Δ = {this} - {that}.\n",
            tabulate(rows, headers=["model", "attack", f"ORIG % {this}", f"ADV % {this}", f"ratio {this}",
                                    f"ORIG % {that}", f"ADV % {that}", f"ratio {that}", "Δ ratio"],
                     tablefmt="github", disable_numparse=True), ""]
