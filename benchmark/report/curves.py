"""Section: accuracy-vs-eps curves from per-image minimal eps (benchmark.minimal), with each model's median and
the images whose success was not monotone along the search's grid (the count the "eps_monotone" flag tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmark.flags import nonmonotone
from benchmark.report import Report, section
from benchmark.report.frames import minimal_eps_attacks, slug
from benchmark.stats import distinct_images

POINTS = 101  # eps values per curve, 0 to the searched maximum


@section("minimal-eps", order=78)
def minimal_eps_section(report: Report) -> list[str]:
    examples = report.examples
    if examples is None or "min_eps" not in examples or examples["min_eps"].isna().all():
        return []
    entries = minimal_eps_attacks(report.results)
    lines = ["## Robustness curves from per-image minimal eps\n",
             "Per image, the smallest eps (in the attack's own space, see its entry) at which the attack was seen to "
             "fool the model: every point of a grid of equal intervals of [0, max] (minimal_eps.grid, 8 by default) "
             "tried, then bisection between the first that fools it and the one below; accuracy at e is the share of "
             "images correct originally whose minimal eps exceeds e (no eps <= e tried fools them: a budget e allows "
             "every smaller eps). Each test image once (seeds' subsets overlap). Median over the originally correct "
             "images ('> max': more than half fooled at no eps tried). Not monotone: of the originally correct images "
             "the attack fools, those it fools at one grid point and not at a larger one (gradient masking, "
             "randomness, FGSM overshooting; the \"eps_monotone\" check).\n"]
    rows = []
    for family, group in examples[examples["min_eps"].notna()].groupby("attack_family", sort=False):
        entry = entries.get(family, {})
        top = float(entry.get("minimal_eps", {}).get("max", group.loc[np.isfinite(group["min_eps"]), "min_eps"].max()))
        grid = np.linspace(0, top, POINTS)
        curves = {}
        for model, g in group.groupby("model", sort=False):
            g = distinct_images(g.set_index(["seed", "position"]))
            eps = g["min_eps"].to_numpy(float)
            correct = g["correct_orig"].to_numpy(bool)
            curves[model] = [100 * float(np.mean(correct & (eps > e))) for e in grid]
            median = float(np.median(eps[correct])) if correct.any() else float("nan")
            measured = "min_eps_reversals" in g and g["min_eps_reversals"].notna().any()
            k, n = nonmonotone(g) if measured else (0, 0)
            rows.append([model, family, len(g), "> max" if np.isinf(median) else f"{median:.4g}",
                         f"{100 * np.mean(np.isfinite(eps[correct])):.1f}" if correct.any() else "",
                         f"{k} of {n}" if measured else "not measured", f"{curves[model][-1]:.1f}", f"{top:g}"])
        if report.with_figures:
            lines.append(_figure(family, grid, curves, entry.get("space", "pixel"), report.run_dir))
    lines += ["", tabulate(rows, headers=["model", "attack", "images", "median minimal eps",
                                          "fooled at some eps (% of originally correct)",
                                          "not monotone (of those fooled)", "accuracy at max % (of all)",
                                          "max"], tablefmt="github", disable_numparse=True), ""]
    return lines


def _figure(family: str, grid: np.ndarray, curves: dict[str, list[float]], space: str, run_dir: Path) -> str:
    from benchmark.report.figures import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for model, curve in curves.items():
        ax.plot(grid, curve, label=model)
    ax.set_xlabel(f"eps ({space} space)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{family}: from per-image minimal eps")
    ax.legend()
    fig.tight_layout()
    return save(fig, run_dir, f"minimal-eps-{slug(family)}.png", f"{family} minimal eps")

