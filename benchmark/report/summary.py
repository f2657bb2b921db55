"""Section: the report's first lines, what a reader must know before any table: what failed, the verdicts
against the paper counted, and every model whose robustness a check doubts (benchmark.flags), each named again
beside its numbers in the tables below."""
from __future__ import annotations

from collections import Counter

from tabulate import tabulate

from benchmark import claims
from benchmark.report import Report, section


@section("summary", order=1)
def summary_section(report: Report) -> list[str]:
    results = report.results
    lines = []
    failed = results.get("failed") or []
    if failed:
        lines += [f"## Failed: {len(failed)} node(s)\n",
                  "These nodes failed or did not run, so their cells are missing below; the rest finished and is "
                  "reported. A rerun of the same command computes only what is missing.\n",
                  tabulate([[f["node"], f["error"]] for f in failed], headers=["node", "why"], tablefmt="github",
                           disable_numparse=True), ""]
    parts = []
    if report.with_paper:
        table = claims.claims_frame(results, report.reps, report.examples)
        if not table.empty:
            counted = Counter(v.split(" (")[0] for v in table["verdict"])
            measured = table[table["verdict"] != "not measured"]
            trained = int(measured["includes_training"].sum())
            parts.append("verdicts against the paper: " + ", ".join(f"{n} {v}" for v, n in counted.items())
                         + f" ({trained} of the {len(measured)} measured include the variance of training"
                         + ("" if trained else ": one training run each, see 'Verdicts against the paper'") + ")")
    if report.raised:
        parts.append("**flags raised** (the robustness may be an artefact of the evaluation): "
                     + "; ".join(f"{m}: {', '.join(c)}" for m, c in report.raised.items()))
    elif not report.flags.empty:
        ran = int(report.flags["flag"].notna().sum())
        parts.append(f"no robustness check raised a flag ({ran} ran)" if ran else
                     "no robustness check could run (see 'Is the robustness real?' for what each needs)")
    if parts:
        lines += ["## Summary\n"] + [f"- {p}" for p in parts] + [""]
    return lines
