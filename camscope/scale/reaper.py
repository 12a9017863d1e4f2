"""A local Ray started by camscope does not outlive its driver, however the driver ends.

``ray.init(address="local")`` starts Ray's head processes as the driver's children; Ray ends them
when the driver exits or is interrupted, but not when it is killed (SIGKILL, the OOM killer):
then the raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) are re-parented to
init and keep running until the machine restarts (issue 19). :func:`start_reaper` starts a
small watcher process in its own session: it keeps a list of the driver's descendants (every
``INTERVAL`` seconds, from ``/proc``), and once the driver is gone it ends those still running
(SIGTERM, then SIGKILL after ``GRACE`` seconds; a process is recognised by its pid *and* start
time, so a recycled pid is never hit). Linux only (``/proc``); elsewhere nothing is started.

    python camscope/scale/reaper.py DRIVER_PID
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["GRACE", "INTERVAL", "descendants", "start_reaper"]

INTERVAL = 0.5
"""Seconds between two looks at the driver's descendants."""
GRACE = 3.0
"""Seconds between SIGTERM and SIGKILL for the processes left behind."""

Proc = tuple[int, str]
"""(pid, start time in clock ticks since boot): a process, recycled pids told apart."""


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of ``pid`` from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), fields[19]


def descendants(root: int) -> set[Proc]:
    """Every living descendant of ``root`` (children, grandchildren...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
    found: set[Proc] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st is not None:
            found.add((pid, st[1]))
            todo.extend(children.get(pid, ()))
    return found


def _alive(proc: Proc) -> bool:
    st = _stat(proc[0])
    return st is not None and st[1] == proc[1]


def _signal(procs: set[Proc], sig: int) -> None:
    for proc in procs:
        if _alive(proc):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc[0], sig)


def reap(driver: int, *, interval: float = INTERVAL, grace: float = GRACE) -> int:
    """Watch ``driver`` until it is gone, then end what it left running; the number ended."""
    start = _stat(driver)
    if start is None:
        return 0
    known: set[Proc] = set()
    me = os.getpid()
    ready = False
    while _alive((driver, start[1])):
        known = {p for p in known if _alive(p)} | {p for p in descendants(driver) if p[0] != me}
        if not ready:  # the driver waits for this line: from now on nothing it starts is missed
            with contextlib.suppress(OSError):
                sys.stdout.write("watching\n")
                sys.stdout.flush()
                sys.stdout.close()
            ready = True
        time.sleep(interval)
    left = {p for p in known if _alive(p)}
    _signal(left, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in left):
        time.sleep(0.1)
    _signal(left, signal.SIGKILL)
    return len(left)


def start_reaper(driver: int | None = None, *, timeout: float = 30.0) -> subprocess.Popen | None:
    """Start the watcher of ``driver`` (default: this process) in its own session and wait
    (at most ``timeout`` seconds) until it watches; None where there is no /proc. Stop it with
    ``terminate()`` once the driver has shut Ray down itself. The watcher is this file run as a
    script: it imports nothing but the standard library, so it starts in milliseconds."""
    if not Path("/proc/self/stat").exists():
        return None
    proc = subprocess.Popen(
        [sys.executable, "-S", str(Path(__file__).resolve()), str(driver or os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if ready:
        proc.stdout.readline()
    proc.stdout.close()
    return proc


if __name__ == "__main__":
    reap(int(sys.argv[1]))
