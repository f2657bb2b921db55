"""Which attacks run here, what each takes, and a trial run that lets the toolkits' own checks fire early.

    trial(get_attack("torchattacks.FGSM", eps="0.01"))   # raises the toolkit's TypeError, in milliseconds
    runnable()                                             # {"jsma-origin": {...}, "torchattacks.FGSM": {...}, ...}

The toolkits check their parameters' types only when they build or run an attack, so `trial` does both, once, on
two random 3x8x8 images through a stand-in classifier (one convolution, ten classes, normalization as its first
layer so `space="normalized"` works too). A trial stops quietly after `seconds`: by then the parameters have been
used. `runnable()` lists only the attacks whose defaults survive a trial; `listing()` and `details(name)` are
what `python -m benchmark attacks [NAME]` prints.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import random
import signal
import sys
import threading
import time
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from adapters.base import Attack

STAND_IN_SHAPE = (3, 8, 8)
STAND_IN_CLASSES = 10
REQUIRED = inspect.Parameter.empty
# Why a table: neither toolkit exposes an attack's distance measure as data (attacks with a `norm` parameter
# show its default instead).
NORMS = {"L0": ("JSMA", "OnePixel", "Pixle", "SparseFool", "SaliencyMapMethod", "PixelAttack", "CarliniL0Method"),
         "L1+L2": ("EADEN", "ElasticNet"), "L1": ("EADL1",),
         "L2": ("PGDL2", "PGDRSL2", "CW", "DeepFool", "CarliniL2Method", "NewtonFool", "ZooAttack",
                "BoundaryAttack"),
         "Linf": ("FGSM", "BIM", "PGD", "RFGSM", "FFGSM", "TPGD", "MIFGSM", "DIFGSM", "TIFGSM", "NIFGSM", "SINIFGSM",
                  "VMIFGSM", "VNIFGSM", "EOTPGD", "UPGD", "Jitter", "PGDRS", "PIFGSM", "PIFGSMPP", "SPSA",
                  "BasicIterativeMethod", "CarliniLInfMethod"),
         "Gaussian noise": ("GN",), "rotation/shift": ("SpatialTransformation",)}
# Attacks that only query the model's outputs (the rest use its gradients), for the same reason.
BLACK_BOX = ("Square", "SquareAttack", "OnePixel", "Pixle", "PixelAttack", "SPSA", "BoundaryAttack", "HopSkipJump",
             "ZooAttack", "SimBA", "GeoDA", "SignOPTAttack", "SpatialTransformation", "GN")
MAIN = ("mode", "eps", "alpha", "eps_step", "steps", "max_iter", "n_queries", "theta", "gamma", "c", "kappa",
        "confidence", "targets", "version", "std")


class StandIn(nn.Module):
    """A one-convolution classifier of 3x8x8 [0,1] images into ten classes, normalizing inside (mean/std 0.5) with
    `normalize`, `net` and `denormalize` apart, like benchmark.models.Normalized."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(),
                                 nn.Linear(4 * STAND_IN_SHAPE[1] * STAND_IN_SHAPE[2], STAND_IN_CLASSES))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.5

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * 0.5 + 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class _TimeUp(BaseException):  # not an Exception: toolkits' own `except Exception` must not swallow it
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _TimeUp in this thread after `seconds` of work, never inside an import (a half-imported module
    would break every later call) and with the clock restarted after one (a toolkit's lazy imports are not
    work). SIGALRM, so the main thread only; elsewhere no limit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    importing = [False]

    def expire(_signum, frame):
        while frame is not None:
            if "importlib._bootstrap" in frame.f_code.co_filename:
                importing[0] = True
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                return
            frame = frame.f_back
        if importing[0]:
            importing[0] = False
            signal.setitimer(signal.ITIMER_REAL, seconds)
            return
        raise _TimeUp

    previous = signal.signal(signal.SIGALRM, expire)
    started = time.monotonic()
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # a caller's own alarm (pytest-timeout, say) keeps running
            left = max(outer_delay - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


@contextlib.contextmanager
def _quiet_and_stateless() -> Iterator[None]:
    """No warnings or toolkit log lines on stderr, and every global RNG (torch, numpy, random) as it was; so too
    torch's grad mode, which a time limit landing inside a toolkit's `with torch.no_grad()` (after it set the
    mode, before its `__exit__` was armed) would otherwise leave switched off for every later call."""
    np_state, py_state = np.random.get_state(), random.getstate()
    grad = torch.is_grad_enabled()
    art_log = logging.getLogger("art")
    level = art_log.level
    art_log.setLevel(logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        art_log.setLevel(level)
        np.random.set_state(np_state)
        random.setstate(py_state)
        torch.set_grad_enabled(grad)


def trial(attack: Attack, seconds: float = 1.0) -> None:
    """Run `attack` once on two random 3x8x8 images through `StandIn`; raise whatever it raises, or ValueError
    when it does not return one adversarial image per input. Stops quietly after `seconds` of work."""
    with _quiet_and_stateless():
        torch.manual_seed(0)
        model = StandIn().eval()
        images, labels = torch.rand(2, *STAND_IN_SHAPE), torch.tensor([0, 1])
        try:
            with _time_limit(seconds):
                adv = attack(model, images, labels)
        except _TimeUp:
            return
    if not isinstance(adv, torch.Tensor) or adv.shape != images.shape:
        raise ValueError(f"returns {type(adv).__name__}, not one adversarial image per input image")


def describe_failure(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message, at most 160 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def candidates() -> dict[str, dict[str, Any]]:
    """Every attack name the registered families accept, with its parameters and defaults (REQUIRED where none)."""
    from adapters.families import ATTACK_FAMILIES

    out: dict[str, dict[str, Any]] = {}
    for name, family in ATTACK_FAMILIES.items():
        try:
            out.update(family.members())
        except Exception as exc:  # noqa: BLE001  (a registered family's own code: the rest still lists)
            print(f"attacks: family {name} left out: its members() failed: {describe_failure(exc)}",
                  file=sys.stderr)
    return out


@functools.lru_cache(maxsize=1)
def runnable(seconds: float = 0.3) -> dict[str, dict[str, Any]]:
    """The candidates whose defaults build and survive a trial here (ART's TensorFlow, audio, detector, patch
    and tabular attacks do not), with their parameters and defaults."""
    from adapters import get_attack

    out = {}
    for name, params in candidates().items():
        try:
            trial(get_attack(name), seconds)
        except Exception:  # noqa: BLE001  (anything a toolkit raises means: does not run here)
            continue
        out[name] = params
    return out


def threat_model(name: str, params: dict[str, Any]) -> str:
    """'white-box, Linf' and the like: gradient access or queries only, and the distance measure."""
    cls_name = name.rpartition(".")[2]
    if name == "jsma-origin":
        return "white-box, L0"
    norm = params.get("norm")
    if norm is None or norm is REQUIRED:
        norm = next((n for n, names in NORMS.items() if cls_name in names), "?")
    elif isinstance(norm, float) and np.isinf(norm):
        norm = "Linf"
    elif isinstance(norm, (int, float)):
        norm = f"L{norm:g}"
    return f"{'black-box' if cls_name in BLACK_BOX else 'white-box'}, {norm}"


def format_value(value: Any) -> str:
    if value is REQUIRED:
        return "(required)"
    if isinstance(value, bool):  # as a suite (TOML) spells it
        return str(value).lower()
    if isinstance(value, float):  # torchattacks' defaults are in 255ths (8/255 reads better than 0.03137)
        in_255ths = value * 255
        whole = 0 < value < 1 and abs(in_255ths - round(in_255ths)) < 1e-9
        return f"{round(in_255ths)}/255" if whole else f"{value:.4g}"
    return repr(value)


def main_parameters(params: dict[str, Any], limit: int = 4) -> str:
    """The few parameters that define an attack's strength, with defaults (required ones first)."""
    required = [k for k, v in params.items() if v is REQUIRED]
    shown = required + [k for k in MAIN if k in params and k not in required and params[k] is not None]
    return ", ".join(f"{k}={format_value(params[k])}" for k in shown[:limit])


NOTES = {"space": "pixel | normalized: where eps and the [0,1] clip act (see adapters.base)",
         "seed": "seeds the attack's randomness (random starts, targets)",
         "targets": "random | next | least-likely target rule; None: untargeted (ART only)"}


def _notes(name: str, key: str) -> str:
    if name.startswith("art.") and key == "batch_size":
        return "None: the whole batch handed in"
    if name == "jsma-origin" and key == "space":
        return "None: pixel, or normalized with mode paper-code"
    return NOTES.get(key, "")


def listing(width: int = 100) -> str:
    """The runnable attacks as a table no wider than `width`: name, threat model / norm, main parameters."""
    from tabulate import tabulate

    rows = [(name, threat_model(name, params), main_parameters(params)) for name, params in runnable().items()]
    fixed = max(len(r[0]) for r in rows) + max(len(r[1]) for r in rows) + 4  # two 2-space gaps in "simple"
    return tabulate(rows, headers=["attack", "threat model, norm", "main parameters (defaults)"], tablefmt="simple",
                    disable_numparse=True, maxcolwidths=[None, None, max(20, width - fixed)])


def details(name: str) -> str:
    """One attack's parameters, defaults and which are required; ValueError naming why when it cannot run here."""
    from tabulate import tabulate

    from adapters import get_attack

    params = runnable().get(name)
    if params is None:
        try:
            attack = get_attack(name)  # an unknown name or an unsupported class raises here, saying why
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001  (a registered family's own code)
            raise ValueError(f"{name} failed to build: {describe_failure(exc)}") from None
        try:
            trial(attack, 0.3)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{name} does not run here: {describe_failure(exc)}") from None
        raise ValueError(f"{name} does not run here")
    rows = [(key, "required" if value is REQUIRED else format_value(value), _notes(name, key))
            for key, value in params.items()]
    head = f"{name}: {threat_model(name, params)}"
    return head + "\n\n" + tabulate(rows, headers=["parameter", "default", ""], tablefmt="simple",
                                    disable_numparse=True, maxcolwidths=[None, 30, 50])


def culprit(name: str, params: dict[str, Any], seconds: float = 1.0) -> str | None:
    """The one parameter of a failing attack whose default instead lets it through a trial, or None."""
    from adapters import get_attack

    for key in params:
        try:
            trial(get_attack(name, **{k: v for k, v in params.items() if k != key}), seconds)
        except Exception:  # noqa: BLE001  (still failing: not this parameter alone)
            continue
        return key
    return None
