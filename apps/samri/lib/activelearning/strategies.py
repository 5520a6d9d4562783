"""Strategies ``samri_uncertainty``, ``samri_novelty`` and ``samri_combined`` (``POST /activelearning/{name}``).

Each ranks the studies without a ``final`` label by the scores the scoring jobs stored
(`lib.activelearning.scoring`): highest first; studies not scored yet come after the scored ones
(by id); unusable ones (unreadable image) are never handed out. ``samri_combined`` weighs min-max
normalised uncertainty and novelty with ``combined.weights`` of ``configs/activelearning.yaml``.

Two annotators asking at once get different studies: a handed-out study is reserved for the
requesting ``client_id`` for ``selection.reserve_seconds`` (`samri.activelearning.selection.Reservations`,
shared by the three strategies); a client asking again releases its previous one.

The answer (MONAI Label adds ``path`` and the image info, which holds the scores)::

    {"id": "colin27_t1~noise", "strategy": "samri_uncertainty", "score": 0.41, "scored": true,
     "stale": false, "top_slices": [{"slice": 88, "uncertainty": 0.52, ...}, ...],
     "reserved_seconds": 900, "shared": false}

With nothing left to hand out the answer is HTTP 404 ``{"detail": "nothing left to annotate: ..."}``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from fastapi import HTTPException
from monailabel.interfaces.tasks.strategy import Strategy

from ..runtime import SamriRuntime

logger = logging.getLogger(__name__)

#: strategy name -> what it ranks by
STRATEGIES = {"samri_uncertainty": "uncertainty", "samri_novelty": "novelty", "samri_combined": "combined"}
NOTHING_LEFT_STATUS = 404


def nothing_left(detail: str) -> HTTPException:
    return HTTPException(status_code=NOTHING_LEFT_STATUS, detail=f"nothing left to annotate: {detail}")


class SamriStrategy(Strategy):
    """Hands out the unlabelled study with the highest SAMRI score.

    Args:
        kind: ``uncertainty``, ``novelty`` or ``combined``.
        runtime: the app's `SamriRuntime` (to flag scores computed with another decoder as stale).
        reservations: the app's `samri.activelearning.selection.Reservations`.
    """

    def __init__(self, kind: str, *, runtime: SamriRuntime, reservations) -> None:
        if kind not in STRATEGIES.values():
            raise ValueError(f"kind={kind!r}: must be one of {sorted(set(STRATEGIES.values()))}")
        text = {"uncertainty": "the study the served decoder is least sure of",
                "novelty": "the study least like the labelled ones (pooled embeddings)",
                "combined": "weighted uncertainty + novelty (configs/activelearning.yaml)"}[kind]
        super().__init__(f"SAMRI {kind}: {text}")
        self.kind = kind
        self.runtime = runtime
        self.reservations = reservations

    def __call__(self, request: Mapping[str, Any], datastore) -> dict[str, Any]:
        from samri.activelearning.config import load_al_config
        from samri.activelearning.scores import refresh, scores_of
        from samri.activelearning.selection import NothingToAnnotate, rank
        from samri.errors import SamriInputError

        try:
            config = load_al_config()
        except SamriInputError as exc:
            raise HTTPException(status_code=422, detail=f"activelearning config: {exc}") from exc
        refresh(datastore)
        tag = request.get("label_tag") or "final"
        everything = datastore.list_images()
        unlabelled = sorted(datastore.get_unlabeled_images(tag, request.get("labels")))
        if not unlabelled:
            raise nothing_left(f"all {len(everything)} studies in the datastore have a '{tag}' label")
        records = {image: scores_of(datastore.get_image_info(image)) for image in unlabelled}
        unusable = {image: next(r["reason"] for r in recs.values() if not r.get("usable", True))
                    for image, recs in records.items() if any(not r.get("usable", True) for r in recs.values())}
        usable = {k: v for k, v in records.items() if k not in unusable}
        if not usable:
            reasons = "; ".join(f"{k}: {v}" for k, v in sorted(unusable.items()))
            raise nothing_left(f"the {len(unusable)} unlabelled studies cannot be used ({reasons})")
        candidates = self._candidates(usable, config)
        try:
            pick, shared = self.reservations.choose(rank(candidates), request.get("client_id"))
        except NothingToAnnotate as exc:  # pragma: no cover - candidates is never empty here
            raise nothing_left(str(exc)) from exc
        uncertainty = usable[pick.study_id].get("uncertainty") or {}
        result = {"id": pick.study_id, "strategy": f"samri_{self.kind}",
                  "score": None if pick.value is None else round(pick.value, 6), "scored": pick.value is not None,
                  "stale": pick.stale, "top_slices": (uncertainty.get("details") or {}).get("top_slices", []),
                  "reserved_seconds": self.reservations.seconds, "shared": shared,
                  "unusable": sorted(unusable)}
        logger.info("samri_%s: %s (score %s, %d candidates, %d unusable%s)", self.kind, pick.study_id, result["score"],
                    len(candidates), len(unusable), ", all reserved: shared" if shared else "")
        return result

    def _candidates(self, records: Mapping[str, Mapping[str, dict]], config) -> list:
        from samri.activelearning.selection import Candidate, combined_values

        live = self.runtime.decoders.live_version()

        def value(recs: Mapping[str, dict], method: str) -> float | None:
            rec = recs.get(method)
            return None if not rec or rec.get("value") is None else float(rec["value"])

        def stale(recs: Mapping[str, dict]) -> bool:
            rec = recs.get("uncertainty")
            return bool(rec) and rec.get("decoder_version") not in (None, live)

        if self.kind == "combined":
            values = combined_values({k: value(v, "uncertainty") for k, v in records.items()},
                                     {k: value(v, "novelty") for k, v in records.items()}, config.combined_weights)
        else:
            values = {k: value(v, self.kind) for k, v in records.items()}
        return [Candidate(k, values.get(k), stale=stale(v)) for k, v in records.items()]
