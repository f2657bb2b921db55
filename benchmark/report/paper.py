"""Sections: the paper's tables (accuracy per model, attack and size, beside the paper's rows) and the ADV/ORIG
ratio beside the paper's stated and derived ratios."""
from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark import claims, repeats, stats
from benchmark.variance import across_repeats, few_trainings_note, independent_units
from benchmark.report import Report, section
from benchmark.report.frames import fmt, interval, interval_cells, mean_sd, paper_ratio


@section("tables", order=20)
def tables(report: Report) -> list[str]:
    return (["## Tables as in the paper" if report.with_paper else "## Accuracy", ""]
            + paper_tables(report.results, report.means, stats.accuracy_intervals(report.reps), report.reps,
                           caveat=report.caveat))


@section("ratio", order=30)
def ratio(report: Report) -> list[str]:
    return (["## ADV/ORIG ratio (mean over sizes)", ""]
            + ratio_table(report.results, report.means, report.reps, report.examples, caveat=report.caveat) + [""])


def _repeated_cells(means: pd.DataFrame, names: list[str], attack: str, reps: dict, paths: list) -> dict:
    """Per (size, ORIG|ADV) of a repeated recipe: the mean over repeats, their SD and the interval over
    trainings and images (benchmark.variance; image part bounded above: per-repeat bootstraps)."""
    out = {}
    sel = means[means["model"].isin(names) & (means["attack"] == attack)]
    for z, size in enumerate(sorted(sel["size"].unique())):
        at = sel[sel["size"] == size].set_index("model").loc[names]
        for kind, col, arr in (("ORIG", "orig_acc", "orig"), ("ADV", "adv_acc", "adv")):
            rep = across_repeats(paths, np.stack([getattr(reps[(m, attack)], arr)[:, z] for m in names], axis=1),
                                 aligned=False)
            out[(size, kind)] = (rep.value, float(at[col].std(ddof=1)), rep.lo, rep.hi)
    return out


def paper_tables(results: dict, means: pd.DataFrame, intervals: pd.DataFrame | None = None,
                 reps: dict | None = None, caveat=lambda models: "") -> list[str]:
    reference = results.get("reference") or {}
    ref_sizes = reference.get("sizes", [])
    sizes = sorted(means["size"].unique())
    found = repeats.of_results(results)
    out = []
    for recipe, names in recipe_groups(results, means["model"]).items():
        repeated = len(names) > 1 and reps is not None
        model = names[0]
        paths = [found[m]["path"] for m in names]
        rows = []
        for attack in dict.fromkeys(means.loc[means["model"].isin(names), "attack"]):
            sel = means[(means["model"] == model) & (means["attack"] == attack)].set_index("size")
            over = _repeated_cells(means, names, attack, reps, paths) if repeated else {}
            ref = claims.reference_cell(reference, recipe, attack)
            for kind, col, sd in (("ORIG", "orig_acc", "orig_sd"), ("ADV", "adv_acc", "adv_sd")):
                if repeated:
                    rows.append([attack, kind] + [mean_sd(*over[(s, kind)][:2]) for s in sizes])
                    rows.append(["", f"{kind} 95% CI"] + [interval(*over[(s, kind)][2:]) for s in sizes])
                else:
                    rows.append([attack, kind] + [mean_sd(sel.at[s, col], sel.at[s, sd]) for s in sizes])
                    if intervals is not None:
                        rows.append(["", f"{kind} 95% CI"] + interval_cells(intervals, model, attack, kind, sizes))
                mean_at = {s: over[(s, kind)][0] for s in sizes} if repeated else {s: sel.at[s, col] for s in sizes}
                if ref is not None:
                    paper = {s: v for s, v in zip(ref_sizes, ref[kind.lower()])}
                    rows.append(["", f"{kind} paper"] + [fmt(paper.get(s)) for s in sizes])
                    rows.append(["", f"{kind} Δ"] + [
                        f"{mean_at[s] - paper[s]:+.2f}" if s in paper else "" for s in sizes])
        seeds = int(means.loc[means["model"] == model, "seeds"].max())
        source = f"; paper rows from {reference['source']}" if reference.get("source") else ""
        if repeated:
            few = few_trainings_note(independent_units(paths))
            what = (f"mean ± sample sd between the {len(names)} trainings ({', '.join(names)}), each the mean over "
                    f"{seeds} seed(s); 95% CI over the trainings and the images (benchmark.variance)"
                    + (f"; {few}" if few else ""))
        else:
            spread = " ± sample sd (n - 1 in the denominator)" if seeds > 1 else ""
            ci = "; 95% CI: " + ("Wilson" if seeds == 1 else "bootstrap over images") if intervals is not None else ""
            what = f"mean{spread} over {seeds} seed(s){ci}" + (
                "; one training run: no interval includes the variance of training" if reps is not None else "")
        flagged = caveat(names)
        out.append(f"### {recipe}{' ⚠' if flagged else ''}\n\n" + (f"**Caveat**: this model{flagged}: its robustness "
                                                                 "may be an artefact of the evaluation.\n\n"
                                                                 if flagged else "")
                   + f"Accuracy (%) on original (ORIG) and adversarial (ADV) images, {what}{source}.\n")
        out.append(tabulate(rows, headers=["attack", ""] + [f"{s} images" for s in sizes], tablefmt="github",
                            disable_numparse=True))
        out.append("")
    return out


def ratio_table(results: dict, means: pd.DataFrame, reps: dict | None = None,
                examples: pd.DataFrame | None = None, caveat=lambda models: "") -> list[str]:
    reference = results.get("reference") or {}
    found = repeats.of_results(results)
    ratios = paper_ratio(means).set_index(["model", "attack"])["ratio"]
    groups = recipe_groups(results, means["model"])
    repeated = any(len(v) > 1 for v in groups.values()) and reps is not None
    rows, units = [], set()  # independent trainings per recipe
    for recipe, names in groups.items():
        if all(m in found for m in names):
            units.add(independent_units([found[m]["path"] for m in names]))
        for attack in dict.fromkeys(means.loc[means["model"].isin(names), "attack"]):
            ref = claims.reference_cell(reference, recipe, attack)
            stated = claims.stated_ratio(reference, recipe, attack)
            from_tables = claims.table_ratio(ref) if ref is not None else None
            if reps is not None:
                replicates, aligned = claims.ratio_replicates(reps, examples, names, recipe, attack)
                rep = across_repeats([found[m]["path"] for m in names], replicates, aligned=aligned)
                value, ci = rep.value, interval(rep.lo, rep.hi, 3)
            else:
                rep, value, ci = None, float(ratios[(names[0], attack)]), None
            row = [recipe + caveat(names), attack, fmt(value, 3)] + ([ci] if ci is not None else [])
            if repeated:
                row += [rep.describe() if rep.includes_training else "one training run",
                        fmt(rep.sd_between, 3), interval(rep.pred_lo, rep.pred_hi, 3),
                        f"{min(rep.values):.3f}..{max(rep.values):.3f}" if rep.includes_training else ""]
            rows.append(row + [fmt(stated, 2), fmt(from_tables, 3),
                               f"{value - from_tables:+.3f}" if from_tables is not None else ""])
    ci = ["95% CI"] if reps is not None else []
    spread = ["trainings", "SD between repeats", "95% PI (rerun)", "range"] if repeated else []
    headers = ["model", "attack", "ADV/ORIG measured"] + ci + spread + ["paper (stated)", "paper (from its tables)",
                                                                       "Δ"]
    if not reference.get("tables"):  # nothing to compare with: no empty paper columns
        width = len(headers) - 3
        headers, rows = headers[:width], [row[:width] for row in rows]
    note = (" With repeated trainings: the mean over them, its 95% interval over trainings and images, the SD "
            "between the trainings, the prediction interval for a rerun of the suite and the trainings' range "
            "(benchmark.variance)." if repeated else "")
    few = few_trainings_note(2) if repeated and 2 in units else ""
    note += f" Where a recipe rests {few}." if few else ""
    return [f"The paper's ratio: the mean over the evaluation sizes of ADV / ORIG, each the mean over seeds.{note}\n",
            tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)]


def recipe_groups(results: dict, models) -> dict[str, list[str]]:
    """The run's models by recipe (benchmark.repeats), in run order."""
    found = repeats.of_results(results)
    out: dict[str, list[str]] = {}
    for m in dict.fromkeys(models):
        out.setdefault(found[m]["recipe"] if m in found else m, []).append(m)
    return out
