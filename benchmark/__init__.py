"""Adversarial fine-tuning transfer benchmark. `run_suite(path)` runs a suite and returns a DataFrame.

Where things live (README, Layout): the suite schema (suite, entries, extends), data and models (data, models,
builders, sources), the work (context, nodes, plan, executor, runner), the record of what ran (store,
code_hashes, fingerprint), the numbers (stats, claims) and the report (report/, one module per section). Attacks
are the separate lower package `adapters`. Extension points are registries (adapters.registry) open to other
packages' entry points.
"""
from __future__ import annotations


def run_suite(*args, **kwargs):
    from benchmark.runner import run_suite as _run

    return _run(*args, **kwargs)


__all__ = ["run_suite"]
