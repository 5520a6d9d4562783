"""Stopping child services (Orthanc, a MONAI Label server) started in their own process group."""

from __future__ import annotations

import logging
import os
import signal
import subprocess

logger = logging.getLogger(__name__)


def stop_process_group(process: subprocess.Popen, name: str, timeout_s: float) -> None:
    """SIGTERM ``process``'s group (started with ``start_new_session=True``), SIGKILL after ``timeout_s``.

    Returns once the process has exited or its group is gone; ``name`` labels the log line of a
    process that ignored SIGTERM.
    """
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            logger.warning("%s ignored signal %s", name, sig)
