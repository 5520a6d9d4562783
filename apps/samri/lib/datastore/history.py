"""Earlier versions of labels, kept inside the studies folder where MONAI Label's scans never look.

Layout: ``<studies>/.samri/label-history/<tag>/<image id>/<UTC stamp><ext>`` plus
``<UTC stamp>.json`` holding the label's datastore info (``label_info`` names, user, ts) at the
time it was replaced or removed; stamps look like ``20261127T101500.123456Z``. MONAI Label's
``LocalDatastore`` lists images only as top-level files of the studies folder and tags only as
sub-folders of ``labels/``, so nothing under ``.samri/`` ever becomes an image or a tag (and the
datastores refuse hidden ids and tags, so no client can name it).

Restore: ``SamriLocalDatastore.restore_label(image_id, tag, stamp)`` (the current label is kept as
a version in turn), or over HTTP ``PUT /datastore/label?image=<id>&tag=<tag>`` with the version's
file and ``params`` = the ``label_info`` of its ``.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from samri.io import copy_file, write_json

logger = logging.getLogger(__name__)

#: private folder of the SAMRI datastore inside the studies folder
PRIVATE_DIR = ".samri"
#: label versions, under `PRIVATE_DIR`
HISTORY_DIR = "label-history"
#: staging area for atomic writes, under `PRIVATE_DIR` (same file system as the studies)
STAGING_DIR = "tmp"


@dataclass(frozen=True)
class LabelVersion:
    """One kept label file: ``stamp`` (UTC, sortable), ``path`` of the file, ``info`` at that time."""

    stamp: str
    path: Path
    info: dict[str, Any]


def history_folder(studies: str | os.PathLike, tag: str, image_id: str) -> Path:
    """``<studies>/.samri/label-history/<tag>/<image_id>`` (names already checked by the caller)."""
    return Path(studies) / PRIVATE_DIR / HISTORY_DIR / tag / image_id


def staging_folder(studies: str | os.PathLike) -> Path:
    """``<studies>/.samri/tmp``, created if needed."""
    folder = Path(studies) / PRIVATE_DIR / STAGING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def clean_staging(studies: str | os.PathLike, older_than_s: float = 3600.0) -> int:
    """Remove staged files older than ``older_than_s`` (left by a crash); returns how many."""
    import time

    folder = Path(studies) / PRIVATE_DIR / STAGING_DIR
    removed = 0
    for path in folder.glob("*") if folder.is_dir() else ():
        try:
            if path.is_file() and time.time() - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except OSError:  # another process removed or renamed it meanwhile
            continue
    if removed:
        logger.info("removed %d stale staged file(s) from %s", removed, folder)
    return removed


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _split(name: str, extensions: Sequence[str]) -> tuple[str, str]:
    for ext in sorted(extensions, key=len, reverse=True):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return os.path.splitext(name)


def keep_version(studies: str | os.PathLike, tag: str, image_id: str, current: Path,
                 info: Mapping[str, Any], extensions: Sequence[str]) -> LabelVersion:
    """Keep a copy of ``current`` (a label file) as a new version; the original stays where it is.

    A copy, not a hard link: a tool that rewrites the live file in place (``cp``, ``nib.save``)
    would change a linked version too. Written through a temporary name. Returns the kept version.
    """
    folder = history_folder(studies, tag, image_id)
    folder.mkdir(parents=True, exist_ok=True)
    _, ext = _split(current.name, extensions)
    stamp = _stamp()
    while (folder / f"{stamp}{ext}").exists() or (folder / f"{stamp}.json").exists():
        stamp = _stamp()
    dest = copy_file(current, folder / f"{stamp}{ext}")
    write_json(folder / f"{stamp}.json", dict(info))
    logger.info("label %s/%s: previous version kept as %s", tag, image_id, dest)
    return LabelVersion(stamp=stamp, path=dest, info=dict(info))


def list_versions(studies: str | os.PathLike, tag: str, image_id: str,
                  extensions: Sequence[str]) -> list[LabelVersion]:
    """Kept versions of ``image_id``'s ``tag`` label, oldest first."""
    folder = history_folder(studies, tag, image_id)
    if not folder.is_dir():
        return []
    out = []
    for path in folder.iterdir():
        stamp, ext = _split(path.name, extensions)
        if ext not in extensions or path.name.startswith(".") or not path.is_file():
            continue
        meta = folder / f"{stamp}.json"
        try:
            info = json.loads(meta.read_text()) if meta.is_file() else {}
        except (OSError, ValueError) as exc:
            logger.warning("label history %s: unreadable %s (%s)", folder, meta.name, exc)
            info = {}
        out.append(LabelVersion(stamp=stamp, path=path, info=info))
    return sorted(out, key=lambda v: v.stamp)
