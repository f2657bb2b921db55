"""Section: each claim of the paper, its value, ours with a 95% interval and the verdicts (benchmark.claims), read
from results.json's `claims`; where recipes repeat, the training variance beside them (benchmark.variance)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark import claims, stats, variance
from benchmark.report import Report, section
from benchmark.report.frames import interval


@section("verdicts", order=40)
def verdicts_section(report: Report) -> list[str]:
    return verdicts(report.results, report.reps, report.against, report.examples, report.against_examples)


def _digits(unit: str) -> int:
    return 3 if unit == "ratio" else 1


def _verdict_rows(results: dict, reps: dict, examples: pd.DataFrame | None) -> pd.DataFrame:
    table = claims.claims_frame(results, reps, examples)
    digits = table["unit"].map(_digits)
    table["measured"] = [f"{v:.{d}f} {interval(*(np.nan if x is None else x for x in iv), d)}"
                         + (" paired" if paired and diff else "") if v is not None and not pd.isna(v) else ""
                         for v, iv, d, paired, diff in zip(table["estimate"], table["interval"], digits,
                                                            table["paired"], table["difference"])]
    table["paper value"] = [f"{v:.{d}f} ({src})" for v, d, src in zip(table["paper"], digits, table["source"])]
    table["k of n"] = [_agreement(a, diff) for a, diff in zip(table["agreement"], table["difference"])]
    table["trainings"] = [t if t != "one training run" else "one training run (training variance left out)"
                          for t in table["trainings"]]
    return table


def _agreement(agreement: dict, difference: bool) -> str:
    """'2 of 3' (value), '3 of 3 / 2 of 3' (value / direction): repeats whose single-run verdict is the same."""
    if not agreement or agreement["verdict"][1] < 2:  # one training: nothing to agree with
        return ""
    parts = [agreement["verdict"]] + ([agreement["direction"]] if difference and "direction" in agreement else [])
    return " / ".join(f"{k} of {n}" for k, n in parts)


def verdicts(results: dict, reps: dict, against: dict | None = None, examples: pd.DataFrame | None = None,
             against_examples: pd.DataFrame | None = None) -> list[str]:
    """Each claim of the paper: its value, ours with a 95% interval, a verdict on the value (claims.verdict) and,
    for a difference between two models, one on its direction; with `against`, the other run's beside it,
    claims matched by text and the cell that measures them."""
    if not (results.get("reference") or {}).get("tables"):
        return []
    mine = _verdict_rows(results, reps, examples)
    columns = ["claim", "ours", "measured", "direction", "verdict", "k of n", "trainings"]
    headers = ["claim", "paper value", "measured in", "ours [95% CI]", "direction", "value", "k of n", "trainings"]
    rows = mine[["claim", "paper value", "ours", "measured", "direction", "verdict", "k of n", "trainings"]]
    if against is not None and (against.get("reference") or {}).get("tables"):
        theirs = _verdict_rows(against, stats.replicates_of(against), against_examples)[columns]
        # claims (in the paper's names) match across runs; cells by name where both measure them
        order = list(dict.fromkeys(list(mine["claim"]) + list(theirs["claim"])))
        rows = rows.merge(theirs, on=["claim", "ours"], how="outer", suffixes=("", "_other"))
        rows = rows.sort_values("claim", key=lambda c: c.map(order.index), kind="stable")
        this, that = results.get("suite_name"), against.get("suite_name")
        headers = ["claim", "paper value", "measured in", f"{this} [95% CI]", f"direction {this}",
                   f"value {this}", f"k of n {this}", f"trainings {this}", f"{that} [95% CI]",
                   f"direction {that}", f"value {that}", f"k of n {that}", f"trainings {that}"]
        rows = rows.assign(**{"paper value": rows["paper value"].fillna(
            rows["claim"].map(dict(zip(mine["claim"], mine["paper value"]))))}).fillna("")
    threshold = ", ".join(f"{unit} {width:g}" for unit, width in claims.TOO_WIDE.items())
    repeated = bool(mine["includes_training"].any())
    lines = ["## Verdicts against the paper\n",
             f"Value: reproduced when the paper's value lies inside our 95% interval and the interval is no wider "
             f"than {threshold} (its unit); inconclusive: inside, but wider; contradicted: outside, and in which "
             f"direction. Direction (differences between two models only): reproduced when our interval lies on "
             f"the paper's side of zero, contradicted on the other side, not significant when it spans zero; so a "
             f"sign reproduced with a size that is not reads 'reproduced' beside 'contradicted'. Ratios are the "
             f"paper's (mean over sizes of ADV/ORIG on seed means). Stated ratios are rounded to 2 decimals in "
             f"the paper.\n",
             "Intervals: " + (
                 "over the repeated trainings and the images (benchmark.variance): the mean over repeats +- the "
                 "training part (t quantile, n - 1 degrees of freedom over the top repeated level's means) and the "
                 "image part every repeat shares (normal quantile, from the image bootstrap), added in quadrature. "
                 "'k of n': in how many of the n repeats the verdict a single training run would have been given "
                 "(its own image-only interval) is this one (value / direction). " if repeated else "")
             + f"{'Image bootstraps are p' if repeated else 'P'}ercentile bootstraps over images "
               f"({stats.REPLICATES} replicates, numpy seed {stats.BOOTSTRAP_SEED}); a difference marked 'paired' resamples the same images for both models "
               f"(examples.csv), otherwise the two models' intervals are drawn independently. "
             + ("A claim measured on one training run ('one training run' below) has an interval of image "
                "sampling only: it leaves out the variance of training, which can be several times larger; its "
                "verdict is that of one sample of training and may not survive a rerun (repeats = N in the suite "
                "measures it).\n" if not mine["includes_training"].all() else "\n"),
             tabulate(rows.values.tolist(), headers=headers, tablefmt="github", disable_numparse=True), ""]
    return lines + training_variance(mine)


def training_variance(table: pd.DataFrame) -> list[str]:
    """Per claim measured over several trainings: the between-repeat SD, the prediction interval for a rerun,
    the per-repeat range and the split of the variance of one single-training run."""
    table = table[table["includes_training"]]
    if table.empty:
        return []
    rows = []
    for _, r in table.iterrows():
        d = _digits(r["unit"])
        split = ", ".join(f"{name} {sd:.{d}f}" for name, sd in r["components_sd"].items() if sd is not None)
        lo, hi = r["range"]
        rows.append([r["claim"], r["ours"], r["trainings"], f"{r['estimate']:.{d}f}",
                     "" if r["sd_between_repeats"] is None else f"{r['sd_between_repeats']:.{d}f}",
                     interval(*(np.nan if x is None else x for x in r["prediction_interval"]), d),
                     "" if lo is None else f"{lo:.{d}f}..{hi:.{d}f}", split])
    return ["### Training variance\n",
            "Per claim over its repeats: the sample SD between the repeats' values (one training run each), the 95% "
            "prediction interval for the estimate of one new independent run of this suite (the same repeats and "
            "evaluation seeds, so the same images: estimate +- t(n - 1) x sqrt(2) x the training SE), the repeats' "
            "range, and the SD that each source adds to the value of one single-training run (method of moments "
            f"over the nested repeats; {', '.join(variance.LEVELS)}; images: the image bootstrap of one model). "
            "To test a rerun against these: `python -m benchmark check RERUN --baseline THIS_RUN` compares at the "
            "level of repeats when the models were trained again.\n",
            tabulate(rows, headers=["claim", "measured in", "trainings", "estimate", "SD between repeats",
                                    "95% prediction interval (rerun)", "range", "SD split"],
                     tablefmt="github", disable_numparse=True), ""] + floored(table)


def floored(table: pd.DataFrame) -> list[str]:
    """The claims whose top level's means agreed too closely for the spread within them (benchmark.variance)."""
    if "training_floor_p" not in table:
        return []
    hits = [(r["claim"], r["ours"], r["training_floor_p"]) for _, r in table.iterrows()
            if r["training_floor_p"] is not None and np.isfinite(r["training_floor_p"])]
    if not hits:
        return []
    listed = "; ".join(f"{claim}, measured in {ours} (F test p = {p:.2g})" for claim, ours, p in hits)
    return [f"Floored: {listed}. The means of its top repeated level (the base trainings) agree more closely than "
            f"the spread of the trainings within them (the fine-tunes) allows (one-sided F test, p < "
            f"{variance.FLOOR_P:g}), as a few means can by chance; the training part of its interval and "
            "prediction interval uses that within spread instead (with the top level's degrees of freedom), so "
            "they are no narrower than the trainings within justify.\n"]
