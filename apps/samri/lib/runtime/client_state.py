"""Per-client refinement state: the previous decoder logits of each client's clicks.

A key is ``(task, client_id, image)``; its entry remembers the label and the image content it was
made for, and ``{slice index: (1, 1, s, s) low-res logits}``. A request with another label, another
image content or ``reset_state`` starts over. Clients without a ``client_id`` get no state (they
could not be told apart, and one client must never see another's masks). The store is an LRU bounded
by entries and bytes, guarded by one lock.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable

import torch

logger = logging.getLogger(__name__)


@dataclass
class ClientState:
    """One client's refinement state on one image.

    Attributes:
        label: the label (segment name) the logits belong to.
        content_key: `samri.volume.PreparedVolume.content_key` of the image they were made on.
        logits: ``{slice index: (1, 1, s, s) float tensor}`` of the latest result per slice.
    """

    label: str
    content_key: str
    logits: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.logits.values())


class ClientStateStore:
    """Bounded, thread-safe LRU of `ClientState`.

    Args:
        max_entries: most (task, client, image) entries kept.
        max_bytes: most bytes of logits kept over all entries.
    """

    def __init__(self, *, max_entries: int = 256, max_bytes: int = 256 << 20) -> None:
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, ClientState] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def previous(self, key: Hashable | None, *, label: str, content_key: str,
                 reset: bool = False) -> dict[int, torch.Tensor]:
        """The logits to refine for this request; ``{}`` (and the entry dropped) when starting over."""
        if key is None:
            return {}
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return {}
            if reset or entry.label != label or entry.content_key != content_key:
                self._drop(key)
                return {}
            self._entries.move_to_end(key)
            return dict(entry.logits)

    def update(self, key: Hashable | None, *, label: str, content_key: str,
               logits: dict[int, torch.Tensor]) -> None:
        """Merge a result's ``{slice: logits}`` into the entry (created or replaced as needed)."""
        if key is None:
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.label != label or entry.content_key != content_key:
                if entry is not None:
                    self._drop(key)
                entry = ClientState(label=label, content_key=content_key)
                self._entries[key] = entry
            self._bytes -= entry.nbytes
            entry.logits.update({int(i): t.detach().cpu() for i, t in logits.items()})
            self._bytes += entry.nbytes
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                oldest = next(iter(self._entries))
                logger.debug("evicting refinement state %s", oldest)
                self._drop(oldest)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
