"""Training variance: a quantity measured on every repeat of a recipe (benchmark.repeats), and how sure its mean is
when both the trainings and the test images are samples.

The model (Bouthillier et al., "Accounting for Variance in Machine Learning Benchmarks", MLSys 2021): the value
of one trained model on one draw of test images is

    v = mu + base training + fine-tuning (within its base) + images shared by every model + images x model,

the trainings nested (each fine-tune repeat within one base repeat), the images crossed with them (every repeat is
attacked on the same images). A suite's estimate is the mean over its repeats (over base repeats of the means of
their fine-tunes). Its uncertainty has two parts that are estimated apart:

- training: the spread of the top replicated level's means (the base repeats; the fine-tunes where there is one
  base), s^2 / n with n - 1 degrees of freedom. Those means are independent, and each carries everything below it
  (fine-tuning, and the image noise that differs between models), so this is unbiased whatever the split below.
  Floor: a few means can agree by chance far more closely than the spread within them allows (3 base means
  within 0.01 of their mean while their 5 fine-tunes each spread by an SD of 0.12): with no base variance at all, each
  mean still varies by the within spread / sqrt(fine-tunes), so the between-unit mean square of a nested ANOVA
  can never be expected below the within one. Where the F test of the two says the means agree too closely
  (lower tail, p < FLOOR_P), the training part uses the within mean square instead, keeping n - 1 degrees of
  freedom (the within spread says nothing about base variance). A pre-test, not a hard floor: means that
  agree closely but not implausibly so (p >= FLOOR_P) keep their own spread, which is unbiased. By simulation (benchmarks/variance_coverage.py, 2000 suites of 3 x 5 per setting) the
  floor applies to 0.3-5.6% of suites; there it covers the truth 97-100% of the time where the unfloored interval
  covers 44-95%, and over all suites it moves coverage from 95.4-97.4% to 95.6-97.9%.
- images: the part of image sampling that every repeat shares (an easy draw of images is easy for all), which no
  spread between repeats can show. From the image bootstrap (benchmark.stats.resample) with the same resampled
  images for every repeat: the covariance of two repeats' replicates. Without per-image outcomes aligned across
  repeats (no examples.csv) the whole image variance of one repeat stands in for it (an upper bound).

The 95% interval is mean +- sqrt(t(n-1)^2 * SE_training^2 + z^2 * SE_images^2): each part at its own
quantile (the image part rests on thousands of images), added in quadrature. A percentile bootstrap over 3
base repeats would cover the truth far less often than 95% (its 3 values have too few distinct resamples and a
variance biased by 2/3): tests/test_variance.py measures both by simulation. With one training of the recipe the
interval is the image bootstrap's percentile interval, as before repeats, and says so.

The prediction interval is for the estimate of one new independent run of the same suite (the same repeats, the
same evaluation seeds and so the same images): mean +- t(n - 1) * sqrt(2) * SE_training. The shared image part is
the same in both runs and cancels. A rerun on another machine with the same seeds trains differently where its
rounding differs; where its trainings are correlated with ours (same seeds, same machine), it is conservative.

Variance components (method of moments on the repeats, as in a nested ANOVA): base training, fine-tuning (within
a base), image sampling of one model's value; each as the standard deviation it adds to one single-training run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as scipy_stats

from benchmark.stats import LEVEL, percentile

LEVELS = ("base training", "fine-tuning")  # the repeat levels, by depth (deeper levels count as fine-tuning)
FLOOR_P = 0.05  # the F test's lower tail below which the top level's means agree too closely (module docstring)


@dataclass
class Repeated:
    """A quantity over a recipe's repeats (module docstring). Values in the quantity's own unit."""
    value: float
    lo: float
    hi: float
    pred_lo: float = float("nan")  # prediction interval for a rerun of the suite (same repeats, same images)
    pred_hi: float = float("nan")
    sd_between: float = float("nan")  # sample SD of the repeats' values
    values: list[float] = field(default_factory=list)  # per repeat, in instance order
    components: dict[str, float] = field(default_factory=dict)  # level -> SD it adds to one run's value
    counts: list[int] = field(default_factory=list)  # repeats per level: [3, 5] is 3 bases x 5 fine-tunes each
    replicated: str = ""  # the top replicated level ("" : one training run)
    df: float = float("nan")  # of the interval's t quantile
    floor_p: float | None = None  # the F test's p where the training part was floored (module docstring), else None

    @property
    def trainings(self) -> int:
        return len(self.values)

    @property
    def includes_training(self) -> bool:
        return bool(self.replicated)

    def describe(self) -> str:
        """'3 base trainings x 5 fine-tunes', or 'one training run'."""
        if not self.includes_training:
            return "one training run"
        parts = [f"{n} {name}{'s' if n != 1 else ''}" for n, name in zip(self.counts, ("base training",
                                                                                        "fine-tune"))]
        return " x ".join(parts) + ("" if self.counts[0] > 1 else " (base training variance not included)")


def hierarchical_mean(values: np.ndarray, paths: list[tuple[int, ...]], depth: int = 0) -> np.ndarray:
    """Mean over the top level's units of the means below them (last axis: the instances, in `paths` order)."""
    if len(paths) == 1 or depth >= len(paths[0]) - 1:
        return values.mean(axis=-1)
    units = _units(paths, depth)
    return np.stack([hierarchical_mean(values[..., idx], [paths[i] for i in idx], depth + 1)
                     for idx in units.values()], axis=-1).mean(axis=-1)


def _units(paths: list[tuple[int, ...]], depth: int) -> dict[tuple[int, ...], list[int]]:
    out: dict[tuple[int, ...], list[int]] = {}
    for i, path in enumerate(paths):
        out.setdefault(path[:depth + 1], []).append(i)
    return out


def level_counts(paths: list[tuple[int, ...]]) -> list[int]:
    """Repeats per level of a balanced design: [3, 5] for 3 base repeats with 5 fine-tunes each."""
    sizes = [len(_units(paths, d)) for d in range(len(paths[0]))]
    return [sizes[0]] + [b // a for a, b in zip(sizes, sizes[1:])]


def replicated_level(paths: list[tuple[int, ...]]) -> int | None:
    """The first depth at which the instances branch into several units (None: a single instance)."""
    if len(paths) < 2:
        return None
    for depth in range(len(paths[0])):
        if len(_units(paths, depth)) > 1:
            return depth
    return None


def across_repeats(paths: list[tuple[int, ...]], replicates: np.ndarray, *, aligned: bool,
                   level: float = LEVEL) -> Repeated:
    """The mean over repeats and its uncertainty (module docstring).

    paths: each instance's repeat path (benchmark.repeats), all of one length. replicates: (1 + B, instances),
    row 0 each instance's observed value, then B image-bootstrap replicates of it. aligned: the replicates of
    all instances resampled the same images (so their covariance is the shared image variance)."""
    replicates = np.asarray(replicates, dtype=float)
    observed = replicates[0]
    value = float(hierarchical_mean(observed, paths))
    depth = replicated_level(paths)
    counts = level_counts(paths)
    if not np.all(np.isfinite(observed)):  # a repeat whose value is undefined (e.g. a ratio with no clean image)
        nan = float("nan")
        return Repeated(nan, nan, nan, values=[float(v) for v in observed], counts=counts)
    if depth is None:
        lo, hi = percentile(hierarchical_mean(replicates, paths)[:, None])
        return Repeated(value, float(lo[0]), float(hi[0]), values=[float(v) for v in observed], counts=counts)
    means, unit_var, floor_p = training_spread(observed, paths)
    n = len(means)
    se2_train = unit_var / n
    with np.errstate(invalid="ignore"):
        per_instance = np.nanvar(replicates[1:], axis=0, ddof=1)  # image variance of each repeat's value
        shared = _shared_image_variance(replicates[1:], per_instance) if aligned else float(np.mean(per_instance))
    t_train = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1))
    half = float(np.sqrt(t_train ** 2 * se2_train + scipy_stats.norm.ppf(0.5 + level / 2) ** 2 * shared))
    pred = t_train * np.sqrt(2 * se2_train)
    df = float(n - 1)
    return Repeated(value, value - half, value + half, value - pred, value + pred,
                    float(np.std(observed, ddof=1)), [float(v) for v in observed],
                    components(observed, paths, float(np.mean(per_instance)), shared if aligned else None),
                    counts, LEVELS[min(depth, 1)], float(df), floor_p)


def training_spread(values: np.ndarray, paths: list[tuple[int, ...]]) -> tuple[np.ndarray, float, float | None]:
    """The top replicated level's means, the variance of one of them (floored where they agree too closely for
    the spread within them: module docstring) and the F test's p where the floor applied, else None."""
    depth = replicated_level(paths)
    units = _units(paths, depth)
    means = np.array([hierarchical_mean(values[idx], [paths[i] for i in idx], depth + 1) for idx in units.values()])
    between = float(np.var(means, ddof=1))
    if depth + 1 >= len(paths[0]):  # no level below the replicated one
        return means, between, None
    children = [np.array([hierarchical_mean(values[idx][sub], [paths[idx[i]] for i in sub], depth + 2)
                          for sub in _units([paths[i] for i in idx], depth + 1).values()]) for idx in units.values()]
    per_unit = len(children[0])
    if per_unit < 2 or any(len(c) != per_unit for c in children):  # one child each, or unbalanced: no F test
        return means, between, None
    within = float(np.mean([np.var(c, ddof=1) for c in children]))  # mean square within, per child
    if not within > 0:
        return means, between, None
    p = float(scipy_stats.f.cdf(per_unit * between / within, len(means) - 1, len(means) * (per_unit - 1)))
    return (means, within / per_unit, p) if p < FLOOR_P else (means, between, None)


def independent_units(paths: list[tuple[int, ...]]) -> int:
    """How many independent trainings an interval over these repeats rests on: the units of the first level
    that branches (1: a single instance, no training variance in the interval)."""
    depth = replicated_level(paths)
    return 1 if depth is None else len(_units(paths, depth))


def few_trainings_note(units: int, level: float = LEVEL) -> str:
    """A clause for intervals resting on 2 independent trainings: Student's t with 1 degree of freedom is 12.7
    at 95%, so such an interval is wide by design and may reach past the quantity's range; '' otherwise."""
    if units != 2:
        return ""
    t1, t2 = (float(scipy_stats.t.ppf(0.5 + level / 2, df)) for df in (1, 2))
    return (f"on 2 independent trainings the interval's t has 1 degree of freedom (it multiplies the training part "
            f"of the standard error by {t1:.1f}; by {t2:.1f} with 3 trainings): wide by design, it can reach past "
            "the quantity's range (0-100% for an accuracy); more repeats narrow it")


def _shared_image_variance(replicates: np.ndarray, per_instance: np.ndarray) -> float:
    """The image variance every repeat shares: the mean covariance between two repeats' aligned replicates,
    from Var(mean of N) = shared + (mean variance - shared) / N; at least 0, at most one repeat's."""
    n = replicates.shape[1]
    complete = replicates[np.isfinite(replicates).all(axis=1)]  # a replicate undefined for one repeat (a ratio
    of_mean = float(np.var(complete.mean(axis=1), ddof=1))        # with no clean image left) is left out
    shared = (n * of_mean - float(np.mean(per_instance))) / (n - 1)
    return float(min(max(shared, 0.0), np.mean(per_instance)))


def components(observed: np.ndarray, paths: list[tuple[int, ...]], image_var: float,
               shared: float | None) -> dict[str, float]:
    """SD that base training, fine-tuning and image sampling each add to one single-training run's value
    (method of moments on a balanced nested design; an estimate below zero is 0). The spread within a level
    carries the image noise that differs between models; where it is known (`shared` given) it is taken out."""
    own_images = max(image_var - shared, 0.0) if shared is not None else 0.0
    out = {"images": float(np.sqrt(max(image_var, 0.0)))}
    if len(paths[0]) == 1 or len({p[0] for p in paths}) == len(paths):  # one level of repeats
        name = LEVELS[0] if len(paths[0]) == 1 else LEVELS[1]
        spread = float(np.var(observed, ddof=1))
        if len({p[0] for p in paths}) == len(paths) and len(paths[0]) > 1:
            name = "base training + fine-tuning"  # one fine-tune per base: the two cannot be told apart
        out[name] = float(np.sqrt(max(spread - own_images, 0.0)))
        return out
    roots = _units(paths, 0)
    per_root = [observed[idx] for idx in roots.values()]
    within = float(np.mean([np.var(v, ddof=1) for v in per_root if len(v) > 1])) if any(
        len(v) > 1 for v in per_root) else float("nan")
    fine = float(np.mean([len(v) for v in per_root]))
    if len(per_root) > 1:
        between = float(np.var([v.mean() for v in per_root], ddof=1))
        out[LEVELS[0]] = float(np.sqrt(max(between - within / fine, 0.0)))
    out[LEVELS[1]] = float(np.sqrt(max(within - own_images, 0.0)))
    return out
