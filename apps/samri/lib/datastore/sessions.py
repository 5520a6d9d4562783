"""MONAI Label sessions without tar slip: archives are checked member by member before anything is unpacked.

``PUT /session/?uncompress=true`` saves the upload under the client's file name and calls
``Sessions.add_session``, which hands it to ``shutil.unpack_archive`` (format chosen from the file
name's extension). In Python 3.11 that extracts tar members as they are: ``../x``, ``/abs`` or a
symlink member followed by a file through it land anywhere the server may write. `SamriSessions`
reads the archive's member list first (with the format ``shutil`` would pick) and refuses the whole
archive (HTTP 422) when any member is absolute, has a ``..`` component, is a link, a device or a
FIFO, or carries set-uid/set-gid bits; over `MAX_MEMBERS` members or `MAX_ARCHIVE_BYTES` unpacked
bytes answers 413. Session ids in lookups must be single safe names.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import zipfile
from typing import Iterator

from fastapi import HTTPException
from monailabel.utils.sessions import Sessions

from .names import member_problem, name_problem

logger = logging.getLogger(__name__)

#: most members an archive may have
MAX_MEMBERS = 100_000
#: most bytes its members may unpack to (16 GiB)
MAX_ARCHIVE_BYTES = 16 << 30


def archive_format(path: str) -> str | None:
    """Name of the ``shutil`` unpack format for ``path``'s extension (``zip``, ``gztar``, ...), or None."""
    lower = os.path.basename(path).lower()
    for name, extensions, _ in shutil.get_unpack_formats():
        if any(lower.endswith(ext) for ext in extensions):
            return name
    return None


def _members(path: str, fmt: str) -> Iterator[tuple[str, int, str | None]]:
    """``(name, unpacked size, why refused or None)`` of every member."""
    if fmt == "zip":
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                mode = info.external_attr >> 16
                why = "a symbolic link" if stat.S_ISLNK(mode) else None
                yield info.filename, info.file_size, why
        return
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            why = None
            if member.issym() or member.islnk():
                why = "a link"
            elif not (member.isreg() or member.isdir()):
                why = "a device, FIFO or other special file"
            elif member.mode & (stat.S_ISUID | stat.S_ISGID):
                why = "set-uid/set-gid"
            yield member.name, member.size, why


def check_archive(path: str) -> None:
    """Raise `fastapi.HTTPException` (422/413) unless every member of archive ``path`` unpacks inside its folder."""
    shown = os.path.basename(path)
    fmt = archive_format(path)
    if fmt is None:
        formats = ", ".join(ext for _, exts, _ in shutil.get_unpack_formats() for ext in exts)
        raise HTTPException(status_code=422, detail=f"file={shown!r}: not an archive to uncompress ({formats})")
    count = total = 0
    try:
        for name, size, why in _members(path, fmt):
            why = why or member_problem(name)
            if why:
                logger.warning("session archive %s refused: member %r is %s", shown, name, why)
                raise HTTPException(status_code=422, detail=f"file={shown!r}: member {name!r} refused ({why}); "
                                                            "nothing was extracted")
            count, total = count + 1, total + max(int(size), 0)
            if count > MAX_MEMBERS or total > MAX_ARCHIVE_BYTES:
                raise HTTPException(status_code=413, detail=f"file={shown!r}: over {MAX_MEMBERS} members or "
                                                            f"{MAX_ARCHIVE_BYTES} unpacked bytes")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise HTTPException(status_code=422, detail=f"file={shown!r}: unreadable {fmt} archive ({exc})") from exc


class SamriSessions(Sessions):
    """MONAI Label's ``Sessions`` (same store and expiry) with archives checked before unpacking."""

    def add_session(self, data_file: str, expiry: int = 0, uncompress: bool = False, session_id=None):
        if uncompress and not os.path.isdir(data_file):
            check_archive(data_file)
        if session_id is not None and name_problem(session_id):
            raise HTTPException(status_code=422, detail=f"session_id={session_id!r}: {name_problem(session_id)}")
        try:
            return super().add_session(data_file, expiry=expiry, uncompress=uncompress, session_id=session_id)
        except (shutil.ReadError, tarfile.TarError, zipfile.BadZipFile) as exc:
            raise HTTPException(status_code=422, detail=f"file={os.path.basename(data_file)!r}: {exc}") from exc

    def get_session(self, session_id: str, update_ts: bool = True, fetch_cache: bool = True):
        """The session, or None for an unknown or unsafe id (the endpoint answers 404)."""
        if name_problem(session_id):
            return None
        return super().get_session(session_id, update_ts=update_ts, fetch_cache=fetch_cache)

    def remove_session(self, session_id: str) -> None:
        if name_problem(session_id):
            logger.warning("session id %r refused: not a single safe name", session_id)
            return
        super().remove_session(session_id)
