"""Per-example results, intervals, paired tests, verdicts and the statistical gate (small, CPU, synthetic)."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from benchmark import check, evaluate, examples, report, run_suite, stats
from benchmark.report.verdicts import verdicts as verdict_lines
from benchmark import claims
from benchmark.cli import main
from benchmark.errors import UserError
from conftest import TINY_SUITE

FIXTURE = json.loads((__import__("pathlib").Path(__file__).parent / "data" / "results-fixture.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny suite (2 models x 2 attacks x 2 seeds, sizes 20 and 50) run once on the CPU."""
    root = tmp_path_factory.mktemp("tiny")
    suite = root / "tiny.toml"
    suite.write_text(TINY_SUITE.format(profile="paper", split="train"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE", str(root / "cache"))
        run_suite(suite, root / "run", device="cpu")
    return root / "run"


def test_a_gzipped_examples_csv_reads_as_the_plain_one_and_check_uses_it(tiny_run, tmp_path, capsys):
    """A committed run folder may hold examples.csv.gz (a repeated full-scale run's is tens of MB)."""
    import gzip
    import shutil


    gz = tmp_path / "gz"
    gz.mkdir()
    shutil.copy(tiny_run / "results.json", gz / "results.json")
    (gz / "examples.csv.gz").write_bytes(gzip.compress((tiny_run / "examples.csv").read_bytes()))
    pd.testing.assert_frame_equal(examples.load(gz), examples.load(tiny_run))
    assert main(["check", str(tiny_run), "--baseline", str(gz)]) == 0
    assert "McNemar exact (paired)" in capsys.readouterr().out  # paired per image: the examples were read
    shutil.copy(tiny_run / "examples.csv", gz / "examples.csv")  # both: which one is the run's is not known
    with pytest.raises(UserError, match="holds both examples.csv and examples.csv.gz"):
        examples.load(gz)
    (gz / "examples.csv").unlink()
    (gz / "examples.csv.gz").write_bytes(b"\x1f\x8b" + b"not gzip")
    with pytest.raises(UserError, match="not a readable CSV"):
        examples.load(gz)
    packed = bytearray(gzip.compress((tiny_run / "examples.csv").read_bytes(), compresslevel=0))
    packed[2000:2014] = b"x,y,z\n" * 2 + b"zz"  # damaged inside: the parser's error, on one line
    (gz / "examples.csv.gz").write_bytes(bytes(packed))
    with pytest.raises(UserError) as raised:
        examples.load(gz)
    assert "\n" not in str(raised.value)


def test_examples_csv_recomputes_every_cell_exactly(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    table = examples.load(tiny_run)
    assert len(table) == 2 * 2 * 2 * 50  # models x attacks x seeds x the largest size
    for seed in (0, 1):  # the test-split indices are the seed's permutation prefix
        rows = table[(table["seed"] == seed) & (table["model"] == "base") & (table["attack"] == "fgsm")]
        assert rows["index"].tolist() == evaluate.subset(300, 50, seed).tolist()
    cells = pd.DataFrame(results["cells"])
    recomputed = examples.accuracies(table, sorted(cells["size"].unique()))
    merged = cells.merge(recomputed, on=["model", "attack", "seed", "size"], suffixes=("", "_csv"))
    assert len(merged) == len(cells) == 16
    assert (merged["orig_acc"] == merged["orig_acc_csv"]).all() and (merged["adv_acc"] == merged["adv_acc_csv"]).all()
    fgsm = table[table["attack"] == "fgsm"]
    assert (fgsm["linf"] <= 0.02 + 1e-6).all() and (fgsm["l0"] > 0).any()


def test_outcomes_rebuilt_from_results_equal_those_from_examples(tiny_run):
    """The report's intervals come from results.json alone; they must see exactly what examples.csv holds."""
    results = json.loads((tiny_run / "results.json").read_text())
    from_cells = stats.outcomes_from_cells(pd.DataFrame(results["cells"]))
    from_csv = stats.outcomes_from_examples(examples.load(tiny_run), [20, 50])
    assert from_cells.keys() == from_csv.keys()
    for key in from_cells:
        assert np.array_equal(from_cells[key].correct, from_csv[key].correct), key


def test_worst_case_is_at_most_every_attack_and_report_has_per_example_sections(tiny_run):
    table = stats.worst_case(examples.load(tiny_run), ["fgsm", "jsma"])
    results = json.loads((tiny_run / "results.json").read_text())
    cells = pd.DataFrame(results["cells"])
    for model, group in table.groupby("model"):
        acc = group.set_index("column")["acc"]
        assert acc["all attacks"] <= acc[["fgsm", "jsma"]].min()
        for attack in ("fgsm", "jsma"):  # each attack's own column is its cell, mean over seeds
            cell = cells[(cells["model"] == model) & (cells["attack"] == attack) & (cells["size"] == 50)]
            assert acc[attack] == pytest.approx(100 * cell["adv_acc"].mean())
        assert ((group["lo"] <= group["acc"]) & (group["acc"] <= group["hi"])).all()
    text = (tiny_run / "report.md").read_text()
    assert "## Worst case over attacks" in text and "| aft-fgsm | base     | jsma" in text
    assert "## Verdicts" not in text  # no reference, no verdicts


def test_intervals_contain_the_point_estimates_with_one_seed_or_several():
    for results in (FIXTURE, {**FIXTURE, "cells": [c for c in FIXTURE["cells"] if c["seed"] == 0]}):
        reps = stats.replicates_of(results)
        means = report.seed_means(report.cells(results))
        intervals = stats.accuracy_intervals(reps).merge(means, on=["model", "attack", "size"])
        point = np.where(intervals["kind"] == "ORIG", intervals["orig_acc"], intervals["adv_acc"])
        assert ((intervals["lo"] <= point + 1e-9) & (point <= intervals["hi"] + 1e-9)).all()
        assert (intervals["hi"] > intervals["lo"]).any()
        for key, rep in reps.items():
            value, lo, hi = stats.summary(rep.ratio)
            assert lo <= value <= hi, key
    again = stats.replicates_of(FIXTURE)  # seeded: the same replicates every time
    assert all(np.array_equal(again[k].adv, v.adv) for k, v in stats.replicates_of(FIXTURE).items())


def test_bootstrap_keeps_sizes_nested_within_each_seed():
    rng = np.random.default_rng(1)
    correct = rng.random((2, 30, 3)) < 0.6
    acc = stats.resample(correct, [10, 30], rng, replicates=200)
    assert acc.shape == (201, 3, 2, 2)
    assert np.allclose(acc[0, :, :, 1], correct.mean(axis=1).T)
    counts = acc * np.array([10, 30])
    assert (counts[..., 1] >= counts[..., 0]).all()  # a larger size holds the smaller one's images
    assert (counts[..., 1] - counts[..., 0] <= 20).all()


def test_paired_test_detects_a_planted_difference_and_not_an_absent_one():
    rng = np.random.default_rng(0)
    parent = rng.random(400) < 0.5
    better = parent.copy()
    better[np.flatnonzero(~parent)[:40]] = True  # 40 more images right, none lost: +10 points
    found = stats.paired(better, parent, np.random.default_rng(0))
    assert found["diff"] == pytest.approx(10.0) and found["p"] < 1e-6 and found["lo"] > 0
    assert (found["a_only"], found["b_only"]) == (40, 0)
    swapped = parent.copy()
    swapped[np.flatnonzero(~parent)[:20]] = True
    swapped[np.flatnonzero(parent)[:20]] = False  # 20 gained, 20 lost: no difference
    none = stats.paired(swapped, parent, np.random.default_rng(0))
    assert none["diff"] == 0 and none["p"] > 0.5 and none["lo"] < 0 < none["hi"]
    same = stats.paired(parent, parent, np.random.default_rng(0))
    assert same["p"] == 1 and same["lo"] == same["hi"] == 0


def test_verdict_rules():
    assert claims.verdict(0.50, 0.46, 0.54, "ratio") == "reproduced"
    assert claims.verdict(0.50, 0.30, 0.70, "ratio") == "inconclusive"  # inside, but wider than 0.10
    assert claims.verdict(0.50, 0.55, 0.60, "ratio") == "contradicted (ours higher)"
    assert claims.verdict(0.70, 0.30, 0.65, "ratio") == "contradicted (ours lower)"  # outside, however wide
    assert claims.verdict(-10.0, -14.0, -6.0, "points") == "reproduced"
    assert claims.verdict(0.5, float("nan"), float("nan"), "ratio") == "not measured"


# --- a constructed run: per-image outcomes with known rates, through the real summarize and examples code ----

SIZES = [500, 1000, 2000]
SURVIVE = {"base": {"fgsm": 0.5, "jsma": 0.6}, "aft-fgsm": {"fgsm": 0.7, "jsma": 0.85}}
CLEAN = {"base": 0.9, "aft-fgsm": 0.8}


def constructed(seeds=(0, 1), flip=None):
    """results.json-like dict and examples frame for 2 models x 2 attacks; `flip` = (model, attack, k) makes
    the first k adversarially correct images of that cell wrong, as a regression would."""
    jobs, outcomes, cells = [], [], []
    for model in SURVIVE:
        for seed in seeds:
            rng = np.random.default_rng([seed, len(model)])
            labels = rng.integers(0, 10, SIZES[-1])
            clean = rng.random(SIZES[-1]) < CLEAN[model]
            for attack, survive in SURVIVE[model].items():
                adv = clean & (rng.random(SIZES[-1]) < survive)
                if flip and flip[:2] == (model, attack):
                    adv[np.flatnonzero(adv)[:flip[2]]] = False
                outcome = {"label": labels.tolist(), "orig_pred": np.where(clean, labels, (labels + 1) % 10).tolist(),
                           "adv_pred": np.where(adv, labels, (labels + 1) % 10).tolist(), "l0": [1] * SIZES[-1],
                           "l2": [0.1] * SIZES[-1], "linf": [0.01] * SIZES[-1],
                           "indices": evaluate.subset(20000, SIZES[-1], seed).tolist()}
                jobs.append(SimpleNamespace(model=model, seed=seed,
                                            attack=SimpleNamespace(name=attack, family=attack)))
                outcomes.append(outcome)
                cells += [{"model": model, "attack": attack, "seed": seed, "size": size,
                           **evaluate.summarize(outcome, size, 10)} for size in SIZES]
    table = examples.frame(jobs, outcomes)
    means = report.seed_means(pd.DataFrame(cells)).set_index(["model", "attack"])
    tables = {m: {a: {"orig": means.loc[(m, a), "orig_acc"].tolist(), "adv": means.loc[(m, a), "adv_acc"].tolist()}
                  for a in SURVIVE[m]} for m in SURVIVE}
    results = {"cells": cells, "suite_name": "constructed", "profile": "paper",
               "suite": {"models": {"base": {}, "aft-fgsm": {"from": "base", "attack": "fgsm"}}},
               "reference": {"source": "constructed", "sizes": SIZES, "tables": tables, "ratios": {},
                             "models": {}, "attacks": {}}}
    return results, table


def test_claims_reproduce_a_paper_that_is_our_run_and_contradict_one_that_is_not():
    results, _ = constructed()
    reps = stats.replicates_of(results)
    verdicts = claims.claims_frame(results, reps).set_index("claim")
    assert len(verdicts) == 4 + 1 + 1  # 4 derived ratios, fgsm fine-tuning under jsma, clean cost
    assert set(verdicts["verdict"]) == {"reproduced"}
    assert verdicts.filter(like="raises the ratio under jsma", axis=0)["direction"].item() == "reproduced"
    assert verdicts.filter(like="clean accuracy cost", axis=0)["direction"].item() == "reproduced"
    shifted = json.loads(json.dumps(results))
    shifted["reference"]["ratios"] = {"base": {"fgsm": 0.70}}  # our base/fgsm ratio is about 0.5
    shifted["reference"]["tables"]["aft-fgsm"]["jsma"]["adv"] = [60.0] * 3  # far below ours
    changed = claims.claims_frame(shifted, reps).set_index("claim")["verdict"]
    assert changed["ADV/ORIG ratio of base under fgsm"] == "contradicted (ours lower)"
    assert changed["ADV/ORIG ratio of aft-fgsm under jsma"] == "contradicted (ours higher)"
    text = "\n".join(verdict_lines(results, reps, against=shifted))
    assert "value constructed" in text and "direction constructed" in text and "contradicted (ours lower)" in text
    assert "| reproduced" in text


def test_differences_between_models_are_paired_per_image_where_examples_exist():
    results, table = constructed()
    # The fine-tuned model gets right exactly the images its parent gets right: no difference, image by image.
    twin = table[table["model"] == "base"].assign(model="aft-fgsm")
    table = pd.concat([table[table["model"] == "base"], twin], ignore_index=True)
    results["cells"] = [c for c in results["cells"] if c["model"] == "base"]
    results["cells"] += [{**c, "model": "aft-fgsm"} for c in results["cells"]]
    reps = stats.replicates_of(results)
    paired = claims.claims_frame(results, reps, table).set_index("claim")
    unpaired = claims.claims_frame(results, reps).set_index("claim")
    cost = "clean accuracy cost of fine-tuning (aft-fgsm - base, points, mean over sizes)"
    assert paired.loc[cost, "paired"] and not unpaired.loc[cost, "paired"]
    assert paired.loc[cost, ["value", "lo", "hi"]].tolist() == [0.0, 0.0, 0.0]  # the same images resampled
    assert unpaired.loc[cost, "lo"] < -1 and unpaired.loc[cost, "hi"] > 1  # two independent draws
    assert paired.loc[cost, "direction"] == "not significant"


def test_direction_and_value_get_their_own_verdicts():
    claim = claims.Claim("fine-tuning raises the ratio", "ratio", 0.21, "tables", "m - p / a", True)
    claim.value, claim.lo, claim.hi = 0.06, 0.03, 0.10  # the sign reproduced, significantly; the size not
    assert (claim.direction, claim.verdict) == ("reproduced", "contradicted (ours lower)")
    claim.lo, claim.hi = -0.02, 0.10
    assert claim.direction == "not significant"
    claim.lo, claim.hi = -0.3, -0.1
    assert claim.direction == "contradicted"
    ratio = claims.Claim("ADV/ORIG ratio", "ratio", 0.5, "stated", "m / a")
    ratio.value, ratio.lo, ratio.hi = 0.5, 0.46, 0.54
    assert (ratio.direction, ratio.verdict) == ("", "reproduced")


def test_a_report_without_reference_has_no_paper_columns(tmp_path):
    results, table = constructed()
    results["reference"] = {}
    _write_run(tmp_path / "run", results, table)
    text = report.render(results, tmp_path / "run", with_figures=False)
    assert "Tables as in the paper" not in text and "paper (stated)" not in text and "Verdicts" not in text
    assert "mean over the evaluation sizes of ADV / ORIG" in text
    results, _ = constructed()
    text = report.render(results, tmp_path / "run", with_figures=False)
    assert "## Tables as in the paper" in text and "paper (from its tables)" in text and "| direction " in text


def _write_run(path, results, table):
    path.mkdir()
    (path / "results.json").write_text(json.dumps(results))
    table.to_csv(path / "examples.csv", index=False)


def test_gate_pairs_per_image_and_names_cell_values_and_p_value(tmp_path, capsys):
    results, table = constructed()
    _write_run(tmp_path / "base", results, table)
    _write_run(tmp_path / "same", results, table)
    assert main(["check", str(tmp_path / "same"), "--baseline", str(tmp_path / "base")]) == 0
    assert "McNemar exact (paired)" in capsys.readouterr().out
    worse, worse_table = constructed(flip=("aft-fgsm", "jsma", 30))  # 30 per seed of 2000: -1.5 points
    _write_run(tmp_path / "worse", worse, worse_table)
    assert main(["check", str(tmp_path / "worse"), "--baseline", str(tmp_path / "base")]) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "| aft-fgsm" in l)
    fields = [f.strip() for f in line.strip("|").split("|")]
    assert fields[:4] == ["aft-fgsm", "jsma", "2000", "adv_acc"] and float(fields[6]) == pytest.approx(-0.015)
    assert float(fields[7]) < 1e-6 and fields[9] == "McNemar exact (paired)"
    # The same drop against a bare results.json: unpaired, and 1.5 points on 4000 images is not significant; the
    # ratio (mean over sizes) still fails, since the flipped images are the first ones, all in the smallest size.
    (tmp_path / "base.json").write_text(json.dumps(results))
    table = check.compare(worse, results)
    assert not table.loc[table["metric"] != "ratio", "regression"].any()
    assert table.loc[table["regression"], ["model", "attack", "metric"]].values.tolist() == [
        ["aft-fgsm", "jsma", "ratio"]]
    assert "unpaired bootstrap" in table.loc[table["regression"], "test"].item()
    assert main(["check", str(tmp_path / "worse"), "--baseline", str(tmp_path / "base.json")]) == 1
    assert "Fisher exact (unpaired)" in capsys.readouterr().out


def test_gate_rejects_an_unreadable_examples_csv(tmp_path, capsys):
    results, table = constructed(seeds=(0,))
    _write_run(tmp_path / "base", results, table)
    _write_run(tmp_path / "run", results, table.drop(columns="correct_adv"))
    assert main(["check", str(tmp_path / "run"), "--baseline", str(tmp_path / "base")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "correct_adv" in err and "Traceback" not in err
