"""Intervals and paired tests: how sure a run's numbers are.

- One subset (one seed): the Wilson 95% interval of an accuracy (statsmodels).
- Means over seeds, and the paper's ratio (mean over sizes of ADV / ORIG, taken on seed means): a percentile
  bootstrap over images. Images are resampled with replacement within each seed and within each size band
  (the positions between two consecutive sizes), so every replicate keeps the sizes as nested prefixes of one
  draw per seed, as the evaluation does. Seeds are not resampled as a second level: the models are trained once
  and a seed only picks the images (and the attack's randomness per image), so the spread between seeds is
  image sampling that the image-level resampling already carries; resampling 3 seeds on top would count it
  twice. Each model's cells draw from its own generator, seeded from BOOTSTRAP_SEED and the model's name, so a
  cell's interval does not depend on which other cells a run holds.
- Paired comparisons on the same images: McNemar's exact test on per-image correctness (statsmodels), the
  difference in accuracy and its paired bootstrap interval (scipy). Seeds' subsets overlap, so each test image
  counts once (its first seed's outcome).
Verdicts against the paper, built on these, are benchmark.claims.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from benchmark import repeats
from benchmark.errors import UserError

LEVEL = 0.95
REPLICATES = 2000
BOOTSTRAP_SEED = 0
# An interval wider than this cannot separate the paper's value from one that would change its conclusion
# (e.g. a ratio of 0.51 from 0.61, a clean accuracy cost of 10 points from none).
TOO_WIDE = {"ratio": 0.10, "points": 10.0}


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of the proportion k / n (fractions, not %)."""
    lo, hi = proportion_confint(k, n, alpha=1 - level, method="wilson")
    return float(lo), float(hi)


def generator(*names: str) -> np.random.Generator:
    """The bootstrap's generator for one named quantity: BOOTSTRAP_SEED and a stable hash of the names."""
    return np.random.default_rng([BOOTSTRAP_SEED] + [zlib.crc32(name.encode()) for name in names])


def resample(correct: np.ndarray, sizes: Sequence[int], rng: np.random.Generator,
             replicates: int = REPLICATES) -> np.ndarray:
    """Accuracies of the observed data and of bootstrap replicates.

    correct: bool, shape (seeds, positions, columns), positions >= max(sizes); a column is one per-image
    outcome (e.g. correct on the original, correct on the adversarial image). Returns float, shape
    (1 + replicates, columns, seeds, len(sizes)): index 0 the observed accuracies, then the replicates, each
    resampling images with replacement within each seed and size band (module docstring).
    """
    sizes = sorted(sizes)
    seeds, _, columns = correct.shape
    counts = np.zeros((1 + replicates, columns, seeds, len(sizes)))
    for s in range(seeds):
        start, total = 0, np.zeros((1 + replicates, columns))
        for z, stop in enumerate(sizes):
            band = correct[s, start:stop].astype(np.int64)
            width = stop - start
            picks = rng.integers(0, width, size=(replicates, width))
            # How often each image is picked per replicate, times the band: band[picks].sum(1) without the
            # (replicates, width, columns) array, the same integers.
            times = np.bincount((picks + width * np.arange(replicates)[:, None]).ravel(),
                                minlength=replicates * width).reshape(replicates, width)
            total = total + np.concatenate([band.sum(0)[None], times @ band])
            counts[:, :, s, z] = total
            start = stop
    return counts / np.asarray(sizes, dtype=float)


def percentile(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval over replicates (axis 0, index 0 being the observed value, left out)."""
    tail = 100 * (1 - level) / 2
    with np.errstate(invalid="ignore"):
        return np.nanpercentile(values[1:], tail, axis=0), np.nanpercentile(values[1:], 100 - tail, axis=0)


# --- per-cell outcomes ----------------------------------------------------------------------------------------

@dataclass
class CellOutcomes:
    """Per-image (correct on original, correct on adversarial) of one (model, attack), in canonical order:
    within each size band the images sorted by outcome, which is all a within-band resampling sees, so the same
    counts give the same replicates whether they come from results.json or examples.csv."""
    seeds: list[int]
    sizes: list[int]
    correct: np.ndarray  # bool (seeds, max(sizes), 2): [..., 0] original, [..., 1] adversarial


def _canonical(bands: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([band[np.lexsort((band[:, 1], band[:, 0]))] for band in bands])


def outcomes_from_cells(cells: pd.DataFrame) -> dict[tuple[str, str], CellOutcomes]:
    """Rebuild each cell's per-image outcomes from results.json: at every size the counts of images correct on
    the original (orig_acc), on the adversarial (adv_acc) and on both (originally correct minus the attack's
    successes), differenced between consecutive sizes."""
    out = {}
    for (model, attack), group in cells.groupby(["model", "attack"], sort=False):
        sizes = sorted(group["size"].unique())
        seeds = sorted(group["seed"].unique())
        per_seed = []
        for seed in seeds:
            g = group[group["seed"] == seed].set_index("size")
            bands, previous = [], np.zeros(4, dtype=int)
            for size in sizes:
                orig = round(g.at[size, "orig_acc"] * size)
                adv = round(g.at[size, "adv_acc"] * size)
                success = g.at[size, "success_rate"]
                both = round(orig * (1 - success)) if orig else 0
                joint = np.array([size - orig - adv + both, adv - both, orig - both, both])  # 00, 01, 10, 11
                band = joint - previous
                if (band < 0).any():
                    raise UserError(f"results: {model} / {attack} / seed {seed}: the sizes' counts are not those "
                                    "of nested prefixes")
                bands.append(np.repeat(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=bool), band, axis=0))
                previous = joint
            per_seed.append(_canonical(bands))
        out[(model, attack)] = CellOutcomes([int(s) for s in seeds], [int(s) for s in sizes], np.stack(per_seed))
    return out


def outcomes_from_examples(examples: pd.DataFrame, sizes: Sequence[int]) -> dict[tuple[str, str], CellOutcomes]:
    """The same from examples.csv (exact per image, then put in canonical order)."""
    sizes = sorted(sizes)
    out = {}
    for (model, attack), group in examples.groupby(["model", "attack"], sort=False):
        seeds = sorted(group["seed"].unique())
        per_seed = []
        for seed in seeds:
            g = group[group["seed"] == seed].sort_values("position")
            both = g[["correct_orig", "correct_adv"]].to_numpy(dtype=bool)[:max(sizes)]
            per_seed.append(_canonical(np.split(both, sizes[:-1])))
        out[(model, attack)] = CellOutcomes([int(s) for s in seeds], list(sizes), np.stack(per_seed))
    return out


@dataclass
class CellReplicates:
    """Observed value (index 0) and bootstrap replicates of one cell's summaries; accuracies in %."""
    outcomes: CellOutcomes
    orig: np.ndarray   # (1 + R, sizes): seed-mean accuracy on the originals
    adv: np.ndarray    # (1 + R, sizes): seed-mean accuracy on the adversarials

    @property
    def ratio(self) -> np.ndarray:
        """The paper's ratio: mean over sizes of ADV / ORIG (seed means)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.mean(self.adv / self.orig, axis=1)

    @property
    def orig_over_sizes(self) -> np.ndarray:
        return self.orig.mean(axis=1)


def cell_replicates(outcomes: dict[tuple[str, str], CellOutcomes], replicates: int = REPLICATES,
                    salt: str = "") -> dict[tuple[str, str], CellReplicates]:
    """`salt` draws independently of an unsalted call (check: a run against its baseline)."""
    out = {}
    for (model, attack), cell in outcomes.items():
        # One generator per model: the originals (the same images under every attack, and in canonical order
        # the same column) get the same interval in every attack's row; two models draw independently.
        names = (model, salt) if salt else (model,)
        acc = 100 * resample(cell.correct, cell.sizes, generator(*names), replicates).mean(axis=2)
        out[(model, attack)] = CellReplicates(cell, acc[:, 0], acc[:, 1])
    return out


def accuracy_intervals(reps: dict[tuple[str, str], CellReplicates]) -> pd.DataFrame:
    """95% interval (in %) of every table cell: Wilson where a cell is one seed's subset, else the bootstrap of
    the seed mean. Columns: model, attack, size, kind (ORIG/ADV), lo, hi."""
    rows = []
    for key, rep in reps.items():
        cell, lo, hi = rep.outcomes, {}, {}
        lo["ORIG"], hi["ORIG"] = percentile(reps[key].orig)
        lo["ADV"], hi["ADV"] = percentile(reps[key].adv)
        for z, size in enumerate(cell.sizes):
            for c, kind in enumerate(("ORIG", "ADV")):
                # Wilson for one seed; for several, the bootstrap widened to at least the Wilson interval of the
                # pooled images (a percentile bootstrap collapses to a point at 0% or 100%).
                pooled = wilson(int(cell.correct[:, :size, c].sum()), size * len(cell.seeds))
                l, h = 100 * pooled[0], 100 * pooled[1]
                if len(cell.seeds) > 1:
                    l, h = min(l, lo[kind][z]), max(h, hi[kind][z])
                rows.append({"model": key[0], "attack": key[1], "size": size, "kind": kind, "lo": l, "hi": h})
    return pd.DataFrame(rows)


def summary(values: np.ndarray) -> tuple[float, float, float]:
    """(observed, lo, hi) of one replicated quantity."""
    lo, hi = percentile(values)
    return float(values[0]), float(lo), float(hi)


# --- worst case and paired tests (need examples.csv) ------------------------------------------------------------

def per_image(examples: pd.DataFrame, model: str, size: int) -> pd.DataFrame:
    """One row per (seed, position < size) of `model`: index, correct_orig, and correct_adv per attack as
    columns named by the attack."""
    sel = examples[(examples["model"] == model) & (examples["position"] < size)]
    adv = sel.pivot_table(index=["seed", "position"], columns="attack", values="correct_adv", aggfunc="first",
                          sort=False)
    first = sel.drop_duplicates(["seed", "position"]).set_index(["seed", "position"])
    return first[["index", "correct_orig"]].join(adv.astype(bool)).sort_index()


def worst_case(examples: pd.DataFrame, attacks: Sequence[str]) -> pd.DataFrame:
    """Per model, at the largest size: accuracy (%) under each attack and under all of them at once (an image
    counts only if classified correctly originally and after every attack), each with its 95% interval.
    Columns: model, column (attack name or "all attacks"), acc, lo, hi, n."""
    size = int(examples["position"].max()) + 1
    rows = []
    for model in dict.fromkeys(examples["model"]):
        table = per_image(examples, model, size)
        present = [a for a in attacks if a in table.columns]
        table["all attacks"] = table["correct_orig"] & table[present].all(axis=1)
        columns = present + ["all attacks"]
        seeds = sorted(table.index.get_level_values("seed").unique())
        correct = np.stack([table.loc[s, columns].to_numpy(dtype=bool) for s in seeds])
        acc = 100 * resample(correct, [size], generator(model, "worst case")).mean(axis=2)[:, :, 0]
        lo, hi = percentile(acc)
        for c, column in enumerate(columns):
            if len(seeds) == 1:
                l, h = (100 * v for v in wilson(int(correct[0, :, c].sum()), size))
            else:
                l, h = lo[c], hi[c]
            rows.append({"model": model, "column": column, "acc": acc[0, c], "lo": l, "hi": h,
                         "n": size * len(seeds)})
    return pd.DataFrame(rows)


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """McNemar's exact p-value for per-image correctness a and b (bool, same images)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    return float(mcnemar(table, exact=True).pvalue)


def paired(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> dict:
    """Paired comparison of per-image correctness a and b (bool, same images): accuracies (%), difference
    a - b (points) with its 95% paired bootstrap interval, discordant counts and McNemar's exact p-value."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = mcnemar_p(a, b)
    diff = 100 * (a.mean() - b.mean())
    if a_only + b_only == 0:  # no discordant image: every resample has the same difference
        lo = hi = diff
    else:
        res = scipy_stats.bootstrap((a.astype(float), b.astype(float)),
                                    lambda x, y, axis: x.mean(axis) - y.mean(axis), paired=True,
                                    vectorized=True, n_resamples=REPLICATES, method="percentile",
                                    confidence_level=LEVEL, rng=rng)
        lo, hi = 100 * res.confidence_interval.low, 100 * res.confidence_interval.high
    return {"n": len(a), "acc_a": 100 * a.mean(), "acc_b": 100 * b.mean(), "diff": diff, "lo": float(lo),
            "hi": float(hi), "a_only": a_only, "b_only": b_only, "p": p}


def distinct_images(table: pd.DataFrame) -> pd.DataFrame:
    """Each test image once: its first seed's row (seeds' subsets of the test split overlap)."""
    return table.reset_index().sort_values(["seed", "position"]).drop_duplicates("index")


def joint_outcomes(cells: Sequence[tuple[pd.DataFrame, str, str]], seeds: Sequence[int],
                   size: int) -> np.ndarray | None:
    """Image by image, for several (examples, model, attack): bool (seeds, positions < size, 2 * len(cells)), each
    cell's correct_orig then correct_adv; None where they were not evaluated on the same images. Resampled with one
    generator (`resample`), the columns stay paired: a difference between two cells keeps its pairing."""
    per_seed = []
    for seed in seeds:
        columns, indices = [], []
        for table, model, attack in cells:
            sel = table[(table["model"] == model) & (table["attack"] == attack) & (table["seed"] == seed)
                        & (table["position"] < size)].sort_values("position")
            if len(sel) != size:
                return None
            indices.append(sel["index"].to_numpy())
            columns += [sel["correct_orig"].to_numpy(dtype=bool), sel["correct_adv"].to_numpy(dtype=bool)]
        if any(not np.array_equal(indices[0], other) for other in indices[1:]):
            return None
        per_seed.append(np.stack(columns, axis=1))
    return np.stack(per_seed)


def paired_accuracies(joint: np.ndarray, sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Seed-mean accuracies (%) of joint outcomes, observed (index 0) and resampled: (1 + R, columns, sizes)."""
    return 100 * resample(joint, sizes, rng).mean(axis=2)


def sign_flip_ratio_test(joint: np.ndarray, sizes: Sequence[int], rng: np.random.Generator,
                         replicates: int = REPLICATES) -> tuple[float, float]:
    """Paired randomization test of ratio(first cell) - ratio(second cell) on joint outcomes (seeds, positions,
    4): under no difference the two cells' outcomes of an image are exchangeable, so each image's pair is swapped
    with probability 1/2. Returns the observed difference and the two-sided p-value (the share of swaps at least
    as far from zero, the observed one counted). Like McNemar's test for an accuracy, it needs discordant images
    in one direction to be many, not merely present: k images all one way give p = 2 * 0.5**k at best."""
    sizes = sorted(sizes)
    ends = np.asarray(sizes) - 1

    def ratio_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (..., seeds, positions, 2) each
        acc = [np.cumsum(x, axis=-2)[..., ends, :] / np.asarray(sizes)[:, None] for x in (a, b)]
        # seed means per size, then the mean over sizes of ADV / ORIG: the paper's ratio
        ratio = [(m[..., 1].mean(axis=-2) / m[..., 0].mean(axis=-2)).mean(axis=-1) for m in acc]
        return ratio[0] - ratio[1]

    a, b = joint[..., :2].astype(np.int32), joint[..., 2:].astype(np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = float(ratio_difference(a, b))
        swap = rng.random((replicates, *joint.shape[:2], 1)) < 0.5
        null = ratio_difference(np.where(swap, b, a), np.where(swap, a, b))
    p = (1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (1 + replicates)
    return observed, float(min(1.0, p))


def ratio_of(acc: np.ndarray, cell: int) -> np.ndarray:
    """The paper's ratio (mean over sizes of ADV / ORIG) of column pair `cell` of paired_accuracies' output."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (acc[:, 2 * cell + 1] / acc[:, 2 * cell]).mean(axis=1)


def paired_against_parents(examples: pd.DataFrame, parents: dict[str, str]) -> pd.DataFrame:
    """Every model with a parent in the run against that parent, under every attack and on the originals
    ("clean"), at the largest size on the same images. Columns: model, parent, attack, then paired()'s keys
    with a = the model, b = the parent."""
    size = int(examples["position"].max()) + 1
    present = set(examples["model"])
    rows = []
    for model, parent in parents.items():
        if model not in present or parent not in present:
            continue
        mine, theirs = per_image(examples, model, size), per_image(examples, parent, size)
        joined = distinct_images(mine.merge(theirs, left_index=True, right_index=True, suffixes=("", "@parent")))
        if (joined["index"] != joined["index@parent"]).any():
            raise ValueError(f"{model} and {parent} were evaluated on different images")
        attacks = [c for c in mine.columns if c not in ("index", "correct_orig") and f"{c}@parent" in joined]
        for attack in ["clean"] + attacks:
            column = "correct_orig" if attack == "clean" else attack
            rows.append({"model": model, "parent": parent, "attack": attack,
                         **paired(joined[column].to_numpy(), joined[f"{column}@parent"].to_numpy(),
                                  generator(model, parent, attack))})
    return pd.DataFrame(rows)


def replicates_of(results: dict) -> dict[tuple[str, str], CellReplicates]:
    """Every cell's replicates, rebuilt from results.json (outcomes_from_examples gives the same outcomes, so
    a run's intervals do not depend on whether its examples.csv is at hand)."""
    return cell_replicates(outcomes_from_cells(pd.DataFrame(results["cells"])))


def iter_parents(results: dict) -> Iterable[tuple[str, str]]:
    """(model, its parent) for every fine-tuned model of a run, repeat by repeat (benchmark.repeats)."""
    for model, info in repeats.of_results(results).items():
        if info["parent"]:
            yield model, info["parent"]
