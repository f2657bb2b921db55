"""`python -m benchmark {run,validate,attacks,report,check,perf}`. User errors: one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from benchmark.errors import UserError, one_line
from benchmark.graph import RunFailed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m benchmark",
                     description="Adversarial fine-tuning transfer benchmark (FGSM/JSMA on CIFAR-10 and beyond).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run every cell of one or more suites (resumes from finished work)")
    run.add_argument("suites", nargs="+", metavar="SUITE", help="suite TOML file(s), e.g. suites/paper.toml")
    run.add_argument("--out", help="output folder (default: runs/<suite name>); with several suites, the folder "
                                   "that holds one folder per suite (default: runs)")
    run.add_argument("--store", help="artefact store (default: runs/artefacts; OUT/artefacts with --out); on a "
                                     "cluster, a folder every worker can read and write")
    run.add_argument("--executor", default="local",
                     help="local (default): this process; ray: Ray actors, one per GPU or CPU (pip install '.[ray]'); "
                          "others as registered (benchmark.executor)")
    run.add_argument("--address", help="with --executor ray: join this running Ray cluster ('auto' or HOST:PORT) "
                                       "instead of starting a local instance")
    run.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    run.add_argument("--data-dir", help="CIFAR-10/100 root, or an image folder / .tar.gz standing in for it "
                                        "(default: the suite's data.path, else $BENCH_DATA_DIR, else the cache)")
    run.add_argument("--force", action="store_true", help="replace another suite's results in --out")

    validate = sub.add_parser("validate", help="check a suite and print its expanded plan; runs nothing")
    validate.add_argument("suite")
    validate.add_argument("--cost", action="store_true",
                          help="also say what `run` would cost on this machine (loads the data; measures a few "
                               "training steps and attack passes; reads the store)")
    validate.add_argument("--device", default="auto", help="with --cost: auto (default), cpu or cuda")
    validate.add_argument("--data-dir", help="with --cost: as for run")
    validate.add_argument("--store", help="with --cost: the artefact store run would use (default runs/artefacts)")

    attacks = sub.add_parser("attacks", help="list the attacks that run here; with NAME, that attack's parameters")
    attacks.add_argument("name", nargs="?", help="e.g. torchattacks.PGD: every parameter, its default, if required")

    rep = sub.add_parser("report", help="(re)write report.md and figures for a finished run")
    rep.add_argument("run_dir")
    rep.add_argument("--against", help="another run folder to compare with (e.g. paper-code against paper)")

    check = sub.add_parser("check", help="regression gate: compare a run's accuracies and ratios with a baseline")
    check.add_argument("run_dir")
    check.add_argument("--baseline", required=True,
                       help="a results.json, or a run folder (with examples.csv: tested per image)")
    check_bound = check.add_mutually_exclusive_group()  # a fixed bound has no significance level
    check_bound.add_argument("--alpha", type=float, default=0.01,
                             help="significance level of a drop (default 0.01; McNemar exact paired, else Fisher exact)")
    check_bound.add_argument("--tolerance", type=float, help="fixed absolute bound on a drop instead (e.g. 0.02)")
    check.add_argument("--either-way", action="store_true", help="also fail significant rises")

    perf = sub.add_parser("perf", help="throughput of training and attacks on this machine, as a table")
    perf.add_argument("--device", default="auto")
    perf.add_argument("--arch", default="small-cnn", help="small-cnn (default), resnet18-cifar, ...")
    perf.add_argument("--images", type=int, default=256, help="images per attack measurement")
    perf.add_argument("--run-dir", help="also print the stage times of this finished run")
    perf.add_argument("--out", help="also write the table as markdown to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
    try:
        return _dispatch(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:  # a node raised: what does not depend on it finished and is kept
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a registry's error (adapters.registry, imported only once needed): one line too
        registry = sys.modules.get("adapters.registry")
        if registry is None or not isinstance(exc, registry.RegistryError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; {_kept()}", file=sys.stderr)  # a newline: after a progress bar
        return 130


def _kept() -> str:
    """What an interrupted run leaves for a rerun, from what this process stored (context.KEPT)."""
    context = sys.modules.get("benchmark.context")
    kept = context.KEPT if context is not None else {"nodes": 0, "checkpoints": {}}
    parts = [f"{kept['nodes']} finished node(s)"] if kept["nodes"] else []
    parts += [f"the training checkpoint of {name} after epoch {epoch}" for name, epoch in kept["checkpoints"].items()]
    if not parts:
        return ("nothing was finished yet, so nothing is kept (base training checkpoints at the end of an epoch, "
                "at most once a minute)")
    return f"kept in the store: {' and '.join(parts)}; a rerun resumes from them"


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "validate":
        from benchmark import schema

        schema.precheck(args.suite)  # a misspelt key is answered before torch and the toolkits are imported
        from benchmark import preflight
        from benchmark.suite import load

        suite = load(args.suite)
        preflight.check_loaded(suite)  # reads checkpoints and imports factories: what can be found without running
        # The suite as it runs: every `extends` merged in, the files it came from.
        print(json.dumps({**suite.plan(), "files": suite.chain, "merged_suite": suite.raw}, indent=2))
        if args.cost:
            from benchmark.runner import estimate_cost

            print(estimate_cost([suite], device=args.device, data_dir=args.data_dir, store=args.store).line(),
                  file=sys.stderr)
        return 0
    if args.command == "attacks":
        from adapters import catalog

        try:
            print(catalog.details(args.name) if args.name else catalog.listing())
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return 0
    if args.command == "run":
        from benchmark import schema

        for path in args.suites:
            schema.precheck(path)
        from tabulate import tabulate

        from benchmark.runner import run_suites
        from benchmark.suite import load

        suites = [load(path) for path in args.suites]
        # --out: the suite's folder, or the folder of several suites' folders; the store's default follows it
        outs = None
        if args.out:
            outs = [Path(args.out)] if len(suites) == 1 else [Path(args.out) / s.name for s in suites]
        from benchmark.executor import EXECUTORS

        make = EXECUTORS.get(args.executor)
        if make is None:
            raise UserError(f"unknown executor {args.executor!r}; valid: {', '.join(EXECUTORS.names())}")
        from adapters.registry import RegistryError

        try:
            executor = make(args.address)
        except (UserError, RegistryError):
            raise
        except Exception as exc:  # noqa: BLE001  (a registered executor's own code: one line)
            raise UserError(f"executor {args.executor} failed to start: {one_line(exc)}") from None
        try:
            frames = run_suites(suites, outs, device=args.device, data_dir=args.data_dir, executor=executor,
                                store=args.store, force=args.force)
        finally:
            executor.close()
        for suite, frame, out in zip(suites, frames, outs or [Path("runs") / s.name for s in suites]):
            table = (frame.groupby(["model", "attack", "size"], sort=False)[["orig_acc", "adv_acc", "ratio"]]
                     .mean().reset_index())
            if len(suites) > 1:
                print(f"\n{suite.name}")
            print(tabulate(table, headers="keys", tablefmt="github", floatfmt=".3f", showindex=False))
            print(f"\nresults: {out / 'results.json'}\nreport:  {out / 'report.md'}")
        return 0
    if args.command == "report":
        from benchmark import report

        print(report.write(Path(args.run_dir), against=Path(args.against) if args.against else None))
        return 0
    if args.command == "check":
        from benchmark import check

        return check.main(Path(args.run_dir), Path(args.baseline), alpha=args.alpha, tolerance=args.tolerance,
                          either_way=args.either_way)
    if args.command == "perf":
        from benchmark import perf

        print(perf.main(device=args.device, arch=args.arch, images=args.images,
                        run_dir=Path(args.run_dir) if args.run_dir else None,
                        out=Path(args.out) if args.out else None))
        return 0
    raise AssertionError(args.command)
