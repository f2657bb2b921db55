"""Sections: the paper's tables (accuracy per model, attack and size, beside the paper's rows) and the ADV/ORIG
ratio beside the paper's stated and derived ratios."""
from __future__ import annotations

import pandas as pd
from tabulate import tabulate

from benchmark import claims, stats
from benchmark.report import Report, section
from benchmark.report.frames import fmt, interval, interval_cells, mean_sd, paper_ratio


@section("tables", order=20)
def tables(report: Report) -> list[str]:
    return (["## Tables as in the paper" if report.with_paper else "## Accuracy", ""]
            + paper_tables(report.results, report.means, stats.accuracy_intervals(report.reps)))


@section("ratio", order=30)
def ratio(report: Report) -> list[str]:
    return ["## ADV/ORIG ratio (mean over sizes)", ""] + ratio_table(report.results, report.means, report.reps) + [""]


def paper_tables(results: dict, means: pd.DataFrame, intervals: pd.DataFrame | None = None) -> list[str]:
    reference = results.get("reference") or {}
    ref_sizes = reference.get("sizes", [])
    sizes = sorted(means["size"].unique())
    out = []
    for model in dict.fromkeys(means["model"]):
        rows = []
        for attack in dict.fromkeys(means.loc[means["model"] == model, "attack"]):
            sel = means[(means["model"] == model) & (means["attack"] == attack)].set_index("size")
            ref = claims.reference_cell(reference, model, attack)
            for kind, col, sd in (("ORIG", "orig_acc", "orig_sd"), ("ADV", "adv_acc", "adv_sd")):
                rows.append([attack, kind] + [mean_sd(sel.at[s, col], sel.at[s, sd]) for s in sizes])
                if intervals is not None:
                    rows.append(["", f"{kind} 95% CI"] + interval_cells(intervals, model, attack, kind, sizes))
                if ref is not None:
                    paper = {s: v for s, v in zip(ref_sizes, ref[kind.lower()])}
                    rows.append(["", f"{kind} paper"] + [fmt(paper.get(s)) for s in sizes])
                    rows.append(["", f"{kind} Δ"] + [
                        f"{sel.at[s, col] - paper[s]:+.2f}" if s in paper else "" for s in sizes])
        seeds = int(means.loc[means["model"] == model, "seeds"].max())
        source = f"; paper rows from {reference['source']}" if reference.get("source") else ""
        spread = " ± sample sd (n - 1 in the denominator)" if seeds > 1 else ""
        ci = "; 95% CI: " + ("Wilson" if seeds == 1 else "bootstrap over images") if intervals is not None else ""
        out.append(f"### {model}\n\nAccuracy (%) on original (ORIG) and adversarial (ADV) images, mean{spread} over "
                   f"{seeds} seed(s){ci}{source}.\n")
        out.append(tabulate(rows, headers=["attack", ""] + [f"{s} images" for s in sizes], tablefmt="github",
                            disable_numparse=True))
        out.append("")
    return out


def ratio_table(results: dict, means: pd.DataFrame, reps: dict | None = None) -> list[str]:
    reference = results.get("reference") or {}
    rows = []
    for _, r in paper_ratio(means).iterrows():
        ref = claims.reference_cell(reference, r["model"], r["attack"])
        stated = claims.stated_ratio(reference, r["model"], r["attack"])
        from_tables = claims.table_ratio(ref) if ref is not None else None
        rows.append([r["model"], r["attack"], fmt(r["ratio"], 3), fmt(stated, 2), fmt(from_tables, 3),
                     f"{r['ratio'] - from_tables:+.3f}" if from_tables is not None else ""])
        if reps is not None:
            rows[-1].insert(3, interval(*stats.summary(reps[(r["model"], r["attack"])].ratio)[1:], 3))
    ci = ["95% CI"] if reps is not None else []
    headers = ["model", "attack", "ADV/ORIG measured"] + ci + ["paper (stated)", "paper (from its tables)", "Δ"]
    if not reference.get("tables"):  # nothing to compare with: no empty paper columns
        width = len(headers) - 3
        headers, rows = headers[:width], [row[:width] for row in rows]
    return ["The paper's ratio: the mean over the evaluation sizes of ADV / ORIG, each the mean over seeds.\n",
            tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)]
