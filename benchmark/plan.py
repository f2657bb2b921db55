"""Planning: every suite of a command as one graph of nodes (benchmark.graph) with ids that hash what determines
them, so a node two suites share (same data, recipe, attack...) is one node and runs once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from benchmark.context import Evaluation, Work
from benchmark.graph import Node
from benchmark.nodes import (adversarial_set_node, base_model_node, build_attack, evaluation_node, finetune_node,
                             recipe_identity)
from benchmark.suite import digest
from benchmark.minimal import minimal_node
from benchmark.transfer import crafted_node, probe_node, transfer_node


@dataclass
class Plan:
    """One suite's nodes: its models' node ids and its evaluations with theirs."""
    models: dict[str, str]
    evaluations: list[tuple[Evaluation, str]]
    node_ids: set[str]
    stages: dict[str, str]  # node id -> timing label
    probes: dict[str, str] = field(default_factory=dict)  # model -> its probe node (benchmark.transfer)


def plan_graph(works: list[Work]) -> tuple[list[Node], list[Plan]]:
    """Every suite's nodes in one graph. A node's id hashes what determines it with its dependencies' ids in
    place of their values (weights are known only once computed), so equal nodes of two suites are one."""
    nodes: dict[str, Node] = {}
    plans = []

    def add(node: Node, plan: Plan) -> str:
        nodes.setdefault(node.id, node)
        plan.node_ids.add(node.id)
        plan.stages[node.id] = node.stage
        return node.id

    for work in works:
        suite, plan = work.suite, Plan({}, [], set(), {})
        # Besides its own inputs, what a node's result depends on within one command (versions and code are one).
        same = {"data": work.data.identity["pixels"], "device": work.device.type}
        batch = {"attack_batch": suite.eval_batch_size}  # rounding can follow the attack batch
        label = f"{suite.name}: " if len(works) > 1 else ""  # failures name the suite when there are several
        for spec in suite.models.values():
            stage, e = f"model:{spec.name}", spec.entry
            if spec.parent is None:
                what = (work.loaded_sources[spec.name].identity if spec.loaded else recipe_identity(e))
                node = Node(digest(["model", what, same]), f"{label}{'load' if spec.loaded else 'train'} {spec.name}",
                            stage, work.token, (), partial(base_model_node, name=spec.name))
                plan.models[spec.name] = add(node, plan)
                continue
            parent = plan.models[spec.parent]
            adv = add(Node(digest(["adversarial-set", e, parent, same, batch]),
                           f"{label}perturb {e['images']} for {spec.name}", stage, work.token, (parent,),
                           partial(adversarial_set_node, name=spec.name, parent=parent)), plan)
            plan.models[spec.name] = add(Node(
                digest(["finetune", e, parent, adv, same]), f"{label}fine-tune {spec.name}", stage, work.token,
                (parent, adv), partial(finetune_node, name=spec.name, parent=parent, adversarial_set=adv)), plan)
        size = max(suite.sizes)
        jobs = []
        for model in suite.matrix_models:
            for attack_name in suite.evaluated_attacks:
                spec = suite.attacks[attack_name]
                if not suite.evaluates(model, spec):
                    continue
                for seed in suite.seeds:
                    job = Evaluation(model, spec, seed, size, suite.source_of(spec, model))
                    jobs.append((job, [spec.adapter, build_attack(spec, seed).describe(), seed, size]))

        def crafted_on(job: Evaluation, what: list, *, source: str) -> str:
            """The node of the images `job`'s attack crafts on `source` for its seed: once, whatever reads them."""
            return add(Node(digest(["crafted", plan.models[source], what, same, batch]),
                            f"{label}craft {job.attack.name} on {source} (seed {job.seed})",
                            f"attack:{job.attack.name}", work.token, (plan.models[source],),
                            partial(crafted_node, job=job, source=plan.models[source])), plan)

        crafted = {digest(["crafted", plan.models[job.source], what, same, batch]): (job, what)
                   for job, what in jobs if job.source is not None}
        for job, what in jobs:
            model, attack_name = job.model, job.attack.name
            title = f"{label}{attack_name} on {model} (seed {job.seed})"
            mine = digest(["crafted", plan.models[model], what, same, batch])
            source = job.source
            if source is None and not job.attack.minimal_eps and mine in crafted:
                # A transfer from this model crafts the images its own white-box evaluation would: read them.
                source = model
            if source is None:  # a per-image eps search (benchmark.minimal) or one evaluation
                run = minimal_node if job.attack.minimal_eps else evaluation_node
                node = Node(digest(["evaluation", plan.models[model], what, job.attack.minimal_eps, same, batch]),
                            title, f"attack:{attack_name}", work.token, (plan.models[model],),
                            partial(run, job=job, model=plan.models[model]))
            else:  # crafted once per source, attack and seed; evaluated on each target
                images = crafted_on(*(crafted[mine] if job.source is None else (job, what)), source=source)
                node = Node(digest(["transfer", plan.models[model], images, same]), title,
                            f"attack:{attack_name}", work.token, (plan.models[model], images),
                            partial(transfer_node, job=job, model=plan.models[model], crafted=images))
            plan.evaluations.append((job, add(node, plan)))
        for model in suite.matrix_models:
            n = suite.checks.probes(len(work.data.test_y))
            if n:
                plan.probes[model] = add(Node(digest(["probes", plan.models[model], n, same]),
                                              f"{label}probe {model}", "checks", work.token, (plan.models[model],),
                                              partial(probe_node, name=model, node=plan.models[model])), plan)
        plans.append(plan)
    return list(nodes.values()), plans
