"""Section: each claim of the paper, its value, ours with a 95% interval and the verdicts (benchmark.claims)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark import claims, stats
from benchmark.report import Report, section
from benchmark.report.frames import interval


@section("verdicts", order=40)
def verdicts_section(report: Report) -> list[str]:
    return verdicts(report.results, report.reps, report.against, report.examples, report.against_examples)


def _verdict_rows(results: dict, reps: dict, examples: pd.DataFrame | None) -> pd.DataFrame:
    table = claims.claims_frame(results, reps, examples)
    digits = table["unit"].map({"ratio": 3, "points": 1})
    table["measured"] = [f"{v:.{d}f} {interval(lo, hi, d)}" + (" paired" if paired and diff else "")
                         if not np.isnan(v) else ""
                         for v, lo, hi, d, paired, diff in zip(table["value"], table["lo"], table["hi"], digits,
                                                                table["paired"], table["difference"])]
    table["paper value"] = [f"{v:.{d}f} ({src})" for v, d, src in zip(table["paper"], digits, table["source"])]
    return table


def verdicts(results: dict, reps: dict, against: dict | None = None, examples: pd.DataFrame | None = None,
             against_examples: pd.DataFrame | None = None) -> list[str]:
    """Each claim of the paper: its value, ours with a 95% interval, a verdict on the value (stats.verdict) and,
    for a difference between two models, one on its direction; with `against`, the other run's beside it,
    claims matched by text and the cell that measures them."""
    if not (results.get("reference") or {}).get("tables"):
        return []
    mine = _verdict_rows(results, reps, examples)
    columns = ["claim", "ours", "measured", "direction", "verdict"]
    headers = ["claim", "paper value", "measured in", "ours [95% CI]", "direction", "value"]
    rows = mine[["claim", "paper value", "ours", "measured", "direction", "verdict"]]
    if against is not None and (against.get("reference") or {}).get("tables"):
        theirs = _verdict_rows(against, stats.replicates_of(against), against_examples)[columns]
        # claims (in the paper's names) match across runs; cells by name where both measure them
        order = list(dict.fromkeys(list(mine["claim"]) + list(theirs["claim"])))
        rows = rows.merge(theirs, on=["claim", "ours"], how="outer", suffixes=("", "_other"))
        rows = rows.sort_values("claim", key=lambda c: c.map(order.index), kind="stable")
        this, that = results.get("suite_name"), against.get("suite_name")
        headers = ["claim", "paper value", "measured in", f"{this} [95% CI]", f"direction {this}",
                   f"value {this}", f"{that} [95% CI]", f"direction {that}", f"value {that}"]
        rows = rows.assign(**{"paper value": rows["paper value"].fillna(
            rows["claim"].map(dict(zip(mine["claim"], mine["paper value"]))))}).fillna("")
    threshold = ", ".join(f"{unit} {width:g}" for unit, width in claims.TOO_WIDE.items())
    return ["## Verdicts against the paper\n",
            f"Value: reproduced when the paper's value lies inside our 95% interval and the interval is no wider "
            f"than {threshold} (its unit); inconclusive: inside, but wider; contradicted: outside, and in which "
            f"direction. Direction (differences between two models only): reproduced when our interval lies on "
            f"the paper's side of zero, contradicted on the other side, not significant when it spans zero; so a "
            f"sign reproduced with a size that is not reads 'reproduced' beside 'contradicted'. Ratios are the "
            f"paper's (mean over sizes of ADV/ORIG on seed means); intervals are percentile bootstraps over "
            f"images ({stats.REPLICATES} replicates, numpy seed {stats.BOOTSTRAP_SEED}); a difference marked "
            f"'paired' resamples the same images for both models (examples.csv), otherwise the two models' "
            f"intervals are drawn independently. Stated ratios are rounded to 2 decimals in the paper.\n",
            tabulate(rows.values.tolist(), headers=headers, tablefmt="github", disable_numparse=True), ""]
