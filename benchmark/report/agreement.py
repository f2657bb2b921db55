"""Sections: attacks side by side on the same images (cross-toolkit agreement), and the clamp ablation of the
paper-code profile."""
from __future__ import annotations

import pandas as pd
from tabulate import tabulate

from benchmark.report import Report, section
from benchmark.report.frames import fmt


@section("agreement", order=50)
def agreement(report: Report) -> list[str]:
    return ["## Attacks side by side (cross-toolkit agreement)", ""] + agreement_table(report.means) + [""]


@section("clamp-ablation", order=60)
def clamp(report: Report) -> list[str]:
    return clamp_ablation(report.results, report.frame, report.means)


def agreement_table(means: pd.DataFrame) -> list[str]:
    size = means["size"].max()
    sel = means[means["size"] == size]
    rows = [[r["model"], r["attack"], fmt(r["orig_acc"]), fmt(r["adv_acc"]), fmt(100 * r["success_rate"]),
             str(int(r["n_dist"])), fmt(r["l0"], 1), fmt(r["l2"], 3), fmt(r["linf"], 4)]
            for _, r in sel.iterrows()]
    return [f"Same images per seed for every attack ({size} per seed); success rate counts images the model "
            "classified correctly before the attack and not after; distances in pixel space ([0,1]), L0 in "
            "changed pixel-channels, averaged over the originally correct images (n, all seeds): the images "
            "every attack attacks (some skip the misclassified ones, others do not).\n",
            tabulate(rows, headers=["model", "attack", "ORIG %", "ADV %", "success %", "n", "L0", "L2", "Linf"],
                     tablefmt="github", disable_numparse=True)]


def clamp_ablation(results: dict, frame: pd.DataFrame, means: pd.DataFrame) -> list[str]:
    """Where an attack in normalized space sweeps eps including 0, how much of the accuracy drop the clamp of
    the normalized tensor explains alone: (ORIG - ADV at eps 0) / (ORIG - ADV at eps)."""
    attacks = results["suite"].get("attacks", {})
    size = means["size"].max()
    rows = []
    for family, entry in attacks.items():
        if entry.get("space") != "normalized" or not isinstance(entry.get("eps"), list) or 0 not in entry["eps"]:
            continue
        zero = f"{family}@eps=0"
        for model in dict.fromkeys(means["model"]):
            sel = means[(means["model"] == model) & (means["size"] == size)].set_index("attack")
            if zero not in sel.index:
                continue
            for eps in entry["eps"]:
                name = f"{family}@eps={eps}"
                if eps == 0 or name not in sel.index:
                    continue
                orig, full, clamp = sel.at[name, "orig_acc"], sel.at[name, "adv_acc"], sel.at[zero, "adv_acc"]
                share = (orig - clamp) / (orig - full) if orig != full else float("nan")
                rows.append([model, family, eps, fmt(orig), fmt(clamp), fmt(full), fmt(100 * share, 1)])
    if not rows:
        return []
    return ["## The clamp alone (paper-code)\n",
            "The authors' code clamps the *normalized* tensor to [0,1], which moves every pixel into [0.5,1] "
            f"whatever eps is. At eps = 0 only the clamp acts. {size} images per seed.\n",
            tabulate(rows, headers=["model", "attack", "eps (normalized)", "ORIG %", "ADV % (clamp only)",
                                    "ADV % (eps + clamp)", "drop explained by clamp %"], tablefmt="github",
                     disable_numparse=True), ""]
