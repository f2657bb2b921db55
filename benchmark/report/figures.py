"""Section: figures: confusion matrices per model and attack, and robustness curves of swept attacks."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from benchmark.report import Report, section
from benchmark.report.frames import slug
from benchmark.repeats import recipe_of


@section("figures", order=100)
def figures_section(report: Report) -> list[str]:
    if not report.with_figures:
        return []
    return figures(report.results, report.frame, report.means, report.run_dir) + [""]


def pyplot():
    """matplotlib's pyplot without a display; a name in a script the font lacks is drawn as boxes, and
    matplotlib's warning per glyph would flood stderr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)
    return plt


def save(fig, run_dir: Path, name: str, alt: str) -> str:
    """Write `fig` as figures/NAME beside the report, close it, and return its markdown image link."""
    fig_dir = Path(run_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_dir / name, dpi=110)
    pyplot().close(fig)
    return f"![{alt}](figures/{name})"


def figures(results: dict, frame: pd.DataFrame, means: pd.DataFrame, run_dir: Path) -> list[str]:
    plt = pyplot()

    fig_dir = Path(run_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    classes = results.get("classes") or [str(i) for i in range(10)]
    size = frame["size"].max()
    links = ["## Confusion matrices\n", f"Summed over seeds (and over a recipe's repeated trainings), {size} images "
             "per seed; rows true class, columns predicted.\n"]
    at = frame[frame["size"] == size]
    groups = at.assign(model=at["model"].map(recipe_of)).groupby(["model", "attack"], sort=False)
    for (model, attack), group in tqdm(groups, desc="report: confusion matrices", unit="figure", leave=False,
                                       file=sys.stderr, disable=groups.ngroups < 20):
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
        for ax, key, title in zip(axes, ("confusion_orig", "confusion_adv"), ("original", "adversarial")):
            matrix = np.sum([np.asarray(m) for m in group[key]], axis=0)
            ax.imshow(matrix, cmap="Blues")
            ax.set_title(f"{title} ({100 * np.trace(matrix) / matrix.sum():.1f}% correct)")
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
            for i, j in zip(*np.nonzero(matrix)):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=5)
        fig.suptitle(f"{model} under {attack}")
        fig.tight_layout()
        name = f"confusion-{slug(model)}-{slug(attack)}.png"
        fig.savefig(fig_dir / name, dpi=110)
        plt.close(fig)
        links.append(f"- [{model} / {attack}](figures/{name})")
    swept = frame[frame["sweep"].notna()]
    if not swept.empty:
        links += ["", "## Robustness curves\n"]
        swept = swept.assign(param=swept["sweep"].map(lambda s: s[0]), value=swept["sweep"].map(lambda s: s[1]))
        for family, group in swept[swept["size"] == size].groupby("attack_family", sort=False):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for model, g in group.groupby("model", sort=False):
                curve = g.groupby("value")["adv_acc"].mean() * 100
                ax.plot(curve.index, curve.values, marker="o", label=model)
            param = group["param"].iloc[0]
            space = results["suite"].get("attacks", {}).get(family, {}).get("space", "pixel")
            ax.set_xlabel(f"{param} ({space} space)" if param.startswith("eps") else param)  # units, always
            ax.set_ylabel("ADV accuracy (%)")
            ax.set_title(f"{family}, {size} images x {group['seed'].nunique()} seeds")
            ax.legend()
            fig.tight_layout()
            name = f"curve-{slug(family)}.png"
            fig.savefig(fig_dir / name, dpi=110)
            plt.close(fig)
            links.append(f"![{family}](figures/{name})")
    return links
