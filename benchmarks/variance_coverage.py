"""How often do the intervals of benchmark.variance cover the truth, and how good is the gate over repeats? By
simulation (the process of tests/test_variance.py: 3 base trainings x 5 fine-tunes, nested, crossed with one shared
draw of 300 test images; accuracy by a probit with known components), beside the alternatives:

- ours: mean over repeats +- t(n - 1) x training SE, with the shared image part in quadrature, the training SE
  floored at the within spread where the base means agree too closely (benchmark.variance, FLOOR_P);
- unfloored: the same without that floor; both also over the suites where the floor applied alone;
- image only: the percentile bootstrap over images with the models held fixed (one training run's interval);
- hierarchical bootstrap: resample base repeats, fine-tunes within them, images (percentile);
- prediction: our prediction interval against a rerun of the suite on the same images;
- the gate (benchmark.check over repeats): false alarms on reruns and power against a 2-point drop.

    .venv/bin/python benchmarks/variance_coverage.py --sims 2000 --gate-sims 500
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmark import check, variance  # noqa: E402
from benchmark.stats import percentile  # noqa: E402
import test_variance as process  # noqa: E402


def coverage(sims: int, sd_base: float, sd_fine: float, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    truth = process.norm.cdf(process.MU / np.sqrt(1 + sd_base ** 2 + sd_fine ** 2 + process.SD_IMAGE ** 2))
    hits = {"ours": 0, "unfloored": 0, "floored": 0, "ours where floored": 0, "unfloored where floored": 0,
            "image only": 0, "hierarchical bootstrap": 0, "prediction": 0}
    floor_p = variance.FLOOR_P
    for _ in range(sims):
        paths, reps, difficulty = process.suite(rng, sd_base=sd_base, sd_fine=sd_fine)
        est = variance.across_repeats(paths, reps, aligned=True)
        variance.FLOOR_P = 0.0
        unfloored = variance.across_repeats(paths, reps, aligned=True)
        variance.FLOOR_P = floor_p
        ours, plain = est.lo <= truth <= est.hi, unfloored.lo <= truth <= unfloored.hi
        hits["ours"] += ours
        hits["unfloored"] += plain
        if est.floor_p is not None:
            hits["floored"] += 1
            hits["ours where floored"] += ours
            hits["unfloored where floored"] += plain
        lo, hi = percentile(variance.hierarchical_mean(reps, paths)[:, None])
        hits["image only"] += lo[0] <= truth <= hi[0]
        grid = reps[1:].reshape(len(reps) - 1, process.BASES, process.FINE_TUNES)
        roots = rng.integers(0, process.BASES, (len(grid), process.BASES))
        fines = rng.integers(0, process.FINE_TUNES, (len(grid), process.BASES, process.FINE_TUNES))
        boot = grid[np.arange(len(grid))[:, None, None], roots[:, :, None], fines].mean(axis=(1, 2))
        lo, hi = np.percentile(boot, [2.5, 97.5])
        hits["hierarchical bootstrap"] += lo <= truth <= hi
        rerun_paths, rerun, _ = process.suite(rng, difficulty, sd_base=sd_base, sd_fine=sd_fine)
        hits["prediction"] += est.pred_lo <= variance.hierarchical_mean(rerun[0], rerun_paths) <= est.pred_hi
    floored = max(hits["floored"], 1)
    return {k: v / (floored if k.endswith("where floored") else sims) for k, v in hits.items()}


def gate(sims: int, sd: float, drop: float, alpha: float, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)

    def trainings(shift: float) -> np.ndarray:
        base = np.repeat(rng.normal(0, sd, process.BASES), process.FINE_TUNES)
        return 0.40 + shift + base + rng.normal(0, sd, process.BASES * process.FINE_TUNES)

    alarms = caught = 0
    for _ in range(sims):
        baseline = process._results(trainings(0.0), "b")
        alarms += check.compare(process._results(trainings(0.0), "r"), baseline, alpha=alpha)["regression"].any()
        dropped = check.compare(process._results(trainings(-drop), "d"), baseline, alpha=alpha)
        caught += dropped.loc[dropped["metric"] == "adv_acc", "regression"].item()
    return alarms / sims, caught / sims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000, help="simulated suites per coverage setting")
    parser.add_argument("--gate-sims", type=int, default=500, help="simulated reruns per gate setting (each runs "
                                                                    "benchmark.check twice: slower)")
    args = parser.parse_args()
    print(f"Coverage of the truth by 95% intervals, {args.sims} simulated suites of 3 base trainings x 5 fine-tunes "
          "x 300 shared images (prediction: of a rerun's estimate)\n")
    print("| SD base, fine-tune (probit) | ours | unfloored | image only | hierarchical bootstrap | prediction | "
          "floor applied | ours there | unfloored there |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sd_base, sd_fine in ((0.15, 0.15), (0.3, 0.05), (0.0, 0.0), (0.0, 0.4), (0.4, 0.4)):
        c = coverage(args.sims, sd_base, sd_fine)
        print(f"| {sd_base}, {sd_fine} | {c['ours']:.3f} | {c['unfloored']:.3f} | {c['image only']:.3f} | "
              f"{c['hierarchical bootstrap']:.3f} | {c['prediction']:.3f} | {c['floored']:.3f} | "
              f"{c['ours where floored']:.3f} | {c['unfloored where floored']:.3f} |")
    print(f"\nThe gate over repeats (check, models trained again), {args.gate_sims} simulated reruns each: 3 x 5 trainings "
          "per side, adversarial accuracy SD per level as given\n")
    print("| SD per level (points) | alpha | false alarms | 2-point drop caught |\n|---|---|---|---|")
    for sd in (0.2, 0.4, 0.6):
        for alpha in (0.01, 0.05):
            fa, power = gate(args.gate_sims, sd / 100, 0.02, alpha)
            print(f"| {sd} | {alpha} | {fa:.3f} | {power:.3f} |")


if __name__ == "__main__":
    main()
