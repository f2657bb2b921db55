"""Section: the environment a run's numbers come from: data, device, versions, commit, suite, wall times."""
from __future__ import annotations

import json
from pathlib import Path

from benchmark.report import Report, section


@section("environment", order=110)
def environment_section(report: Report) -> list[str]:
    return ["## Environment", ""] + environment(report.results, report.run_dir) + [""]


def environment(results: dict, run_dir: Path) -> list[str]:
    data = results.get("data", {})
    v = results.get("versions", {})
    lines = [f"- data: {data.get('description')} (`{data.get('checksum')}`)",
             f"- device: {results.get('device')}",
             "- versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)),
             f"- git commit: `{results.get('git_commit')}`",
             f"- suite: `{results.get('suite_name')}` (profile {results.get('profile')}, hash "
             f"`{results.get('suite_hash')}`)"]
    run_file = Path(run_dir) / "run.json"
    if run_file.is_file():
        run = json.loads(run_file.read_text())
        timings, nodes = run.get("timings_s", {}), run.get("nodes") or {}
        # A rerun that found everything in the store writes these folders anew: its times are not the work's.
        what = (f"the last invocation, which computed nothing: all {nodes.get('reused')} nodes came from the store, "
                "so these are not the times of the work" if nodes.get("computed") == 0 and nodes.get("reused")
                else "this run; cached stages count ~0")
        lines.append(f"- wall time per stage (s, {what}): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    models = results.get("models", {})
    lines.append("- models (clean accuracy on the whole test split): " +
                 ", ".join(f"{name} {100 * info['test_acc']:.2f}%" + _made_elsewhere(info, results)
                           for name, info in models.items()))
    return lines


def _made_elsewhere(info: dict, results: dict) -> str:
    """Artefact keys carry the device kind, so a model is never reused across kinds; a different card or CPU of
    the same kind can still have made it (a copied artefacts folder), and then the report says so."""
    made_on = info.get("made_on")
    return f" (made on {made_on})" if made_on and made_on != results.get("device") else ""
