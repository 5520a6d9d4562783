"""Background embedding precompute: encode a study's slices before the annotator clicks on them.

One worker thread per process, started by the first `Precomputer.schedule` call (never at import or
construction). It encodes one small batch at a time, nearest slices to the clicked one first, and
yields to interactive requests: before each batch it waits until no request has been running for a
short grace period (`Activity`), so clicks keep the CPU. Embeddings land in the shared
`samri.inference.embeddings.EmbeddingCache` through `samri.inference.embeddings.get_embeddings`, which is thread-safe
(a slice a request is encoding is not encoded twice).

A click that arrives while a batch is being encoded still competes with it for the two cores.
The worker therefore runs at the lowest CPU priority (nice 19, Linux; set before its first torch
call so the OpenMP threads it starts inherit it): measured with a continuous background encode,
a cached click then took about its idle time instead of up to twice (or, in the server, ~8x) that.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from samri.inference.embeddings import get_embeddings, slice_keys

from .volumes import file_key

logger = logging.getLogger(__name__)

#: nice value of the worker thread (19 = yields the CPU to everything else).
WORKER_NICE = 19


def lower_thread_priority(nice: int = WORKER_NICE) -> bool:
    """Give the calling thread (and threads it starts afterwards) a lower CPU priority (Linux only)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:
        logger.debug("cannot lower the precompute thread's priority (%s)", exc)
        return False
    return True


class Activity:
    """Counts running interactive requests; the precompute worker waits for quiet."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._last_end = 0.0

    @contextmanager
    def active(self) -> Iterator[None]:
        """Mark an interactive request as running for the duration of the block."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_end = time.monotonic()
                self._cond.notify_all()

    @property
    def running(self) -> int:
        with self._cond:
            return self._active

    def wait_idle(self, grace_s: float, stop: threading.Event, poll_s: float = 0.1) -> None:
        """Block until no request runs and none ended within ``grace_s`` (or ``stop`` is set)."""
        while not stop.is_set():
            with self._cond:
                if self._active:
                    self._cond.wait(poll_s)
                    continue
                quiet = time.monotonic() - self._last_end
            if quiet >= grace_s:
                return
            stop.wait(min(grace_s - quiet, poll_s))


class Precomputer:
    """Queue of studies whose slices to encode along ``axis``.

    Args:
        volume_fn: ``path -> samri.volume.PreparedVolume`` (the runtime's volume cache).
        segmenter_fn: ``() -> samri.inference.segmenter.Segmenter`` (the current model and the shared cache).
        activity: the runtime's `Activity`.
        axis: slicing axis (2: axial, what Slicer's Red view and OHIF's clicks use here).
        batch_size: slices encoded between two checks for interactive requests.
        grace_s: quiet time after a request before encoding resumes.
    """

    def __init__(self, *, volume_fn: Callable, segmenter_fn: Callable, activity: Activity, axis: int = 2,
                 batch_size: int = 1, grace_s: float = 0.5) -> None:
        self.volume_fn = volume_fn
        self.segmenter_fn = segmenter_fn
        self.activity = activity
        self.axis = axis
        self.batch_size = max(1, int(batch_size))
        self.grace_s = float(grace_s)
        self._queue: queue.Queue = queue.Queue()
        self._seen: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"scheduled": 0, "slices": 0, "done": 0, "failed": 0}
        self.current: str | None = None

    def schedule(self, path: str, around: int | None = None) -> bool:
        """Queue ``path`` (once per file version); starts the worker on first use. True if queued."""
        try:
            key = file_key(path)
        except ValueError:
            return False
        with self._lock:
            if key in self._seen or self._stop.is_set():
                return False
            self._seen.add(key)
            self.stats["scheduled"] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="samri-precompute", daemon=True)
                self._thread.start()
        self._queue.put((path, around))
        logger.info("precompute scheduled for %s (axis %d)", path, self.axis)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after its current batch."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def wait(self, timeout: float) -> bool:
        """Block until the queue is drained (tests); True if it was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return False

    def status(self) -> dict:
        return {"running": self._thread is not None and self._thread.is_alive(), "current": self.current,
                "queued": self._queue.qsize(), **self.stats}

    def _loop(self) -> None:
        lowered = lower_thread_priority(WORKER_NICE)
        logger.info("precompute worker started (nice %s)", WORKER_NICE if lowered else "unchanged")
        while not self._stop.is_set():
            try:
                path, around = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.current = path
                self._run(path, around)
                self.stats["done"] += 1
            except Exception:  # a bad study must not kill the worker
                self.stats["failed"] += 1
                logger.exception("precompute failed for %s", path)
            finally:
                self.current = None
                self._queue.task_done()

    def _run(self, path: str, around: int | None) -> None:
        start = time.perf_counter()
        volume = self.volume_fn(path)
        segmenter = self.segmenter_fn()
        n = volume.shape[self.axis]
        around = n // 2 if around is None else around  # annotators tend to start mid-volume
        order = sorted(range(n), key=lambda i: (abs(i - around), i))
        keys = slice_keys(segmenter.model, volume, self.axis, order)
        todo = [i for i, key in zip(order, keys) if key not in segmenter.cache]
        encoded = 0
        for begin in range(0, len(todo), self.batch_size):
            self.activity.wait_idle(self.grace_s, self._stop)
            if self._stop.is_set():
                return
            segmenter = self.segmenter_fn()  # follows a model reload
            chunk = todo[begin:begin + self.batch_size]
            get_embeddings(segmenter.model, volume, segmenter.cache, self.axis, chunk, batch_size=len(chunk))
            encoded += len(chunk)
            self.stats["slices"] += len(chunk)
        logger.info("precomputed %d/%d slices of %s in %.1f s", encoded, n, path, time.perf_counter() - start)
