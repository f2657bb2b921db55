"""Is the robustness real? A suite's `[checks]` table: the attacks it derives to test whether the robustness it
measures survives attacks the model cannot have learnt to defeat (gradient masking: Tramèr et al. 2018, Athalye
et al. 2018; catastrophic overfitting of one-step training: Wong et al. 2020). The flags they raise:
benchmark.flags; the report section: benchmark.report.robustness.

    [checks]
    multistep = { steps = 10 }        # PGD at each one-step attack's eps and space (alpha = 2.5 eps / steps)
    black_box = { n_queries = 1000 }  # Square (score-based, no gradients) at each one-step attack's eps and space,
                                      # against FGSM and PGD together (asks for multistep's PGD if not given)
    from_parent = ["fgsm"]            # those attacks crafted on each fine-tuned model's parent (true: every
                                      # gradient-based attack of the matrix)
    probe_images = 100                # gradients, randomness, softmax outputs on this many test images (0: none)

from_parent's limit: a fine-tune trained on images its own attack crafted on the parent has seen that
distribution, so the transfer check leans towards staying quiet on it; a source trained apart (an attack with
`source = "<model>"`) avoids that.

Every derived attack is an evaluation like the suite's own (same images and seeds, keyed, per image in
examples.csv), so the worst case over attacks includes it. A suite without [checks] derives none; the probes
(no attack, a forward and a backward pass on `probe_images` images) run unless `probe_images = 0`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from benchmark.entries import PARENT, AttackSpec, check_unknown, is_int

ONE_STEP = ("torchattacks.FGSM",)  # one-step Linf attacks: a PGD or Square check takes over their eps and space
GRADIENT_FREE = ("torchattacks.Square", "torchattacks.SPSA", "torchattacks.OnePixel", "torchattacks.Pixle",
                 "torchattacks.GN", "art.SquareAttack", "art.HopSkipJump", "art.BoundaryAttack", "art.ZooAttack",
                 "art.SimBA", "art.PixelAttack")
MULTISTEP_KEYS = {"steps": int, "random_start": bool}
BLACK_BOX_KEYS = {"n_queries": int, "p_init": float}
DEFAULT_PROBE_IMAGES = 100
BUDGET_BOUNDS = {"steps": 1000, "n_queries": 100_000}  # PGD's steps, Square's queries: AutoAttack uses 100 and 5,000


@dataclass(frozen=True)
class Checks:
    multistep: dict[str, Any] | None = None  # PGD's steps and random start
    black_box: dict[str, Any] | None = None  # Square's query budget and initial square size
    from_parent: tuple[str, ...] = ()  # suite attacks (as the matrix names them) crafted on each model's parent
    probe_images: int | None = None  # None: DEFAULT_PROBE_IMAGES, or the whole test split where it is smaller
    # (attack, check, the attack it checks): derived attacks, and matrix attacks a check found already there
    uses: tuple[tuple[str, str, str], ...] = ()

    def probes(self, n_test: int) -> int:
        return min(DEFAULT_PROBE_IMAGES, n_test) if self.probe_images is None else self.probe_images

    def describe(self) -> dict[str, Any]:
        out = {**asdict(self), "from_parent": list(self.from_parent)}
        out.pop("uses")
        return out


def parse_checks(table: Any, attacks: dict[str, AttackSpec], matrix_families: list[str],
                 fail) -> tuple[Checks, dict[str, AttackSpec]]:
    """The [checks] table (absent: the probes only) and the attacks it derives from the matrix's attacks, by
    name (e.g. "fgsm.pgd", "fgsm.square", "fgsm.from-parent"; a swept attack's points keep their suffix)."""
    if table is None:
        return Checks(), {}
    if not isinstance(table, dict):
        raise fail("checks must be a table, e.g. [checks] multistep = { steps = 10 }")
    check_unknown(table, {"multistep", "black_box", "from_parent", "probe_images"}, "checks.", fail)
    probes = table.get("probe_images")
    if probes is not None and (not is_int(probes) or probes < 0):
        raise fail(f"checks.probe_images must be a non-negative integer (0: no probes), got {probes!r}")
    in_matrix = [a for a in attacks.values() if a.family in matrix_families and a.check is None
                 and a.minimal_eps is None]  # a per-image eps search has no one eps to check
    one_step = [a for a in in_matrix if a.adapter in ONE_STEP and a.source is None]
    derived: dict[str, AttackSpec] = {}
    uses: list[tuple[str, str, str]] = []
    multistep = _budget(table, "multistep", MULTISTEP_KEYS, {"steps": 10, "random_start": True}, fail)
    black_box = _budget(table, "black_box", BLACK_BOX_KEYS, {"n_queries": 1000, "p_init": 0.8}, fail)
    implied = black_box is not None and multistep is None
    if implied:  # Square is compared with FGSM and PGD together: the one-step attack alone would make Square look
        multistep = {"steps": 10, "random_start": True}  # strong
    for check, budget in (("multistep", multistep), ("black_box", black_box)):
        if budget is None:
            continue
        if not one_step:
            asked = "checks.black_box (and the PGD it brings)" if implied else f"checks.{check}"
            raise fail(f"{asked}: the matrix has no one-step attack ({', '.join(ONE_STEP)}, white-box, at one eps: "
                       "a transfer or minimal_eps one does not count) whose eps and space it would take")
        for a in one_step:
            eps = a.params.get("eps", 8 / 255)
            if not eps:  # eps = 0: nothing to compare
                continue
            space = a.params.get("space", "pixel")
            if check == "multistep":
                params = {"eps": eps, "alpha": 2.5 * eps / budget["steps"], "steps": budget["steps"],
                          "random_start": budget["random_start"], "space": space}
                adapter, suffix = "torchattacks.PGD", "pgd"
            else:
                params = {"norm": "Linf", "eps": eps, "n_queries": budget["n_queries"], "p_init": budget["p_init"],
                          "space": space}
                adapter, suffix = "torchattacks.Square", "square"
            same = _already(in_matrix, adapter, params)
            if same is not None:  # the matrix already has this attack: the check reads its evaluations
                uses.append((same.name, check, a.name))
                continue
            _add(derived, attacks, AttackSpec(_name(a, suffix), f"{a.family}.{suffix}", adapter, params, a.sweep,
                                              check=check, checks=a.name), fail)
    from_parent = table.get("from_parent", False)
    if from_parent is True:
        from_parent = [f for f in dict.fromkeys(a.family for a in in_matrix
                                                if a.source is None and a.adapter not in GRADIENT_FREE)]
    elif from_parent is False:
        from_parent = []
    elif not isinstance(from_parent, list) or not all(isinstance(f, str) for f in from_parent):
        raise fail("checks.from_parent must be true, false or a list of the matrix's attacks")
    repeated = sorted({f for f in from_parent if from_parent.count(f) > 1})
    if repeated:
        raise fail(f"checks.from_parent repeats {', '.join(map(repr, repeated))}")
    for family in from_parent:
        if family not in matrix_families:
            raise fail(f"checks.from_parent names {family!r}, which is not an attack of the matrix "
                       f"({', '.join(matrix_families)})")
        for a in in_matrix:
            if a.family == family:
                if a.source is not None:
                    raise fail(f"checks.from_parent: {family!r} is already a transfer attack (source = ...)")
                _add(derived, attacks, AttackSpec(_name(a, "from-parent"), f"{family}.from-parent", a.adapter,
                                                  dict(a.params), a.sweep, source=PARENT, check="from_parent",
                                                  checks=a.name), fail)
    uses += [(d.name, d.check, d.checks) for d in derived.values()]
    return Checks(multistep, black_box, tuple(from_parent), probes, tuple(uses)), derived


def _budget(table: dict, check: str, keys: dict[str, type], defaults: dict[str, Any], fail) -> dict | None:
    value = table.get(check)
    if value is None or value is False:
        return None
    if value is True:
        return dict(defaults)
    if not isinstance(value, dict):
        raise fail(f"checks.{check} must be true or a table, e.g. {check} = {{ {next(iter(keys))} = "
                   f"{defaults[next(iter(keys))]} }}")
    check_unknown(value, set(keys), f"checks.{check}.", fail)
    out = {**defaults, **value}
    for key, kind in keys.items():
        v = out[key]
        ok = isinstance(v, bool) if kind is bool else (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       and (kind is float or is_int(v)) and v > 0)
        if not ok:
            what = {bool: "true or false", int: "a positive integer"}.get(kind, "a positive number")
            raise fail(f"checks.{check}.{key} must be {what}, got {v!r}")
    for key, bound in BUDGET_BOUNDS.items():  # a budget that would make one node take hours
        if key in out and not isinstance(out[key], bool) and out[key] > bound:
            raise fail(f"checks.{check}.{key} = {out[key]!r}: at most {bound:,} (the cost grows with it; "
                       "`validate --cost` says what a budget costs)")
    if out.get("p_init", 0) > 1:  # Square's initial share of the image changed per query
        raise fail(f"checks.{check}.p_init is a fraction of the image, at most 1; got {out['p_init']!r}")
    return out


def _already(in_matrix: list[AttackSpec], adapter: str, params: dict) -> AttackSpec | None:
    """A white-box matrix attack with the same adapter and resolved parameters (defaults filled in)."""
    from adapters import get_attack

    wanted = get_attack(adapter, **params).describe()
    for a in in_matrix:
        if a.adapter == adapter and a.source is None and get_attack(a.adapter, **a.params).describe() == wanted:
            return a
    return None


def _name(a: AttackSpec, suffix: str) -> str:
    point = a.name[len(a.family):]  # "" or a sweep point's "@eps=0.01"
    return f"{a.family}.{suffix}{point}"


def _add(derived: dict[str, AttackSpec], attacks: dict[str, AttackSpec], spec: AttackSpec, fail) -> None:
    if spec.name in attacks or spec.name in derived:
        raise fail(f"checks: the derived attack {spec.name!r} clashes with an attack of that name; rename it")
    derived[spec.name] = spec
