"""What a node computes with, wherever it runs: a suite's context, the cache every node goes through, and the
models a process builds once.

    ctx = work.context()                               # a suite's Context in the process that computes its nodes
    cached(ctx, kind, key, compute, tensors=...)       # stored record while its code is unchanged, else compute()
    load_model(ctx, name)                              # a model of the suite on the device, built once

Every record `cached` stores carries the manifest of the code its computation ran (benchmark.fingerprint) and is
served only while that code is unchanged; a node being computed is claimed in the store (Store.claim), so a
second run over the same store waits for it rather than computing it again.
"""
from __future__ import annotations

import copy
import platform
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark import data as datasets
from benchmark import env, evaluate, fingerprint, models, sources
from benchmark.store import Store
from benchmark.suite import AttackSpec, Suite


@dataclass(frozen=True)
class Evaluation:
    model: str
    attack: AttackSpec
    seed: int
    size: int  # the largest evaluation size: smaller ones are its prefixes
    source: str | None = None  # a transfer attack's images are crafted on this model (benchmark.transfer)


@dataclass
class Context:
    """One suite's context in the process that computes its nodes (built by Work.context())."""
    suite: Suite
    data: datasets.Dataset
    device: torch.device
    store: Store
    versions: dict[str, str]
    model_info: dict[str, dict] = field(default_factory=dict)  # the models this process's nodes depend on
    loaded_sources: dict[str, sources.Loaded] = field(default_factory=dict)  # models loaded, not trained
    threads: int = field(default_factory=torch.get_num_threads)
    _loaded: dict[str, torch.nn.Module] = field(default_factory=dict)

    def made_with(self, node: str) -> dict[str, Any]:
        """What every artefact key carries besides its own inputs: the data, the libraries that can change this
        kind of node's numbers (env.NUMERIC: an ART upgrade re-runs attacks, not training), the kind of device
        (CPU and CUDA kernels round differently) and on a CPU the thread count (oneDNN's convolutions round
        differently with another: a key never serves a number computed otherwise)."""
        return {"data": self.data.identity["pixels"], "versions": env.numeric_versions(self.versions, node),
                "device": self.device.type, **({"cpu_threads": self.threads} if self.device.type == "cpu" else {})}


@dataclass
class Work:
    """A suite's share of a command, as every worker needs it (benchmark.graph.Work): its data on the CPU, its
    loaded models, the store's folder and the driver's library versions and code, which a worker checks."""
    suite: Suite
    data: datasets.Dataset
    device: torch.device
    store_root: Path
    versions: dict[str, str]
    loaded_sources: dict[str, sources.Loaded]
    code: str  # fingerprint.packages() on the driver
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def by_value(self) -> list:
        return sources.unimportable_modules(self.loaded_sources.values())

    def context(self) -> Context:
        here = env.versions()
        differ = [f"{k} {here[k]} (driver {self.versions[k]})" for k in env.NUMERIC["attack"]
                  if here[k] != self.versions[k]]
        if differ or fingerprint.packages() != self.code:
            raise RuntimeError(f"worker {platform.node()} has other {'code' if not differ else ', '.join(differ)} "
                               "than the driver: every worker needs the driver's environment and checkout")
        return Context(self.suite, self.data.to(self.device), self.device, Store(self.store_root), self.versions,
                       loaded_sources=self.loaded_sources)


def load_model(ctx: Context, name: str) -> torch.nn.Module:
    """A model of the suite on the device, built once per process; the code that built it counts as run by
    every node that uses it (fingerprint.include)."""
    if name not in ctx._loaded:
        info = ctx.model_info[name]
        root = ctx.suite.root(name)
        with fingerprint.record() as built:
            model = (copy.deepcopy(ctx.loaded_sources[root.name].module) if root.loaded else
                     models.build(root.entry["arch"], mean=root.entry["mean"], std=root.entry["std"],
                                  num_classes=len(ctx.data.classes)))
            model.load_state_dict(ctx.store.get_tensors("models", info["key"], ctx.device))
            model = model.to(ctx.device).eval()
            if ctx.device.type == "cuda":  # the layout cuDNN's fastest convolutions want; attacks stay in fp32
                model = model.to(memory_format=torch.channels_last)
        ctx._loaded[name] = model, built.codes
    model, codes = ctx._loaded[name]
    fingerprint.include(codes)
    return model


# What this process has stored so far, for the line an interrupted run ends with (cli._kept); with the Ray
# executor the workers store, and this stays empty.
KEPT: dict[str, Any] = {"nodes": 0, "checkpoints": {}}


def cached(ctx: Context, kind: str, key: str, compute, *, tensors: str | None = None) -> dict:
    """The record stored under kind/key, while the code that computed it is unchanged (fingerprint.unchanged)
    and, with `tensors`, its tensors are intact; else `compute()` (which writes the tensors and returns the
    record), claimed in the store so that another process wanting it waits, recorded (fingerprint.record) and
    stored with the manifest of the code it ran. The value says whether it was computed here ("computed")."""
    def stored() -> dict | None:
        info = ctx.store.get_json(kind, key)
        if info is None or not fingerprint.unchanged(info.get("code")):
            return None
        return info if tensors is None or ctx.store.get_tensors(tensors, key) is not None else None

    info = stored()
    if info is None:
        with ctx.store.claim(kind, key):
            info = stored()  # another process may have finished it while this one waited
            if info is None:
                with fingerprint.record() as ran:
                    # This function and the OOM fallback shape what is stored but started before the recorder.
                    ran.include({cached.__code__: __name__, evaluate.halving_on_oom.__code__: evaluate.__name__,
                                 datasets.Dataset.__post_init__.__code__: datasets.__name__,
                                 datasets.Dataset.to.__code__: datasets.__name__})  # the data's layout
                    info = compute()
                ctx.store.put_json(kind, key, {**info, "code": ran.manifest()})
                KEPT["nodes"] += 1
                return {**info, "computed": True}
    return {**{k: v for k, v in info.items() if k != "code"}, "computed": False}
