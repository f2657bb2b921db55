"""Adversarial fine-tuning transfer benchmark. `run_suite(path)` runs a suite and returns a DataFrame."""
from __future__ import annotations


def run_suite(*args, **kwargs):
    from benchmark.runner import run_suite as _run

    return _run(*args, **kwargs)


__all__ = ["run_suite"]
