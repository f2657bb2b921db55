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
    ratio = paper_ratio(report.means).set_index(["model", "attack"])["ratio"]
    trained_on = {m: (f"{suite_models[recipe_of(m)]['attack']} ({m})" if m in parents else f"none ({m})")
                  for m in models}
    ratios = pd.DataFrame([[ratio.get((m, a), np.nan) for a in attacks] for m in models],
                          index=[trained_on[m] for m in models], columns=attacks)
    lines = ["## Attack-to-attack matrix\n",
             "Rows: the attack a model was fine-tuned on (none: a base model); columns: the attack it is evaluated "
             "under. First the ADV/ORIG ratio (mean over sizes of the seed means, as the paper's), then each "
             "fine-tuned model's change in ADV accuracy against its parent under that attack, in points, on the "
             f"same images (largest size, each test image once), with McNemar's exact p (* below {ALPHA}).\n",
             tabulate([[i] + [_num(v, 3) for v in row] for i, row in zip(ratios.index, ratios.to_numpy())],
                      headers=["trained on \\ attacked with"] + attacks, tablefmt="github", disable_numparse=True), ""]
    delta = None
    if report.examples is not None:
        paired = stats.paired_against_parents(report.examples, parents)
        tuned = [m for m in models if m in parents]
        if not paired.empty and tuned:
            cells = paired.set_index(["model", "attack"])
            delta = pd.DataFrame([[cells["diff"].get((m, a), np.nan) for a in attacks] for m in tuned],
                                 index=[trained_on[m] for m in tuned], columns=attacks)
            p = pd.DataFrame([[cells["p"].get((m, a), np.nan) for a in attacks] for m in tuned],
                             index=delta.index, columns=attacks)
            rows = [[i] + [_change(d, q) for d, q in zip(delta.loc[i], p.loc[i])] for i in delta.index]
            lines += [tabulate(rows, headers=["trained on \\ attacked with (Δ vs parent)"] + attacks,
                               tablefmt="github", disable_numparse=True), ""]
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
