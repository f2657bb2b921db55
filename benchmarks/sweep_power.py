"""How often does the eps-sweep check (benchmark.flags, "eps_sweep") flag a curve that does not rise, and how often
one that does? The check tests a sweep as a whole (flags.sweep_rises: every smaller eps against every larger one,
one-sided McNemar exact, Holm over the pairs, alpha flags.ALPHA); beside it, the rule it replaced (each eps against
its neighbour only, two-sided McNemar where accuracy rises, no correction).

Synthetic curves (the default): per-image correctness at m equally spaced eps on n images, each draw independent.

    flat       least favourable curve that does not rise: 40% of the images right at every eps, 40% wrong at
               every eps, 20% right or wrong at each eps by a fair coin (accuracy 50% at every eps in expectation)
    falling    an ordinary curve: each image right where its threshold plus noise exceeds the eps (threshold
               uniform over the sweep, noise normal with half a step's sd: an image may come back, as FGSM's do)
    step +d    flat, then from the middle eps on d% of the images (wrong there) made right: one rise
    gradual +d flat, the same d% made right in m - 1 equal parts, one part more at each eps: many small rises

Real curves (`--run-dir`, a run folder with eps sweeps and examples.csv; the way benchmarks/gate_power.py plants
drops): each (model, sweep) of the run, its images subsampled (half, without replacement) `--sims` times: the
false-alarm rate where the whole curve does not rise; and the same subsamples with d points planted at the largest
eps (images wrong there made right, so that accuracy there exceeds the one below by d points): the power.

    .venv/bin/python benchmarks/sweep_power.py --sims 2000
    .venv/bin/python benchmarks/sweep_power.py --run-dir RUN --sims 500 --rises 2 4 6
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binom

from benchmark import examples as examples_csv
from benchmark.flags import ALPHA, sweep_rises
from benchmark.stats import distinct_images, per_image


def whole_curve(correct: np.ndarray, alpha: float) -> bool:
    """The check as benchmark.flags runs it: a rise from any smaller eps to any larger one, Holm over the pairs."""
    return bool((sweep_rises(correct)["p_holm"] < alpha).any())


def neighbours(correct: np.ndarray, alpha: float) -> bool:
    """The rule it replaced: each eps against the next, a rise flagged at two-sided McNemar exact p < alpha."""
    c = np.asarray(correct, dtype=bool)
    up, down = (~c[:-1] & c[1:]).sum(1), (c[:-1] & ~c[1:]).sum(1)
    p = np.minimum(1.0, 2 * binom.cdf(np.minimum(up, down), up + down, 0.5))
    return bool(((up > down) & (p < alpha)).any())


def flat(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(3, size=n, p=[0.4, 0.4, 0.2])  # right always, wrong always, a coin at each eps
    coin = rng.random((m, n)) < 0.5
    return np.where(kind == 0, True, np.where(kind == 1, False, coin))


def falling(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    eps = (np.arange(m) + 1) / (m + 1)
    threshold = rng.random(n)
    noise = rng.normal(0, 0.5 / (m + 1), (m, n))
    return threshold[None, :] + noise > eps[:, None]


def planted(base: np.ndarray, points: float, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`base` with round(points% of the images) made right from an eps on: all from the middle eps (parts 1), or in
    `parts` equal groups, the k-th from the (k+1)-th eps on (many small rises); drawn among images wrong at every
    eps."""
    m, n = base.shape
    out = base.copy()
    k = round(points / 100 * n)
    start = [m // 2] if parts == 1 else list(range(1, m))
    candidates = np.flatnonzero(~out.any(0))  # wrong at every eps: the rise is exactly theirs
    chosen = rng.choice(candidates, size=min(k, len(candidates)), replace=False)
    for group, first in zip(np.array_split(chosen, len(start)), start):
        out[first:, group] = True
    return out


def synthetic_rows(args, rng: np.random.Generator) -> list[dict]:
    rows = []
    for n in args.images:
        for m in args.points:
            scenarios = [("flat", 0, lambda: flat(n, m, rng)), ("falling", 0, lambda: falling(n, m, rng))]
            for d in args.rises:
                scenarios += [(f"step +{d:g}", d, lambda d=d: planted(flat(n, m, rng), d, 1, rng)),
                              (f"gradual +{d:g}", d, lambda d=d: planted(flat(n, m, rng), d, m - 1, rng))]
            for name, d, draw in scenarios:
                old = new = 0
                for _ in range(args.sims):
                    correct = draw()
                    old += neighbours(correct, args.alpha)
                    new += whole_curve(correct, args.alpha)
                rows.append({"curve": name, "images": n, "eps points": m, "rises": "yes" if d else "no",
                             "neighbours, uncorrected": f"{100 * old / args.sims:.1f}%",
                             "whole curve, Holm": f"{100 * new / args.sims:.1f}%"})
    return rows


def sweeps(run_dir: Path) -> list[tuple[str, str, list[float], np.ndarray]]:
    """(model, family, eps values, correct: points x images, each test image once) of each eps sweep of a run."""
    results = json.loads((run_dir / "results.json").read_text())
    table = examples_csv.load(run_dir)
    cells = pd.DataFrame(results["cells"])
    out = []
    if "sweep" not in cells:
        return out
    swept = cells[cells["sweep"].notna()]
    swept = swept[swept["sweep"].map(lambda s: str(s[0]).startswith("eps")).astype(bool)]
    for (model, family), group in swept.groupby(["model", "attack_family"], sort=False):
        points = (group.assign(value=group["sweep"].map(lambda s: s[1])).drop_duplicates("attack")
                  .sort_values("value")[["attack", "value"]].to_numpy().tolist())
        mine = table[table["model"] == model]
        images = distinct_images(per_image(mine, model, int(mine["position"].max()) + 1))  # as the check reads them
        if len(points) >= 2 and all(a in images for a, _ in points):
            out.append((model, family, [v for _, v in points],
                        np.stack([images[a].to_numpy(bool) for a, _ in points])))
    return out


def real_rows(args, rng: np.random.Generator) -> list[dict]:
    rows = []
    for model, family, values, full in sweeps(args.run_dir):
        m, n = full.shape
        s = n // 2
        accs = ", ".join(f"{v:g}: {100 * a:.1f}%" for v, a in zip(values, full.mean(1)))
        row = {"model": model, "sweep": family, "images": n, "subsample": s, "curve": accs,
               "flagged whole": whole_curve(full, args.alpha)}
        for d in [0] + list(args.rises):
            old = new = 0
            for _ in range(args.sims):
                correct = full[:, rng.choice(n, size=s, replace=False)].copy()
                if d:  # accuracy at the largest eps made d points above the one below it
                    need = int(np.ceil((d / 100 + correct[-2].mean() - correct[-1].mean()) * s))
                    wrong = np.flatnonzero(~correct[-1])
                    correct[-1, rng.choice(wrong, size=min(max(need, 0), len(wrong)), replace=False)] = True
                old += neighbours(correct, args.alpha)
                new += whole_curve(correct, args.alpha)
            what = "no rise" if not d else f"+{d:g} at max"
            row[f"{what}: neighbours"] = f"{100 * old / args.sims:.1f}%"
            row[f"{what}: whole"] = f"{100 * new / args.sims:.1f}%"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="a run folder with eps sweeps (else synthetic curves)")
    parser.add_argument("--images", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--points", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rises", type=float, nargs="+", default=[2, 4, 8])
    parser.add_argument("--sims", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=ALPHA)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.run_dir:
        rows = real_rows(args, rng)
        print(f"{args.run_dir}: each sweep's images subsampled (half) {args.sims} times; alpha {args.alpha}\n")
    else:
        rows = synthetic_rows(args, rng)
        print(f"synthetic curves, {args.sims} draws each; alpha {args.alpha}; share of draws flagged\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
