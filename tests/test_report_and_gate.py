import copy
import re
import json
import shutil
from pathlib import Path


from benchmark import check, report
from benchmark.report.comparison import comparison
from benchmark.cli import main
from conftest import REPO

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "results-fixture.json"
GOLDEN = DATA / "report-golden.md"


def test_report_matches_golden_markdown():
    """Regenerate with: python -c 'from tests.test_report_and_gate import regenerate; regenerate()'"""
    results = json.loads(FIXTURE.read_text())
    assert report.render(results, DATA, with_figures=False) == GOLDEN.read_text()


def regenerate():  # pragma: no cover - a helper for humans after an intended change
    GOLDEN.write_text(report.render(json.loads(FIXTURE.read_text()), DATA, with_figures=False))


def test_report_has_paper_layout_ratios_and_clamp_ablation():
    text = GOLDEN.read_text()
    assert re.search(r"\| fgsm +\| ORIG +\| 42\.00 ± 5\.66 +\|", text)
    assert "ORIG paper" in text and "ADV Δ" in text
    assert "0.51" in text  # the paper's stated base FGSM ratio, beside ours
    assert "drop explained by clamp %" in text
    assert "Data: **synthetic" in text


def test_report_command_writes_markdown_and_figures(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE, run / "results.json")
    assert main(["report", str(run), "--against", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "## Against fixture" in text and "](figures/curve-fgsm-ablation.png)" in text
    assert (run / "figures" / "curve-fgsm-ablation.png").stat().st_size > 1000
    assert len(list((run / "figures").glob("confusion-*.png"))) == 10
    assert main(["report", str(tmp_path / "nothing")]) == 2


def _planted(results, model="base", attack="fgsm", drop=0.10):
    """`drop` (a share of the largest size) of each seed's images correct under the attack made wrong, the last
    ones first, so every size's adv_acc and success rate move as those of nested prefixes do."""
    planted = copy.deepcopy(results)
    for seed in {c["seed"] for c in planted["cells"]}:
        cells = sorted((c for c in planted["cells"] if (c["model"], c["attack"], c["seed"]) == (model, attack, seed)),
                       key=lambda c: c["size"])
        both = [round(c["orig_acc"] * c["size"] * (1 - c["success_rate"])) for c in cells]  # correct on both
        left, removed = round(drop * cells[-1]["size"]), [0] * len(cells)
        for i in reversed(range(len(cells))):  # band i: between size i - 1 and size i
            take = min(left, both[i] - (both[i - 1] if i else 0))
            left -= take
            for j in range(i, len(cells)):
                removed[j] += take
        for cell, k, b in zip(cells, removed, both):
            cell["adv_acc"] -= k / cell["size"]
            cell["success_rate"] = 1 - (b - k) / round(cell["orig_acc"] * cell["size"])
    return planted


def test_gate_passes_unchanged_and_fails_a_planted_ten_point_drop(tmp_path, capsys):
    results = json.loads(FIXTURE.read_text())
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    assert main(["check", str(run), "--baseline", str(FIXTURE)]) == 0
    (run / "results.json").write_text(json.dumps(_planted(results)))
    assert main(["check", str(run), "--baseline", str(FIXTURE)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"\| base +\| fgsm +\| +100 \| adv_acc", out)
    assert re.search(r"adv_acc +\| +0\.17 \| +0\.07 \| +-0\.1 \| +0\.00\d+ \| +200 \| Fisher exact", out)
    table = check.compare(_planted(results), results)
    assert set(table.loc[table["regression"], "metric"]) == {"adv_acc"}
    assert len(table.loc[table["regression"]].groupby(["model", "attack", "size"])) == 1


def test_gate_bad_input_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE, run / "results.json")
    assert main(["check", str(run), "--baseline", str(tmp_path / "none.json")]) == 2
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["check", str(run), "--baseline", str(tmp_path / "junk.json")]) == 2
    assert main(["check", str(run), "--baseline", str(FIXTURE), "--alpha", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err


def test_smoke_suite_passes_the_gate_against_the_committed_baseline(tmp_path, capsys):
    """The smoke suite end to end on the CPU, then the regression gate against the committed baseline folder, as
    each tox env does."""
    out = tmp_path / "smoke"
    assert main(["run", str(REPO / "suites" / "smoke.toml"), "--out", str(out), "--device", "cpu"]) == 0
    assert main(["check", str(out), "--baseline", str(REPO / "reports" / "baselines" / "smoke-cpu")]) == 0
    assert "McNemar exact (paired), sign-flip randomization (paired)" in capsys.readouterr().out  # examples.csv


def test_comparison_matches_cells_by_name_not_by_position():
    results = json.loads(FIXTURE.read_text())
    other = copy.deepcopy(results)
    other["suite_name"] = "other"
    other["cells"] = [c for c in other["cells"] if c["attack"] != "jsma"]  # shifts every later row's position
    for cell in other["cells"]:
        if (cell["model"], cell["attack"]) == ("base", "fgsm"):
            cell["adv_acc"] = 0.0
    means = report.seed_means(report.cells(results))
    table = "\n".join(comparison(results, means, other))
    rows = {tuple(cells[:2]): cells for cells in ([c.strip() for c in line.split("|")[1:-1]]
                                                  for line in table.splitlines() if line.startswith("| "))}
    ratio = report.paper_ratio(means).set_index(["model", "attack"])["ratio"]
    assert rows[("base", "fgsm")][-2:] == ["0.000", f"{ratio[('base', 'fgsm')]:+.3f}"]  # ours minus a ratio of 0
    assert rows[("base", "jsma")][-4:] == ["", "", "", ""]  # in this run only: blanks for the other
    assert rows[("aft-fgsm", "fgsm-ablation@eps=0.01")][-1] == "+0.000"


def test_a_report_of_a_rerun_that_computed_nothing_says_its_times_are_not_the_work(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(FIXTURE.read_text())
    (run / "run.json").write_text(json.dumps({"timings_s": {"graph": 2.0, "total": 3.0},
                                              "nodes": {"computed": 0, "failed": 0, "reused": 40}}))
    text = report.render(json.loads(FIXTURE.read_text()), run, with_figures=False)
    assert "(s, the last invocation, which computed nothing: all 40 nodes came from the store" in text
    (run / "run.json").write_text(json.dumps({"timings_s": {"graph": 2.0}, "nodes": {"computed": 3, "reused": 1}}))
    assert "(s, this run; cached stages count ~0): graph 2.0" in report.render(json.loads(FIXTURE.read_text()), run,
                                                                             with_figures=False)


def test_a_large_report_shows_its_progress(capsys, monkeypatch):
    monkeypatch.setattr(report, "PROGRESS_CELLS", 1)  # the fixture's cells count as many
    results = json.loads(FIXTURE.read_text())
    report.render(results, DATA, with_figures=False)
    assert "report:" in capsys.readouterr().err
