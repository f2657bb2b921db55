"""Regression gate: a run's accuracies and accuracy ratios against a baseline's, cell by cell, with the report's
statistics.

A run must hold every (model, attack, seed, size) of the baseline (missing ones are bad input, exit 2, named),
and where a folder holds examples.csv its results.json must agree with it (recomputed; a disagreement is exit 2).
Then, per (model, attack):
- orig_acc and adv_acc at the largest size, pooled over seeds (smaller sizes are prefixes of it and would only
  repeat the test on less evidence): paired per image where both folders have examples.csv, McNemar's exact test
  on each distinct test image's correctness; otherwise Fisher's exact test on the two pooled counts, which
  ignores the pairing and so errs on the side of passing. A regression is a drop with p < alpha.
- ratio, the paper's ADV/ORIG (mean over sizes of ADV / ORIG on seed means): where both folders have examples.csv,
  a paired sign-flip randomization test (each image's run and baseline outcomes swapped at random, as McNemar's
  test does for an accuracy: a few images that all moved one way are not significant); a regression is a drop
  with p < alpha. Otherwise the difference's percentile interval at level 1 - alpha from independent bootstraps
  of each run; a regression is an interval below zero.
`either_way` also fails significant rises (an attack grown weaker changes a benchmark as much as a stronger
one). `tolerance` replaces the tests by an absolute bound on the change (fractions for accuracies, ratio units).

What is compared is decided per recipe (benchmark.repeats). Where every model of the baseline is in the run with
the same weights (same key and weights hash), the tests above run per image. Where the models were trained again
(other weights, other repeats) and either side has several trainings, images say nothing about training noise:
per (recipe, attack) and metric, Student's t-test compares the two runs' means of the top repeated level (the
base trainings; the fine-tunes where there is one base), each mean carrying everything below it, with their
variance pooled over both sides (two runs of one suite train alike), so a rerun of a repeated suite is judged
against the spread its repeats show (a side with one training borrows the other side's spread). With one training on each side there is no spread to judge by: the per-image tests run, and the output
says that training variance is not in them.

Like for like first: the data (pixels), each compared attack's parameters and each compared model's recipe must be
the same in both runs, else exit 2 naming what differs. A ratio undefined (no originally correct image) on both
sides is no change; on one side only it is reported as such, not tested.
Exit 0: no regression; 1: a regression (cells printed with the metric, both values and p); 2: bad input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact
from scipy.stats import t as t_dist
from tabulate import tabulate

from benchmark import examples as examples_csv
from benchmark import flags, repeats, stats, variance
from benchmark.errors import UserError
from benchmark.report import cells, load_results
from benchmark.report.frames import read_results

KEYS = ["model", "attack", "size"]
ONE_EACH = "models trained again, one training each: training variance not in this test"
METRICS = {"orig_acc": "correct_orig", "adv_acc": "correct_adv"}
CELL = ["model", "attack", "seed", "size"]


def pooled(results: dict) -> pd.DataFrame:
    """Per (model, attack) at its largest size: accuracies pooled over seeds, the number of images n and the
    correct counts."""
    frame = cells(results)
    largest = frame.groupby(["model", "attack"], sort=False)["size"].transform("max")
    frame = frame[frame["size"] == largest]
    out = frame.groupby(KEYS, sort=False).agg(orig_acc=("orig_acc", "mean"), adv_acc=("adv_acc", "mean"),
                                              seeds=("seed", "nunique"))
    out["n"] = out.index.get_level_values("size") * out["seeds"]
    for metric in METRICS:
        out[f"{metric}_k"] = (frame.assign(k=(frame[metric] * frame["size"]).round())
                              .groupby(KEYS, sort=False)["k"].sum())
    return out


def require_cells(run: dict, baseline: dict) -> None:
    """Every (model, attack, seed, size) of the baseline is in the run, or a UserError naming what is missing."""
    have = set(map(tuple, cells(run)[CELL].itertuples(index=False)))
    missing = [c for c in map(tuple, cells(baseline)[CELL].itertuples(index=False)) if c not in have]
    if missing:
        listed = ", ".join(f"{m} / {a} / seed {s} / size {z}" for m, a, s, z in missing[:3])
        raise UserError(f"run lacks {len(missing)} of the baseline's cells (model / attack / seed / size): {listed}"
                        + (", ..." if len(missing) > 3 else ""))


def agree(results: dict, table: pd.DataFrame | None, where: Path) -> None:
    """A folder's results.json against the accuracies its examples.csv gives (UserError where they differ)."""
    if table is None:
        return
    frame = cells(results)
    recomputed = examples_csv.accuracies(table, sorted(frame["size"].unique())).set_index(CELL)
    joined = frame.set_index(CELL)[["orig_acc", "adv_acc"]].join(recomputed.add_suffix("_examples"), how="left")
    off = joined[~(np.isclose(joined["orig_acc"], joined["orig_acc_examples"], atol=1e-9)
                   & np.isclose(joined["adv_acc"], joined["adv_acc_examples"], atol=1e-9))]
    if len(off):
        (model, attack, seed, size), row = next(iter(off.iterrows()))
        raise UserError(f"{where}: results.json and examples.csv disagree in {len(off)} cell(s), e.g. {model} / "
                        f"{attack} / seed {seed} / size {size}: adv_acc {row['adv_acc']:.4f} in results.json, "
                        f"{row['adv_acc_examples']:.4f} from examples.csv; regenerate the folder")


def _paired_p(mine: pd.DataFrame, base: pd.DataFrame, model: str, attack: str, size: int,
              column: str) -> tuple[float, int] | None:
    """McNemar's exact p-value on the distinct images of one cell, or None where the runs' images differ."""
    def select(table: pd.DataFrame) -> pd.DataFrame:
        sel = table[(table["model"] == model) & (table["attack"] == attack) & (table["position"] < size)]
        return sel.set_index(["seed", "position"])[["index", column]]

    joined = select(mine).merge(select(base), left_index=True, right_index=True, suffixes=("", "_base"))
    if len(joined) == 0 or (joined["index"] != joined["index_base"]).any():
        return None
    joined = stats.distinct_images(joined)
    return stats.mcnemar_p(joined[column], joined[f"{column}_base"]), len(joined)


def _like(run: dict, run_examples: pd.DataFrame | None, baseline: dict) -> tuple[dict, pd.DataFrame | None]:
    """The run's cells and examples that the baseline has: its (model, attack, seed, size) cells, and per
    (model, attack) the images below the baseline's largest size."""
    wanted = set(map(tuple, cells(baseline)[CELL].itertuples(index=False)))
    kept = [c for c in run["cells"] if (c["model"], c["attack"], c["seed"], c["size"]) in wanted]
    if run_examples is None:
        return {**run, "cells": kept}, None
    largest = cells(baseline).groupby(["model", "attack", "seed"])["size"].max()
    limit = run_examples.set_index(["model", "attack", "seed"]).index.map(largest.to_dict().get)
    keep = ~pd.isna(limit) & (run_examples["position"].to_numpy() < np.nan_to_num(limit.to_numpy(float), nan=-1))
    return {**run, "cells": kept}, run_examples[keep]


def _ratio_replicates(run: dict, baseline: dict, run_examples: pd.DataFrame | None,
                      baseline_examples: pd.DataFrame | None) -> dict[tuple[str, str], tuple[np.ndarray, str]]:
    """Per (model, attack): bootstrap replicates (index 0 observed) of ratio(run) - ratio(baseline), and how they
    were drawn: paired (the same images resampled in both) where both folders have the cell's images, else from
    independent bootstraps of each run's counts."""
    sizes = sorted(cells(baseline)["size"].unique())
    theirs = stats.cell_replicates(stats.outcomes_from_cells(cells(baseline)))
    mine = stats.cell_replicates(stats.outcomes_from_cells(cells(run)), salt="run")  # independent of theirs
    out = {}
    for key in theirs:
        joint = None
        if run_examples is not None and baseline_examples is not None:
            joint = stats.joint_outcomes([(run_examples, *key), (baseline_examples, *key)],
                                         theirs[key].outcomes.seeds, max(sizes))
        if joint is None:
            out[key] = mine[key].ratio - theirs[key].ratio, "unpaired bootstrap"
            continue
        out[key] = stats.sign_flip_ratio_test(joint, sizes, stats.generator(*key, "check")), "paired sign-flip"
    return out


def like_for_like(run: dict, baseline: dict) -> None:
    """The data, the compared attacks' parameters and the compared models' recipes agree, else a UserError naming
    the first difference (results without the record pass: they predate it)."""
    pixels = [(r.get("data") or {}).get("pixels") for r in (run, baseline)]
    if None not in pixels and pixels[0] != pixels[1]:
        raise UserError(f"run and baseline were evaluated on other data (pixels {pixels[0]} vs {pixels[1]}: "
                        f"{(run.get('data') or {}).get('description')} vs "
                        f"{(baseline.get('data') or {}).get('description')}); compare runs of the same data")
    frame = cells(baseline)
    for family in dict.fromkeys(frame["attack_family"] if "attack_family" in frame else []):
        points = [a for a in dict.fromkeys(frame.loc[frame["attack_family"] == family, "attack"])]
        mine, theirs = (_entry(r, "attacks", family) for r in (run, baseline))
        if mine is None or theirs is None:
            continue
        for attack in points:  # a sweep's point: its value stands in the attack's name
            differ = _differs(_point(mine, attack), _point(theirs, attack))
            if differ:
                raise UserError(f"attack {attack} differs between run and baseline ({differ}); the gate compares "
                                "like with like: run the baseline's suite, or compare with a baseline of this one")
    found = repeats.of_results(baseline)
    for recipe in dict.fromkeys(found[m]["recipe"] for m in dict.fromkeys(frame["model"]) if m in found):
        mine, theirs = (_entry(r, "models", recipe) for r in (run, baseline))
        if mine is None or theirs is None:
            continue
        differ = _differs(*({k: v for k, v in e.items() if k not in ("repeats",)} for e in (mine, theirs)))
        if differ:
            raise UserError(f"model {recipe} differs between run and baseline ({differ}): not the same recipe; the "
                            "gate compares like with like")


def _entry(results: dict, table: str, name: str) -> dict | None:
    entry = ((results.get("suite") or {}).get(table) or {}).get(name)
    return entry if isinstance(entry, dict) else None


def _point(entry: dict, attack: str) -> dict:
    """A suite attack entry at one point of its sweep (`fgsm@eps=0.01`): the swept list replaced by the point."""
    if "@" not in attack:
        return entry
    key, _, value = attack.split("@", 1)[1].partition("=")
    return {**entry, key: value} if isinstance(entry.get(key), list) else entry


def _differs(a: dict, b: dict) -> str:
    """'' when equal, else the first differing key with both values."""
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            return f"{key} only in the {'run' if key in a else 'baseline'}"
        x, y = a[key], b[key]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if float(x) != float(y):
                return f"{key} {x!r} in the run, {y!r} in the baseline"
        elif x != y and str(x) != str(y):
            return f"{key} {x!r} in the run, {y!r} in the baseline"
    return ""


def trained_again(run: dict, baseline: dict) -> dict[str, bool]:
    """Per recipe of the baseline: True where its models are not all in the run with the same weights (trained
    again: other keys, weights or repeats), False where they are (per-image tests apply)."""
    mine, theirs = repeats.of_results(run), repeats.of_results(baseline)
    out: dict[str, bool] = {}
    for name, where in theirs.items():
        recipe = where["recipe"]
        info, other = (baseline.get("models") or {}).get(name, {}), (run.get("models") or {}).get(name)
        if "weights" not in info:  # results without model records: as the gate always did
            same = True
        else:
            same = other is not None and all(other.get(k) == info.get(k) for k in ("key", "weights"))
        out[recipe] = out.get(recipe, False) or not same
    return out


def compare(run: dict, baseline: dict, *, alpha: float = 0.01, tolerance: float | None = None,
            either_way: bool = False, run_examples: pd.DataFrame | None = None,
            baseline_examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per baseline cell (or, for models trained again with several trainings, per recipe and attack)
    and metric: baseline, run, delta, the test, its p-value and n, regression. Like for like: the run is cut to
    the baseline's cells (seeds, sizes) and images before anything is compared."""
    like_for_like(run, baseline)
    again = trained_again(run, baseline)
    found_run, found_base = repeats.of_results(run), repeats.of_results(baseline)
    by_repeats = {r for r, yes in again.items() if yes and (
        sum(v["recipe"] == r for v in found_run.values()) > 1 or sum(v["recipe"] == r for v in found_base.values()) > 1)}
    rows = []
    if by_repeats:
        run = _like_per_recipe(run, baseline, found_run, found_base, by_repeats)
        rows += _repeat_rows(run, baseline, by_repeats, alpha=alpha, tolerance=tolerance, either_way=either_way)
        keep = lambda r, found: [c for c in r["cells"] if found.get(c["model"], {}).get("recipe", c["model"])  # noqa: E731
                                 not in by_repeats]
        run, baseline = {**run, "cells": keep(run, found_run)}, {**baseline, "cells": keep(baseline, found_base)}
        run_examples = None if run_examples is None else run_examples[~run_examples["recipe"].isin(by_repeats)]
        baseline_examples = (None if baseline_examples is None
                             else baseline_examples[~baseline_examples["recipe"].isin(by_repeats)])
        if not baseline["cells"]:
            return pd.DataFrame(rows)
    per_image = _per_image_rows(run, baseline, alpha=alpha, tolerance=tolerance, either_way=either_way,
                                run_examples=run_examples, baseline_examples=baseline_examples)
    retrained = {r for r, yes in again.items() if yes}
    for row in per_image:
        if found_base.get(row["model"], {}).get("recipe", row["model"]) in retrained:
            row["test"] += f"; {ONE_EACH}"
    return pd.DataFrame(rows + per_image)


def _like_per_recipe(run: dict, baseline: dict, found_run: dict, found_base: dict, recipes: set[str]) -> dict:
    """Like for like where models were trained again: per recipe, every (attack, seed, size) the baseline's
    trainings have is in the run's (else a UserError naming what is missing), and the run's cells of that
    recipe are cut to them (the same evaluation images on both sides, so the shared image variance cancels)."""
    def of(results: dict, found: dict, recipe: str) -> set[tuple]:
        return {(c["attack"], c["seed"], c["size"]) for c in results["cells"]
                if found.get(c["model"], {}).get("recipe") == recipe}

    def weights(results: dict, found: dict, recipe: str) -> dict[str, str]:
        info = results.get("models") or {}
        return {m: info[m].get("weights") for m, v in found.items() if v["recipe"] == recipe and m in info}

    wanted = {}
    for recipe in sorted(recipes):
        mine_w, theirs_w = weights(run, found_run, recipe), weights(baseline, found_base, recipe)
        shared = [m for m, w in mine_w.items() if w is not None and theirs_w.get(m) == w]
        if shared:  # the same trainings on both sides are not independent samples: the t-test does not apply
            raise UserError(f"{recipe}: run and baseline share {len(shared)} of their trainings (the same weights: "
                            f"{', '.join(shared[:3])}{', ...' if len(shared) > 3 else ''}) but not all; compare runs "
                            "with the same repeats (per-image tests), or runs trained apart")
        theirs, mine = of(baseline, found_base, recipe), of(run, found_run, recipe)
        missing = sorted(theirs - mine, key=str)
        if missing:
            listed = ", ".join(f"{a} / seed {s} / size {z}" for a, s, z in missing[:3])
            raise UserError(f"run lacks {len(missing)} of the baseline's cells of {recipe} (attack / seed / size): "
                            f"{listed}{', ...' if len(missing) > 3 else ''}; compare runs of one evaluation")
        wanted[recipe] = theirs
    kept = [c for c in run["cells"] if found_run.get(c["model"], {}).get("recipe") not in recipes
            or (c["attack"], c["seed"], c["size"]) in wanted[found_run[c["model"]]["recipe"]]]
    return {**run, "cells": kept}


def _repeat_rows(run: dict, baseline: dict, recipes: set[str], *, alpha: float, tolerance: float | None,
                 either_way: bool) -> list[dict]:
    """Per (recipe, attack) and metric: Student's t-test of the two runs' means of the top repeated level; a
    regression where Holm's adjustment over all these rows keeps p below alpha (a whole suite's rows at once:
    a rerun with no change fails with probability at most alpha, not alpha per row)."""
    values = {side: _instance_values(r) for side, r in (("run", run), ("baseline", baseline))}
    found = {"run": repeats.of_results(run), "baseline": repeats.of_results(baseline)}
    base_frame = cells(baseline)
    rows = []
    for recipe in [r for r in dict.fromkeys(found["baseline"][m]["recipe"] for m in base_frame["model"]
                                            if m in found["baseline"]) if r in recipes]:
        for attack in dict.fromkeys(base_frame.loc[base_frame["model"].map(
                lambda m: found["baseline"].get(m, {}).get("recipe")) == recipe, "attack"]):
            sides = {}
            for side in ("run", "baseline"):
                names = [m for m, v in found[side].items() if v["recipe"] == recipe
                         and (m, attack) in values[side].index]
                if not names:
                    raise UserError(f"run lacks {recipe} / {attack}, which the baseline has")
                sides[side] = names
            for metric in ("orig_acc", "adv_acc", "ratio"):
                units = {side: _unit_means(values[side].loc[[(m, attack) for m in names], metric].to_numpy(float),
                                           [found[side][m]["path"] for m in names])
                         for side, names in sides.items()}
                rows.append(_welch_row(recipe, attack, metric, units, alpha=alpha, tolerance=tolerance,
                                       either_way=either_way))
    tested = [r for r in rows if np.isfinite(r["p"])]
    if tolerance is None and tested:
        adjusted = flags.holm(np.array([r["p"] for r in tested]))
        for row, q in zip(tested, adjusted):
            row["regression"] = bool(row["regression"] and q < alpha)
            # The smallest drop this row would call a regression for sure (Bonferroni's alpha / rows, which Holm
            # never asks more than): with few trainings a side it is large; more repeats shrink it.
            one_sided = alpha / len(tested) / (2 if either_way else 1)
            smallest = float(t_dist.ppf(1 - one_sided, row["_df"]) * row["_se"]) if row["_df"] > 0 else float("nan")
            row["test"] += (f", Holm over {len(tested)} rows (adjusted p {q:.2g}; a drop over {smallest:.3g} is "
                            "always caught)" if np.isfinite(smallest) and smallest > 0 else
                            f", Holm over {len(tested)} rows (adjusted p {q:.2g})")
    for row in rows:
        row.pop("_se", None)
        row.pop("_df", None)
    return rows


def _instance_values(results: dict) -> pd.DataFrame:
    """Per (model, attack): orig_acc and adv_acc at the largest size pooled over seeds, and the paper's ratio."""
    out = pooled(results).reset_index().set_index(["model", "attack"])[["orig_acc", "adv_acc"]]
    out["ratio"] = _paper_ratios(cells(results))
    return out


def _unit_means(values: np.ndarray, paths: list[tuple[int, ...]]) -> tuple[np.ndarray, float, bool]:
    """The means of the top repeated level (benchmark.variance) and the variance of one of them, floored at the
    spread within them where they agree too closely (variance.training_spread), and whether it was; a single
    training: its value, nan."""
    if variance.replicated_level(paths) is None:
        return values[:1], float("nan"), False
    means, unit_var, floor_p = variance.training_spread(values, paths)
    return means, unit_var, floor_p is not None


def _welch_row(recipe: str, attack: str, metric: str, units: dict[str, np.ndarray], *, alpha: float,
               tolerance: float | None, either_way: bool) -> dict:
    (mine, mine_var, mine_floored), (theirs, theirs_var, theirs_floored) = units["run"], units["baseline"]
    m, b = float(np.mean(mine)), float(np.mean(theirs))
    delta = m - b
    n = f"{len(mine)} vs {len(theirs)}"
    row = {"model": recipe, "attack": attack, "size": "largest" if metric != "ratio" else "mean over sizes",
           "metric": metric, "baseline": b, "run": m, "delta": delta, "p": float("nan"), "n": n}
    if not (np.isfinite(m) and np.isfinite(b)):
        both = not (np.isfinite(m) or np.isfinite(b))
        return {**row, "test": "undefined on both sides: no change" if both else
                f"undefined in the {'baseline' if np.isfinite(m) else 'run'} only (no originally correct image): "
                "not tested", "regression": False}
    if tolerance is not None:
        return {**row, "test": f"|change of the mean over trainings| > {tolerance:g}",
                "regression": bool((abs(delta) if either_way else -delta) > tolerance + 1e-12)}
    # Two runs of one suite train alike: under no change their training means share one variance, pooled over
    # both sides (a side with one training adds no degrees of freedom).
    df = len(mine) + len(theirs) - 2
    pooled_var = (sum(v * (len(u) - 1) for u, v in ((mine, mine_var), (theirs, theirs_var)) if len(u) > 1) / df
                  if df > 0 else float("nan"))
    se = float(np.sqrt(pooled_var * (1 / len(mine) + 1 / len(theirs))))
    if not se > 0:
        p = 1.0 if delta == 0 or np.isnan(se) else 0.0
    else:
        t = delta / se
        p = float(2 * t_dist.sf(abs(t), df)) if either_way else float(t_dist.cdf(t, df))
    floor = ("; their means agree too closely for the spread within them, which floors the variance"
             if mine_floored or theirs_floored else "")
    return {**row, "p": p, "test": f"Student t on the training means, pooled variance (models trained again; {n} "
                                   f"trainings at the top repeated level{floor})",
            "regression": bool(p < alpha and (delta < 0 or either_way) and delta != 0), "_se": se, "_df": df}


def _per_image_rows(run: dict, baseline: dict, *, alpha: float, tolerance: float | None, either_way: bool,
                    run_examples: pd.DataFrame | None, baseline_examples: pd.DataFrame | None) -> list[dict]:
    """The per-image tests of models with the same weights on both sides (module docstring)."""
    require_cells(run, baseline)
    run, run_examples = _like(run, run_examples, baseline)
    mine, base = pooled(run), pooled(baseline)
    paired = run_examples is not None and baseline_examples is not None
    rows = []
    for key, b in base.iterrows():
        m = mine.loc[key]
        for metric, column in METRICS.items():
            delta = m[metric] - b[metric]
            if tolerance is not None:
                test, p, n = f"|change| > {tolerance:g}", float("nan"), int(b["n"])
                flagged = (abs(delta) if either_way else -delta) > tolerance + 1e-12
            else:
                result = _paired_p(run_examples, baseline_examples, *key, column) if paired else None
                if result is not None:
                    (p, n), test = result, "McNemar exact (paired)"
                else:
                    counts = [[int(m[f"{metric}_k"]), int(m["n"] - m[f"{metric}_k"])],
                              [int(b[f"{metric}_k"]), int(b["n"] - b[f"{metric}_k"])]]
                    p, n, test = float(fisher_exact(counts).pvalue), int(b["n"]), "Fisher exact (unpaired)"
                flagged = p < alpha and (delta < 0 or either_way) and delta != 0
            rows.append({**dict(zip(KEYS, key)), "metric": metric, "baseline": b[metric], "run": m[metric],
                         "delta": delta, "p": p, "n": n, "test": test, "regression": bool(flagged)})
    rows += _ratio_rows(run, baseline, alpha=alpha, tolerance=tolerance, either_way=either_way,
                        run_examples=run_examples, baseline_examples=baseline_examples)
    return rows


def _ratio_rows(run: dict, baseline: dict, *, alpha: float, tolerance: float | None, either_way: bool,
                run_examples, baseline_examples) -> list[dict]:
    replicates = _ratio_replicates(run, baseline, run_examples, baseline_examples)
    base_frame = cells(baseline)
    base_ratios, run_ratios = _paper_ratios(base_frame), _paper_ratios(cells(run))
    rows = []
    for key, group in base_frame.groupby(["model", "attack"], sort=False):
        diff, how = replicates[key]
        base_ratio = float(base_ratios[key])
        paired = how == "paired sign-flip"
        observed, p = diff if paired else (float(diff[0]), float("nan"))
        run_ratio = float(run_ratios.get(key, float("nan")))
        if not (np.isfinite(base_ratio) and np.isfinite(run_ratio)):  # no originally correct image: no ratio
            both = not (np.isfinite(base_ratio) or np.isfinite(run_ratio))
            rows.append({"model": key[0], "attack": key[1], "size": "mean over sizes", "metric": "ratio",
                         "baseline": base_ratio, "run": run_ratio, "delta": float("nan"), "p": float("nan"),
                         "n": int(group.groupby("seed")["size"].max().sum()),
                         "test": "undefined on both sides (no originally correct image): no change" if both else
                         f"undefined in the {'baseline' if np.isfinite(run_ratio) else 'run'} only (no originally "
                         "correct image): not tested", "regression": False})
            continue
        if tolerance is not None:
            test, p = f"|change| > {tolerance:g}", float("nan")
            flagged = (abs(observed) if either_way else -observed) > tolerance + 1e-12
        elif paired:
            test = "sign-flip randomization (paired)"
            flagged = p < alpha and (observed < 0 or either_way) and observed != 0
        else:
            tail = 100 * alpha / 2
            lo, hi = np.nanpercentile(diff[1:], [tail, 100 - tail])
            p = float(min(1.0, 2 * min(np.mean(diff[1:] >= 0), np.mean(diff[1:] <= 0))))
            test = f"{how} ({100 * (1 - alpha):g}% interval [{lo:+.3f}, {hi:+.3f}])"
            flagged = bool(hi < 0 or (either_way and lo > 0))
        rows.append({"model": key[0], "attack": key[1], "size": "mean over sizes", "metric": "ratio",
                     "baseline": base_ratio, "run": base_ratio + observed, "delta": observed, "p": p,
                     "n": int(group.groupby("seed")["size"].max().sum()), "test": test,
                     "regression": bool(flagged)})
    return rows


def _paper_ratios(frame: pd.DataFrame) -> pd.Series:
    """Per (model, attack): the paper's ratio, the mean over sizes of adv_acc / orig_acc (each pooled over
    seeds); one pass over the cells, not one per pair (a repeated suite's check has hundreds of pairs)."""
    # Sizes ascending and Series.mean over them per pair, as the per-pair computation this replaces summed them
    # (another order or groupby's own mean moves the last digit).
    means = (frame.sort_values("size", kind="stable").groupby(["model", "attack", "size"], sort=False)
             [["orig_acc", "adv_acc"]].mean())
    return (means["adv_acc"] / means["orig_acc"]).groupby(level=["model", "attack"], sort=False).agg(
        lambda ratios: ratios.mean())


def main(run_dir: Path, baseline_path: Path, *, alpha: float = 0.01, tolerance: float | None = None,
         either_way: bool = False) -> int:
    if not 0 < alpha < 1 or (tolerance is not None and not 0 <= tolerance < float("inf")):
        raise UserError("--alpha must lie in (0, 1) and --tolerance be non-negative")
    baseline, baseline_dir = _load(baseline_path)
    run = load_results(run_dir)
    run_examples = examples_csv.load(run_dir)
    baseline_examples = examples_csv.load(baseline_dir) if baseline_dir is not None else None
    agree(run, run_examples, Path(run_dir))
    agree(baseline, baseline_examples, baseline_dir or baseline_path)
    table = compare(run, baseline, alpha=alpha, tolerance=tolerance, either_way=either_way,
                    run_examples=run_examples, baseline_examples=baseline_examples)
    bad = table[table["regression"]]
    kind = "drop" + (" or rise" if either_way else "")
    rule = (f"a {kind} beyond {tolerance:g}" if tolerance is not None
            else f"a {kind} significant at alpha = {alpha:g}")
    tests = sorted({t.split(" (")[0] if "bootstrap" in t or t.startswith("Student") else t.split(";")[0]
                    for t in table["test"]})
    found = ", ".join(f"{metric} {count}" for metric, count in bad["metric"].value_counts(sort=False).items())
    print(f"checked {len(table)} values in {len(table) // (len(METRICS) + 1)} cells (accuracies at the largest "
          f"size pooled over seeds, and the ADV/ORIG ratio) against {baseline_path}; a regression is {rule} "
          f"({', '.join(tests)}): {len(bad)} found" + (f" ({found})" if found else ""))
    retrained = sorted({m for m, t in zip(table["model"], table["test"]) if ONE_EACH in t})
    if retrained:
        print(f"note: {', '.join(retrained)} trained again (other weights than the baseline's), one training on each "
              "side: the per-image tests do not include the variance of training (repeats = N in the suite lets the "
              "gate compare at the level of repeats)")
    for line in claims_against(run, baseline):
        print(line)
    ours, theirs = run.get("device") or "", baseline.get("device") or ""
    if ours and theirs and not (ours.startswith(theirs) or theirs.startswith(ours)):  # older results: no threads
        # Another device, or on a CPU another thread count, rounds differently: differences need not be the code's.
        print(f"note: run on {ours}, baseline on {theirs}")
    if len(bad):
        shown = bad.drop(columns="regression")
        print(tabulate(shown, headers="keys", tablefmt="github", floatfmt=".4g", showindex=False))
        return 1
    return 0


def claims_against(run: dict, baseline: dict) -> list[str]:
    """The run's claims (results.json `claims`) against the baseline's 95% prediction intervals for a rerun of its
    suite: how many fall inside (about 95% of them should, for a rerun trained independently), and the verdicts
    that differ. Informational: the exit code is the tests' above."""
    theirs = {(c["claim"], c["ours"]): c for c in baseline.get("claims") or [] if c.get("estimate") is not None}
    mine = [(c, theirs.get((c["claim"], c["ours"]))) for c in run.get("claims") or [] if c.get("estimate") is not None]
    mine = [(c, b) for c, b in mine if b is not None]
    if not mine:
        return []
    evaluations = [(r.get("suite") or {}).get("evaluation") for r in (run, baseline)]
    if evaluations[0] != evaluations[1]:
        return ["claims: not compared with the baseline's, whose evaluation differs (other seeds, sizes or attack "
                "batch: other images)"]
    rows, inside, predicted = [], 0, 0
    for c, b in mine:
        lo, hi = b.get("prediction_interval") or [None, None]
        if lo is not None:
            predicted += 1
            inside += lo <= c["estimate"] <= hi
        if (lo is not None and not lo <= c["estimate"] <= hi) or c["verdict"] != b["verdict"]:
            rows.append([c["claim"], c["ours"], f"{b['estimate']:.3f}",
                         f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "n/a (one training)", f"{c['estimate']:.3f}",
                         b["verdict"], c["verdict"]])
    lines = [f"claims: {inside} of {predicted} inside the baseline's 95% prediction interval for a rerun"
             + f"; {sum(c['verdict'] == b['verdict'] for c, b in mine)} of {len(mine)} verdicts the same"]
    if rows:
        lines.append(tabulate(rows, headers=["claim", "measured in", "baseline", "95% PI (rerun)", "run",
                                             "baseline verdict", "run verdict"], tablefmt="github",
                              disable_numparse=True))
    return lines


def _load(path: Path) -> tuple[dict, Path | None]:
    """A baseline: a results JSON file, or a run folder holding results.json (and perhaps examples.csv).
    Returns the results and the folder to look for examples.csv in (None for a bare JSON file)."""
    if path.is_dir():
        return load_results(path), path
    if not path.is_file():
        raise UserError(f"baseline not found: {path}")
    return read_results(path, "not a results JSON"), (path.parent if path.name == "results.json" else None)
