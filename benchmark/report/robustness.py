"""Sections: "Is the robustness real?" (the flags of benchmark.flags, per model) and the source x target tables
of transfer attacks, with their heatmaps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark.flags import ALPHA, CHECKS, REVERSAL_SHARE, flags
from benchmark.report import Report, section
from benchmark.report.frames import slug


@section("robustness-checks", order=75)
def robustness_section(report: Report) -> list[str]:
    table = flags(report.results, report.examples)
    if table.empty:
        return []
    raised = table[table["flag"] == True]
    lines = ["## Is the robustness real?\n",
             "Per model, each check of benchmark.checks: what was measured, whether it raised a flag, and what to do "
             "about one. Paired comparisons are on the same images (largest size, each test image once), tested on "
             f"those classified correctly before the attack, significant at McNemar's exact p < {ALPHA} and in the "
             "direction the check names (a small p with 'ok' is a significant difference the other way). "
             + "; ".join(f"**{k}**: {v[0]}" for k, v in CHECKS.items() if k in set(table["check"])) + ".\n"]
    ran_here = set(table.loc[table["flag"].notna(), "check"])
    if "eps_sweep" in ran_here:  # how the two tests that are not one pair of attacks work, where they have numbers
        lines.append("An eps sweep is tested as a whole, on all its images: accuracy must not rise from any smaller "
                     "eps to any larger one (every pair, one-sided McNemar exact, Holm-adjusted over the pairs so the "
                     f"chance of a false flag on a curve that does not rise stays below {ALPHA}; 'up' / 'down': images "
                     "wrong at the smaller eps and right at the larger, and the reverse).\n")
    if "eps_monotone" in ran_here:
        lines.append("eps_monotone: of the originally correct images a minimal-eps search fools, those it fools at "
                     "one grid point and not at a larger one; FGSM overshoots on a few even on an ordinary model, so "
                     f"it flags when their share is significantly above {100 * REVERSAL_SHARE:.0f}% (one-sided exact "
                     f"binomial, p < {ALPHA}).\n")
    if "checks" not in report.results:
        lines.append("This run predates the checks: only what its cells already hold (eps sweeps) is checked; rerun "
                     "its suite for the probes, and add `[checks]` for the attacks they need.\n")
    ran = int(table["flag"].notna().sum())
    if ran == 0:
        lines.append("No check could run on this run (below: what each needs).\n")
    elif raised.empty:
        lines.append(f"No check raised a flag ({ran} of {len(table)} ran).\n")
    else:
        lines.append("**Flags raised:** " + "; ".join(f"{r.model}: {r.check}" for r in raised.itertuples()) + ".\n")
    rows = [[r.model, r.check, r.measured, {True: "**FLAG**", False: "ok", None: "-"}[r.flag],
             r.remedy if r.flag else ""] for r in table.itertuples()]
    lines += [tabulate(rows, headers=["model", "check", "measured", "flag", "remedy"], tablefmt="github",
                       disable_numparse=True), ""]
    return lines


@section("transfer", order=76)
def transfer_section(report: Report) -> list[str]:
    frame = report.frame
    if "source" not in frame:
        return []
    user = frame[frame["check"].isna()] if "check" in frame else frame
    size = int(frame["size"].max())
    at = user[user["size"] == size]
    entries = {a: json.dumps(spec, sort_keys=True, default=str) for a, spec in _attack_entries(report.results).items()}
    # One table per attack (its entry less the source, and its sweep point): every source crafting it, and the
    # white-box attack of the same entry on the diagonal.
    at = at.assign(same=[f"{entries.get(f)}|{s}" for f, s in zip(at["attack_family"], at["sweep"].map(str))],
                   src=at["source"].where(at["source"].notna(), at["model"]))
    groups = list(dict.fromkeys(at.loc[at["source"].notna(), "same"]))
    if not groups:
        return []
    lines = ["## Transfer attacks\n",
             f"Accuracy (%) of each target model (columns) on images crafted on each source model (rows), mean over "
             f"seeds, {size} images per seed, the same images per seed for every cell. One table per attack: the "
             "suite's attacks that differ only in their source share it, and the white-box attack of the same "
             "entry, where the suite has one, is its diagonal (marked white-box, as is a transfer attack whose "
             "source is the model it attacks). Lower: the images transfer better.\n"]
    for key in groups:
        cells = at[at["same"] == key]
        names = list(dict.fromkeys(cells["attack"]))
        grid = (cells.groupby(["src", "model"], sort=False)["adv_acc"].mean() * 100).unstack("model")
        grid = grid.reindex(index=list(dict.fromkeys(cells["src"])), columns=list(dict.fromkeys(cells["model"])))
        # A source that is its target crafted on the model it attacks: that cell is a white-box attack.
        rows = [[source] + ["" if np.isnan(v) else f"{v:.1f}" + (" (white-box)" if source == target else "")
                            for target, v in zip(grid.columns, grid.loc[source])] for source in grid.index]
        lines += [f"**{' = '.join(names)}**:\n",
                  tabulate(rows, headers=["source \\ target"] + list(grid.columns), tablefmt="github",
                           disable_numparse=True), ""]
        if report.with_figures:
            lines += [_heatmap(grid, names[0], report.run_dir), ""]
    return lines


def _attack_entries(results: dict) -> dict[str, dict]:
    """Each suite attack's entry without its source: attacks equal but for it share one table."""
    return {name: {k: v for k, v in entry.items() if k != "source"}
            for name, entry in (results.get("suite") or {}).get("attacks", {}).items()}


def _heatmap(grid: pd.DataFrame, family: str, run_dir: Path) -> str:
    from benchmark.report.figures import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * grid.shape[1], 1.2 + 0.6 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xlabel("target (evaluated on)")
    ax.set_ylabel("source (crafted on)")
    for i, j in zip(*np.nonzero(~np.isnan(grid.to_numpy(dtype=float)))):
        ax.text(j, i, f"{grid.iat[i, j]:.1f}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title(f"{family}: transfer")
    fig.tight_layout()
    return save(fig, run_dir, f"transfer-{slug(family)}.png", f"{family} transfer")
