"""Small file helpers of the trainer: the last run's record (and its live progress), the publish
lock, stale run folders.

Everything is written with temp file + rename, so a run killed at any moment leaves either the
previous or the new content, never a half-written file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from samri.io import write_json

logger = logging.getLogger(__name__)

#: a run folder without a readable owner pid is removed once it is this old (seconds).
STALE_AFTER_S = 3600.0


def pid_alive(pid: Any) -> bool:
    """Whether a running process has this id (False for anything that is not a positive int).

    A zombie counts as dead: MONAI Label's ``DELETE /train/`` SIGKILLs the run, which stays a zombie
    until the server's task thread reaps it.
    """
    import psutil

    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
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
        """Replace the record (temp file + rename)."""
        write_json(self.path, data)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: what a running record keeps of each kind of progress event (`samri.train.run.run_training`).
_EVENT_KEYS = {"stage1": ("study", "studies_done", "studies_total", "slices_encoded", "slices_used", "max_slices"),
               "stage2": ("epoch", "total_epochs", "step", "total_steps", "loss"),
               "validation": ("epoch", "total_epochs", "pairs_done", "pairs_total")}


class ProgressRecorder:
    """Writes a run's progress events into its `RunRecord`, at most every ``min_interval_s``.

    A new phase and a finished validation are written at once; other events only refresh the
    in-memory record until the interval has passed, so a step costs a dict update.

    Args:
        record: the run's record file.
        base: the record written when the run started (status, pid, options...).
        min_interval_s: the least time between two writes of ordinary events.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, record: RunRecord, base: dict[str, Any], *, min_interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.record = record
        self.data = dict(base)
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.writes = 0
        self._start = clock()
        self._last = -math.inf

    def __call__(self, event: dict[str, Any]) -> None:
        """Take one event of `samri.train.run.run_training`'s ``on_progress``."""
        phase = event.get("phase")
        section = self.data.setdefault(str(phase), {})
        section.update({k: event[k] for k in _EVENT_KEYS.get(str(phase), ()) if k in event})
        urgent = phase != self.data.get("phase") or "val" in event
        self.data["phase"] = phase
        for key in ("epoch", "total_epochs", "step", "total_steps", "loss"):
            if key in event:
                self.data[key] = event[key]
        if "val" in event:
            self.data["val"] = {"epoch": event.get("epoch"), **event["val"]}
            self.data["best"] = event.get("best")
            keys = ("epoch", "score", "dice", "dice_box", "dice_box_point", "dice_point", "noc85_box", "noc85_point",
                    "loss")
            self.data.setdefault("val_history", []).append({k: self.data["val"].get(k) for k in keys})
        if urgent or self.clock() - self._last >= self.min_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the record now (a failed write is logged, never raised: training goes on)."""
        self.data["updated"] = _now()
        self.data["elapsed_s"] = round(self.clock() - self._start, 1)
        try:
            self.record.write(self.data)
        except OSError as exc:
            logger.warning("cannot update the training record %s: %s", self.record.path, exc)
        self._last = self.clock()
        self.writes += 1


def progress_stats(last: dict[str, Any]) -> dict[str, Any]:
    """What ``/info/`` ``train_stats`` shows of a running record, in MONAI Label's keys.

    ``epoch`` is the epochs completed, fractional while one runs (3D Slicer's progress bar is
    ``epoch / total_epochs``); ``current_time`` is set while running (``total_time`` once done, as
    MONAI Label's own trainers do); ``best_metric`` the best validation Dice so far (epoch 0 is
    the live decoder on this run's validation studies).
    """
    total = last.get("total_epochs") or 1
    epoch, phase = int(last.get("epoch") or 0), last.get("phase")
    done = float(epoch)  # stage 1 (epoch 0), or epoch validated
    if phase == "stage2" and epoch >= 1 and last.get("total_steps"):
        done = epoch - 1 + min(1.0, float(last.get("step") or 0) / float(last["total_steps"]))
    elif phase == "validation" and epoch >= 1 and (last.get("val") or {}).get("epoch") != epoch:
        done = epoch - 0.01  # steps done, validating
    out: dict[str, Any] = {"epoch": round(min(done, total), 2), "total_epochs": total, "phase": phase,
                           "step": last.get("step"), "total_steps": last.get("total_steps"), "loss": last.get("loss"),
                           "current_time": last.get("elapsed_s")}
    best = (last.get("best") or {}).get("dice")
    if isinstance(best, (int, float)):
        out["best_metric"] = float(best)
    for key in ("stage1", "validation", "val"):
        if key in last:
            out[key] = last[key]
    return out


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
