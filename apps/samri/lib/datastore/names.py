"""Names a client sends (image ids, label tags, upload and archive member names), and keeping paths inside a folder.

A name becomes one path component under the studies folder, so a client can never name a path
elsewhere. The rules are checked on the string alone, before any file-system access, so the
answer is the same whether or not something exists outside the folder.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

#: longest accepted id or tag (a file name is at most 255 bytes; room is left for extensions and stamps)
MAX_NAME_LEN = 200
# percent-encodings of "/", "\", "." and NUL: a name with them was double-encoded or hand-crafted
_ENCODED = re.compile(r"%(2f|5c|2e|00)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def name_problem(value: Any) -> str | None:
    """Why ``value`` is not a safe single path component, or None when it is."""
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > MAX_NAME_LEN:
        return f"is longer than {MAX_NAME_LEN} characters"
    if _CONTROL.search(value):
        return "must not contain NUL or control characters"
    if "/" in value or "\\" in value or _ENCODED.search(value):
        return "must not contain path separators ('/', '\\', %2F, %5C) or percent-encoded dots/NUL"
    if ".." in value:
        return "must not contain '..'"
    if value.startswith("."):
        return "must not be a hidden name (leading '.')"
    if value != value.strip():
        return "must not start or end with white space"
    return None


def check_name(field: str, value: Any) -> str:
    """``value`` if it is a safe single path component (see `name_problem`), else raise naming ``field``.

    Raises:
        SamriInputError: e.g. ``tag='../x': must not contain path separators ...``.
    """
    problem = name_problem(value)
    if problem:
        raise SamriInputError(field, value, problem)
    return value


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` (symlinks resolved) is ``root`` or lies under it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def check_inside(field: str, value: str, root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` if its folder resolves inside ``root`` (no symlinked folder leads out), else raise.

    Only the folder is resolved: the entry itself may be a symlink, which is replaced or unlinked
    as a link and never followed for a write or a delete.
    """
    p = Path(path)
    if not is_inside(root, p.parent):
        logger.warning("%s=%r: %s resolves outside %s", field, value, p.parent, root)
        raise SamriInputError(field, value, "resolves outside the studies folder (symlinked folder)")
    return p


def member_problem(name: str) -> str | None:
    """Why an archive member name would land outside the extraction folder, or None."""
    if not name or "\x00" in name:
        return "empty name or NUL in name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]+", name):
        return "'..' path component"
    return None
