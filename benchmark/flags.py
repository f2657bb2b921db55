"""Is the robustness real? The flags a run's checks raise (benchmark.checks), per model, with the numbers behind
each and a one-line remedy, as AutoAttack's flags_doc.md gives them.

    flags(results, examples)    # DataFrame: model, check, measured, flag (True/False; None: not run), remedy

Comparisons between attacks are paired, on the same images (the largest size; a test image that two seeds
both drew counts once; tested on those the model classifies correctly) and significant at McNemar's exact
p < ALPHA; the probes' flags need no test.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.stats import distinct_images, mcnemar_p, per_image

ALPHA = 0.05
ONE_STEP_SHARE = 0.5  # one-step success below this share of the multi-step one's: the robustness is not real
SPREAD = 1e-4  # largest logit difference between repeated forward passes, relative to the largest logit

CHECKS = {  # name: (what it asks, remedy)
    "gradients": ("input gradients zero or NaN/inf",
                  "gradient attacks stop silently on these images: look for non-differentiable steps (quantization, "
                  "argmax, clipping) and, for saturated outputs, use a margin loss (CW, DLR) or BPDA"),
    "randomness": ("repeated forward passes disagree",
                   "the model is randomized: evaluate with EOT (torchattacks.EOTPGD) and fixed randomness, or make "
                   "eval mode deterministic"),
    "softmax": ("outputs are probabilities (rows >= 0, sum 1)",
                "cross-entropy on probabilities has vanishing gradients: make the model return logits"),
    "multistep": ("one-step attack far weaker than PGD of the same eps",
                  "the one-step robustness does not survive a stronger attack of the same budget (gradient masking, "
                  "catastrophic overfitting): report PGD or AutoAttack, train with PGD or FGSM with random start"),
    "black_box": ("Square (no gradients) beats the white-box attacks",
                  "the white-box attacks miss what a gradient-free one finds (masked or uninformative gradients): "
                  "report the black-box accuracy, attack with BPDA/EOT or AutoAttack"),
    "from_parent": ("images crafted on the parent beat the model's own gradients",
                    "the model's gradients are masked: report the transfer accuracy and use stronger attacks (a "
                    "fine-tune has seen its parent's images: quiet here is weak evidence)"),
    "eps_sweep": ("accuracy rises with eps along a sweep",
                  "a larger budget cannot help the model: check the eps space and clipping, use a multi-step attack"),
}
ASK = {"multistep": "multistep = { steps = 10 }", "black_box": "black_box = { n_queries = 1000 }",
       "from_parent": "from_parent = true"}


def flags(results: dict, examples: pd.DataFrame | None) -> pd.DataFrame:
    checks = results.get("checks") or {}
    derived = checks.get("compared") or {}  # attack -> the check it serves
    cells = pd.DataFrame(results["cells"])
    models = list(dict.fromkeys(cells["model"]))
    rows = []
    for model in models:
        rows += _probe_rows(model, (checks.get("probes") or {}).get(model),
                            "this run predates the checks" if "checks" not in results else "checks.probe_images = 0")
        table = None if examples is None else _images(examples, model)
        for check in ("multistep", "black_box", "from_parent"):
            pairs = [(name, spec["checks"]) for name, spec in derived.items() if spec["check"] == check]
            if not pairs:
                rows.append(_row(model, check, f"not asked (add `{ASK[check]}` to [checks])", None))
                continue
            if table is None:
                rows.append(_row(model, check, "needs examples.csv", None))
                continue
            for name, of in pairs:
                if name in table and of in table:
                    rows.append(_compare(model, check, table, name, of, derived))
        rows += _sweep_rows(model, cells, table)
    return pd.DataFrame(rows, columns=["model", "check", "measured", "flag", "remedy"])


def _row(model: str, check: str, measured: str, flag: bool | None) -> dict:
    return {"model": model, "check": check, "measured": measured, "flag": flag, "remedy": CHECKS[check][1]}


def _probe_rows(model: str, probe: dict | None, why_not: str) -> list[dict]:
    if not probe:
        return [_row(model, c, f"not run ({why_not})", None) for c in ("gradients", "randomness", "softmax")]
    n = probe["n"]
    zero, nonfinite = int(np.sum(probe["grad_zero"])), int(np.sum(probe["grad_nonfinite"]))
    spread, changed = float(np.max(probe["logit_spread"])), int(np.sum(probe["pred_changes"]))
    ones = int(np.sum(probe["sums_to_one"]))
    return [_row(model, "gradients", f"{zero} of {n} images zero, {nonfinite} NaN/inf", zero + nonfinite > 0),
            _row(model, "randomness", f"largest logit difference {spread:.2g} (relative), predicted class changed on "
                                      f"{changed} of {n}", spread > SPREAD or changed > 0),
            _row(model, "softmax", f"{ones} of {n} output rows non-negative and summing to 1", ones == n)]


def _images(examples: pd.DataFrame, model: str) -> pd.DataFrame | None:
    sel = examples[examples["model"] == model]
    if sel.empty:
        return None
    return distinct_images(per_image(sel, model, int(sel["position"].max()) + 1))


def _compare(model: str, check: str, table: pd.DataFrame, name: str, of: str, derived: dict) -> dict:
    orig = table["correct_orig"].to_numpy(bool)
    mine = table[name].to_numpy(bool)
    if check == "black_box":  # against the strongest white-box attack of that eps: correct under all of them
        white_names = [of] + [n for n, s in derived.items() if s["check"] == "multistep" and s["checks"] == of
                              and n in table]
        white = np.logical_and.reduce([table[n].to_numpy(bool) for n in white_names])
        white_label = " and ".join(white_names)
    else:
        white, white_label = table[of].to_numpy(bool), of
    # Tested on the originally correct images: an attack's outcome on an image the model already gets wrong says
    # nothing of its strength (one that hands such images back unchanged would otherwise look weaker or stronger).
    n, kept = len(orig), int(orig.sum())
    if not kept:
        return _row(model, check, f"not run (none of the {n} images classified correctly)", None)
    p = mcnemar_p(white[orig], mine[orig])
    acc_white, acc_mine = 100 * white.mean(), 100 * mine.mean()
    left_white, left_mine = white[orig].mean(), mine[orig].mean()  # shares left correct
    if check == "multistep":  # the one-step attack's success far below the multi-step one's
        s_one, s_multi = 1 - left_white, 1 - left_mine
        flag = bool(p < ALPHA and s_one < ONE_STEP_SHARE * s_multi)
        measured = (f"{of} {acc_white:.1f}% vs {name} {acc_mine:.1f}% accuracy on {n} images (success on the "
                    f"{kept} originally correct {100 * s_one:.0f}% vs {100 * s_multi:.0f}%), McNemar p = {p:.2g}")
    else:
        flag = bool(p < ALPHA and left_mine < left_white)
        measured = (f"{name} {acc_mine:.1f}% vs {white_label} {acc_white:.1f}% accuracy on {n} images (left correct "
                    f"of the {kept} originally correct {100 * left_mine:.0f}% vs {100 * left_white:.0f}%), McNemar p = {p:.2g}")
    return _row(model, check, measured, flag)


def _sweep_rows(model: str, cells: pd.DataFrame, table: pd.DataFrame | None) -> list[dict]:
    if "sweep" not in cells:
        return []
    swept = cells[(cells["model"] == model) & cells["sweep"].notna()]
    swept = swept[swept["sweep"].map(lambda s: str(s[0]).startswith("eps")).astype(bool)]
    rows = []
    for family, group in swept.groupby("attack_family", sort=False):
        points = (group.assign(value=group["sweep"].map(lambda s: s[1]))
                  .drop_duplicates("attack").sort_values("value")[["attack", "value"]].to_numpy().tolist())
        if len(points) < 2:
            continue
        if table is None or any(a not in table for a, _ in points):
            rows.append(_row(model, "eps_sweep", f"{family}: needs examples.csv", None))
            continue
        accs = [100 * table[a].to_numpy(bool).mean() for a, _ in points]
        rises = [(v0, v1, mcnemar_p(table[a0].to_numpy(bool), table[a1].to_numpy(bool)))
                 for (a0, v0), (a1, v1), acc0, acc1 in zip(points, points[1:], accs, accs[1:]) if acc1 > acc0]
        significant = [r for r in rises if r[2] < ALPHA]
        curve = ", ".join(f"{v:g}: {acc:.1f}%" for (_, v), acc in zip(points, accs))
        note = "; rises " + ", ".join(f"{v0:g} -> {v1:g} (p = {p:.2g})" for v0, v1, p in rises) if rises else ""
        rows.append(_row(model, "eps_sweep", f"{family} on {len(table)} images, eps {curve}{note}",
                         bool(significant)))
    return rows
