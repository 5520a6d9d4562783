"""samri.processes: stopping a child's whole process group."""

from __future__ import annotations

import subprocess
import time

from samri.processes import stop_process_group


def _start(script: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", script], start_new_session=True)


def test_sigterm_stops_the_group():
    proc = _start("sleep 30 & wait")
    time.sleep(0.2)
    start = time.monotonic()
    stop_process_group(proc, "sleeper", timeout_s=10.0)
    assert proc.poll() is not None and time.monotonic() - start < 5.0


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(caplog):
    proc = _start("trap '' TERM; while true; do sleep 0.1; done")
    time.sleep(0.3)
    stop_process_group(proc, "stubborn", timeout_s=0.5)
    assert proc.poll() == -9
    assert "stubborn ignored signal" in caplog.text


def test_an_exited_process_is_left_alone():
    proc = _start("exit 0")
    proc.wait(5)
    stop_process_group(proc, "done", timeout_s=0.1)
    assert proc.returncode == 0
