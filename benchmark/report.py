"""The markdown report of a run, against the paper's numbers: pandas for the arithmetic, tabulate for the tables,
matplotlib for the figures (written beside it under figures/).

Definitions follow the paper: a table cell is the mean over seeds of the accuracy (%) on `size` test images;
the ratio of a model and attack is the mean over sizes of ADV / ORIG, taken on those seed means.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark import examples as examples_csv
from benchmark import stats
from benchmark.errors import UserError
from benchmark.store import atomic_write


def load_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"no results.json in {run_dir} (run the suite first)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
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


def _reference_cell(reference: dict, model: str, attack: str) -> dict | None:
    tables = reference.get("tables", {})
    ref_model = reference.get("models", {}).get(model, model)
    ref_attack = reference.get("attacks", {}).get(attack)
    if ref_attack is None:
        ref_attack = reference.get("attacks", {}).get(attack.split("@")[0], attack)
    return tables.get(ref_model, {}).get(ref_attack)


def _mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.2f}" if np.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def _fmt(v: float | None, digits: int = 2) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def paper_tables(results: dict, means: pd.DataFrame, intervals: pd.DataFrame | None = None) -> list[str]:
    reference = results.get("reference") or {}
    ref_sizes = reference.get("sizes", [])
    sizes = sorted(means["size"].unique())
    out = []
    for model in dict.fromkeys(means["model"]):
        rows = []
        for attack in dict.fromkeys(means.loc[means["model"] == model, "attack"]):
            sel = means[(means["model"] == model) & (means["attack"] == attack)].set_index("size")
            ref = _reference_cell(reference, model, attack)
            for kind, col, sd in (("ORIG", "orig_acc", "orig_sd"), ("ADV", "adv_acc", "adv_sd")):
                rows.append([attack, kind] + [_mean_sd(sel.at[s, col], sel.at[s, sd]) for s in sizes])
                if intervals is not None:
                    rows.append(["", f"{kind} 95% CI"] + interval_cells(intervals, model, attack, kind, sizes))
                if ref is not None:
                    paper = {s: v for s, v in zip(ref_sizes, ref[kind.lower()])}
                    rows.append(["", f"{kind} paper"] + [_fmt(paper.get(s)) for s in sizes])
                    rows.append(["", f"{kind} Δ"] + [
                        f"{sel.at[s, col] - paper[s]:+.2f}" if s in paper else "" for s in sizes])
        seeds = int(means.loc[means["model"] == model, "seeds"].max())
        source = f"; paper rows from {reference['source']}" if reference.get("source") else ""
        spread = " ± sample sd (n - 1 in the denominator)" if seeds > 1 else ""
        ci = "; 95% CI: " + ("Wilson" if seeds == 1 else "bootstrap over images") if intervals is not None else ""
        out.append(f"### {model}\n\nAccuracy (%) on original (ORIG) and adversarial (ADV) images, mean{spread} over "
                   f"{seeds} seed(s){ci}{source}.\n")
        out.append(tabulate(rows, headers=["attack", ""] + [f"{s} images" for s in sizes], tablefmt="github",
                            disable_numparse=True))
        out.append("")
    return out


def ratio_table(results: dict, means: pd.DataFrame, reps: dict | None = None) -> list[str]:
    reference = results.get("reference") or {}
    rows = []
    for _, r in paper_ratio(means).iterrows():
        ref = _reference_cell(reference, r["model"], r["attack"])
        stated = (reference.get("ratios", {}).get(reference.get("models", {}).get(r["model"], r["model"]), {})
                  .get((reference.get("attacks", {}).get(r["attack"]) or r["attack"])))
        from_tables = None
        if ref is not None:
            from_tables = float(np.mean([a / o for a, o in zip(ref["adv"], ref["orig"])]))
        rows.append([r["model"], r["attack"], _fmt(r["ratio"], 3), _fmt(stated, 2), _fmt(from_tables, 3),
                     f"{r['ratio'] - from_tables:+.3f}" if from_tables is not None else ""])
        if reps is not None:
            rows[-1].insert(3, _interval(*stats.summary(reps[(r["model"], r["attack"])].ratio)[1:], 3))
    ci = ["95% CI"] if reps is not None else []
    headers = ["model", "attack", "ADV/ORIG measured"] + ci + ["paper (stated)", "paper (from its tables)", "Δ"]
    if not reference.get("tables"):  # nothing to compare with: no empty paper columns
        width = len(headers) - 3
        headers, rows = headers[:width], [row[:width] for row in rows]
    return ["The paper's ratio: the mean over the evaluation sizes of ADV / ORIG, each the mean over seeds.\n",
            tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)]


def agreement_table(means: pd.DataFrame) -> list[str]:
    size = means["size"].max()
    sel = means[means["size"] == size]
    rows = [[r["model"], r["attack"], _fmt(r["orig_acc"]), _fmt(r["adv_acc"]), _fmt(100 * r["success_rate"]),
             str(int(r["n_dist"])), _fmt(r["l0"], 1), _fmt(r["l2"], 3), _fmt(r["linf"], 4)]
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
                rows.append([model, family, eps, _fmt(orig), _fmt(clamp), _fmt(full), _fmt(100 * share, 1)])
    if not rows:
        return []
    return ["## The clamp alone (paper-code)\n",
            "The authors' code clamps the *normalized* tensor to [0,1], which moves every pixel into [0.5,1] "
            f"whatever eps is. At eps = 0 only the clamp acts. {size} images per seed.\n",
            tabulate(rows, headers=["model", "attack", "eps (normalized)", "ORIG %", "ADV % (clamp only)",
                                    "ADV % (eps + clamp)", "drop explained by clamp %"], tablefmt="github",
                     disable_numparse=True), ""]


def finetune_images(results: dict, frame: pd.DataFrame) -> list[str]:
    """Where each fine-tune's images came from, whether the base model trained on them, and (test split) how
    many of them each evaluation subset contains."""
    tuned = {name: info for name, info in results.get("models", {}).items() if info.get("kind") == "finetune"}
    if not tuned:
        return []
    lines = ["## Fine-tune images\n"]
    for name, info in tuned.items():
        adv = info.get("adversarial_set", {})
        if "sample_seed" not in adv:  # results from before the sample was recorded
            continue
        where = (f"{adv['images']} images of the {adv['split']} split, drawn with sample seed {adv['sample_seed']} "
                 "(independent of the evaluation seeds)")
        if adv["split"] == "train" and adv["seen_by_base"] is None:
            where += "; the base model was loaded, so whether it trained on them is unknown"
        elif adv["split"] == "train":
            held = adv["validation_excluded"]
            where += (f", disjoint from the base model's {held} early-stop validation images" if held else
                      "; the base model had no validation split")
            where += f"; the base model trained on {adv['seen_by_base']} of them"
        lines.append(f"- {name}: {where}; perturbed by `{adv['attack']}`.")
    on_test = [name for name, info in tuned.items() if info.get("adversarial_set", {}).get("split") == "test"]
    overlap = frame[frame["model"].isin(on_test)]
    if overlap.empty:
        return lines + [""]
    table = overlap.pivot_table(index=["model", "seed"], columns="size", values="finetune_overlap",
                                aggfunc="first").reset_index()
    lines += ["", "Fine-tune images among the evaluated images (test-split fine-tunes: the authors drew both from "
              "the test split), per seed and size:\n",
              tabulate(table.values.tolist(), headers=["model", "seed"] + [f"{s} images" for s in table.columns[2:]],
                       tablefmt="github", disable_numparse=True)]
    return lines + [""]


def model_sources(results: dict) -> list[str]:
    """Where each model comes from: a training recipe, a fine-tune, a checkpoint (with its sha256), a module."""
    from benchmark.sources import describe

    lines = []
    for name, info in results.get("models", {}).items():
        source = info.get("source")
        if source is None:  # results from before sources were recorded
            continue
        if source["kind"] == "trained":
            text = f"trained here: `{source['arch']}`, {source['epochs']} epoch(s), seed {source['seed']}"
        elif source["kind"] == "fine-tune":
            text = f"fine-tuned from {source['from']} on {source['images']} images perturbed by `{source['attack']}`"
        else:
            text = describe(source)
        lines.append(f"- {name}: {text}")
    return ["## Models\n"] + lines + [""] if lines else []


def departures(results: dict) -> list[str]:
    """What the run does differently from the protocol its profile names, where the suite cannot say it."""
    if results.get("profile") != "paper-code":
        return []
    return ["## Departures from the authors' code\n",
            "- Evaluation images: every seed attacks a seeded random subset of the test split (prefixes of one "
            "permutation per seed); the authors' JSMA test script takes the first N test images in file order "
            "(`shuffle=False`), the same for every run.",
            "- Their per-image loops (batch 1) are batched here; every random draw of these attacks is tied to an "
            "image (adapters.rng), so on one device batching changes no number.", ""]


def batch_dependence(results: dict, frame: pd.DataFrame) -> list[str]:
    """Attacks (in evaluations, or in the adversarial set a fine-tune learned from) that drew randomness no image
    owns: their numbers can change with the attack batch size, and the cache does not key them by it."""
    flagged = list(dict.fromkeys(frame.loc[~frame["batch_invariant"], "attack"])) if "batch_invariant" in frame \
        else []
    flagged += [f"{info['adversarial_set']['attack']} (adversarial set of {name})"
                for name, info in results.get("models", {}).items()
                if info.get("adversarial_set", {}).get("batch_invariant") is False]
    if not flagged:
        return []
    return [f"**Batch-dependent attacks:** {', '.join(f'`{a}`' for a in flagged)} drew randomness not tied to "
            "one image (adapters.rng), so their numbers can change with the attack batch size.", ""]


def comparison(results: dict, means: pd.DataFrame, other: dict) -> list[str]:
    """This run against another (e.g. paper-code against paper), cell by cell where model and attack names
    match; a cell only one run has is listed with blanks for the other."""
    keys = ["model", "attack"]

    def summary(m: pd.DataFrame) -> pd.DataFrame:
        largest = m[m["size"] == m["size"].max()].set_index(keys)[["orig_acc", "adv_acc"]]
        return paper_ratio(m).set_index(keys).join(largest)

    mine, theirs = summary(means), summary(seed_means(cells(other)))
    merged = mine.add_suffix("_this").join(theirs.add_suffix("_other"), how="outer")
    order = list(dict.fromkeys(list(mine.index) + list(theirs.index)))
    rows = []
    for model, attack in order:
        r = merged.loc[(model, attack)]
        delta = r["ratio_this"] - r["ratio_other"]
        rows.append([model, attack, _fmt(r["orig_acc_this"]), _fmt(r["adv_acc_this"]), _fmt(r["ratio_this"], 3),
                     _fmt(r["orig_acc_other"]), _fmt(r["adv_acc_other"]), _fmt(r["ratio_other"], 3),
                     "" if np.isnan(delta) else f"{delta:+.3f}"])
    this, that = results.get("suite_name"), other.get("suite_name")
    return [f"## Against {that} ({other.get('profile')})\n",
            f"Cells matched by model and attack name. ORIG/ADV: accuracy (%) at the largest size, mean over seeds; "
            f"ratio: mean over sizes of ADV/ORIG (the paper's definition); Δ = {this} - {that}.\n",
            tabulate(rows, headers=["model", "attack", f"ORIG % {this}", f"ADV % {this}", f"ratio {this}",
                                    f"ORIG % {that}", f"ADV % {that}", f"ratio {that}", "Δ ratio"],
                     tablefmt="github", disable_numparse=True), ""]


def _interval(lo: float, hi: float, digits: int = 1) -> str:
    return "" if np.isnan(lo) or np.isnan(hi) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def interval_cells(intervals: pd.DataFrame, model: str, attack: str, kind: str, sizes) -> list[str]:
    """The '[lo, hi]' strings of one table row (%)."""
    sel = intervals[(intervals["model"] == model) & (intervals["attack"] == attack)
                    & (intervals["kind"] == kind)].set_index("size")
    return [_interval(sel.at[s, "lo"], sel.at[s, "hi"]) if s in sel.index else "" for s in sizes]


def _verdict_rows(results: dict, reps: dict, examples: pd.DataFrame | None) -> pd.DataFrame:
    table = stats.claims_frame(results, reps, examples)
    digits = table["unit"].map({"ratio": 3, "points": 1})
    table["measured"] = [f"{v:.{d}f} {_interval(lo, hi, d)}" + (" paired" if paired and diff else "")
                         if not np.isnan(v) else ""
                         for v, lo, hi, d, paired, diff in zip(table["value"], table["lo"], table["hi"], digits,
                                                                table["paired"], table["difference"])]
    table["paper value"] = [f"{v:.{d}f} ({src})" for v, d, src in zip(table["paper"], digits, table["source"])]
    return table


def verdicts(results: dict, reps: dict, against: dict | None = None, examples: pd.DataFrame | None = None,
             against_examples: pd.DataFrame | None = None) -> list[str]:
    """Each claim of the paper: its value, ours with a 95% interval, a verdict on the value (stats.verdict) and,
    for a difference between two models, one on its direction; with `against`, the other run's beside it,
    claims matched by text and the cell that measures them."""
    if not (results.get("reference") or {}).get("tables"):
        return []
    mine = _verdict_rows(results, reps, examples)
    columns = ["claim", "ours", "measured", "direction", "verdict"]
    headers = ["claim", "paper value", "measured in", "ours [95% CI]", "direction", "value"]
    rows = mine[["claim", "paper value", "ours", "measured", "direction", "verdict"]]
    if against is not None and (against.get("reference") or {}).get("tables"):
        theirs = _verdict_rows(against, stats.replicates_of(against), against_examples)[columns]
        # claims (in the paper's names) match across runs; cells by name where both measure them
        order = list(dict.fromkeys(list(mine["claim"]) + list(theirs["claim"])))
        rows = rows.merge(theirs, on=["claim", "ours"], how="outer", suffixes=("", "_other"))
        rows = rows.sort_values("claim", key=lambda c: c.map(order.index), kind="stable")
        this, that = results.get("suite_name"), against.get("suite_name")
        headers = ["claim", "paper value", "measured in", f"{this} [95% CI]", f"direction {this}",
                   f"value {this}", f"{that} [95% CI]", f"direction {that}", f"value {that}"]
        rows = rows.assign(**{"paper value": rows["paper value"].fillna(
            rows["claim"].map(dict(zip(mine["claim"], mine["paper value"]))))}).fillna("")
    threshold = ", ".join(f"{unit} {width:g}" for unit, width in stats.TOO_WIDE.items())
    return ["## Verdicts against the paper\n",
            f"Value: reproduced when the paper's value lies inside our 95% interval and the interval is no wider "
            f"than {threshold} (its unit); inconclusive: inside, but wider; contradicted: outside, and in which "
            f"direction. Direction (differences between two models only): reproduced when our interval lies on "
            f"the paper's side of zero, contradicted on the other side, not significant when it spans zero; so a "
            f"sign reproduced with a size that is not reads 'reproduced' beside 'contradicted'. Ratios are the "
            f"paper's (mean over sizes of ADV/ORIG on seed means); intervals are percentile bootstraps over "
            f"images ({stats.REPLICATES} replicates, numpy seed {stats.BOOTSTRAP_SEED}); a difference marked "
            f"'paired' resamples the same images for both models (examples.csv), otherwise the two models' "
            f"intervals are drawn independently. Stated ratios are rounded to 2 decimals in the paper.\n",
            tabulate(rows.values.tolist(), headers=headers, tablefmt="github", disable_numparse=True), ""]


def per_example_sections(results: dict, examples: pd.DataFrame | None) -> list[str]:
    """Worst case over the attacks and paired tests against parents: both need examples.csv."""
    if examples is None:
        return ["## Worst case over attacks; paired tests\n",
                "Need per-image results (examples.csv beside results.json, written by every run since it "
                "was introduced); this run has none.", ""]
    return worst_case_section(results, examples) + paired_section(results, examples)


def worst_case_section(results: dict, examples: pd.DataFrame) -> list[str]:
    attacks = list(dict.fromkeys(examples["attack"]))
    table = stats.worst_case(examples, attacks)
    rows = []
    for model, group in table.groupby("model", sort=False):
        g = group.set_index("column")
        rows.append([model] + [f"{g.at[c, 'acc']:.2f} {_interval(g.at[c, 'lo'], g.at[c, 'hi'])}"
                               if c in g.index else "" for c in attacks + ["all attacks"]])
    size = int(examples["position"].max()) + 1
    return ["## Worst case over attacks\n",
            f"Accuracy (%) on {size} images per seed, mean over {examples['seed'].nunique()} seed(s), with 95% "
            "intervals: under each attack, and under all of them at once (an image counts only if classified "
            "correctly originally and after every attack: AutoAttack's and RobustBench's convention). The same "
            "images per seed for every attack.\n",
            tabulate(rows, headers=["model"] + attacks + ["all attacks"], tablefmt="github",
                     disable_numparse=True), ""]


def paired_section(results: dict, examples: pd.DataFrame) -> list[str]:
    table = stats.paired_against_parents(examples, dict(stats.iter_parents(results)))
    if table.empty:
        return []
    rows = [[r["model"], r["parent"], r["attack"], r["n"], f"{r['acc_a']:.2f}", f"{r['acc_b']:.2f}",
             f"{r['diff']:+.2f} {_interval(r['lo'], r['hi'], 2)}", r["a_only"], r["b_only"], f"{r['p']:.3g}"]
            for _, r in table.iterrows()]
    return ["## Paired tests: fine-tuned model against its parent\n",
            "On the same images (largest size, each test image once: seeds' subsets overlap), correct under "
            "the attack (clean: on the originals). Δ = model - parent in points with its paired bootstrap 95% "
            "interval; 'model only' / 'parent only': images only that one gets right; p: McNemar's exact test "
            "(two-sided).\n",
            tabulate(rows, headers=["model", "parent", "attack", "images", "model %", "parent %", "Δ [95% CI]",
                                    "model only", "parent only", "p"], tablefmt="github", disable_numparse=True),
            ""]


def environment(results: dict, run_dir: Path) -> list[str]:
    data = results.get("data", {})
    v = results.get("versions", {})
    lines = [f"- data: {data.get('description')} (`{data.get('checksum')}`)",
             f"- device: {results.get('device')}",
             "- versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)),
             f"- git commit: `{results.get('git_commit')}`",
             f"- suite: `{results.get('suite_name')}` (profile {results.get('profile')}, hash "
             f"`{results.get('suite_hash')}`)"]
    run_file = Path(run_dir) / "run.json"
    if run_file.is_file():
        timings = json.loads(run_file.read_text()).get("timings_s", {})
        lines.append("- wall time per stage (s, this run; cached stages count ~0): " +
                     ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    models = results.get("models", {})
    lines.append("- models (clean accuracy on the whole test split): " +
                 ", ".join(f"{name} {100 * info['test_acc']:.2f}%" + _made_elsewhere(info, results)
                           for name, info in models.items()))
    return lines


def _made_elsewhere(info: dict, results: dict) -> str:
    """Artefact keys carry the device kind, so a model is never reused across kinds; a different card or CPU of
    the same kind can still have made it (a copied artefacts folder), and then the report says so."""
    made_on = info.get("made_on")
    return f" (made on {made_on})" if made_on and made_on != results.get("device") else ""


def figures(results: dict, frame: pd.DataFrame, means: pd.DataFrame, run_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # A name in a script the font lacks is drawn as boxes; matplotlib's warning per glyph would flood stderr.
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)

    fig_dir = Path(run_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    classes = results.get("classes") or [str(i) for i in range(10)]
    size = frame["size"].max()
    links = ["## Confusion matrices\n", f"Summed over seeds, {size} images per seed; rows true class, columns "
             "predicted.\n"]
    for (model, attack), group in frame[frame["size"] == size].groupby(["model", "attack"], sort=False):
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
        name = f"confusion-{_slug(model)}-{_slug(attack)}.png"
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
            name = f"curve-{_slug(family)}.png"
            fig.savefig(fig_dir / name, dpi=110)
            plt.close(fig)
            links.append(f"![{family}](figures/{name})")
    return links


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def render(results: dict, run_dir: Path, *, against: dict | None = None, against_examples: pd.DataFrame | None = None,
           with_figures: bool = True) -> str:
    frame = cells(results)
    means = seed_means(frame)
    data = results.get("data", {})
    parts = [f"# {results.get('suite_name')}: adversarial fine-tuning transfer report", "",
             f"Data: **{data.get('description')}**. Profile: **{results.get('profile')}**.", ""]
    with_paper = bool((results.get("reference") or {}).get("tables"))
    parts += model_sources(results) + ["## Tables as in the paper" if with_paper else "## Accuracy", ""]
    reps = stats.replicates_of(results)
    examples = examples_csv.load(run_dir)
    parts += paper_tables(results, means, stats.accuracy_intervals(reps))
    parts += ["## ADV/ORIG ratio (mean over sizes)", ""] + ratio_table(results, means, reps) + [""]
    parts += verdicts(results, reps, against, examples, against_examples)
    parts += ["## Attacks side by side (cross-toolkit agreement)", ""] + agreement_table(means) + [""]
    parts += clamp_ablation(results, frame, means)
    parts += finetune_images(results, frame) + departures(results) + batch_dependence(results, frame)
    parts += per_example_sections(results, examples)
    if against is not None:
        parts += comparison(results, means, against)
    if with_figures:
        parts += figures(results, frame, means, run_dir) + [""]
    parts += ["## Environment", ""] + environment(results, run_dir) + [""]
    return "\n".join(parts)


def write(run_dir: Path, *, against: Path | None = None) -> str:
    results = load_results(run_dir)
    other = load_results(against) if against is not None else None
    text = render(results, Path(run_dir), against=other,
                  against_examples=examples_csv.load(against) if against is not None else None)
    path = Path(run_dir) / "report.md"
    atomic_write(path, text.encode())
    return text
