"""The GPU job (benchmarks/gpu/run.sh) in its dry-run mode on the CPU: the same script and stages on tiny
overlays of suites/paper.toml and suites/paper-code.toml, so the call is known to work before a GPU is lent."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu" / "run.sh"


def _dry_run(tmp_path, store=None, **budgets):
    """The script's dry run into tmp_path; `store`: an artefact store to start from (a copy of an earlier run's)."""
    if store is not None:
        shutil.copytree(store, tmp_path / "work" / "runs" / "artefacts")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "GPU_WORK": str(tmp_path / "work"),
           **{f"GPU_BUDGET_{k.upper()}": str(v) for k, v in budgets.items()}}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    stages = {}
    for line in (tmp_path / "out" / "stages.tsv").read_text().splitlines()[1:]:
        name, _, _, status = line.split("\t")
        stages[name] = status
    return proc, stages


def _within_the_device_tools_limits(out):
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files)  # one folder deep: nothing below $OUT's files
    assert all(f.stat().st_size <= 16 * 2 ** 20 for f in files)


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    root = tmp_path_factory.mktemp("dry")
    return root, *_dry_run(root)


@pytest.mark.slow
def test_the_dry_run_runs_every_stage_and_packs_both_runs(dry):
    tmp_path, proc, stages = dry
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert stages == {"install": "skipped: dry run: the toolkits are already installed here",
                      "cuda": "skipped: dry run on the CPU", "paper": "ok", "paper-code": "ok", "report": "ok",
                      "perf": "ok", "pack": "ok"}
    out = tmp_path / "out"
    _within_the_device_tools_limits(out)
    for suite in ("paper", "paper-code"):
        with tarfile.open(out / f"{suite}.tar.gz") as tar:
            names = set(tar.getnames())
        assert {f"{suite}/{f}" for f in ("results.json", "examples.csv", "report.md", "run.json")} <= names
        assert any(n.startswith(f"{suite}/figures/") for n in names)
    with tarfile.open(out / "paper-code.tar.gz") as tar:
        report = tar.extractfile("paper-code/report.md").read().decode()
    assert "## Against paper (paper)" in report  # the report stage rewrote it against the text's run
    assert "images/s" in (out / "perf.md").read_text()


@pytest.mark.slow
def test_a_stage_over_its_budget_is_cut_said_so_and_the_rest_still_runs(dry, tmp_path):
    # From the first dry run's store: the paper stage is a rerun of finished nodes (its results are written again);
    # paper-code cannot start a Python with torch within 2 s, so it is cut whatever the store holds.
    proc, stages = _dry_run(tmp_path, store=dry[0] / "work" / "runs" / "artefacts", paper_code=2)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert stages["paper"] == "ok" and stages["paper-code"] == "cut after 2 s"
    assert stages["report"].startswith("skipped: a suite has no results.json")
    assert stages["perf"] == "ok" and stages["pack"] == "ok"
    assert "=== paper-code: cut after 2 s" in proc.stdout
    assert (tmp_path / "out" / "paper.tar.gz").is_file()  # the suite that finished is kept
    _within_the_device_tools_limits(tmp_path / "out")
