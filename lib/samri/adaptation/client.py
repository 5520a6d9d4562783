"""What the simulated annotator's client does over HTTP: save a finished label, start a training
run and wait for it, read which decoder is live. The same requests 3D Slicer sends to MONAI Label."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

__all__ = ["TrainingFailed", "live_decoder", "put_final_label", "train_and_wait"]


class TrainingFailed(RuntimeError):
    """``POST /train/samri`` was refused or its run ended in an error."""


def put_final_label(base_url: str, image_id: str, label_path: Path, names: Mapping[str, int], *,
                    timeout_s: float = 120.0) -> None:
    """``PUT /datastore/label?image=<id>&tag=final`` with ``label_info`` as Slicer sends it.

    Raises:
        RuntimeError: the server answered anything but 200 (its message included).
    """
    import requests

    info = [{"name": name, "idx": int(value)} for name, value in sorted(names.items(), key=lambda kv: kv[1])]
    with open(label_path, "rb") as fh:
        resp = requests.put(f"{base_url}/datastore/label", params={"image": image_id, "tag": "final"},
                            data={"params": json.dumps({"label_info": info})},
                            files={"label": (label_path.name, fh)}, timeout=timeout_s)
    if resp.status_code != 200:
        raise RuntimeError(f"PUT /datastore/label {image_id}: HTTP {resp.status_code} {resp.text[:500]}")


def train_and_wait(base_url: str, options: Mapping[str, Any], *, poll_s: float = 2.0,
                   timeout_s: float = 3600.0) -> dict[str, Any]:
    """``POST /train/samri`` with ``options``, poll ``GET /train/`` until it ends; the run's result.

    Returns:
        The trainer's ``last_run`` record from ``/info/`` (``status`` ``"done"``, ``published``,
        ``version``, ``seconds`` per phase, ``budget``, validation figures) plus ``wall_seconds``
        and ``task_status`` (MONAI Label's task status, ``"DONE"``).

    Raises:
        TrainingFailed: the request was refused (4xx/5xx), the task ended in ``ERROR``, or it ran
            past ``timeout_s``.
    """
    import requests

    start = time.monotonic()
    resp = requests.post(f"{base_url}/train/samri", json=dict(options), timeout=60)
    if resp.status_code != 200:
        raise TrainingFailed(f"POST /train/samri: HTTP {resp.status_code} {resp.text[:500]}")
    task: dict[str, Any] = {}
    while time.monotonic() - start < timeout_s:
        task = requests.get(f"{base_url}/train/", timeout=30).json()
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(poll_s)
    else:
        raise TrainingFailed(f"training still running after {timeout_s:.0f} s")
    wall = time.monotonic() - start
    if task.get("status") != "DONE":
        details = "\n".join(str(d) for d in (task.get("details") or [])[-20:])
        raise TrainingFailed(f"training ended {task.get('status')}:\n{details}")
    info = requests.get(f"{base_url}/info/", timeout=30).json()
    last = ((info.get("train_stats") or {}).get("samri") or {}).get("last_run") or {}
    return {**last, "wall_seconds": round(wall, 1), "task_status": task.get("status")}


def live_decoder(app_dir: Path) -> tuple[str, Path | None]:
    """``(version, decoder file)`` the app serves now (``("base", None)``: the registry's decoder)."""
    from samri.train.store import DecoderStore

    return DecoderStore(Path(app_dir) / "model" / "decoders").resolve()
