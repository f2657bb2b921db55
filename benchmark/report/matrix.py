"""Section: the attack-to-attack matrix. Fine-tune on attack A (rows), evaluate under attack B (columns): the
ADV/ORIG ratio of each model, and each fine-tuned model's paired change against its parent under B (McNemar), as
tables and a heatmap. The paper's Tables I-III are its 3 x 2 corner."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark import stats
from benchmark.flags import ALPHA
from benchmark.repeats import recipe_of
from benchmark.report import Report, section
from benchmark.report.frames import minimal_eps_attacks, paper_ratio


@section("attack-matrix", order=77)
def matrix_section(report: Report) -> list[str]:
    suite_models = (report.results.get("suite") or {}).get("models", {})
    parents = dict(stats.iter_parents(report.results))
    frame = report.frame
    own = frame
    for column in ("check", "source"):  # the suite's own white-box attacks: not the checks', not transfers
        if column in own:
            own = own[own[column].isna()]
    own = own[~own["attack_family"].isin(minimal_eps_attacks(report.results))]  # outcome at a search's max
    attacks = list(dict.fromkeys(own["attack"]))
    models = list(dict.fromkeys(own["model"]))
    if not parents or len(attacks) < 2:
        return []
    # One row per recipe (benchmark.repeats): a repeated recipe's cells are over its repeats.
    recipes: dict[str, list[str]] = {}
    for m in models:
        recipes.setdefault(recipe_of(m), []).append(m)
    repeated = any(len(v) > 1 for v in recipes.values())
    ratio = paper_ratio(report.means).set_index(["model", "attack"])["ratio"]

    def label(recipe: str) -> str:
        names = recipes[recipe]
        trained = f"{suite_models[recipe]['attack']} ({recipe})" if names[0] in parents else f"none ({recipe})"
        return trained + (f", {len(names)} trainings" if len(names) > 1 else "") + report.caveat(names)

    ratios = pd.DataFrame([[np.nanmean([ratio.get((m, a), np.nan) for m in names]) for a in attacks]
                           for names in recipes.values()], index=[label(r) for r in recipes], columns=attacks)
    spread = ("; with several trainings, the mean over them (their SD, and per-pair changes counted, in the "
              "tables below)" if repeated else "")
    lines = ["## Attack-to-attack matrix\n",
             "Rows: the attack a model was fine-tuned on (none: a base model); columns: the attack it is evaluated "
             "under. First the ADV/ORIG ratio (mean over sizes of the seed means, as the paper's), then each "
             "fine-tuned model's change in ADV accuracy against its parent under that attack, in points, on the "
             f"same images (largest size, each test image once), with McNemar's exact p (* below {ALPHA})"
             f"{spread}.\n",
             tabulate([[i] + [_num(v, 3) for v in row] for i, row in zip(ratios.index, ratios.to_numpy())],
                      headers=["trained on \\ attacked with"] + attacks, tablefmt="github", disable_numparse=True),
             ""]
    if repeated:
        sds = [[np.nanstd([ratio.get((m, a), np.nan) for m in names], ddof=1) if len(names) > 1 else np.nan
                for a in attacks] for names in recipes.values()]
        lines += [tabulate([[i] + [_num(v, 3) for v in row] for i, row in zip(ratios.index, sds)],
                           headers=["SD of the ratio between trainings"] + attacks, tablefmt="github",
                           disable_numparse=True), ""]
    delta = None
    if report.examples is not None:
        paired = stats.paired_against_parents(report.examples, parents)
        tuned = [r for r, names in recipes.items() if names[0] in parents]
        if not paired.empty and tuned:
            cells = paired.set_index(["model", "attack"])
            delta = pd.DataFrame([[np.nanmean([cells["diff"].get((m, a), np.nan) for m in recipes[r]])
                                   for a in attacks] for r in tuned], index=[label(r) for r in tuned],
                                 columns=attacks)
            rows = []
            for r, row_label in zip(tuned, delta.index):
                row = [row_label]
                for a in attacks:
                    diffs = [(cells["diff"].get((m, a), np.nan), cells["p"].get((m, a), np.nan))
                             for m in recipes[r]]
                    if len(diffs) == 1:
                        row.append(_change(*diffs[0]))
                        continue
                    up = sum(d > 0 and q < ALPHA for d, q in diffs)
                    down = sum(d < 0 and q < ALPHA for d, q in diffs)
                    row.append("" if np.isnan(delta.at[row_label, a]) else
                               f"{delta.at[row_label, a]:+.1f} ({up} up, {down} down of {len(diffs)}*)")
                rows.append(row)
            note = (f"\n\n*With several trainings: the mean change over the pairs (each fine-tune against its own "
                    f"parent), and how many pairs changed significantly up or down (McNemar p < {ALPHA})."
                    if repeated else "")
            lines += [tabulate(rows, headers=["trained on \\ attacked with (Δ vs parent)"] + attacks,
                               tablefmt="github", disable_numparse=True) + note, ""]
    if report.with_figures:
        lines += [_heatmap(ratios, delta, report.run_dir), ""]
    return lines


def _num(v: float, digits: int) -> str:
    return "" if v is None or np.isnan(v) else f"{v:.{digits}f}"


def _change(d: float, p: float) -> str:
    return "" if np.isnan(d) else f"{d:+.1f} (p = {p:.2g}){'*' if p < ALPHA else ''}"


def _heatmap(ratios: pd.DataFrame, delta: pd.DataFrame | None, run_dir: Path) -> str:
    from benchmark.report.figures import pyplot, save

    plt = pyplot()
    panels = [(ratios, "ADV/ORIG ratio", "viridis", (0, 1))]
    if delta is not None:
        bound = max(1.0, float(np.nanmax(np.abs(delta.to_numpy(dtype=float)))))
        panels.append((delta, "Δ ADV accuracy vs parent (points)", "RdBu", (-bound, bound)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2 + 3.2 * len(panels) + 0.5 * ratios.shape[1],
                                                      1.5 + 0.5 * ratios.shape[0]), squeeze=False)
    for ax, (grid, title, cmap, (lo, hi)) in zip(axes[0], panels):
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.set_xlabel("attacked with")
        ax.set_title(title)
        for i, j in zip(*np.nonzero(~np.isnan(values))):
            ax.text(j, i, f"{values[i, j]:.2f}" if grid is ratios else f"{values[i, j]:+.1f}", ha="center",
                    va="center", fontsize=8)
        fig.colorbar(image, ax=ax)
    axes[0][0].set_ylabel("trained on")
    fig.tight_layout()
    return save(fig, run_dir, "attack-matrix.png", "attack-to-attack matrix")
