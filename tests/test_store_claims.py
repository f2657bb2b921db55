"""A node being computed is claimed in the store (Store.claim, issue 33): the lock file names its holder, a
process waiting for it says whom it waits for, for how long and how to free the claim, a holder that no longer
runs is taken over at once, and the kernel still frees the lock of a holder that dies (kill -9 included)."""
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from benchmark.store import Store
from conftest import REPO

# Takes the claim, says so, then stops itself (SIGSTOP), or dies leaving a forked child that keeps the lock.
HOLDER = """
import os, signal, sys, time
from benchmark.store import Store

with Store(sys.argv[1]).claim("models", "k"):
    print("claimed", flush=True)
    if sys.argv[2] == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        print(child, flush=True)
        os._exit(0)
print("released", flush=True)
"""

WAITER = """
import sys, time
from benchmark.store import Store

store = Store(sys.argv[1])
store.wait_notice_s, store.wait_every_s = 0.5, 1.0
with store.claim("models", "k"):
    print("computing", flush=True)
"""


def _start(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _lines(stream) -> queue.Queue:
    """The stream's lines as they come, read by a thread (a read never blocks the test)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in stream], daemon=True).start()
    return lines


def _next(lines: queue.Queue, timeout: float = 30) -> str:
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no line within {timeout} s")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _stop(*processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("freed_by", ["SIGCONT", "SIGKILL"])
def test_waiter_names_a_stopped_holder_then_goes_on_when_it_resumes_or_dies(tmp_path, freed_by):
    holder = _start(HOLDER, tmp_path, "stop")
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "claimed"
        deadline = time.monotonic() + 10
        while _state(holder.pid) != "T":
            assert time.monotonic() < deadline, "the holder did not stop"
            time.sleep(0.05)
        record = json.loads((tmp_path / "locks" / "models" / "k.lock").read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        assert record["node"] == "models/k" and record["command"].startswith("python") and record["since"] > 0

        waiter = _start(WAITER, tmp_path)
        said = _lines(waiter.stderr)
        waited = []
        for line in (_next(said), _next(said)):  # after wait_notice_s, then every wait_every_s
            found = re.match(rf"waiting (\d+)s for models/k, claimed by pid {holder.pid} on "
                             rf"{re.escape(socket.gethostname())} since \S+ \S+ \(python -c ", line)
            assert found, line
            assert f"kill -CONT {holder.pid}" in line and f"kill {holder.pid})" in line and "kill -9" in line
            waited.append(int(found.group(1)))
        assert waited[0] < 5 and waited[1] >= waited[0] + 1
        assert waiter.poll() is None  # still waiting: a stopped holder keeps its lock

        os.kill(holder.pid, getattr(signal, freed_by))
        assert _next(_lines(waiter.stdout)) == "computing" and waiter.wait(timeout=30) == 0
        holder.wait(timeout=30)
        assert holder.returncode == (0 if freed_by == "SIGCONT" else -signal.SIGKILL)
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
        _stop(holder, *([waiter] if waiter else []))


def test_a_holder_that_no_longer_runs_is_taken_over_at_once(tmp_path, capsys):
    holder = _start(HOLDER, tmp_path, "fork")
    child = None
    try:
        assert holder.stdout.readline().strip() == "claimed"
        child = int(holder.stdout.readline())
        holder.wait(timeout=30)  # gone; the child it forked holds the lock still
        store = Store(tmp_path)
        store.wait_notice_s = 30
        started = time.monotonic()
        with store.claim("models", "k"):
            took = time.monotonic() - started
            record = json.loads((tmp_path / "locks" / "models" / "k.lock").read_text())
        assert took < 2 and record["pid"] == os.getpid()
        assert capsys.readouterr().err.strip() == (
            f"taking over models/k: the process that claimed it (pid {holder.pid} on {socket.gethostname()}) no "
            "longer runs but its lock is still held (a process it forked keeps it); computing it here")
        assert (tmp_path / "locks" / "models" / "k.lock").read_text() == ""  # a finished claim names no holder
    finally:
        if child is not None:
            os.kill(child, signal.SIGKILL)
        _stop(holder)


def test_a_holder_that_does_not_name_itself_is_waited_for_and_the_line_says_how_to_find_it(tmp_path, capsys):
    import fcntl

    path = tmp_path / "locks" / "models" / "k.lock"
    path.parent.mkdir(parents=True)
    older = open(path, "a+")  # a claim as an older version takes it: the lock alone
    fcntl.flock(older, fcntl.LOCK_EX)
    store = Store(tmp_path)
    store.wait_notice_s, store.wait_every_s = 0.2, 60
    done = threading.Event()

    def wait() -> None:
        with store.claim("models", "k"):
            done.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "waiting" not in (err := capsys.readouterr().err) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not done.is_set()
    older.close()  # the holder ends: the kernel frees its lock
    thread.join(timeout=10)
    assert done.is_set()
    assert re.fullmatch(r"waiting \d+s for models/k, claimed by a process that does not name itself \(an older "
                        rf"version of this benchmark\); `fuser -v {re.escape(str(path))}` names it: the claim ends "
                        r"when it finishes or dies, or resume it \(kill -CONT PID\) if it is stopped", err.strip())
