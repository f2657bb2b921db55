"""Checks a run makes before its first model trains, so bad input costs seconds and writes nothing, and the lock
that keeps two runs off one output folder.

    check_writable(out)              # the output folder can be created and written
    check_same_suite(out, name, path) # and holds no other suite's results
    check_models(suite, data)        # every base model takes the data's images (one forward pass each)
    load_all(suite, n, sample)       # every loaded model read, built and checked against the data
    check_loaded(suite)              # as far as `validate` can without the data
    claim = Claim(out)               # exclusive until released, garbage-collected or the process dies
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from benchmark import sources
from benchmark.data import KNOWN_SHAPES
from benchmark.errors import UserError

LOCK_NAME = ".lock"


def check_writable(out: str | os.PathLike) -> None:
    """Refuse an output folder that cannot be created or written (read-only, or under a regular file)."""
    out = Path(out)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write to {out}: {existing} is a file, not a folder")
    for folder in (existing, out / "artefacts"):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to {out}: {folder} is not writable")
    try:  # os.access trusts the mode bits; a pseudo filesystem (/proc) or a read-only mount says no only here
        tempfile.TemporaryDirectory(dir=existing, prefix=".bench-probe-").cleanup()
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {existing} refuses new folders ({exc.strerror or exc})") from None


def check_models(suite, data) -> None:
    """One forward pass of every base model (as the suite builds it) on one test image of `data`; a model that
    cannot take the images is refused with both shapes, before anything trains."""
    import torch

    image = data.test_x[:1].float().cpu() / 255
    shape = "x".join(map(str, image.shape[1:]))
    for spec in suite.models.values():
        if spec.parent is None and not spec.loaded:  # loaded models: sources.load_all checks them
            with torch.no_grad(), torch.random.fork_rng(devices=[]):  # building draws weights: keep the RNG
                failure = _forward_failure(spec, image, len(data.classes))
            if failure:
                raise UserError(f"{suite.path}: models.{spec.name} ({spec.entry['arch']}) cannot take the data's "
                                f"{shape} images{failure}")


def _forward_failure(spec, image, num_classes: int) -> str | None:
    """None when the model takes `image`; else what went wrong, with the shape it takes when that is CIFAR's."""
    import torch

    from adapters.catalog import describe_failure
    from benchmark import models

    e = spec.entry
    model = models.build(e["arch"], mean=e["mean"], std=e["std"], num_classes=num_classes).eval()
    try:
        model(image)
        return None
    except RuntimeError as exc:
        failure = describe_failure(exc)
    try:
        model(torch.zeros(1, 3, 32, 32))
        return f" (it takes 3x32x32): {failure}"
    except RuntimeError:
        return f": {failure}"


def check_same_suite(out: Path, name: str, path: str) -> None:
    """Refuse a results folder that holds another suite's results (they would be replaced without a word)."""
    import json

    existing = Path(out) / "results.json"
    if not existing.is_file():
        return
    try:
        held = json.loads(existing.read_text()).get("suite_name")
    except (OSError, ValueError, AttributeError):
        return  # a damaged folder: the run rewrites it
    if held is not None and held != name:
        raise UserError(f"{out} holds the results of suite {held!r}, not of {name!r} ({path}): give another --out, "
                        "or --force to replace them")


class Claim:
    """An exclusive claim on an output folder: `fcntl.flock` on `<out>/.lock`, which holds the claimant's pid.
    The kernel drops the lock when the file closes or the process dies, so kill -9 never leaves it stuck.
    A second claim while one is held raises UserError naming the holder's pid."""

    def __init__(self, out: str | os.PathLike):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self._file = open(out / LOCK_NAME, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise UserError(f"another run (pid {holder}) is using {out}; wait for it to finish or pass another "
                            "--out") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        file = getattr(self, "_file", None)  # absent when __init__ failed before opening it
        if file is not None and not file.closed:
            file.close()

    __del__ = release


# ------------------------------------------------------------------------------------------ loaded models
def load_all(suite, num_classes: int, sample: torch.Tensor | None,
             modules: dict[str, torch.nn.Module] | None = None) -> dict[str, sources.Loaded]:
    """Every loaded model of the suite, read and checked against the data before the runner writes anything.
    What a user's factory prints goes to stderr: stdout carries `validate`'s JSON plan and `run`'s tables."""
    import contextlib
    import sys

    out = {}
    with contextlib.redirect_stdout(sys.stderr):
        for name, spec in suite.models.items():
            if spec.entry.get("source") == "in-memory" and modules is not None:
                out[name] = sources.provided(modules[name], num_classes, sample, name)
            elif spec.entry.get("source") in ("checkpoint", "robustbench"):
                out[name] = sources.load(spec.entry, num_classes, sample, name)
                check_weights(spec.entry, name)
    return out


def check_weights(entry: dict, name: str) -> None:
    """A checkpoint whose floating-point weights hold NaN or inf, or with integer weights (a model that computes
    nothing, or a constant at chance), refused before work, naming the tensors."""
    file = entry.get("file")
    if not file or not str(file).endswith((".pt", ".pth", ".safetensors", ".bin")):
        return
    try:
        state = sources.read_state(Path(file))
    except UserError:
        return  # sources.load has said what is wrong with it
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"models.{name}: {Path(file).name} holds NaN or inf in {len(bad)} tensor(s): "
                        f"{', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}")
    weights = [k for k in tensors if k.endswith(("weight", "bias")) and not k.endswith("num_batches_tracked")]
    integer = [k for k in weights if not tensors[k].is_floating_point()]
    if integer:
        raise UserError(f"models.{name}: {Path(file).name} holds integer weights ({len(integer)} of {len(weights)} "
                        f"tensors, e.g. {integer[0]}: {tensors[integer[0]].dtype}); a network's weights are floating "
                        "point (saved after a cast?)")


def check_loaded(suite) -> None:
    """What `validate` can find without running: unreadable or unfit checkpoints, factories that do not import
    or build, output widths that do not match the data (where its class count and image size are known
    without reading it: CIFAR, synthetic, a folder given as a directory), and attacks the models or the data
    cannot take (check_attacks)."""
    known = KNOWN_SHAPES.get(suite.data["source"])
    num_classes, size = (known.classes if known else None), (32, 32)
    path = suite.path.parent / suite.data["path"] if "path" in suite.data else None
    if suite.data["source"] == "folder":
        num_classes, size = _folder_shape(path) if path is not None and path.is_dir() else (None, None)
    loaded = {}
    if any(s.entry.get("source") in ("checkpoint", "robustbench") for s in suite.models.values()):
        sample = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) if size else None
        loaded = load_all(suite, num_classes, sample)
    check_attacks(suite, num_classes, loaded)


def check_attacks(suite, num_classes: int | None, loaded: dict[str, sources.Loaded]) -> None:
    """Attacks that would fail on these models or data at run time, refused now: one in normalized space on a
    loaded model without its normalization as a separate layer (no mean/std given), and torchattacks' JSMA on
    fewer than 10 classes (it targets (label + 1) mod 10)."""
    from adapters import get_attack

    used = list(suite.evaluated_attacks) + [s.entry["attack"] for s in suite.models.values()
                                            if s.parent is not None and s.entry["attack"] in suite.attacks]
    for spec in (suite.attacks[name] for name in dict.fromkeys(used)):
        if spec.adapter == "torchattacks.JSMA" and num_classes is not None and num_classes < 10:
            raise UserError(f"{suite.path}: attacks.{spec.family}: torchattacks.JSMA assumes 10 classes (it targets "
                            f"(label + 1) mod 10) and the data has {num_classes}: use jsma-origin or "
                            "art.SaliencyMapMethod")
        if get_attack(spec.adapter, **spec.params).describe().get("space") != "normalized":
            continue
        for name, module in loaded.items():
            if not hasattr(module.module, "normalize"):
                recipe = suite.models[name].recipe
                raise UserError(f"{suite.path}: attacks.{spec.family} acts in normalized space (space = "
                                f"'normalized', or jsma-origin's paper-code mode), which needs the model's "
                                f"normalization as a separate layer: give models.{recipe} mean = [...] and "
                                "std = [...] (its factory then takes [0,1] images without normalizing them)")


def _folder_shape(path: Path) -> tuple[int | None, tuple[int, int] | None]:
    from PIL import Image

    train = next((p / "train" for p in (path, *sorted(q for q in path.iterdir() if q.is_dir()))
                  if (p / "train").is_dir()), None)
    if train is None:
        return None, None
    classes = sorted(p for p in train.iterdir() if p.is_dir())
    first = next((f for c in classes for f in sorted(c.iterdir()) if f.is_file()), None)
    try:
        with Image.open(first) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001  (not an image: loading the data reports it)
        return len(classes), None
    return len(classes), (height, width)
