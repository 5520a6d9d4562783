"""Ranking unlabelled studies by their scores, and handing them out without collisions.

Ranking (`rank`): studies with a usable score first, highest first (ties by id), then studies not
scored yet (by id: the scoring job has not reached them); unusable studies are never offered. The
combined score (`combined_values`) is a weighted sum of min-max normalised uncertainty and novelty
over the candidates (a missing part counts as the middle, 0.5).

`Reservations`: a study handed to one client is skipped for every other client for
``reserve_seconds``, so two annotators asking at once get different studies; a request without a
``client_id`` is treated as a new client. In-process state (a lock and a dict), created by the app,
never at import.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

logger = logging.getLogger(__name__)


class NothingToAnnotate(LookupError):
    """No study can be handed out (every study is labelled, or the rest are unusable)."""


@dataclass(frozen=True)
class Candidate:
    """One rankable study: ``value`` (None = not scored yet) and the record(s) it came from."""

    study_id: str
    value: float | None
    stale: bool = False
    details: Mapping | None = None


def min_max(values: Mapping[str, float]) -> dict[str, float]:
    """Values scaled to ``[0, 1]`` over the mapping (all 0.5 when they are equal)."""
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    if hi - lo <= 1e-12:
        return {k: 0.5 for k in values}
    return {k: (v - lo) / (hi - lo) for k, v in values.items()}


def combined_values(uncertainty: Mapping[str, float | None], novelty: Mapping[str, float | None],
                    weights: Mapping[str, float]) -> dict[str, float | None]:
    """``w_u * norm(uncertainty) + w_n * norm(novelty)`` / (w_u + w_n) per study; None if neither is known."""
    u = min_max({k: v for k, v in uncertainty.items() if v is not None})
    n = min_max({k: v for k, v in novelty.items() if v is not None})
    wu, wn = float(weights.get("uncertainty", 0.5)), float(weights.get("novelty", 0.5))
    out: dict[str, float | None] = {}
    for study in set(uncertainty) | set(novelty):
        if study not in u and study not in n:
            out[study] = None
            continue
        out[study] = (wu * u.get(study, 0.5) + wn * n.get(study, 0.5)) / max(wu + wn, 1e-12)
    return out


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Scored studies by value (highest first, then id), then unscored ones by id."""
    scored = sorted((c for c in candidates if c.value is not None), key=lambda c: (-c.value, c.study_id))
    unscored = sorted((c for c in candidates if c.value is None), key=lambda c: c.study_id)
    return scored + unscored


class Reservations:
    """Studies recently handed out, per client.

    Args:
        seconds: how long a study stays reserved for the client it was handed to.
        clock: time source (seconds), replaceable in tests.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = float(seconds)
        self.clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str | None, float]] = {}  # study -> (client, expires)
        self._anonymous = 0

    def choose(self, ranked: Sequence[Candidate], client_id: str | None) -> tuple[Candidate, bool]:
        """The best candidate not reserved by another client, reserved now for ``client_id``.

        Returns:
            ``(candidate, shared)``: ``shared`` is True when every candidate was reserved by
            others and the one whose reservation ends first is handed out again.

        Raises:
            NothingToAnnotate: ``ranked`` is empty.
        """
        if not ranked:
            raise NothingToAnnotate("no candidate")
        with self._lock:
            now = self.clock()
            self._held = {k: v for k, v in self._held.items() if v[1] > now}
            if client_id is None:
                self._anonymous += 1
                client_id = f"anonymous-{self._anonymous}"
            for study, (owner, _) in list(self._held.items()):
                if owner == client_id:  # a client asking again releases its previous study
                    del self._held[study]
            free = [c for c in ranked if c.study_id not in self._held]
            shared = not free
            pick = free[0] if free else min(ranked, key=lambda c: self._held[c.study_id][1])
            self._held[pick.study_id] = (client_id, now + self.seconds)
            return pick, shared

    def release(self, study_id: str) -> None:
        with self._lock:
            self._held.pop(study_id, None)

    def held(self) -> dict[str, str | None]:
        """``{study: client}`` of the reservations still running."""
        with self._lock:
            now = self.clock()
            return {k: v[0] for k, v in self._held.items() if v[1] > now}
