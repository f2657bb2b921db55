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
        """Exclusive while the block runs, across processes and (on a filesystem with POSIX locks) hosts.

        The lock file names its holder (pid, host, command, since when). A process that finds the node claimed
        polls the lock and, after `wait_notice_s` seconds (5) and every `wait_every_s` (60) after, says on
        stderr (through tqdm, so bars stay whole) whom it waits for, on which node, for how long, and how a
        claim that never ends is freed: a holder stopped (SIGSTOP, a suspended laptop, a hung NFS client) keeps
        its lock, a dead one never does (the kernel drops it, kill -9 included). A holder that no longer runs on
        this host (its lock kept by a process it forked) is taken over at once: the lock file is replaced, so
        this claim and later ones lock the new file. The delays are the store's attributes where set (tests
        shorten them), `wait_poll_s` (0.5) the longest pause between two tries."""
        path = self.root / "locks" / kind / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = self._take_claim(path, f"{kind}/{key}")
        if fh is None:  # a filesystem without locks: computing twice costs time, never correctness
            yield
            return
        try:
            yield
        finally:
            try:
                fh.seek(0)
                fh.truncate()  # a finished claim names no holder
            except OSError:
                pass
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()

    def _take_claim(self, path: Path, node: str):
        """The lock file of `node`, locked and naming this process; None where the filesystem has no locks."""
        import sys

        from tqdm.auto import tqdm

        notice, every, longest = (float(getattr(self, name, default)) for name, default in
                                  (("wait_notice_s", 5.0), ("wait_every_s", 60.0), ("wait_poll_s", 0.5)))
        started, next_line, pause, gone = time.monotonic(), notice, 0.02, None
        while True:
            fh = open(path, "a+")
            try:
                while True:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        pass
                    except OSError:
                        fh.close()
                        return None
                    else:
                        if self._same_file(fh, path):  # not replaced by a take-over between open and lock
                            self._name_holder(fh, node)
                            return fh
                        fh.close()
                        break
                    if not self._same_file(fh, path):  # taken over: the claim now locks the new file
                        fh.close()
                        break
                    holder = self._holder(fh)
                    if holder is not None and self._holder_gone(holder):
                        if holder == gone:  # seen twice: not a claim this instant between its lock and its record
                            tqdm.write(f"taking over {node}: the process that claimed it (pid {holder['pid']} on "
                                       f"{holder['host']}) no longer runs but its lock is still held (a process it "
                                       "forked keeps it); computing it here", file=sys.stderr)
                            fh.close()
                            fresh = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-"
                                                   f"{uuid.uuid4().hex[:8]}")
                            try:
                                fresh.touch()
                                os.replace(fresh, path)
                            except OSError:  # not replaceable: computed without the claim (time, not correctness)
                                fresh.unlink(missing_ok=True)
                                return None
                            break
                        gone = holder
                    else:
                        gone = None
                    waited = time.monotonic() - started
                    if waited >= next_line:
                        tqdm.write(self._waiting_line(node, holder, waited, path), file=sys.stderr)
                        next_line += every
                    time.sleep(pause)
                    pause = min(pause * 2, longest)
            except BaseException:
                fh.close()
                raise

    @staticmethod
    def _same_file(fh, path: Path) -> bool:
        try:
            on_disk, mine = os.stat(path), os.fstat(fh.fileno())
        except OSError:
            return False
        return (on_disk.st_ino, on_disk.st_dev) == (mine.st_ino, mine.st_dev)

    @classmethod
    def _name_holder(cls, fh, node: str) -> None:
        """Write who holds the claim into its lock file (advisory: a write that fails leaves the claim held)."""
        import shlex
        import sys

        argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
        command = " ".join(shlex.join([Path(argv[0]).name, *argv[1:]]).split()) if argv else "?"  # one line
        record = {"pid": os.getpid(), "host": socket.gethostname(), "pid_namespace": cls._pid_namespace(),
                  "pid_start": cls._process(os.getpid())[1], "since": time.time(), "node": node,
                  "command": command if len(command) <= 200 else command[:197] + "..."}
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        except OSError:
            pass

    @staticmethod
    def _holder(fh) -> dict | None:
        """The record of the claim's holder; None where there is none (an older version's claim, or one this
        instant between its lock and its record)."""
        try:
            fh.seek(0)
            record = json.loads(fh.read())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None

    @staticmethod
    def _pid_namespace() -> str | None:
        try:
            return os.readlink("/proc/self/ns/pid")  # containers on one host may share its name, never this
        except OSError:
            return None

    @staticmethod
    def _process(pid: int) -> tuple[str | None, str | None]:
        """(state, start time in clock ticks since boot) of a process of this host, from /proc (Linux)."""
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return fields[0], fields[19]
        except (OSError, IndexError):
            return None, None

    @classmethod
    def _holder_gone(cls, holder: dict) -> bool:
        """Whether a claim's holder is known to run no more: of this host and pid namespace, its pid absent, a
        zombie, or another process's now (a pid is reused). Elsewhere nothing can tell."""
        if holder.get("host") != socket.gethostname() or holder.get("pid_namespace") != cls._pid_namespace():
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:  # another user's process: it exists
            return False
        state, start = cls._process(holder["pid"])
        return state == "Z" or (None not in (start, holder.get("pid_start")) and start != holder["pid_start"])

    @classmethod
    def _waiting_line(cls, node: str, holder: dict | None, waited: float, path: Path) -> str:
        """One line: the node, how long this process has waited, its holder and how a claim that never ends is
        freed."""
        s = int(waited)
        took = f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"
        if holder is None:
            return (f"waiting {took} for {node}, claimed by a process that does not name itself (an older version "
                    f"of this benchmark); `fuser -v {path}` names it: the claim ends when it finishes or dies, or "
                    "resume it (kill -CONT PID) if it is stopped")
        pid, host = holder["pid"], holder.get("host", "?")
        here = host == socket.gethostname() and holder.get("pid_namespace") == cls._pid_namespace()
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) \
            if isinstance(holder.get("since"), (int, float)) else "?"
        where, command = ("" if here else f" on {host}"), " ".join(str(holder.get("command", "?")).split())
        return (f"waiting {took} for {node}, claimed by pid {pid} on {host} since {since} ({command}): the claim "
                f"ends when that process finishes or dies (the kernel frees its lock, kill -9 included); if it is "
                f"stopped or hung, resume it (kill -CONT {pid}{where}) "
                f"or end it (kill {pid}{where})" + ("" if here else "; a host that crashed frees its locks when "
                                                     "the file server's lease on them expires"))

    def get_json(self, kind: str, key: str) -> Any | None:
        data = self._read(kind, key, ".json")
        return None if data is None else json.loads(data)

    def put_json(self, kind: str, key: str, obj: Any) -> None:
        self._write(kind, key, ".json", (json.dumps(obj, sort_keys=True) + "\n").encode())
