"""A local Ray started by camscope does not outlive a killed driver (issue 19).

Before: ``camscope explain --ray`` killed with SIGKILL left ``ray::DashboardAgent`` and
``ray::RuntimeEnvAgent`` running (re-parented to init) until the next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from camscope.scale.reaper import _alive, _stat, descendants

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")


def _gone(procs, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in procs):
            return True
        time.sleep(0.1)
    return False


def _driver(code: str, ready: Path) -> subprocess.Popen:
    script = textwrap.dedent(code).format(ready=str(ready))
    return subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2])


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the driver ended early"
        assert time.monotonic() < deadline, "the driver did not get ready"
        time.sleep(0.05)


def test_orphans_of_a_killed_driver_are_ended(tmp_path: Path) -> None:
    """A grandchild that escapes its parent (own session, re-parented to init when the driver
    dies) is ended by the reaper; the reaper itself then exits."""
    ready = tmp_path / "ready"
    proc = _driver(
        """
        import subprocess, sys, time
        from pathlib import Path
        from camscope.scale.reaper import start_reaper
        reaper = start_reaper()
        child = subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True); time.sleep(300)"])
        time.sleep(3)  # the reaper (polling every 0.5 s) lists the grandchild by now
        Path({ready!r}).write_text(f"{{reaper.pid}}")
        time.sleep(300)
        """,
        ready,
    )
    try:
        _wait_for(ready, proc, 60)
        reaper_pid = int(ready.read_text())
        reaper = (reaper_pid, _stat(reaper_pid)[1])
        left = {p for p in descendants(proc.pid) if p[0] != reaper_pid}
        assert len(left) == 2  # the child and the grandchild
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _gone(left, 15), "processes of the killed driver are still running"
        assert _gone({reaper}, 15), "the reaper did not exit"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_recycled_pid_is_not_a_known_process() -> None:
    pid, start = os.getpid(), _stat(os.getpid())[1]
    assert _alive((pid, start))
    assert not _alive((pid, str(int(start) + 1)))


def test_killed_driver_leaves_no_ray_process(tmp_path: Path) -> None:
    """The real case: a driver that started a local Ray through camscope's session (as
    ``camscope explain --ray`` does) is killed; within seconds none of its Ray processes runs."""
    pytest.importorskip("ray")
    ready = tmp_path / "ready"
    proc = _driver(
        """
        import os, time
        from pathlib import Path
        from camscope.scale import RayOptions
        from camscope.scale.cluster import ray_session
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        with ray_session(RayOptions(address="local")):
            time.sleep(3)  # the raylet's agents are up by now
            Path({ready!r}).write_text("up")
            time.sleep(300)
        """,
        ready,
    )
    try:
        _wait_for(ready, proc, 120)
        time.sleep(1.0)
        ray_procs = descendants(proc.pid)
        names = {Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace") for p, _ in ray_procs}
        assert any("raylet" in n for n in names), names
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _gone(ray_procs, 30), "Ray processes of the killed driver are still running"
    finally:
        if proc.poll() is None:
            proc.kill()
