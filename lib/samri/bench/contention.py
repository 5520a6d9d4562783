"""A second process that keeps the CPU busy while a benchmark measures (``samri bench --contention``).

An annotation workstation rarely runs the server alone: the precompute worker, a training job or
another tool share its cores. The busy process is what such a job does: PyTorch matrix products on
as many threads as the machine has cores, with PyTorch's default OpenMP settings (its idle threads
spin), started before the measurement and stopped after it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger(__name__)

#: the busy loop: fp32 matmuls of 512 x 512 (about what a training step's layers do), forever
BUSY_LOOP = (
    "import torch, sys\n"
    "a = torch.randn(512, 512); b = torch.randn(512, 512)\n"
    "print('busy', flush=True)\n"
    "while True:\n"
    "    a = torch.tanh(a @ b)\n"
)


@contextmanager
def busy_process(threads: int | None = None, *, settle_s: float = 2.0) -> Iterator[subprocess.Popen]:
    """Run `BUSY_LOOP` in a child process for the duration of the block.

    Args:
        threads: its torch threads (default: every core, ``os.cpu_count()``).
        settle_s: seconds to wait after it has started computing, so the measurement sees it at speed.

    Raises:
        RuntimeError: the child did not start computing within 60 s.
    """
    threads = threads or os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)  # the default policy, as a job started without care would have
    child = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=env, text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        if line.strip() != "busy":
            raise RuntimeError(f"the busy process did not start (exit code {child.poll()})")
        time.sleep(settle_s)
        logger.info("busy process %d running on %d threads", child.pid, threads)
        yield child
    finally:
        child.kill()
        child.wait(timeout=30)
