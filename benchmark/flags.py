"""Is the robustness real? The flags a run's checks raise (benchmark.checks), per model, with the numbers behind
each and a one-line remedy, as AutoAttack's flags_doc.md gives them.

    flags(results, examples)    # DataFrame: model, check, measured, flag (True/False; None: not run), remedy

Comparisons between attacks are paired, on the same images (the largest size; a test image that two seeds
both drew counts once; tested on those the model classifies correctly) and significant at McNemar's exact
p < ALPHA. An eps sweep is tested as a whole (sweep_rises: every smaller eps against every larger one, on the same
images, the family-wise error held at ALPHA by Holm's method). A minimal-eps search (benchmark.minimal) counts the
images whose success is not monotone along its grid (nonmonotone), flagged when their share is significantly above
REVERSAL_SHARE. The probes' flags need no test.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binom, binomtest

from benchmark.stats import distinct_images, mcnemar_p, per_image

ALPHA = 0.05
ONE_STEP_SHARE = 0.5  # one-step success below this share of the multi-step one's: the robustness is not real
SPREAD = 1e-4  # largest logit difference between repeated forward passes, relative to the largest logit
# Of the images a minimal-eps search fools, the share whose success may come and go along its grid before the
# "eps_monotone" check flags. FGSM's one step is a linearisation that overshoots at a large eps, so a model that
# masks nothing still classifies a few images right again at a larger eps. Measured (FGSM over a grid of 8, the
# share of the images it fools that are not monotone; a small CNN, CIFAR-10's JPEG copy): trained on 20,000 random
# training images (56.6% clean), on 1,000 random test images: 0% at max 8/255, 0.05 and 0.1, 0.2-0.4% at max
# 0.2-0.5; a degenerate one trained on the first 20,000 (four classes), on 1,000 test images of one class: 1.1% at
# 0.1, 4.3% at 0.2, 5.9% at 0.3. PGD-10 and the synthetic-data CNN: 0%. So not "any" (FGSM alone would raise it),
# but a share well above the largest ordinary one, and significantly so (one-sided exact binomial test at ALPHA:
# a few images of a small evaluation do not raise it by chance).
REVERSAL_SHARE = 0.10

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
    "transfer": ("images crafted on another model beat the model's own white-box attack",
                 "the model's gradients are masked or uninformative: its white-box robustness is not real; report "
                 "the transfer accuracy and attack with BPDA/EOT or AutoAttack"),
    "eps_sweep": ("accuracy rises with eps along a sweep",
                  "a larger budget cannot help the model: check the eps space and clipping, use a multi-step attack"),
    "eps_monotone": ("a minimal-eps search's success not monotone in eps for many images",
                     "success that comes and goes as eps grows is what gradient masking and randomised defences "
                     "produce (the minimal eps reported is the smallest seen to succeed): attack with PGD with "
                     "restarts or AutoAttack, EOT for randomness, and a finer minimal_eps.grid"),
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
        rows += _transfer_rows(model, results, cells, table)
        rows += _sweep_rows(model, cells, table)
        rows += _monotone_rows(model, examples)
    return pd.DataFrame(rows, columns=["model", "check", "measured", "flag", "remedy"])


def _transfer_rows(model: str, results: dict, cells: pd.DataFrame, table: pd.DataFrame | None) -> list[dict]:
    """Each transfer attack of the suite (`source = ...`, not a check's) on `model` against the white-box attack
    of the same entry on it: images crafted elsewhere that fool the model where its own gradients do not are a
    masking signal (Athalye et al. 2018), as the from_parent check's but from any source."""
    if "source" not in cells or table is None:
        return []
    entries = {name: {k: v for k, v in entry.items() if k != "source"}
               for name, entry in (results.get("suite") or {}).get("attacks", {}).items() if isinstance(entry, dict)}
    mine = cells[(cells["model"] == model) & cells["source"].notna() & (cells["source"] != model)]
    if "check" in mine:
        mine = mine[mine["check"].isna()]
    white = cells[(cells["model"] == model) & cells["source"].isna()]
    if "check" in white:
        white = white[white["check"].isna()]
    def concrete(family: str, sweep) -> str | None:  # the entry at its sweep point, as one comparable string
        entry = entries.get(family)
        if entry is None:
            return None
        if isinstance(sweep, (list, tuple)) and len(sweep) == 2:
            entry = {**entry, sweep[0]: sweep[1]}
        return repr(sorted((k, float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                           for k, v in entry.items()))

    whites = {concrete(f, s): a for a, f, s in zip(white["attack"], white["attack_family"], white["sweep"])}
    rows = []
    for attack in dict.fromkeys(mine["attack"]):
        row = mine[mine["attack"] == attack].iloc[0]
        same = whites.get(concrete(row["attack_family"], row["sweep"]))
        if same is not None and attack in table and same in table:
            rows.append(_compare(model, "transfer", table, attack, same, {}))
    return rows


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


def sweep_rises(correct: np.ndarray) -> pd.DataFrame:
    """Every pair of points i < j of an eps sweep, from `correct` (bool, points x images: the same images at each
    point, eps ascending): the images wrong at i and right at j (`up`) and the reverse (`down`), the rise in
    accuracy (points), the one-sided McNemar exact p of a rise (P(Binomial(up + down, 1/2) >= up)) and that p
    adjusted by Holm's method over all the pairs (`p_holm`).

    Why every pair: accuracy must not rise from any smaller eps to any larger one, and a rise spread over several
    steps (many small ones, or one across a point that dips) is significant only between points apart. Why Holm:
    a sweep of m points is m(m-1)/2 tests, and each at ALPHA would flag a flat curve by chance; Holm's step-down
    holds the family-wise error at ALPHA whatever the dependence between the pairs (they share images) and rejects
    at least what Bonferroni does. One-sided: a fall is what a sweep should show; only a rise is the anomaly.
    Measured (benchmarks/sweep_power.py, alpha 0.05): flagged on 1.8-3.4% of flat curves (4 or 8 eps, 200 or 1,000
    images; the neighbour-only rule it replaced 4.7-13.7%) and on none of the falling ones; a rise of 4 points on
    1,000 images caught 99-100% of the time in one step, 90% spread over every step (the neighbour rule 36-54%).
    The price, Holm's factor: a rise at one neighbour pair must be somewhat larger (a CIFAR-10 CNN's real PGD
    sweep, 4 eps, 1,000 images, a rise planted at the largest eps: +2 points caught 6% of the time, the neighbour
    rule 98%; +3 points both 100%)."""
    c = np.asarray(correct, dtype=bool)
    i, j = np.triu_indices(len(c), k=1)
    up, down = (~c[i] & c[j]).sum(1), (c[i] & ~c[j]).sum(1)
    p = binom.sf(up - 1, up + down, 0.5)  # P(X >= up); 1 where no image moved
    return pd.DataFrame({"i": i, "j": j, "up": up, "down": down, "rise": 100 * (up - down) / max(c.shape[1], 1),
                         "p": p, "p_holm": holm(p)})


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: the k-th smallest of P times P - k + 1, made non-decreasing, at most 1
    (statsmodels' multipletests(method="holm") gives the same, tested, but collects garbage on every call)."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


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
        correct = np.stack([table[a].to_numpy(bool) for a, _ in points])
        values = [v for _, v in points]
        pairs = sweep_rises(correct)

        def rise(r) -> str:
            return (f"{values[int(r.i)]:g} -> {values[int(r.j)]:g} ({r.rise:+.1f} points, {int(r.up)} up / "
                    f"{int(r.down)} down, Holm p = {r.p_holm:.2g})")

        significant = pairs[pairs["p_holm"] < ALPHA].sort_values("p")
        rising = pairs[pairs["up"] > pairs["down"]].sort_values("p")
        if len(significant):
            note = "; rises " + ", ".join(rise(r) for r in significant.head(3).itertuples()) + (
                f" and {len(significant) - 3} more" if len(significant) > 3 else "")
        elif len(rising):
            note = f"; largest rise {rise(next(rising.itertuples()))}: not significant"
        else:
            note = "; no rise"
        curve = ", ".join(f"{v:g}: {100 * acc:.1f}%" for v, acc in zip(values, correct.mean(1)))
        rows.append(_row(model, "eps_sweep", f"{family} on {len(table)} images, eps {curve}; {len(pairs)} pair(s) "
                                             f"of eps tested{note}", bool(len(significant))))
    return rows


def nonmonotone(images: pd.DataFrame) -> tuple[int, int]:
    """(k, n) of a minimal-eps search (columns correct_orig, min_eps, min_eps_reversals; each image once): n the
    images classified correctly that it fools at some eps, k those of them whose success was not monotone along its
    grid (benchmark.minimal). Of the fooled, not of all correct: an image never fooled cannot be non-monotone, and a
    robust model whose few fooled images all come and go would otherwise look clean."""
    fooled = images["correct_orig"].to_numpy(bool) & np.isfinite(images["min_eps"].to_numpy(float))
    reversed_ = images["min_eps_reversals"].fillna(0).to_numpy(float) > 0
    return int((fooled & reversed_).sum()), int(fooled.sum())


def _monotone_rows(model: str, examples: pd.DataFrame | None) -> list[dict]:
    if examples is None or "min_eps" not in examples:
        return []
    sel = examples[(examples["model"] == model) & examples["min_eps"].notna()]
    rows = []
    for attack, group in sel.groupby("attack", sort=False):
        if "min_eps_reversals" not in group or group["min_eps_reversals"].isna().all():
            rows.append(_row(model, "eps_monotone", f"{attack}: not measured (examples.csv has no "
                                                    "min_eps_reversals column)", None))
            continue
        images = distinct_images(group.set_index(["seed", "position"]))
        k, n = nonmonotone(images)
        correct = int(images["correct_orig"].sum())
        if not n:
            rows.append(_row(model, "eps_monotone", f"{attack}: not run (no eps tried fools any of the {correct} "
                                                    "images classified correctly)", None))
            continue
        p = float(binomtest(k, n, REVERSAL_SHARE, alternative="greater").pvalue)
        rows.append(_row(model, "eps_monotone",
                         f"{attack}: success not monotone in eps for {k} of {n} images ({100 * k / n:.1f}% of those "
                         f"it fools; {correct} classified correctly), {100 * REVERSAL_SHARE:.0f}% tolerated: "
                         f"binomial p = {p:.2g}", bool(p < ALPHA)))
    return rows
