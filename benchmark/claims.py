"""The paper's claims and their verdicts: each statement of the paper, where a run measures it, and whether our
95% interval reproduces it.

- Verdicts: reproduced (the paper's value inside our 95% interval, and the interval no wider than TOO_WIDE for
  its unit), inconclusive (inside, but wider: the data cannot tell the paper's value from ones far from it),
  contradicted (outside; ours higher or lower). A difference between two models gets a verdict on its
  direction too.
- Names: our models and attacks map onto the paper's by the suite's [reference] renames (`paper_name`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.stats import (TOO_WIDE, CellReplicates, generator, joint_outcomes, paired_accuracies, ratio_of,
                             summary)


@dataclass
class Claim:
    """One statement of the paper and where our run measures it."""
    claim: str       # what is claimed, in the paper's names
    unit: str        # "ratio" or "points" (a key of TOO_WIDE)
    paper: float
    source: str      # "stated" (in the text) or "tables" (derived from its tables)
    ours: str        # the cell(s) of our run that measure it ("" where the run has none)
    difference: bool = False  # a difference between two models: its direction gets a verdict of its own
    value: float = float("nan")
    lo: float = float("nan")
    hi: float = float("nan")
    paired: bool = False  # a difference bootstrapped per image on the same images (else two independent draws)

    @property
    def verdict(self) -> str:
        """The value's verdict: the paper's number inside our interval, and the interval narrow enough."""
        return verdict(self.paper, self.lo, self.hi, self.unit)

    @property
    def direction(self) -> str:
        """For a difference, whether its sign reproduces: reproduced (our interval on the paper's side of 0),
        contradicted (on the other side), not significant (it spans 0); "" for other claims."""
        if not self.difference or self.paper == 0:
            return ""
        if np.isnan(self.lo) or np.isnan(self.hi):
            return "not measured"
        if self.lo <= 0 <= self.hi:
            return "not significant"
        return "reproduced" if (self.lo > 0) == (self.paper > 0) else "contradicted"


def verdict(paper: float, lo: float, hi: float, unit: str) -> str:
    """reproduced / inconclusive / contradicted (ours higher|lower) / not measured (module docstring)."""
    if np.isnan(lo) or np.isnan(hi):
        return "not measured"
    if paper < lo:
        return "contradicted (ours higher)"
    if paper > hi:
        return "contradicted (ours lower)"
    return "inconclusive" if hi - lo > TOO_WIDE[unit] else "reproduced"


def paper_name(reference: dict, kind: str, name: str) -> str:
    """Our model or attack name in the paper's tables (reference.models / reference.attacks, else the attack's
    family, else the name itself)."""
    names = reference.get(kind, {})
    if name in names:
        return names[name]
    if kind == "attacks" and name.split("@")[0] in names:
        return names[name.split("@")[0]]
    return name


def reference_cell(reference: dict, model: str, attack: str) -> dict | None:
    """The paper's table cell ({"orig": [...], "adv": [...]} per size) for our model and attack, or None."""
    tables = reference.get("tables", {})
    return tables.get(paper_name(reference, "models", model), {}).get(paper_name(reference, "attacks", attack))


def stated_ratio(reference: dict, model: str, attack: str) -> float | None:
    """The ratio the paper's text states for our model and attack, or None."""
    return (reference.get("ratios", {}).get(paper_name(reference, "models", model), {})
            .get(paper_name(reference, "attacks", attack)))


def table_ratio(table: dict) -> float:
    """The paper's ratio derived from its tables: the mean over sizes of ADV / ORIG."""
    return float(np.mean([a / o for a, o in zip(table["adv"], table["orig"])]))


def claims(results: dict, reps: dict[tuple[str, str], CellReplicates],
           examples: pd.DataFrame | None = None) -> list[Claim]:
    """The paper's claims (stated ratios; ratios derived from its tables; fine-tuning on one attack improving
    the ratio under the other; the clean-accuracy cost of fine-tuning), each measured on this run where it can
    be. A difference between two models is bootstrapped paired, image by image on the same images, where
    `examples` (examples.csv) holds both; else from the two models' independent replicates (`paired` False)."""
    reference = results.get("reference") or {}
    tables, stated = reference.get("tables", {}), reference.get("ratios", {})
    models = list(dict.fromkeys(m for m, _ in reps))
    attacks = list(dict.fromkeys(a for _, a in reps))
    ours_m = {pm: [m for m in models if paper_name(reference, "models", m) == pm] for pm in tables}
    ours_a = {}
    for a in attacks:
        ours_a.setdefault(paper_name(reference, "attacks", a), []).append(a)
    out: list[Claim] = []

    def measured(claim: Claim, values: np.ndarray | None) -> Claim:
        if values is not None:
            claim.value, claim.lo, claim.hi = summary(values)
        return claim

    def between(claim: Claim, model: str, parent: str, attack: str, what: str) -> tuple[Claim, np.ndarray]:
        """Replicates of model - parent (the ratio under `attack`, or the clean accuracy over sizes on that
        attack's images), paired where examples.csv holds both on the same images."""
        cell = reps[(model, attack)].outcomes
        joint = (joint_outcomes([(examples, model, attack), (examples, parent, attack)], cell.seeds,
                                max(cell.sizes)) if examples is not None else None)
        if joint is None:
            mine, theirs = reps[(model, attack)], reps[(parent, attack)]
            return claim, (mine.ratio - theirs.ratio if what == "ratio"
                           else mine.orig_over_sizes - theirs.orig_over_sizes)
        claim.paired = True
        acc = paired_accuracies(joint, cell.sizes, generator(model, parent, attack, "claim"))
        return claim, (ratio_of(acc, 0) - ratio_of(acc, 1) if what == "ratio"
                       else acc[:, 0].mean(axis=1) - acc[:, 2].mean(axis=1))

    # The paper's models in this run's order (parents first), then any others; stated ratios before derived.
    ranked = sorted(tables, key=lambda pm: min([models.index(m) for m in ours_m[pm]] or [len(models)]))
    ratio_cells = [(pm, pa) for pm in ranked for pa in tables[pm] if pa in stated.get(pm, {})]
    ratio_cells += [(pm, pa) for pm in ranked for pa in tables[pm] if pa not in stated.get(pm, {})]
    for pm, pa in ratio_cells:
        value, source = ((stated[pm][pa], "stated") if pa in stated.get(pm, {})
                         else (table_ratio(tables[pm][pa]), "tables"))
        text = f"ADV/ORIG ratio of {pm} under {pa}"
        pairs = [(m, a) for m in ours_m.get(pm, []) for a in ours_a.get(pa, [])]
        out += [measured(Claim(text, "ratio", value, source, f"{m} / {a}"), reps[(m, a)].ratio)
                for m, a in pairs] or [Claim(text, "ratio", value, source, "")]
    suite_models = results.get("suite", {}).get("models", {})
    for model in sorted(suite_models, key=lambda m: models.index(m) if m in models else len(models)):
        entry = suite_models[model]
        parent = entry.get("from")
        pm, pp = paper_name(reference, "models", model), paper_name(reference, "models", parent or "")
        if parent is None or pm not in tables or pp not in tables:
            continue
        tuned_on = paper_name(reference, "attacks", entry.get("attack", ""))
        shared = [pa for pa in tables[pm] if pa in tables[pp]]
        for pa in shared:
            if pa == tuned_on:
                continue
            value = table_ratio(tables[pm][pa]) - table_ratio(tables[pp][pa])
            text = f"fine-tuning on {tuned_on} raises the ratio under {pa} ({pm} - {pp})"
            ours = [a for a in ours_a.get(pa, []) if (model, a) in reps and (parent, a) in reps]
            out += [measured(*between(Claim(text, "ratio", value, "tables", f"{model} - {parent} / {a}", True),
                                      model, parent, a, "ratio")) for a in ours] \
                or [Claim(text, "ratio", value, "tables", "", True)]
        value = float(np.mean([np.mean(np.subtract(tables[pm][pa]["orig"], tables[pp][pa]["orig"]))
                               for pa in shared]))
        text = f"clean accuracy cost of fine-tuning ({pm} - {pp}, points, mean over sizes)"
        cell = next((a for a in attacks if (model, a) in reps and (parent, a) in reps), None)
        claim = Claim(text, "points", value, "tables", f"{model} - {parent}" if cell else "", True)
        out.append(measured(*between(claim, model, parent, cell, "orig")) if cell else claim)
    return out


def claims_frame(results: dict, reps: dict[tuple[str, str], CellReplicates],
                 examples: pd.DataFrame | None = None) -> pd.DataFrame:
    return pd.DataFrame([{**vars(c), "verdict": c.verdict, "direction": c.direction}
                         for c in claims(results, reps, examples)])
