"""A run's results as the report reads them: results.json checked, its cells as a DataFrame, seed means and the
paper's ratio, and the formatting every section shares.

Definitions follow the paper: a table cell is the mean over seeds of the accuracy (%) on `size` test images;
the ratio of a model and attack is the mean over sizes of ADV / ORIG, taken on those seed means.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.errors import UserError


def load_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"no results.json in {run_dir} (run the suite first)")
    return read_results(path, "not valid JSON")


def read_results(path: Path, not_json: str) -> dict[str, Any]:
    """A results file's content, checked (check_results); `not_json` says what a file that is no JSON is."""
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: {not_json} ({exc})") from None
    check_results(results, path)
    return results


CELL_NUMBERS = ("seed", "size", "orig_acc", "adv_acc")


def check_results(results: Any, where: Path) -> None:
    """A results.json as `run` writes it: a table with a non-empty list of cells, each naming its model, attack,
    seed and size, with accuracies in [0, 1]; else a UserError naming the first thing wrong."""
    if not isinstance(results, dict) or not isinstance(results.get("cells"), list) or not results["cells"]:
        raise UserError(f"{where}: not a results.json of this benchmark (no list of cells)")
    for i, cell in enumerate(results["cells"]):
        if not isinstance(cell, dict) or not all(isinstance(cell.get(k), str) for k in ("model", "attack")):
            raise UserError(f"{where}: cell {i} has no model and attack names")
        bad = [k for k in CELL_NUMBERS if not isinstance(cell.get(k), (int, float)) or isinstance(cell.get(k), bool)
               or not np.isfinite(cell[k])]
        if bad or not (0 <= cell["orig_acc"] <= 1 and 0 <= cell["adv_acc"] <= 1):
            raise UserError(f"{where}: cell {i} ({cell['model']} / {cell['attack']}) has "
                            + (f"no finite {bad[0]}" if bad else "an accuracy outside [0, 1]"))


def cells(results: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(results["cells"])
    if frame.empty:
        raise UserError("results hold no cells")
    return frame


def minimal_eps_attacks(results: dict[str, Any]) -> dict[str, dict]:
    """The suite's attacks searched per image for their minimal eps (`minimal_eps`), by name: their cells hold
    the outcome at the search's max, not at one eps of the suite's, so comparisons across attacks leave them out."""
    return {name: entry for name, entry in (results.get("suite") or {}).get("attacks", {}).items()
            if isinstance(entry, dict) and "minimal_eps" in entry}


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1; NaN for one seed) over seeds per (model, attack, size),
    accuracies in %. Distances are means over the originally correct images of all seeds, `n_dist` of them."""
    if "n_dist" not in frame:  # results written before distances were restricted to the originally correct
        frame = frame.assign(n_dist=frame["n"])
    grouped = frame.groupby(["model", "attack", "size"], sort=False)
    out = grouped[["orig_acc", "adv_acc", "success_rate"]].mean()
    weights = frame["n_dist"].where(frame["n_dist"] > 0, 0)
    for d in ("l0", "l2", "linf"):  # pooled over seeds: each seed weighs by its count of attacked images
        out[d] = (frame[d].fillna(0) * weights).groupby([frame["model"], frame["attack"], frame["size"]],
                                                          sort=False).sum() / grouped["n_dist"].sum()
    out["n_dist"] = grouped["n_dist"].sum()
    out[["orig_sd", "adv_sd"]] = grouped[["orig_acc", "adv_acc"]].std(ddof=1)
    out["seeds"] = grouped.size()
    for col in ("orig_acc", "adv_acc", "orig_sd", "adv_sd"):
        out[col] = out[col] * 100
    return out.reset_index()


def paper_ratio(means: pd.DataFrame) -> pd.DataFrame:
    means = means.assign(r=means["adv_acc"] / means["orig_acc"])
    return means.groupby(["model", "attack"], sort=False)["r"].mean().rename("ratio").reset_index()


def mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.2f}" if np.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def fmt(v: float | None, digits: int = 2) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def interval(lo: float, hi: float, digits: int = 1) -> str:
    return "" if np.isnan(lo) or np.isnan(hi) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def interval_cells(intervals: pd.DataFrame, model: str, attack: str, kind: str, sizes) -> list[str]:
    """The '[lo, hi]' strings of one table row (%)."""
    sel = intervals[(intervals["model"] == model) & (intervals["attack"] == attack)
                    & (intervals["kind"] == kind)].set_index("size")
    return [interval(sel.at[s, "lo"], sel.at[s, "hi"]) if s in sel.index else "" for s in sizes]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
