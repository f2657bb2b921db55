"""Whether two runs of one suite gave the same numbers: cells, examples.csv and every model's key and weights,
compared exactly (the refactor check of issue 20). Run: `python benchmarks/same_cells.py RUN_A RUN_B`."""
from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path


def examples_bytes(run: Path) -> bytes:
    """examples.csv as written (a committed folder may hold it gzipped: compared unpacked)."""
    plain = run / "examples.csv"
    return plain.read_bytes() if plain.is_file() else gzip.decompress((run / "examples.csv.gz").read_bytes())


def main(a: Path, b: Path) -> int:
    ra, rb = (json.loads((p / "results.json").read_text()) for p in (a, b))
    ea, eb = (examples_bytes(p) for p in (a, b))
    keys = [{k: (v.get("key"), v.get("weights")) for k, v in r["models"].items()} for r in (ra, rb)]
    same = {"cells": ra["cells"] == rb["cells"], "examples.csv": ea == eb, "model keys and weights": keys[0] == keys[1]}
    print(f"{len(ra['cells'])} and {len(rb['cells'])} cells; examples.csv sha256 "
          f"{hashlib.sha256(ea).hexdigest()[:12]} and {hashlib.sha256(eb).hexdigest()[:12]}")
    for what, equal in same.items():
        print(f"{what}: {'identical' if equal else 'DIFFER'}")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
