"""Label names: the one reader, writer and validator of ``label_names.json`` and of ``label_info``.

Two places say which voxel value of a label file is which structure:

* ``<studies>/label_names.json``: ``{study_id: {label name: voxel value}}``, written by
  ``samri sample-data`` and the simulations next to a MONAI Label studies folder;
* a saved label's ``label_info`` (what 3D Slicer sends with ``PUT /datastore/label``):
  ``{"label_info": [{"name": "liver", "idx": 1}, ...]}`` (``value`` is accepted for ``idx``),
  or ``{"label_names": {name: value}}``.

Every error is a `samri.errors.SamriInputError` naming the field and value. Nothing heavy is imported.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

from samri.errors import SamriInputError
from samri.io import write_text

logger = logging.getLogger(__name__)

#: the file name inside a studies folder
LABEL_NAMES_FILE = "label_names.json"
#: the name (value 0) that is never a structure
BACKGROUND = "background"

_INFO_SHAPE = '{"name": str, "idx": int}'


def side_less(name: str) -> str:
    """A structure name without its hemisphere suffix (AAL's ``_L`` / ``_R``, the cohorts' ``_l`` / ``_r``),
    so both sides of a structure group together."""
    return name[:-2] if name.endswith(("_L", "_R", "_l", "_r")) else name


def label_value(value: Any, field: str) -> int:
    """``value`` as a voxel value: a non-negative integer (integral floats accepted, booleans not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value or value < 0:
        raise SamriInputError(field, value, "must be a non-negative integer voxel value")
    return int(value)


def _name(name: Any, field: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SamriInputError(field, name, "must be a non-empty string")
    return name


def check_label_names(names: Any, field: str = "label_names") -> dict[str, int]:
    """``{name: voxel value}`` checked (strings, non-negative integers), in the given order."""
    if not isinstance(names, Mapping):
        raise SamriInputError(field, names, "must be a {name: voxel value} object")
    return {_name(k, f"{field}[{k!r}]"): label_value(v, f"{field}[{k!r}]") for k, v in names.items()}


def load_label_names(studies_dir: str | os.PathLike, *, strict: bool = True) -> dict[str, dict[str, int]]:
    """Read ``<studies_dir>/label_names.json``: ``{study_id: {label name: voxel value}}``.

    Args:
        studies_dir: a studies folder (with ``strict=False`` also a DICOMweb URL, or empty).
        strict: raise on an unreadable or malformed file; else log a warning and return ``{}``.

    Returns:
        ``{}`` when the file is absent (or, not strict, when ``studies_dir`` is a URL or no folder).

    Raises:
        SamriInputError: (``strict``) the file is not JSON or not that layout, naming the entry.
    """
    if not strict and (not studies_dir or str(studies_dir).startswith(("http://", "https://"))
                       or not os.path.isdir(studies_dir)):
        return {}
    path = Path(studies_dir) / LABEL_NAMES_FILE
    try:
        if not path.is_file():
            return {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise SamriInputError(LABEL_NAMES_FILE, str(path), f"is not valid JSON ({exc})") from exc
        if not isinstance(raw, Mapping):
            raise SamriInputError(LABEL_NAMES_FILE, str(path), "must hold {study_id: {label name: voxel value}}")
        return {str(sid): check_label_names(names, f"{LABEL_NAMES_FILE}[{sid!r}]") for sid, names in raw.items()}
    except (OSError, ValueError) as exc:
        if strict:
            raise
        logger.warning("ignoring unreadable %s (%s)", path, exc)
        return {}


def write_label_names(studies_dir: str | os.PathLike, names: Mapping[str, Mapping[str, int]]) -> Path:
    """Write ``label_names.json`` atomically (studies sorted by id; names keep their order)."""
    checked = {str(sid): check_label_names(n, f"{LABEL_NAMES_FILE}[{sid!r}]") for sid, n in names.items()}
    ordered = {sid: checked[sid] for sid in sorted(checked)}
    return write_text(Path(studies_dir) / LABEL_NAMES_FILE, json.dumps(ordered, indent=2) + "\n")


def _add(out: dict[str, int], name: Any, value: Any, field: str) -> None:
    _name(name, f"{field}.name")
    number = label_value(value, f"{field}.idx")
    if name == BACKGROUND or number == 0:
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


#: the file a MONAI Label local datastore keeps its images' and labels' info in
DATASTORE_FILE = "datastore_v2.json"


def datastore_label_names(studies_dir: str | os.PathLike, tag: str = "final") -> dict[str, dict[str, int]]:
    """``{image id: {name: voxel value}}`` from a local MONAI Label datastore's ``datastore_v2.json``: each
    ``tag`` label's stored ``label_info`` (`label_names_from_info`), as the app's trainer reads it.

    An absent or unreadable file, or a malformed entry, names nothing (logged), so a folder without a
    datastore keeps working with ``label_names.json`` alone.
    """
    path = Path(studies_dir) / DATASTORE_FILE
    if not path.is_file():
        return {}
    try:
        objects = json.loads(path.read_text(encoding="utf-8")).get("objects") or {}
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("ignoring unreadable %s (%s)", path, exc)
        return {}
    out: dict[str, dict[str, int]] = {}
    for image_id, entry in objects.items() if isinstance(objects, Mapping) else ():
        try:
            info = ((entry.get("labels") or {}).get(tag) or {}).get("info")
            names = label_names_from_info(info)
        except (AttributeError, SamriInputError) as exc:
            logger.warning("%s: %s label of %s names nothing (%s)", path, tag, image_id, exc)
            continue
        if names:
            out[str(image_id)] = names
    return out


def check_label_info(info: Mapping[str, Any] | None) -> tuple[set[int], dict[str, int]] | None:
    """Validate an upload's ``info["label_info"]``: ``(every idx, {name: value} without background)``.

    Stricter than `label_names_from_info` (a list is required, every entry needs a name) so that
    what is stored always parses. None when ``info`` has no ``label_info``.

    Raises:
        SamriInputError: ``label_info`` not a list, an entry without a string name or an integer idx,
            a name with two values or a value with two names.
    """
    if not isinstance(info, Mapping) or "label_info" not in info:
        return None
    entries = info["label_info"]
    if not isinstance(entries, list):
        raise SamriInputError("label_info", entries, f"must be a list of {_INFO_SHAPE}")
    idx: set[int] = set()
    for n, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise SamriInputError(f"label_info[{n}]", entry, f"must be {_INFO_SHAPE}")
        _name(entry.get("name"), f"label_info[{n}].name")
        idx.add(label_value(entry.get("idx", entry.get("value")), f"label_info[{n}].idx"))
    return idx, label_names_from_info({"label_info": entries}) or {}


def label_info_entries(names: Mapping[str, int]) -> list[dict[str, Any]]:
    """``{name: value}`` as MONAI Label ``label_info`` entries ``[{"name": ..., "idx": ...}]``."""
    return [{"name": name, "idx": int(value)} for name, value in names.items()]
