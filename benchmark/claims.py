"""The paper's claims and their verdicts: each statement of the paper, where a run measures it, and whether our
95% interval reproduces it.

- Verdicts: reproduced (the paper's value inside our 95% interval, and the interval no wider than TOO_WIDE for
  its unit), inconclusive (inside, but wider: the data cannot tell the paper's value from ones far from it),
  contradicted (outside; ours higher or lower). A difference between two models gets a verdict on its
  direction too.
- Names: our models and attacks map onto the paper's by the suite's [reference] renames (`paper_name`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmark import repeats
from benchmark.stats import (TOO_WIDE, CellReplicates, generator, joint_outcomes, paired_accuracies, percentile,
                             ratio_of)
from benchmark.variance import Repeated, across_repeats


@dataclass
class Claim:
    """One statement of the paper and where our run measures it: over every repeat of the recipes involved
    (benchmark.variance), and per repeat as a single run would have."""
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
    repeated: Repeated | None = None  # the value over the repeats, with training variance where there are several
    single: list[tuple[float, float]] = field(default_factory=list)  # each repeat's image-only interval

    @property
    def verdict(self) -> str:
        """The value's verdict: the paper's number inside our interval, and the interval narrow enough."""
        return verdict(self.paper, self.lo, self.hi, self.unit)

    @property
    def direction(self) -> str:
        """For a difference, whether its sign reproduces: reproduced (our interval on the paper's side of 0),
        contradicted (on the other side), not significant (it spans 0); "" for other claims."""
        return direction(self.paper, self.lo, self.hi) if self.difference else ""

    @property
    def agreement(self) -> dict[str, int]:
        """In how many repeats the verdicts a single run would have given (its image-only interval) are these."""
        out = {"verdict": sum(verdict(self.paper, lo, hi, self.unit) == self.verdict for lo, hi in self.single)}
        if self.difference:
            out["direction"] = sum(direction(self.paper, lo, hi) == self.direction for lo, hi in self.single)
        return out

    def record(self) -> dict:
        """The claim as results.json's `claims` list holds it."""
        rep = self.repeated
        values = rep.values if rep is not None else []
        finite = [v for v in values if np.isfinite(v)]
        return {"claim": self.claim, "unit": self.unit, "paper": self.paper, "source": self.source,
                "ours": self.ours, "difference": self.difference, "paired": self.paired,
                "estimate": _number(self.value), "interval": [_number(self.lo), _number(self.hi)],
                "prediction_interval": [_number(rep.pred_lo), _number(rep.pred_hi)] if rep else [None, None],
                "sd_between_repeats": _number(rep.sd_between) if rep else None,
                "per_repeat": [_number(v) for v in values],
                "range": [min(finite), max(finite)] if finite else [None, None],
                "components_sd": {k: _number(v) for k, v in rep.components.items()} if rep else {},
                "trainings": rep.describe() if rep else "not measured", "repeats": len(values),
                "includes_training": bool(rep and rep.includes_training),
                "training_floor_p": _number(rep.floor_p) if rep and rep.floor_p is not None else None,
                "verdict": self.verdict, "direction": self.direction,
                "agreement": {k: [v, len(self.single)] for k, v in self.agreement.items()} if self.single else {}}


def _number(v: float) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def direction(paper: float, lo: float, hi: float) -> str:
    """A difference's sign against the paper's: reproduced, contradicted, not significant (Claim.direction)."""
    if paper == 0:
        return ""
    if np.isnan(lo) or np.isnan(hi):
        return "not measured"
    if lo <= 0 <= hi:
        return "not significant"
    return "reproduced" if (lo > 0) == (paper > 0) else "contradicted"


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
    if kind == "models":  # a repeat of a recipe is that recipe (benchmark.repeats)
        name = repeats.recipe_of(name)
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
    be: per repeat of the recipes involved, then over the repeats (benchmark.variance). A difference between two
    models is bootstrapped paired, image by image on the same images, where `examples` (examples.csv) holds both;
    else from the two models' independent replicates (`paired` False)."""
    reference = results.get("reference") or {}
    tables, stated = reference.get("tables", {}), reference.get("ratios", {})
    found = repeats.of_results(results)
    models = list(dict.fromkeys(m for m, _ in reps))
    recipes = list(dict.fromkeys(found[m]["recipe"] if m in found else m for m in models))
    members = {r: [m for m in models if (found[m]["recipe"] if m in found else m) == r] for r in recipes}
    attacks = list(dict.fromkeys(a for _, a in reps))
    ours_m = {pm: [r for r in recipes if paper_name(reference, "models", r) == pm] for pm in tables}
    ours_a = {}
    for a in attacks:
        ours_a.setdefault(paper_name(reference, "attacks", a), []).append(a)
    sizes = sorted(next(iter(reps.values())).outcomes.sizes) if reps else []
    seeds = next(iter(reps.values())).outcomes.seeds if reps else []
    out: list[Claim] = []

    def measured(claim: Claim, paths: list[tuple[int, ...]], replicates: np.ndarray, aligned: bool) -> Claim:
        claim.repeated = across_repeats(paths, replicates, aligned=aligned)
        claim.value, claim.lo, claim.hi = claim.repeated.value, claim.repeated.lo, claim.repeated.hi
        claim.single = [tuple(float(v) for v in percentile(replicates[:, i])) for i in range(replicates.shape[1])]
        return claim

    def joint(cells: list[str], attack: str, *names: str) -> np.ndarray | None:
        return joint_accuracies(examples, cells, attack, seeds, sizes, *names)

    def ratio_claim(claim: Claim, recipe: str, attack: str) -> Claim:
        names = members[recipe]
        return measured(claim, [found[m]["path"] for m in names],
                        *ratio_replicates(reps, examples, names, recipe, attack))

    def difference_claim(claim: Claim, recipe: str, attack: str, what: str) -> Claim:
        """model - parent per repeat (the ratio under `attack`, or the clean accuracy over sizes on that
        attack's images), paired where examples.csv holds both on the same images."""
        names = [m for m in members[recipe] if (found[m]["parent"], attack) in reps]
        parents = list(dict.fromkeys(found[m]["parent"] for m in names))
        paths = [found[m]["path"] for m in names]
        one = len(names) == 1
        # One repeat: the same draws as before repeats (generator of model, parent and attack).
        acc = joint(names + parents, attack, *((names[0], parents[0], attack, "claim") if one
                                               else (recipe, attack, what, "repeats")))
        if acc is None:
            def of(m: str) -> np.ndarray:
                return reps[(m, attack)].ratio if what == "ratio" else reps[(m, attack)].orig_over_sizes
            return measured(claim, paths, np.stack([of(m) - of(found[m]["parent"]) for m in names], axis=1), False)
        claim.paired = True
        place = {m: i for i, m in enumerate(names + parents)}

        def value(i: int) -> np.ndarray:
            return ratio_of(acc, i) if what == "ratio" else acc[:, 2 * i].mean(axis=1)
        return measured(claim, paths, np.stack([value(place[m]) - value(place[found[m]["parent"]]) for m in names],
                                               axis=1), True)

    # The paper's models in this run's order (parents first), then any others; stated ratios before derived.
    ranked = sorted(tables, key=lambda pm: min([recipes.index(r) for r in ours_m[pm]] or [len(recipes)]))
    ratio_cells = [(pm, pa) for pm in ranked for pa in tables[pm] if pa in stated.get(pm, {})]
    ratio_cells += [(pm, pa) for pm in ranked for pa in tables[pm] if pa not in stated.get(pm, {})]
    for pm, pa in ratio_cells:
        value, source = ((stated[pm][pa], "stated") if pa in stated.get(pm, {})
                         else (table_ratio(tables[pm][pa]), "tables"))
        text = f"ADV/ORIG ratio of {pm} under {pa}"
        pairs = [(r, a) for r in ours_m.get(pm, []) for a in ours_a.get(pa, [])
                 if all((m, a) in reps for m in members[r])]
        out += [ratio_claim(Claim(text, "ratio", value, source, f"{r} / {a}"), r, a) for r, a in pairs] \
            or [Claim(text, "ratio", value, source, "")]
    suite_models = results.get("suite", {}).get("models", {})
    for recipe in sorted(suite_models, key=lambda m: recipes.index(m) if m in recipes else len(recipes)):
        entry = suite_models[recipe]
        parent = entry.get("from")
        pm, pp = paper_name(reference, "models", recipe), paper_name(reference, "models", parent or "")
        if parent is None or pm not in tables or pp not in tables or recipe not in members:
            continue
        tuned_on = paper_name(reference, "attacks", entry.get("attack", ""))
        shared = [pa for pa in tables[pm] if pa in tables[pp]]
        for pa in shared:
            if pa == tuned_on:
                continue
            value = table_ratio(tables[pm][pa]) - table_ratio(tables[pp][pa])
            text = f"fine-tuning on {tuned_on} raises the ratio under {pa} ({pm} - {pp})"
            ours = [a for a in ours_a.get(pa, []) if all((m, a) in reps and (found[m]["parent"], a) in reps
                                                         for m in members[recipe])]
            out += [difference_claim(Claim(text, "ratio", value, "tables", f"{recipe} - {parent} / {a}", True),
                                     recipe, a, "ratio") for a in ours] \
                or [Claim(text, "ratio", value, "tables", "", True)]
        value = float(np.mean([np.mean(np.subtract(tables[pm][pa]["orig"], tables[pp][pa]["orig"]))
                               for pa in shared]))
        text = f"clean accuracy cost of fine-tuning ({pm} - {pp}, points, mean over sizes)"
        cell = next((a for a in attacks if all((m, a) in reps and (found[m]["parent"], a) in reps
                                               for m in members[recipe])), None)
        claim = Claim(text, "points", value, "tables", f"{recipe} - {parent}" if cell else "", True)
        out.append(difference_claim(claim, recipe, cell, "orig") if cell else claim)
    return out


def joint_accuracies(examples: pd.DataFrame | None, cells: list[str], attack: str, seeds, sizes,
                     *names: str) -> np.ndarray | None:
    """Seed-mean accuracies of several models on one attack's images, resampled alike with the generator of
    `names` (1 + R, 2 x cells, sizes), or None where examples.csv does not hold them on the same images."""
    if examples is None:
        return None
    both = joint_outcomes([(examples, m, attack) for m in cells], seeds, max(sizes))
    return None if both is None else paired_accuracies(both, sizes, generator(*names))


def ratio_replicates(reps: dict[tuple[str, str], CellReplicates], examples: pd.DataFrame | None,
                     names: list[str], recipe: str, attack: str) -> tuple[np.ndarray, bool]:
    """The ADV/ORIG ratio of each repeat `names` of a recipe under `attack`: (1 + R, repeats) observed and
    image-bootstrap replicates, and whether they resampled the same images (benchmark.variance). One repeat:
    its own replicates, as before repeats."""
    if len(names) > 1:
        outcomes = reps[(names[0], attack)].outcomes
        acc = joint_accuracies(examples, names, attack, outcomes.seeds, outcomes.sizes, recipe, attack, "repeats")
        if acc is not None:
            return np.stack([ratio_of(acc, i) for i in range(len(names))], axis=1), True
    return np.stack([reps[(m, attack)].ratio for m in names], axis=1), False


def claims_frame(results: dict, reps: dict[tuple[str, str], CellReplicates],
                 examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """results.json's `claims` where the run wrote them, else measured now: one row per claim (Claim.record)."""
    records = results.get("claims")
    if records is None:
        records = [c.record() for c in claims(results, reps, examples)]
    table = pd.DataFrame(records)
    if not table.empty:  # the interval's ends as numbers (NaN: not measured)
        table["value"] = table["estimate"].astype(float)
        table["lo"], table["hi"] = ([np.nan if iv[i] is None else iv[i] for iv in table["interval"]] for i in (0, 1))
    return table
