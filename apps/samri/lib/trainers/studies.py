"""Annotated studies of a MONAI Label datastore, with label values named through ``label_info``.

A client saves a ``final`` label with the names of its values: 3D Slicer sends
``PUT /datastore/label?image=<id>&tag=final`` with ``params: {"label_info": [{"name": "liver",
"idx": 1}, ...]}``, ``idx`` following *Slicer's segment order*, which is not the model's or the
other studies' order. The stored info is therefore the only reliable name -> voxel value map of
that file; the studies folder's ``label_names.json`` is the fallback for labels that were copied
into ``labels/final`` by hand. Only the datastore's read interface is used (never a write).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

from samri.errors import SamriInputError
from samri.train.stage1 import Study

logger = logging.getLogger(__name__)

#: the label tag the trainer reads (MONAI Label's ``DefaultLabelTag.FINAL``).
FINAL_TAG = "final"


def _label_value(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value or value < 0:
        raise SamriInputError(field, value, "must be a non-negative integer voxel value")
    return int(value)


def _add(out: dict[str, int], name: Any, value: Any, field: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise SamriInputError(f"{field}.name", name, "must be a non-empty string")
    number = _label_value(value, f"{field}.idx")
    if name == "background" or number == 0:
        return
    if name in out and out[name] != number:
        raise SamriInputError(f"{field}.name", name, f"names two values ({out[name]} and {number})")
    if number in out.values() and out.get(name) != number:
        raise SamriInputError(f"{field}.idx", number, "is given to two names")
    out[name] = number


def label_names_from_info(info: Mapping[str, Any] | None) -> dict[str, int] | None:
    """``{name: voxel value}`` from a stored label's info, or None when the info names no value.

    Accepts Slicer's ``{"label_info": [{"name": ..., "idx": ...}, ...]}`` (``value`` is accepted
    for ``idx``) and ``{"label_names": {name: value}}``. ``background`` and value 0 are dropped.

    Raises:
        SamriInputError: a malformed entry, a name with two values or a value with two names.
    """
    if not isinstance(info, Mapping):
        return None
    out: dict[str, int] = {}
    entries = info.get("label_info")
    if entries is not None:
        if not isinstance(entries, (list, tuple)):
            raise SamriInputError("label_info", entries, "must be a list of {name, idx}")
        for n, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise SamriInputError(f"label_info[{n}]", entry, "must be {name, idx}")
            _add(out, entry.get("name"), entry.get("idx", entry.get("value")), f"label_info[{n}]")
        return out or None
    names = info.get("label_names")
    if isinstance(names, Mapping):
        for name, value in names.items():
            _add(out, name, value, f"label_names[{name!r}]")
    return out or None


def fallback_label_names(studies: str) -> dict[str, dict[str, int]]:
    """``label_names.json`` of a local studies folder (``{}`` for URLs, missing or unreadable files)."""
    if not studies or studies.startswith(("http://", "https://")) or not os.path.isdir(studies):
        return {}
    from samri.sample_data import load_label_names

    try:
        return load_label_names(studies)
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s/label_names.json (%s)", studies, exc)
        return {}


def collect_studies(datastore, *, fallback_names: Mapping[str, Mapping[str, int]] | None = None,
                    tag: str = FINAL_TAG) -> tuple[list[Study], dict[str, str]]:
    """Every datastore image with a ``tag`` label, as `samri.train.stage1.Study` objects.

    Args:
        datastore: a MONAI Label ``Datastore`` (local, DICOMweb, ...); only read from.
        fallback_names: ``{image id: {name: value}}`` used when a label's info names no value.
        tag: label tag to train on.

    Returns:
        ``(studies sorted by id, {image id: why it was skipped}``): a missing file or malformed
        ``label_info`` skips that study only. Checks of the volumes themselves (shape, empty label,
        corrupt file) happen in stage 1 and are reported there.
    """
    fallback_names = fallback_names or {}
    studies: list[Study] = []
    skipped: dict[str, str] = {}
    for image_id in sorted(datastore.get_labeled_images()):
        try:
            label_id = datastore.get_label_by_image_id(image_id, tag)
            if not label_id:
                continue  # labelled with another tag only
            image = datastore.get_image_uri(image_id)
            if not image or not os.path.isfile(image):
                raise SamriInputError("image", image_id, "file not found in the datastore")
            label = datastore.get_label_uri(label_id, tag)
            if not label or not os.path.isfile(label):
                raise SamriInputError("label", label_id, f"'{tag}' label file not found in the datastore")
            names = label_names_from_info(datastore.get_label_info(label_id, tag))
            if names is None:
                names = {str(k): int(v) for k, v in fallback_names.get(image_id, {}).items()}
            studies.append(Study(image_id, Path(image), Path(label), names))
        except Exception as exc:  # noqa: BLE001  any datastore (DICOMweb downloads...) fails its own way
            skipped[image_id] = str(exc)
            logger.warning("skipping study %s: %s", image_id, exc)
    logger.info("datastore: %d studies with a '%s' label (%d skipped)", len(studies), tag, len(skipped))
    return studies, skipped
