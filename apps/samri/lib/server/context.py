"""What the hardened route tells the infer task about the request it is serving.

The route (`infer_route`) runs MONAI Label's endpoint code in a worker thread and sets, for that
call only, a `RequestContext`: whether the client went away and how a heavy request yields to clicks.
The task reads it with `current` (a `contextvars.ContextVar`, so concurrent requests never see each
other's). Outside the route (the CLI, in-process tests, ``MONAI_LABEL_INFER_CONCURRENCY`` >= 0,
which runs tasks in another pool) there is no context and `current` returns a neutral one.
"""

from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class RequestContext:
    """Per-request signals.

    Attributes:
        cancelled: set when the client disconnected (work should stop).
        pause: called between units of heavy work (3D slices); blocks while clicks are served.
        paused_seconds: total time spent in ``pause`` so far.
    """

    cancelled: threading.Event = field(default_factory=threading.Event)
    pause: Callable[[], object] = lambda: None
    paused_seconds: float = 0.0

    def should_stop(self) -> bool:
        """Called between slices: yield to clicks first, then report whether to stop."""
        start = time.monotonic()
        self.pause()
        self.paused_seconds += time.monotonic() - start
        return self.cancelled.is_set()

    def work_clock(self) -> float:
        """Monotonic seconds without the time spent paused for clicks (a 3D budget counts only its work)."""
        return time.monotonic() - self.paused_seconds


_CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("samri_request", default=None)


def current() -> RequestContext:
    """This request's context, or a neutral one (never cancelled, never pauses)."""
    return _CURRENT.get() or RequestContext()


def run_with(context: RequestContext, fn: Callable, *args, **kwargs):
    """Call ``fn`` with ``context`` as the current request's (in the calling thread)."""
    token = _CURRENT.set(context)
    try:
        return fn(*args, **kwargs)
    finally:
        _CURRENT.reset(token)


__all__ = ["RequestContext", "current", "run_with"]
