"""Repeated training: a recipe's `repeats = N` becomes N independently trained models, each a node of the graph.

    [models.base]
    repeats = 3          # three base trainings
    [models.aft-fgsm]
    from = "base"
    repeats = 5          # five fine-tunes within each base training: 15 fine-tuned models

A trained model of the suite is an *instance* of its recipe: the recipe's entry with the instance's own training
seed, fine-tuned from one instance of its parent. An instance is named by its recipe and its repeat path, one
index per level of the chain (`r1` is the second base training; `r1.3` the fourth fine-tune of it):
`aft-fgsm@r1.3`. A recipe with a single instance keeps its plain name (`base`), so a suite without repeats reads
as it always did. `@` never occurs in a suite's own names.

Seeds: the first repeat at every level (`r0`, `r0.0`) trains with the recipe's seed, so a suite without repeats
and the first repeat of a repeated one are the same model (same key: the store serves it); every other repeat
draws its seed from the recipe's seed and its whole path, so the fine-tunes of two base repeats are independent
(nested, not crossed) and raising `repeats` adds models without changing the others. That seed drives every draw
of the training: initialisation, data order, augmentation, the early-stop split (base), the fine-tune's image
sample and its order. Evaluation images depend on the evaluation seed only: every instance is attacked on the
same images, so models stay paired across repeats.
"""
from __future__ import annotations

import hashlib
import json

SEPARATOR = "@"
MAX_REPEATS = 100  # per recipe; repeats multiply down a chain, so keep the product in check too
MAX_INSTANCES = 10_000  # models of one suite, all recipes and their repeats together


def training_seed(seed: int, path: tuple[int, ...]) -> int:
    """The training seed of repeat `path` of a recipe seeded `seed` (module docstring): the recipe's own seed
    for the first repeat at every level, else a draw in [0, 2**60) from (seed, path)."""
    if not any(path):
        return seed
    return int(hashlib.sha256(json.dumps(["repeat", seed, list(path)]).encode()).hexdigest()[:15], 16)


def label(path: tuple[int, ...]) -> str:
    """The repeat coordinate as results.json and examples.csv write it: 'r0', 'r1.3'."""
    return "r" + ".".join(map(str, path))


def parse_label(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text[1:].split("."))


def instance_name(recipe: str, path: tuple[int, ...], single: bool) -> str:
    return recipe if single else f"{recipe}{SEPARATOR}{label(path)}"


def recipe_of(name: str) -> str:
    """The recipe an instance belongs to (the name itself for a recipe with one instance)."""
    return name.split(SEPARATOR, 1)[0]


def compatible(source: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Two instances on one branch of the repeats: their paths agree on every level both have (an ancestor and
    its descendants, or siblings with the same indices)."""
    return all(a == b for a, b in zip(source, target))


def pick(candidates: list[tuple[str, tuple[int, ...]]], target: tuple[int, ...]) -> str | None:
    """The instance of a recipe that a target instance pairs with: the only one, or the one on the target's branch
    (`compatible`); None where the recipe has several and none is on that branch."""
    if len(candidates) == 1:
        return candidates[0][0]
    on_branch = [name for name, path in candidates if compatible(path, target)]
    return on_branch[0] if len(on_branch) == 1 else None


def of_results(results: dict) -> dict[str, dict]:
    """Every model of a results.json: {"recipe", "path", "parent"} (its parent's instance, or None). Results
    written before repeated training hold one instance per recipe: its own name, path (0,) or (0, 0)."""
    suite_models = (results.get("suite") or {}).get("models", {})
    out = {}
    names = list(results.get("models") or {}) or list(dict.fromkeys(c["model"] for c in results.get("cells", [])))
    for name in names:
        info = (results.get("models") or {}).get(name, {})
        recipe = info.get("recipe") or name
        parent = info["parent"] if "recipe" in info else (suite_models.get(name) or {}).get("from")
        path = parse_label(info["repeat"]) if "repeat" in info else ((0, 0) if parent else (0,))
        out[name] = {"recipe": recipe, "path": path, "parent": parent}
    return out
