"""Refinement state for clients that send no ``client_id`` (OHIF), found from the clicks themselves.

OHIF sends every click so far with each request, and no ``client_id``, so the server cannot keep its
previous logits the way it does for Slicer. Served as a fresh prompt of N points, SAM's answer gets
*worse* with more clicks (docs/EVALUATION.md, "OHIF's requests"). But a request whose clicks contain
every click of an earlier request on the same image, label and ROI, and more, is that earlier request
plus new clicks: the earlier request's logits are what a client with state would have been served
with. `ClickHistory` remembers the last few click sets per (task, image, label, content) and their
results, and hands back the logits (and the 3D memo) of the largest earlier set that the new request
extends. Slices an answer did not predict keep the logits of the answer it refined, so a chain of
requests holds what a client's own state (`apps/samri/lib/runtime/client_state.py`) would hold.

Why this is safe for several users on one image: an entry is used only when the new request carries
every click of it, so the answer depends only on clicks the requesting client sent itself (up to
their order). Nothing here is kept on disk.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Hashable

import torch
from cachetools import LRUCache

from samri.inference.prompts import VolumeRequest

logger = logging.getLogger(__name__)

Voxel = tuple[int, int, int]


@dataclass(frozen=True)
class ClickSet:
    """The prompt of one request, order aside: ``roi`` ``(i0, j0, k0, i1, j1, k1)`` or None, and the
    foreground / background clicks as sorted voxel indices ``(i, j, k)``, a click sent twice kept twice."""

    roi: tuple[int, ...] | None
    foreground: tuple[Voxel, ...]
    background: tuple[Voxel, ...]

    @classmethod
    def of(cls, request: VolumeRequest) -> "ClickSet":
        roi = None if request.roi is None else tuple(int(v) for v in request.roi.reshape(-1))

        def voxels(points) -> tuple[Voxel, ...]:
            return tuple(sorted((int(p[0]), int(p[1]), int(p[2])) for p in points))

        return cls(roi=roi, foreground=voxels(request.foreground), background=voxels(request.background))

    def __len__(self) -> int:
        return len(self.foreground) + len(self.background)

    def extends(self, earlier: "ClickSet") -> bool:
        """True when this set is ``earlier`` plus at least one click (same ROI; a repeated click counts)."""
        return (self.roi == earlier.roi and len(earlier) < len(self)
                and Counter(earlier.foreground) <= Counter(self.foreground)
                and Counter(earlier.background) <= Counter(self.background))


@dataclass
class _Answer:
    clicks: ClickSet
    logits: dict[int, torch.Tensor]
    run: Any = None

    @property
    def nbytes(self) -> int:
        return (sum(t.numel() * t.element_size() for t in self.logits.values())
                + int(getattr(self.run, "nbytes", 0)))


@dataclass
class _Scope:
    answers: list[_Answer] = field(default_factory=list)  # oldest first

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.answers) or 1


class ClickHistory:
    """Bounded, thread-safe memory of recent answers per scope, looked up by click sets.

    Args:
        per_scope: answers kept per scope (a scope is one task, image, label and image content);
            more than one lets two users on one image keep their chains.
        max_scopes: scopes kept (least recently used dropped).
        max_bytes: most bytes of logits (and 3D memos) over all scopes.
    """

    def __init__(self, *, per_scope: int = 16, max_scopes: int = 256, max_bytes: int = 128 << 20) -> None:
        self.per_scope = max(1, int(per_scope))
        self.max_scopes = max(1, int(max_scopes))
        self._scopes: LRUCache[Hashable, _Scope] = LRUCache(maxsize=int(max_bytes), getsizeof=lambda s: s.nbytes)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(s.answers) for s in self._scopes.values())

    def previous(self, scope: Hashable, clicks: ClickSet) -> tuple[dict[int, torch.Tensor], Any]:
        """``({slice: (1, 1, s, s) logits}, 3D memo or None)`` of the largest remembered set that
        ``clicks`` extends; ``({}, None)`` when there is none."""
        with self._lock:
            best = self._refined(scope, clicks)
            return ({}, None) if best is None else (dict(best.logits), best.run)

    def _refined(self, scope: Hashable, clicks: ClickSet) -> _Answer | None:
        entry = self._scopes.get(scope)  # a hit becomes the most recently used
        found = [a for a in entry.answers if clicks.extends(a.clicks)] if entry is not None else []
        return max(reversed(found), key=lambda a: len(a.clicks)) if found else None  # a tie: the newest

    def remember(self, scope: Hashable, clicks: ClickSet, logits: dict[int, torch.Tensor], run: Any = None) -> None:
        """Keep the answer to ``clicks`` (replacing an earlier answer to the same set). Slices it did not
        predict keep the logits of the answer it refined, as a client's own state does."""
        copies = {int(i): t.detach().to("cpu", copy=True) for i, t in logits.items()}
        with self._lock:
            refined = self._refined(scope, clicks)
            merged = {**(refined.logits if refined is not None else {}), **copies}
            entry = self._scopes.get(scope) or _Scope()
            kept = [a for a in entry.answers if a.clicks != clicks]
            entry.answers = (kept + [_Answer(clicks=clicks, logits=merged, run=run)])[-self.per_scope:]
            while len(entry.answers) > 1 and entry.nbytes > self._scopes.maxsize:
                entry.answers.pop(0)  # large 3D answers: keep the newest rather than lose the scope
            try:
                self._scopes[scope] = entry  # (re)sized; evicts the least recently used beyond max_bytes
            except ValueError:  # one answer larger than max_bytes
                self._scopes.pop(scope, None)
                logger.debug("click history of %s (%d bytes) exceeds max_bytes; not kept", scope, entry.nbytes)
            while len(self._scopes) > self.max_scopes:
                self._scopes.popitem()
