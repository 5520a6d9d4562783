"""``DELETE /train/`` (MONAI Label's stop: SIGKILL of the training subprocess) in stage 1 and in
stage 2 of a real run leaves the live decoder, ``live.json``, the published versions and the
datastore byte-identical, and the server serving."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from samri.testing.server import copy_app, start_server
from tests.apps.helpers import APP_DIR, write_tiny_config

#: a long thin study: many labelled slices, so that stage 1 of the tiny model lasts seconds
SHAPE = (40, 40, 400)


def _write_long_studies(root: Path, n: int = 2) -> Path:
    (root / "labels" / "final").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    disc = ((yy - 20) ** 2 + (xx - 18) ** 2 <= 81)[..., None].repeat(SHAPE[2], axis=2)
    for k in range(n):
        image = (rng.normal(20, 5, SHAPE) + 200.0 * disc).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / f"long{k}.nii.gz"))
        nib.save(nib.Nifti1Image(disc.astype(np.uint8), np.eye(4)), str(root / "labels" / "final" / f"long{k}.nii.gz"))
    (root / "label_names.json").write_text(json.dumps({f"long{k}": {"disc": 1} for k in range(n)}))
    return root


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _phase(app: Path) -> str | None:
    try:
        return json.loads((app / "model" / "train_runs" / "last_run.json").read_text()).get("phase")
    except (OSError, ValueError):
        return None


def _kill_in(url: str, app: Path, phase: str, body: dict, timeout_s: float = 240.0) -> str:
    """Start a run, DELETE /train/ as soon as the run reports ``phase``; the phase it died in."""
    resp = requests.post(f"{url}/train/samri", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + timeout_s
    while _phase(app) != phase:
        assert time.monotonic() < deadline, f"never reached {phase}: {_phase(app)}"
        assert requests.get(f"{url}/train/", timeout=10).json().get("status") in ("SUBMITTED", "RUNNING")
        time.sleep(0.02)
    assert requests.delete(f"{url}/train/", timeout=30).status_code == 200
    died_in = _phase(app)
    while requests.get(f"{url}/train/", timeout=10).json().get("status") in ("SUBMITTED", "RUNNING"):
        time.sleep(0.2)
    return died_in


@pytest.mark.slow
def test_killed_training_leaves_decoders_and_datastore_byte_identical(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path / "configs")
    studies = _write_long_studies(tmp_path / "studies")
    app = copy_app(APP_DIR, tmp_path / "app")
    server = start_server(app_dir=app, studies=studies, log_path=tmp_path / "server.log",
                          env={"SAMRI_CONFIG_DIR": str(config)},
                          conf={"precompute": "false", "cache_dir": str(tmp_path / "cache")})
    url = server.base_url
    try:  # one published version first, so live.json and versions/ exist and must survive
        resp = requests.post(f"{url}/train/samri", json={"max_epochs": 1, "max_slices": 8, "gate_margin": 1.0},
                             timeout=30)
        assert resp.status_code == 200, resp.text
        while requests.get(f"{url}/train/", timeout=10).json().get("status") in ("SUBMITTED", "RUNNING"):
            time.sleep(0.2)
        decoders = app / "model" / "decoders"
        assert json.loads((decoders / "live.json").read_text())["version"] == "v0001"
        before = {"decoders": _digest(decoders), "studies": _digest(studies)}

        died = [_kill_in(url, app, "stage1", {"max_epochs": 1, "max_slices": 0}),
                _kill_in(url, app, "stage2", {"max_epochs": 50, "max_steps_per_epoch": 0, "max_slices": 8})]
        assert died == ["stage1", "stage2"]
        assert {"decoders": _digest(decoders), "studies": _digest(studies)} == before
        deadline = time.monotonic() + 15.0  # /info/ sees the death once the killed process is reaped
        while True:
            info = requests.get(f"{url}/info/", timeout=10).json()
            if info["train_stats"]["samri"]["last_run"]["status"] == "killed" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert info["samri"]["decoders"]["live"] == "v0001"
        assert info["train_stats"]["samri"]["last_run"]["status"] == "killed"
        assert server.alive()
    finally:
        server.stop()
