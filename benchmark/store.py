"""Artefacts on disk, keyed by a hash of everything that determines them, written atomically, verified on read.

Each artefact is a payload file plus `<key>.sha256`, written after it. A payload whose checksum does not match is
reported and rebuilt; a payload without its checksum file (a kill between the two renames) is simply rebuilt.

`claim(kind, key)` is held while a node computes: another process (a second run over the same store, a Ray
worker) that wants the same artefact waits for it instead of computing it again. It is `fcntl.flock` on
`locks/<kind>/<key>.lock`, which the kernel drops when the holder dies, so `kill -9` never leaves it stuck.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import UserError


def atomic_write(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all. A write that fails (a full disk, a file-size limit, no permission)
    leaves no temporary file and is one line naming the file and the cause (UserError)."""
    # Unique across processes and hosts: workers of a cluster may share the folder (and a pid, in containers).
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc} (errno {exc.errno}); free space or lift the "
                        "limit, then run again: finished work is kept in the store") from None
    except BaseException:  # an interrupt between open and rename
        tmp.unlink(missing_ok=True)
        raise


def atomic_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """Content hash of named tensors (order-independent of file layout): identifies weights and image sets."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _paths(self, kind: str, key: str, suffix: str) -> tuple[Path, Path]:
        base = self.root / kind / key
        return base.with_suffix(suffix), base.with_suffix(".sha256")

    def _read(self, kind: str, key: str, suffix: str) -> bytes | None:
        payload, check = self._paths(kind, key, suffix)
        if not payload.exists() or not check.exists():
            return None
        data = payload.read_bytes()
        if sha256(data) != check.read_text().strip():
            time.sleep(0.05)  # a writer between its two renames (payload, then checksum): read both once more
            data = payload.read_bytes() if payload.exists() else b""
            if check.exists() and sha256(data) == check.read_text().strip():
                return data
            warnings.warn(f"artefact {payload} is corrupted (checksum mismatch); rebuilding it", stacklevel=3)
            payload.unlink(missing_ok=True)
            check.unlink(missing_ok=True)
            return None
        return data

    def _write(self, kind: str, key: str, suffix: str, data: bytes) -> None:
        payload, check = self._paths(kind, key, suffix)
        atomic_write(payload, data)
        atomic_write(check, sha256(data).encode())

    def get_tensors(self, kind: str, key: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor] | None:
        import io

        data = self._read(kind, key, ".pt")
        return None if data is None else torch.load(io.BytesIO(data), map_location=device, weights_only=True)

    def put_tensors(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        self.put_state(kind, key, {k: v.detach().cpu() for k, v in tensors.items()})

    def put_state(self, kind: str, key: str, state: Any) -> None:
        """Any nest of dicts, lists, numbers and tensors (a training checkpoint), readable with get_tensors."""
        import io

        buffer = io.BytesIO()
        torch.save(state, buffer)
        self._write(kind, key, ".pt", buffer.getvalue())

    def drop(self, kind: str, key: str) -> None:
        for path in self._paths(kind, key, ".pt"):
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def claim(self, kind: str, key: str):
        """Exclusive while the block runs, across processes and (on a filesystem with POSIX locks) hosts."""
        path = self.root / "locks" / kind / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                from tqdm.auto import tqdm

                tqdm.write(f"waiting for another process computing {kind}/{key}")
                fcntl.flock(fh, fcntl.LOCK_EX)
            except OSError:  # a filesystem without locks: computing twice costs time, never correctness
                yield
                return
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_json(self, kind: str, key: str) -> Any | None:
        data = self._read(kind, key, ".json")
        return None if data is None else json.loads(data)

    def put_json(self, kind: str, key: str, obj: Any) -> None:
        self._write(kind, key, ".json", (json.dumps(obj, sort_keys=True) + "\n").encode())
