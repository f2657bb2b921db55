"""Where does a single-training run sit among the repeats of the same suite? For each claim of the paper: the
single run's value and image-only interval, the repeated run's estimate and 95% interval, a 95% prediction
interval for ONE new training (one base, one fine-tune: what a single run is) and the range over the repeated
run's trainings, whether the single value lies inside them, and both verdicts.

The prediction interval for one training: estimate +- t(b - 1) * sd * sqrt(1 + 1/k), sd the spread of the k
trained models' values (each a single run's value on the same images: base and fine-tune variance and the image
noise that differs between models), b the number of base trainings (the independent units: conservative for
nested fine-tunes). Not the results' own prediction interval, which is for the mean of a whole repeated run.
Where the single run trained with the recipe's seed on the same machine and code, it is the repeated run's
repeat 0 and lies in the range by construction: say so beside the table.

    .venv/bin/python benchmarks/single_run_in_repeats.py SINGLE_RUN_DIR REPEATED_RUN_DIR

Claims are matched by their text (the paper's names) and the recipe that measures them ("base / fgsm").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from scipy.stats import t as t_dist  # noqa: E402
from tabulate import tabulate  # noqa: E402

from benchmark import claims, stats  # noqa: E402
from benchmark import examples as examples_csv  # noqa: E402
from benchmark.report import load_results  # noqa: E402


def table(single_dir: Path, repeated_dir: Path) -> list[list[str]]:
    single, repeated = load_results(single_dir), load_results(repeated_dir)
    mine = claims.claims_frame(single, stats.replicates_of(single), examples_csv.load(single_dir))
    theirs = claims.claims_frame(repeated, stats.replicates_of(repeated), examples_csv.load(repeated_dir))
    theirs = theirs.set_index(["claim", "ours"])
    rows = []
    for _, c in mine.iterrows():
        key = (c["claim"], c["ours"])
        if c["estimate"] is None or c["estimate"] != c["estimate"] or key not in theirs.index:  # not measured
            continue
        r = theirs.loc[key]
        d = 3 if c["unit"] == "ratio" else 1
        value = c["estimate"]
        values = np.array([v for v in r["per_repeat"] if v is not None and np.isfinite(v)], dtype=float)
        bases = int(str(r["trainings"]).split()[0]) if str(r["trainings"])[:1].isdigit() else 1
        if len(values) > 1 and bases > 1:
            half = float(t_dist.ppf(0.975, bases - 1) * values.std(ddof=1) * np.sqrt(1 + 1 / len(values)))
            lo, hi = r["estimate"] - half, r["estimate"] + half
        else:
            lo = hi = None
        low, high = r["range"]

        def within(a, b) -> str:
            return "" if a is None else ("yes" if a <= value <= b else "no")
        rows.append([c["claim"], c["ours"], f"{c['paper']:.{d}f}", f"{value:.{d}f} [{c['lo']:.{d}f}, {c['hi']:.{d}f}]",
                     c["verdict"], f"{r['estimate']:.{d}f} [{r['lo']:.{d}f}, {r['hi']:.{d}f}]",
                     "" if lo is None else f"[{lo:.{d}f}, {hi:.{d}f}]", within(lo, hi),
                     "" if low is None else f"{low:.{d}f}..{high:.{d}f}", within(low, high), r["trainings"],
                     r["verdict"]])
    return rows


HEADERS = ["claim", "measured in", "paper", "single run [95% CI, images]", "single verdict",
           "repeated [95% CI]", "95% PI (one training)", "single inside PI", "repeats' range", "single inside range",
           "trainings", "repeated verdict"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("single", type=Path)
    parser.add_argument("repeated", type=Path)
    args = parser.parse_args()
    print(tabulate(table(args.single, args.repeated), headers=HEADERS, tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
