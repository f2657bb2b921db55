"""Sections that need per-image results (examples.csv): the worst case over attacks and paired tests of each
fine-tuned model against its parent."""
from __future__ import annotations

import pandas as pd
from tabulate import tabulate

from benchmark import stats
from benchmark.report import Report, section
from benchmark.report.frames import interval, minimal_eps_attacks


@section("per-image", order=80)
def per_image(report: Report) -> list[str]:
    return per_example_sections(report.results, report.examples)


def per_example_sections(results: dict, examples: pd.DataFrame | None) -> list[str]:
    """Worst case over the attacks and paired tests against parents: both need examples.csv."""
    if examples is None:
        return ["## Worst case over attacks; paired tests\n",
                "Need per-image results (examples.csv beside results.json, written by every run since it "
                "was introduced); this run has none.", ""]
    return worst_case_section(results, examples) + paired_section(results, examples)


def worst_case_section(results: dict, examples: pd.DataFrame) -> list[str]:
    searched = minimal_eps_attacks(results)
    at_one_eps = examples[~examples["attack_family"].isin(searched)]  # examples.csv always has the column
    attacks = list(dict.fromkeys(at_one_eps["attack"]))
    if not attacks:  # every attack searched a minimal eps: nothing at one eps to take the worst of
        return []
    table = stats.worst_case(examples, attacks)
    rows = []
    for model, group in table.groupby("model", sort=False):
        g = group.set_index("column")
        rows.append([model] + [f"{g.at[c, 'acc']:.2f} {interval(g.at[c, 'lo'], g.at[c, 'hi'])}"
                               if c in g.index else "" for c in attacks + ["all attacks"]])
    size = int(examples["position"].max()) + 1
    return ["## Worst case over attacks\n",
            f"Accuracy (%) on {size} images per seed, mean over {examples['seed'].nunique()} seed(s), with 95% "
            "intervals: under each attack, and under all of them at once (an image counts only if classified "
            "correctly originally and after every attack: AutoAttack's and RobustBench's convention). The same "
            "images per seed for every attack."
            + (f" Left out: {', '.join(searched)} (searched per image for a minimal eps: each would count at its "
               "search's max; see the robustness curves)." if searched else "") + "\n",
            tabulate(rows, headers=["model"] + attacks + ["all attacks"], tablefmt="github",
                     disable_numparse=True), ""]


def paired_section(results: dict, examples: pd.DataFrame) -> list[str]:
    table = stats.paired_against_parents(examples, dict(stats.iter_parents(results)))
    if table.empty:
        return []
    rows = [[r["model"], r["parent"], r["attack"], r["n"], f"{r['acc_a']:.2f}", f"{r['acc_b']:.2f}",
             f"{r['diff']:+.2f} {interval(r['lo'], r['hi'], 2)}", r["a_only"], r["b_only"], f"{r['p']:.3g}"]
            for _, r in table.iterrows()]
    return ["## Paired tests: fine-tuned model against its parent\n",
            "On the same images (largest size, each test image once: seeds' subsets overlap), correct under "
            "the attack (clean: on the originals). Δ = model - parent in points with its paired bootstrap 95% "
            "interval; 'model only' / 'parent only': images only that one gets right; p: McNemar's exact test "
            "(two-sided).\n",
            tabulate(rows, headers=["model", "parent", "attack", "images", "model %", "parent %", "Δ [95% CI]",
                                    "model only", "parent only", "p"], tablefmt="github", disable_numparse=True),
            ""]
