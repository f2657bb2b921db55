"""The eps-sweep check (benchmark.flags, "eps_sweep") tests a sweep as a whole: accuracy must not rise from any
smaller eps to any larger one (one-sided McNemar exact on the same images, Holm over the pairs). On constructed
curves: a rise between points apart that no neighbour pair shows, many small rises, a chance rise among many pairs
(which the neighbour-only rule it replaced flagged), a falling curve; and the false-alarm rate on flat curves."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from statsmodels.stats.multitest import multipletests

from benchmark.flags import ALPHA, flags, holm, sweep_rises
from benchmark.stats import mcnemar_p


def _sweep_row(correct: np.ndarray, values: list[float]) -> pd.Series:
    """The eps_sweep row flags() gives a run of one model whose sweep `fgsm@eps=v` has per-image correctness
    `correct` (points x images; every image correct originally)."""
    m, n = correct.shape
    attacks = [f"fgsm@eps={v:g}" for v in values]
    cells = [{"model": "m", "attack": a, "attack_family": "fgsm", "sweep": ["eps", v], "seed": 0, "size": n}
             for a, v in zip(attacks, values)]
    examples = pd.concat([pd.DataFrame({"model": "m", "attack": a, "attack_family": "fgsm", "seed": 0,
                                        "position": range(n), "index": range(n), "label": 0, "correct_orig": True,
                                        "correct_adv": correct[k]}) for k, a in enumerate(attacks)])
    rows = flags({"cells": cells}, examples)
    return rows[rows["check"] == "eps_sweep"].iloc[0]


def _steps(n: int, right: int, moves: list[tuple[int, int]]) -> np.ndarray:
    """A curve on n images, `right` of them right at the first eps; at each later eps (up, down): `up` images
    wrong so far made right and `down` right so far made wrong, each image moved once."""
    rows = [np.arange(n) < right]
    fresh_up, fresh_down = right, 0  # the next images never moved yet, from each end of the right ones
    for up, down in moves:
        row = rows[-1].copy()
        row[fresh_up:fresh_up + up] = True
        row[fresh_down:fresh_down + down] = False
        fresh_up, fresh_down = fresh_up + up, fresh_down + down
        rows.append(row)
    return np.stack(rows)


def test_a_rise_between_points_apart_is_flagged_where_no_neighbour_pair_is_significant():
    correct = _steps(200, 100, [(8, 2), (8, 2)])  # +3 points, then +3 again: 8 up / 2 down each step
    for a, b in ((0, 1), (1, 2)):
        assert mcnemar_p(correct[a], correct[b]) > ALPHA  # the neighbour-only rule flagged neither
    pairs = sweep_rises(correct)
    far = pairs[(pairs["i"] == 0) & (pairs["j"] == 2)].iloc[0]
    assert (far["up"], far["down"]) == (16, 4) and far["p_holm"] < ALPHA
    row = _sweep_row(correct, [0.01, 0.02, 0.03])
    assert row["flag"] is True
    assert "rises 0.01 -> 0.03 (+6.0 points, 16 up / 4 down, Holm p = 0.018)" in row["measured"]


def test_many_small_rises_are_flagged_together():
    correct = _steps(300, 150, [(5, 1)] * 5)  # +1.3 points at each of 5 steps, none significant alone
    pairs = sweep_rises(correct)
    neighbours = pairs[pairs["j"] == pairs["i"] + 1]
    assert (neighbours["p"] > ALPHA).all()
    assert _sweep_row(correct, [0.005, 0.01, 0.015, 0.02, 0.025, 0.03])["flag"] is True


def test_a_chance_rise_among_many_pairs_is_not_flagged():
    """A flat 10-point curve with a blip: 6 images right at one eps only. The neighbour rule (9 uncorrected tests)
    flagged it (p = 0.031); against 45 pairs it is not significant."""
    correct = np.zeros((10, 100), dtype=bool)
    correct[:, :50] = True
    correct[5, 50:56] = True
    assert mcnemar_p(correct[4], correct[5]) < ALPHA
    row = _sweep_row(correct, [0.001 * k for k in range(1, 11)])
    assert row["flag"] is False
    assert "45 pair(s) of eps tested; largest rise 0.001 -> 0.006 (+6.0 points, 6 up / 0 down" in row["measured"]
    assert "not significant" in row["measured"]


def test_a_falling_curve_whose_images_come_back_now_and_then_is_not_flagged():
    rng = np.random.default_rng(0)
    eps = np.linspace(0.005, 0.04, 8)
    threshold = rng.uniform(0, 0.05, 400)
    correct = threshold[None, :] + rng.normal(0, 0.003, (8, 400)) > eps[:, None]
    assert (~correct[:-1] & correct[1:]).any()  # some images do come back at a larger eps
    row = _sweep_row(correct, eps.tolist())
    assert row["flag"] is False and "28 pair(s) of eps tested" in row["measured"]


def test_each_pair_is_a_one_sided_exact_mcnemar_and_holm_is_statsmodels():
    rng = np.random.default_rng(1)
    correct = rng.random((4, 60)) < np.array([[0.7], [0.6], [0.65], [0.5]])
    pairs = sweep_rises(correct)
    assert len(pairs) == 6 and list(zip(pairs["i"], pairs["j"])) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for r in pairs.itertuples():
        a, b = correct[r.i], correct[r.j]
        assert (r.up, r.down) == (int((~a & b).sum()), int((a & ~b).sum()))
        assert r.p == pytest.approx(binomtest(r.up, r.up + r.down, 0.5, alternative="greater").pvalue
                                    if r.up + r.down else 1.0)
    assert pairs["p_holm"].to_numpy() == pytest.approx(multipletests(pairs["p"], method="holm")[1])
    p = np.array([0.01, 1.0, 0.04, 0.03, 1.0, 0.2])
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_flat_curves_are_flagged_at_most_about_alpha_of_the_time():
    """The least favourable curve that does not rise: accuracy equal at every eps in expectation, a fifth of the
    images right or wrong by a coin at each eps. benchmarks/sweep_power.py measures more (and the power)."""
    rng = np.random.default_rng(0)
    draws, flagged = 400, 0
    for _ in range(draws):
        kind = rng.choice(3, size=150, p=[0.4, 0.4, 0.2])
        correct = np.where(kind == 0, True, np.where(kind == 1, False, rng.random((6, 150)) < 0.5))
        flagged += bool((sweep_rises(correct)["p_holm"] < ALPHA).any())
    assert flagged / draws <= ALPHA + 0.02  # 0.07: alpha plus two standard errors of 400 draws
