"""Annotated studies of a MONAI Label datastore, with label values named through ``label_info``.

A client saves a ``final`` label with the names of its values: 3D Slicer sends
``PUT /datastore/label?image=<id>&tag=final`` with ``params: {"label_info": [{"name": "liver",
"idx": 1}, ...]}``, ``idx`` following *Slicer's segment order*, which is not the model's or the
other studies' order. The stored info is therefore the only reliable name -> voxel value map of
that file; the studies folder's ``label_names.json`` is the fallback for labels that were copied
into ``labels/final`` by hand (both read by `samri.labels`). Only the datastore's read interface
is used (never a write).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

from samri.errors import SamriInputError
from samri.labels import label_names_from_info
from samri.train.stage1 import Study

logger = logging.getLogger(__name__)

#: the label tag the trainer reads (MONAI Label's ``DefaultLabelTag.FINAL``).
FINAL_TAG = "final"


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
                names = dict(fallback_names.get(image_id, {}))
            studies.append(Study(image_id, Path(image), Path(label), names))
        except Exception as exc:  # noqa: BLE001  any datastore (DICOMweb downloads...) fails its own way
            skipped[image_id] = str(exc)
            logger.warning("skipping study %s: %s", image_id, exc)
    logger.info("datastore: %d studies with a '%s' label (%d skipped)", len(studies), tag, len(skipped))
    return studies, skipped
