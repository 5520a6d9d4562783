"""Per-client refinement state: the previous decoder logits of each client's clicks.

A key is ``(task, client_id, image)``; its entry remembers the label and the image content it was
made for, ``{slice index: (1, 1, s, s) low-res logits}`` and, for 3D tasks, the memo of the last
propagation (`samri.inference.reuse`: the next click re-predicts only what it changes). A request
with another label, another image content or ``reset_state`` starts over. Clients without a
``client_id`` (OHIF) get no entry here (they could not be told apart, and one client must never
see another's masks); their requests are matched by their clicks instead
(`samri.inference.click_history`, `ClickHistoryRefinement`). The store is a `cachetools.LRUCache`
sized in bytes of logits and also bounded in entries, guarded by one lock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Hashable

import torch
from cachetools import LRUCache

from samri.inference.click_history import ClickHistory, ClickSet

logger = logging.getLogger(__name__)


@dataclass
class ClientState:
    """One client's refinement state on one image.

    Attributes:
        label: the label (segment name) the logits belong to.
        content_key: `samri.volume.PreparedVolume.content_key` of the image they were made on.
        logits: ``{slice index: (1, 1, s, s) float tensor}`` of the latest result per slice.
        run: 3D: `samri.inference.reuse.PropagationMemo` of the latest propagation, or None.
    """

    label: str
    content_key: str
    logits: dict[int, torch.Tensor] = field(default_factory=dict)
    run: Any = None

    @property
    def nbytes(self) -> int:
        return (sum(t.numel() * t.element_size() for t in self.logits.values())
                + int(getattr(self.run, "nbytes", 0)))


class ClientStateStore:
    """Bounded, thread-safe LRU of `ClientState`.

    Args:
        max_entries: most (task, client, image) entries kept.
        max_bytes: most bytes of logits kept over all entries; an entry larger than this on its
            own is not kept (its client's next click starts over).
    """

    def __init__(self, *, max_entries: int = 256, max_bytes: int = 256 << 20) -> None:
        self.max_entries = max(1, int(max_entries))
        self.max_bytes = int(max_bytes)
        self._entries: LRUCache[Hashable, ClientState] = LRUCache(maxsize=self.max_bytes,
                                                                  getsizeof=lambda entry: entry.nbytes)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return int(self._entries.currsize)

    def previous(self, key: Hashable | None, *, label: str, content_key: str,
                 reset: bool = False) -> dict[int, torch.Tensor]:
        """The logits to refine for this request; ``{}`` (and the entry dropped) when starting over."""
        if key is None:
            return {}
        with self._lock:
            entry = self._entries.get(key)  # a hit becomes the most recently used
            if entry is None:
                return {}
            if reset or entry.label != label or entry.content_key != content_key:
                self._entries.pop(key, None)
                return {}
            return dict(entry.logits)

    def previous_run(self, key: Hashable | None, *, label: str, content_key: str) -> Any:
        """The memo of this client's last 3D propagation on ``label`` and this content (None if none);
        call after `previous`, which drops a state the request resets."""
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.label != label or entry.content_key != content_key:
                return None
            return entry.run

    def update(self, key: Hashable | None, *, label: str, content_key: str,
               logits: dict[int, torch.Tensor], run: Any = None) -> None:
        """Merge a result's ``{slice: logits}`` into the entry (created or replaced as needed) and keep
        ``run`` (a 3D memo; None forgets the previous one)."""
        if key is None:
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.label != label or entry.content_key != content_key:
                entry = ClientState(label=label, content_key=content_key)
            entry.logits.update({int(i): t.detach().cpu() for i, t in logits.items()})
            entry.run = run
            try:
                self._entries[key] = entry  # (re)sized; evicts the least recently used beyond max_bytes
            except ValueError:  # larger than max_bytes on its own
                self._entries.pop(key, None)
                logger.debug("refinement state %s (%d bytes) exceeds max_bytes; not kept", key, entry.nbytes)
            while len(self._entries) > self.max_entries:
                oldest, _ = self._entries.popitem()
                logger.debug("evicting refinement state %s", oldest)


class ClientIdRefinement:
    """One request's refinement state of a client with a ``client_id`` (Slicer), in the `ClientStateStore`."""

    def __init__(self, store: ClientStateStore, key: Hashable, *, label: str, content_key: str, reset: bool) -> None:
        self.store, self.key, self.label, self.content_key, self.reset = store, key, label, content_key, reset

    def previous(self) -> tuple[dict[int, torch.Tensor], Any]:
        """``({slice: logits}, 3D memo or None)`` to refine; `previous` drops a state the request resets."""
        logits = self.store.previous(self.key, label=self.label, content_key=self.content_key, reset=self.reset)
        return logits, self.store.previous_run(self.key, label=self.label, content_key=self.content_key)

    def update(self, result: Any) -> None:
        self.store.update(self.key, label=self.label, content_key=self.content_key,
                          logits={i: s.low_res_logits for i, s in result.slices.items()}, run=result.memo)


class ClickHistoryRefinement:
    """One request's refinement state of a client without ``client_id`` (OHIF), in the app's
    `samri.inference.click_history.ClickHistory`: ``scope`` is (task, image, label, content, decoder)."""

    def __init__(self, history: ClickHistory, scope: Hashable, clicks: ClickSet, *, reset: bool) -> None:
        self.history, self.scope, self.clicks, self.reset = history, scope, clicks, reset

    def previous(self) -> tuple[dict[int, torch.Tensor], Any]:
        return ({}, None) if self.reset else self.history.previous(self.scope, self.clicks)

    def update(self, result: Any) -> None:
        self.history.remember(self.scope, self.clicks, {i: s.low_res_logits for i, s in result.slices.items()},
                              result.memo)
