"""Score records: what is stored per study, with what it was computed with, and when it is current.

A study's scores live in its datastore image info under `SCORES_KEY`::

    {"samri_scores": {"uncertainty": {<record>}, "novelty": {<record>}}}

A record (a JSON dict, see `make_record`)::

    {"method": "uncertainty", "value": 0.31, "usable": true, "reason": null,
     "version": "<model version>", "decoder_version": "v0002", "config": "<settings hash>",
     "inputs": {"image": "<mtime_ns>:<size>", "original": null}, "computed": "2026-...Z",
     "details": {...}}

It is current (`is_current`) when the model version, the settings hash and the input files'
signatures all match; scoring jobs skip current studies. A study whose image cannot be read or
encoded gets ``usable: false`` and a ``reason``; strategies never hand it out.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from typing import Any, Mapping

logger = logging.getLogger(__name__)

#: key of the scores in the datastore's image info
SCORES_KEY = "samri_scores"
METHODS = ("uncertainty", "novelty")


def model_version(model, decoder_version: str | None) -> str:
    """Identity of the served weights: registry name, encoder key, decoder version and decoder weights hash.

    Args:
        model: a `samri.model.builders.SamModel`.
        decoder_version: the published decoder version served (``vNNNN``/``base``), or None.
    """
    from samri.model.builders import state_fingerprint

    text = f"{model.spec.name}|{model.cache_key()}|{decoder_version}|{state_fingerprint(model.mask_decoder)}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def encoder_version(model) -> str:
    """Identity of the embeddings (novelty depends on the encoder only)."""
    return hashlib.blake2b(model.cache_key().encode(), digest_size=8).hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_record(method: str, *, value: float | None, version: str, config: str, inputs: Mapping[str, Any],
                decoder_version: str | None = None, details: Mapping[str, Any] | None = None,
                reason: str | None = None) -> dict[str, Any]:
    """A score record; ``value=None`` with a ``reason`` marks the study unusable."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: unknown; known: {list(METHODS)}")
    usable = value is not None
    return {"method": method, "value": None if value is None else round(float(value), 6), "usable": usable,
            "reason": None if usable else (reason or "unknown error"), "version": version,
            "decoder_version": decoder_version, "config": config, "inputs": dict(inputs), "computed": now(),
            "details": dict(details or {})}


def is_current(record: Mapping[str, Any] | None, *, version: str, config: str, inputs: Mapping[str, Any]) -> bool:
    """True when ``record`` was computed with this model version, settings and input files."""
    if not isinstance(record, Mapping):
        return False
    return (record.get("version") == version and record.get("config") == config
            and dict(record.get("inputs") or {}) == dict(inputs))


def scores_of(info: Mapping[str, Any] | None) -> dict[str, dict]:
    """The ``{method: record}`` of an image info dict (``{}`` when absent or malformed)."""
    scores = (info or {}).get(SCORES_KEY)
    if not isinstance(scores, Mapping):
        return {}
    return {k: dict(v) for k, v in scores.items() if k in METHODS and isinstance(v, Mapping)}


def refresh(datastore) -> None:
    """Re-read a local datastore's JSON if another process (a scoring job) changed it.

    MONAI Label's `LocalDatastore` keeps its JSON in memory and writes all of it back on every
    update, so a process must reload before writing or it would undo the other's updates.
    Other datastores are left alone (their ``refresh`` may list a remote server).
    """
    from monailabel.datastore.dicom import DICOMWebDatastore
    from monailabel.datastore.local import LocalDatastore

    # SAMRI's local datastore subclasses LocalDatastore; DICOMweb subclasses it too but lists a server
    if isinstance(datastore, LocalDatastore) and not isinstance(datastore, DICOMWebDatastore):
        datastore.refresh()


def write_score(datastore, image_id: str, record: Mapping[str, Any]) -> None:
    """Store ``record`` under ``samri_scores.<method>`` of ``image_id``'s info (other methods kept)."""
    refresh(datastore)
    scores = scores_of(datastore.get_image_info(image_id))
    scores[record["method"]] = dict(record)
    datastore.update_image_info(image_id, {SCORES_KEY: scores})
