"""Sections: where each model comes from, where each fine-tune's images come from, what the run does otherwise
than the authors' code, and which attacks drew randomness no image owns."""
from __future__ import annotations

import pandas as pd
from tabulate import tabulate

from benchmark.report import Report, section


@section("models", order=10)
def models(report: Report) -> list[str]:
    return model_sources(report.results)


@section("provenance", order=70)
def provenance(report: Report) -> list[str]:
    return (finetune_images(report.results, report.frame) + departures(report.results)
            + batch_dependence(report.results, report.frame))


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
            ran = len(info.get("history") or [])
            epochs = (f"{ran} of up to {source['epochs']} epochs (early stop; the weights of epoch "
                      f"{info.get('best_epoch')})" if info.get("stopped_early") else f"{source['epochs']} epoch(s)")
            text = f"trained here: `{source['arch']}`, {epochs}, seed {source['seed']}"
            if source.get("pretrained"):
                text += (f", starting from `{source['pretrained']['file']}` (sha256 "
                         f"{source['pretrained']['sha256'][:12]}; head replaced)")
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
