"""Two lanes for inference requests, so one annotator's long request never freezes the others.

MONAI Label 0.8.5 runs ``/infer`` inside the event loop; the hardened route (`infer_route`) runs it
in a worker thread instead and puts it in one of two lanes:

* ``interactive``: 2D clicks (``samri_2d``): `CLICK_SLOTS` at a time, first come first served (a
  click is ~60 ms of decoder on a cached embedding plus reading the request and writing the NRRD;
  two at once overlap one's I/O with the other's decoder);
* ``heavy``: 3D propagation (``samri_3d``) and anything else: one at a time, on its own thread at a
  lower CPU priority (`HEAVY_NICE`), and between slices it pauses while a click is running or
  waiting (`RequestLanes.yield_to_interactive`), so a click competes with at most one slice of 3D
  work, at low priority, instead of the whole propagation.

The two lanes run side by side; the yield makes the clicks the priority. A heavy request pauses at
most `MAX_YIELD_S` per slice, so a stream of clicks slows a 3D request but cannot starve it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger(__name__)

#: longest a heavy request waits for clicks at one yield point.
MAX_YIELD_S = 2.0
#: clicks served at once: two overlap one click's request/response I/O with another's decoder on 2 cores.
CLICK_SLOTS = 2
#: CPU priority (nice) of the heavy lane's thread (Linux; 0..19, higher yields more).
HEAVY_NICE = 10


class FifoLock:
    """A semaphore of ``slots`` granted in arrival order (``threading`` primitives promise no fairness)."""

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"slots={slots!r}: must be >= 1")
        self.slots = slots
        self._cond = threading.Condition()
        self._queue: collections.deque[int] = collections.deque()
        self._next = 0
        self._held = 0

    @property
    def waiting(self) -> int:
        """Threads queued, the holders not included."""
        with self._cond:
            return len(self._queue)

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._cond:
            ticket = self._next
            self._next += 1
            self._queue.append(ticket)
            while self._held >= self.slots or self._queue[0] != ticket:
                self._cond.wait()
            self._queue.popleft()
            self._held += 1
            self._cond.notify_all()  # the next in line may fit in a free slot too
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()


class RequestLanes:
    """The interactive and the heavy lane of one server process (see the module docstring)."""

    def __init__(self, *, click_slots: int = CLICK_SLOTS, heavy_nice: int = HEAVY_NICE) -> None:
        self._interactive = FifoLock(click_slots)
        self._heavy = FifoLock()
        self._cond = threading.Condition()
        self._clicks = 0  # interactive requests running or waiting
        self._heavy_nice = heavy_nice
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    def heavy_executor(self) -> ThreadPoolExecutor:
        """The heavy lane's own worker thread, at a lower CPU priority (created on first use).

        Its own thread because a pool thread cannot get its priority back once lowered; the OpenMP
        threads torch starts from it inherit the priority, so a click's threads get most of the CPU
        while a slice of 3D work is being encoded beside it.
        """
        from ..runtime.precompute import lower_thread_priority  # imports torch: not at module import

        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samri-heavy",
                                                    initializer=lower_thread_priority, initargs=(self._heavy_nice,))
            return self._executor

    def close(self) -> None:
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

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
