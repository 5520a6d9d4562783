"""Atomic file writes and file signatures: the one implementation every module uses.

A write goes to a temporary file in the target's folder (or a ``tmp_dir`` on the same file
system), is flushed to disk, given the permissions a normally created file gets (`file_mode`),
and renamed over the target with ``os.replace``. A reader therefore sees the old file or the new
one, never half of one; on any exception (``KeyboardInterrupt`` included) the temporary file is
removed and the target is untouched.

`atomic_path` hands out a temporary *path* whose name keeps the target's suffix
(``.x.nii.gz.tmp-ab12.nii.gz``), so writers that infer the format from the name (nibabel, ITK) work
on it. Writes through a file object (`atomic_write`, `write_bytes`, `write_json`, `copy_file`) use
a ``.part`` suffix instead (``.x.nii.gz.tmp-ab12.part``): MONAI Label's datastore matches
``*.nii.gz`` with fnmatch, which also matches hidden files, so such a name is never taken for a volume.

Nothing heavy is imported here (no torch, no nibabel).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

logger = logging.getLogger(__name__)

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_PART = ".part"  # temporary suffix of writes through a file object (never matches a volume pattern)
_MAX_PREFIX = 80  # characters of the target's name kept in the temporary name (names are <= 255 bytes)


@functools.lru_cache(maxsize=1)
def file_mode() -> int:
    """Permissions a normally created file gets (0o666 less the umask); mkstemp's 0o600 is not that.

    Read once: ``os.umask`` can only be read by setting it, which must not race with other threads.
    """
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def format_suffix(name: str) -> str:
    """The suffix a format is recognised by: ``.nii.gz`` for ``a.nii.gz``, ``.pt`` for ``v1.pt``, else ``""``."""
    suffixes = Path(name).suffixes
    if not suffixes:
        return ""
    if suffixes[-1].lower() in _COMPRESSED and len(suffixes) > 1:
        return "".join(suffixes[-2:])
    return suffixes[-1]


def temp_file(folder: str | os.PathLike, *, prefix: str = ".", suffix: str = "") -> Path:
    """Create a new empty file with a unique name in ``folder`` (created if needed), mode `file_mode`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    try:
        os.chmod(name, file_mode())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder after a rename) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and Windows, read-only) refuse
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, *, tmp_dir: str | os.PathLike | None = None,
                mode: int | None = None, suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any exception it is removed.

    Args:
        path: the target; its folder is created if needed.
        tmp_dir: folder for the temporary file instead of the target's folder (must be on the same
            file system, e.g. a staging folder that a folder watcher ignores).
        mode: permissions of the result (default `file_mode`).
        suffix: how the temporary name ends (default: the target's `format_suffix`).
        durable: fsync the file before and its folder after the rename (False for caches, whose lost
            files are recomputed: still atomic, just not forced to disk).

    The temporary file exists (empty) when yielded; the writer may overwrite or truncate it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(tmp_dir if tmp_dir is not None else path.parent,
                    prefix=f".{path.name[:_MAX_PREFIX]}.tmp-",
                    suffix=format_suffix(path.name) if suffix is None else suffix)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.chmod(tmp, file_mode() if mode is None else mode)  # a writer may have recreated the file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent)  # make the rename itself durable where the platform allows


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = True,
                 tmp_dir: str | os.PathLike | None = None, durable: bool = True) -> Path:
    """Call ``write(file)`` on a temporary file (see `atomic_path`), then rename it over ``path``.

    ``binary=False`` opens the file as UTF-8 text.
    """
    path = Path(path)
    with atomic_path(path, tmp_dir=tmp_dir, suffix=_PART, durable=durable) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` at ``path``, atomically."""
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) at ``path``, atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> Path:
    """``obj`` as JSON at ``path``, atomically (values JSON cannot hold are written with ``str``)."""
    return write_text(path, json.dumps(obj, indent=indent, default=str))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, *, mode: int | None = None,
              tmp_dir: str | os.PathLike | None = None) -> Path:
    """Copy ``src``'s content to ``dst`` atomically; ``mode`` sets its permissions (else `file_mode`)."""
    dst = Path(dst)
    with atomic_path(dst, tmp_dir=tmp_dir, mode=mode, suffix=_PART) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def move_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rename ``src`` over ``dst``; across file systems copy next to ``dst`` first (mode kept), then remove ``src``."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:
        copy_file(src, dst, mode=os.stat(src).st_mode & 0o777)
        src.unlink(missing_ok=True)
    return dst


@dataclass(frozen=True)
class FileSignature:
    """What identifies one version of a file: its path, size, modification time and inode.

    Equal signatures mean "the same file, not rewritten" (an atomic rewrite changes the inode even
    when size and mtime happen to match). `text` is the short form stored in score records.
    """

    path: str
    size: int
    mtime_ns: int
    inode: int

    @property
    def text(self) -> str:
        """``"<mtime_ns>:<size>"`` (the form score records have always stored)."""
        return f"{self.mtime_ns}:{self.size}"

    def __str__(self) -> str:
        return self.text


def file_signature(path: str | os.PathLike | None) -> FileSignature | None:
    """`FileSignature` of the file at ``path`` (links followed), or None for no path or no such file."""
    if path is None or str(path) == "":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileSignature(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


def signature_text(path: str | os.PathLike | None) -> str | None:
    """`FileSignature.text` of ``path`` (``"<mtime_ns>:<size>"``, what score records store), or None."""
    sig = file_signature(path)
    return None if sig is None else sig.text
