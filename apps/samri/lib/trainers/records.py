"""Small file helpers of the trainer: the last run's record, the publish lock, stale run folders.

Everything is written with temp file + rename, so a run killed at any moment leaves either the
previous or the new content, never a half-written file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

#: a run folder without a readable owner pid is removed once it is this old (seconds).
STALE_AFTER_S = 3600.0


def pid_alive(pid: Any) -> bool:
    """Whether a process with this id exists (False for anything that is not a positive int)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunRecord:
    """A JSON file describing the last training run (what ``/info/`` ``train_stats`` shows).

    Args:
        path: the record file (``<app>/model/train_runs/last_run.json``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("unreadable training record %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, default=str)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextmanager
def publish_lock(folder: str | os.PathLike, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialise publish/rollback between processes sharing the app folder (a file lock)."""
    from filelock import FileLock

    Path(folder).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(folder) / ".publish.lock"), timeout=timeout_s):
        yield


def remove_stale_runs(folder: str | os.PathLike) -> list[Path]:
    """Delete ``run_*`` folders left by killed runs (owner pid gone); returns what was removed."""
    removed = []
    for run in sorted(Path(folder).glob("run_*")):
        if not run.is_dir():
            continue
        try:
            owner: Any = int((run / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            owner = None
        if owner is None:
            try:
                if time.time() - run.stat().st_mtime < STALE_AFTER_S:
                    continue  # being created right now
            except OSError:
                continue
        elif pid_alive(owner):
            continue
        shutil.rmtree(run, ignore_errors=True)
        removed.append(run)
        logger.info("removed the folder of an interrupted training run: %s", run)
    return removed
