"""The markdown report of a run, against the paper's numbers: an ordered list of sections, each a small module
of this package registered by `@section(name, order=...)` (or by another package's module under the entry-point
group `adv_transfer_bench.report_sections`), so a new section is a new file. pandas does the arithmetic,
tabulate the tables, matplotlib the figures (written beside the report under figures/).

    write(run_dir, against=other_run_dir)    # report.md from results.json (+ examples.csv), atomically

A section is `fn(report: Report) -> list[str]` (markdown lines; [] to leave itself out). Shared reading and
formatting: benchmark.report.frames.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from tqdm.auto import tqdm

from adapters.registry import Registry
from benchmark import examples as examples_csv
from benchmark import stats
from benchmark.errors import one_line
from benchmark.report.frames import cells, check_results, load_results, paper_ratio, seed_means
from benchmark.store import atomic_write

__all__ = ["Report", "section", "render", "write", "load_results", "check_results", "cells", "seed_means",
           "paper_ratio"]

PROGRESS_CELLS = 2000  # a report of this many cells takes minutes: a progress bar says which section it is at


@dataclass(frozen=True)
class Section:
    name: str
    order: float  # sections render in this order
    render: Callable[["Report"], list[str]]


SECTIONS = Registry("report section", group="adv_transfer_bench.report_sections", item_type=Section,
                    builtin=tuple(f"benchmark.report.{m}" for m in (
                        "summary", "provenance", "training", "paper", "verdicts", "agreement", "robustness", "matrix",
                        "curves", "per_image", "comparison", "figures", "environment")))


def section(name: str, *, order: float):
    """Register the decorated `fn(report) -> list[str]` as the report section `name`, placed by `order`."""
    def register(fn):
        SECTIONS.register(name, Section(name, order, fn))
        return fn

    return register


@dataclass
class Report:
    """What every section reads: the run's results and examples, and the other run's with `--against`."""
    results: dict[str, Any]
    run_dir: Path
    against: dict[str, Any] | None = None
    examples: pd.DataFrame | None = None
    against_examples: pd.DataFrame | None = None
    with_figures: bool = True

    @cached_property
    def frame(self) -> pd.DataFrame:
        return cells(self.results)

    @cached_property
    def means(self) -> pd.DataFrame:
        return seed_means(self.frame)

    @cached_property
    def reps(self) -> dict:
        return stats.replicates_of(self.results)

    @cached_property
    def flags(self) -> pd.DataFrame:
        """Every check's row per model (benchmark.flags.flags), computed once for every section."""
        from benchmark.flags import flags

        return flags(self.results, self.examples)

    @cached_property
    def raised(self) -> dict[str, list[str]]:
        """The checks that raised a flag on each model (benchmark.flags): the caveat beside its numbers."""
        table = self.flags
        if table.empty:
            return {}
        out: dict[str, list[str]] = {}
        for row in table[table["flag"] == True].itertuples():  # noqa: E712  (True, False or None)
            out.setdefault(row.model, []).append(row.check)
        return out

    def caveat(self, models: list[str]) -> str:
        """' (flagged: multistep)' for a model, or ' (flagged in 2 of 5 repeats: ...)' for a recipe's repeats."""
        hit = [m for m in models if m in self.raised]
        if not hit:
            return ""
        checks = ", ".join(dict.fromkeys(c for m in hit for c in self.raised[m]))
        where = "" if len(models) == 1 else f" in {len(hit)} of {len(models)} repeats"
        return f" (flagged{where}: {checks}; see 'Is the robustness real?')"

    @property
    def with_paper(self) -> bool:
        return bool((self.results.get("reference") or {}).get("tables"))


def render(results: dict, run_dir: Path, *, against: dict | None = None, against_examples: pd.DataFrame | None = None,
           with_figures: bool = True) -> str:
    report = Report(results, Path(run_dir), against, examples_csv.load(run_dir), against_examples, with_figures)
    if report.frame.empty:  # cells() refuses a results.json without cells before any section runs
        return ""
    data = results.get("data", {})
    parts = [f"# {results.get('suite_name')}: adversarial fine-tuning transfer report", "",
             f"Data: **{data.get('description')}**. Profile: **{results.get('profile')}**.", ""]
    ordered = sorted(SECTIONS.items(), key=lambda item: item[1].order)
    bar = tqdm(ordered, desc="report", unit="section", leave=False, file=sys.stderr,
               disable=len(report.frame) < PROGRESS_CELLS)
    for name, part in bar:
        bar.set_postfix_str(name, refresh=False)
        try:
            parts += part.render(report)
        except Exception as exc:  # noqa: BLE001  (a section's own code: the rest of the report still renders)
            where = f"{part.render.__module__}.{part.render.__qualname__}"
            print(f"report: section {name} ({where}) failed: {one_line(exc)}", file=sys.stderr)
            parts += [f"> Section `{name}` ({where}) failed and is left out: {one_line(exc)}", ""]
    return "\n".join(parts)


def write(run_dir: Path, *, against: Path | None = None) -> str:
    results = load_results(run_dir)
    other = load_results(against) if against is not None else None
    text = render(results, Path(run_dir), against=other,
                  against_examples=examples_csv.load(against) if against is not None else None)
    path = Path(run_dir) / "report.md"
    atomic_write(path, text.encode())
    return text
