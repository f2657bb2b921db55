"""Section: how each base model trained: loss and accuracy per epoch on its training images (augmented, as it
trained) and its early-stop validation images, the epoch whose weights it kept, and a figure of both curves
beside the paper's clean accuracy, so a reader sees whether the model converged and how far it is from the
paper's."""
from __future__ import annotations

import numpy as np
from tabulate import tabulate

from benchmark import claims
from benchmark.report import Report, section
from benchmark.report.frames import fmt, slug
from benchmark.repeats import recipe_of


@section("training", order=15)
def training(report: Report) -> list[str]:
    results = report.results
    trained = {name: info for name, info in results.get("models", {}).items()
               if info.get("kind") == "base" and info.get("history")}
    if not trained:
        return []
    lines = ["## Base model training\n"]
    for name, info in trained.items():
        history = info["history"]
        last, best = history[-1]["epoch"], info.get("best_epoch")
        if info.get("stopped_early"):
            how = (f"stopped early after epoch {last}: validation loss had not improved for "
                   f"{last - best} epoch(s); the weights of epoch {best} (lowest validation loss) are kept")
        else:
            epochs = results.get("suite", {}).get("models", {}).get(recipe_of(name), {}).get("epochs", last)
            how = f"trained all {last} of {epochs} epoch(s)" + (
                f"; the weights of epoch {best} (lowest validation loss) are kept" if best else "")
        paper = paper_clean_accuracy(results, name)
        versus = f"; the paper's model: {paper:.2f}% (its tables' mean ORIG)" if paper is not None else ""
        lines.append(f"**{name}**: {info.get('train_images', '?')} training images; {how}. Clean accuracy on the "
                     f"whole test split: {100 * info['test_acc']:.2f}%{versus}.\n")
        rows = [[r["epoch"], fmt(r.get("train_loss"), 4), fmt(_pct(r.get("train_acc"))), fmt(r.get("val_loss"), 4),
                 fmt(_pct(r.get("val_acc"))), "kept" if r["epoch"] == best else ""] for r in history]
        lines += [tabulate(rows, headers=["epoch", "train loss", "train acc %", "val loss", "val acc %", "weights"],
                           tablefmt="github", disable_numparse=True), ""]
        if report.with_figures:
            lines += [curve_figure(report, name, info, paper), ""]
    return lines


def paper_clean_accuracy(results: dict, model: str) -> float | None:
    """The mean over the paper's tables of this model's ORIG accuracy (%), or None without a reference."""
    reference = results.get("reference") or {}
    table = reference.get("tables", {}).get(claims.paper_name(reference, "models", model), {})
    values = [v for cell in table.values() for v in cell.get("orig", [])]
    return float(np.mean(values)) if values else None


def curve_figure(report: Report, name: str, info: dict, paper: float | None) -> str:
    from benchmark.report.figures import pyplot

    plt = pyplot()
    history, best = info["history"], info.get("best_epoch")
    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.6))
    for key, label, color in (("train", "train (augmented)", "C0"), ("val", "validation", "C1")):
        if any(f"{key}_loss" in r for r in history):
            loss_ax.plot(epochs, [r.get(f"{key}_loss", np.nan) for r in history], marker=".", label=label,
                         color=color)
        if any(f"{key}_acc" in r for r in history):
            acc_ax.plot(epochs, [100 * r.get(f"{key}_acc", np.nan) for r in history], marker=".", label=label,
                        color=color)
    acc_ax.axhline(100 * info["test_acc"], color="gray", linewidth=0.8, label="kept weights, test split")
    if paper is not None:
        acc_ax.axhline(paper, color="black", linestyle="--", linewidth=0.8, label="paper (clean)")
    for ax in (loss_ax, acc_ax):
        if best:
            ax.axvline(best, color="red", linestyle=":", linewidth=1, label=f"kept: epoch {best}")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.legend(fontsize=7)
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.legend(fontsize=7)
    fig.suptitle(f"{name}: training curve")
    fig.tight_layout()
    folder = report.run_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    file = f"training-{slug(name)}.png"
    fig.savefig(folder / file, dpi=110)
    plt.close(fig)
    return f"![{name} training curve](figures/{file})"


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value
