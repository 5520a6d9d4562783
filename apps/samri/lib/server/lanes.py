"""Two lanes for inference requests, so one annotator's long request never freezes the others.

MONAI Label 0.8.5 runs ``/infer`` inside the event loop; the hardened route (`infer_route`) runs it
in a worker thread instead and puts it in one of two lanes:

* ``interactive``: 2D clicks (``samri_2d``): one at a time, first come first served (a click is
  ~60 ms on a cached embedding; running two at once on a 2-core CPU only makes both slower);
* ``heavy``: 3D propagation (``samri_3d``) and anything else: one at a time, and between slices it
  pauses while a click is running or waiting (`RequestLanes.yield_to_interactive`), so a click waits
  for at most one slice of 3D work instead of the whole propagation.

The two lanes run side by side; the yield makes the clicks the priority. A heavy request pauses at
most `MAX_YIELD_S` per slice, so a stream of clicks slows a 3D request but cannot starve it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger(__name__)

#: longest a heavy request waits for clicks at one yield point.
MAX_YIELD_S = 5.0


class FifoLock:
    """A lock granted in arrival order (``threading.Lock`` makes no fairness promise)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[int] = collections.deque()
        self._next = 0
        self._held = False

    @property
    def waiting(self) -> int:
        """Threads queued, the holder not included."""
        with self._cond:
            return len(self._queue)

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._cond:
            ticket = self._next
            self._next += 1
            self._queue.append(ticket)
            while self._held or self._queue[0] != ticket:
                self._cond.wait()
            self._queue.popleft()
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


class RequestLanes:
    """The interactive and the heavy lane of one server process (see the module docstring)."""

    def __init__(self) -> None:
        self._interactive = FifoLock()
        self._heavy = FifoLock()
        self._cond = threading.Condition()
        self._clicks = 0  # interactive requests running or waiting

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """Hold the interactive lane for the block (queues behind earlier clicks)."""
        with self._cond:
            self._clicks += 1
        try:
            with self._interactive.hold():
                yield
        finally:
            with self._cond:
                self._clicks -= 1
                self._cond.notify_all()

    @contextmanager
    def heavy(self) -> Iterator[None]:
        """Hold the heavy lane for the block (queues behind earlier heavy requests)."""
        with self._heavy.hold():
            yield

    @property
    def clicks_pending(self) -> int:
        with self._cond:
            return self._clicks

    def yield_to_interactive(self, max_wait_s: float = MAX_YIELD_S) -> float:
        """Block while clicks are running or queued (at most ``max_wait_s``); returns seconds waited."""
        start = time.monotonic()
        with self._cond:
            while self._clicks and time.monotonic() - start < max_wait_s:
                self._cond.wait(timeout=max_wait_s - (time.monotonic() - start))
        return time.monotonic() - start

    def status(self) -> dict[str, int]:
        return {"clicks_pending": self.clicks_pending, "heavy_waiting": self._heavy.waiting}


__all__ = ["FifoLock", "MAX_YIELD_S", "RequestLanes"]
