"""Helpers of the MONAI Label app tests: what they know about a live server, and apps built in process."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
import yaml

from samri import sample_data as data
from samri.testing.server import ServerProcess, copy_app
from tests.helpers import TINY_ARCHITECTURE, tiny_spec

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "apps" / "samri"
COLIN = "colin27_t1"
MNI = "mni152_t1"
HAVE_COLIN = "colin27" in data.available_sources()
needs_colin = pytest.mark.skipif(not HAVE_COLIN, reason="Colin27/AAL (Debian mricron-data) not installed")


@dataclass
class LiveServer:
    """A running SAMRI server and what the tests know about its studies.

    Attributes:
        process: the server (base_url, log).
        studies: its datastore folder (a temporary copy the tests may modify).
        images: datastore ids written there.
        truth: ``{image id: (X, Y, Z) ground-truth labels}``, read before any test ran.
        label_names: ``{image id: {name: value}}``.
        affines: ``{image id: (4, 4) voxel-to-RAS}``.
    """

    process: ServerProcess
    studies: Path
    images: list[str]
    truth: dict[str, np.ndarray]
    label_names: dict[str, dict[str, int]]
    affines: dict[str, np.ndarray]

    @property
    def url(self) -> str:
        return self.process.base_url


@contextmanager
def in_process_apps(tmp_path: Path, studies: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    """``make(**conf)`` builds ``MyApp`` from a copy of apps/samri over ``studies``, in this process.

    No datastore reload thread and no sessions; embeddings cached under ``tmp_path/cache``, no
    background precompute unless ``conf`` says so. Every app's runtime is closed on exit.
    """
    from monailabel.config import settings
    from monailabel.utils.others.class_utils import get_class_of_subclass_from_file

    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)
    monkeypatch.setattr(settings, "MONAI_LABEL_SESSIONS", False)
    app_dir = copy_app(APP_DIR, tmp_path / "app")
    cls = get_class_of_subclass_from_file("main", str(app_dir / "main.py"), "MONAILabelApp")
    apps = []

    def make(**conf: str):
        from samri.model.export_cache import default_export_dir

        conf = {"cache_dir": str(tmp_path / "cache"), "precompute": "false",
                "backend_cache_dir": str(default_export_dir()), **conf}
        app = cls(app_dir=str(app_dir), studies=str(studies), conf=conf)
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            app.runtime.close()


#: short training of the tiny model that lifts its validation Dice (about 0.16 -> 0.5) in 2 epochs: a
#: Dice-only loss (the default focal term first drives a random decoder to all-background).
TRAINING = {"optimizer": {"lr": 1e-2, "weight_decay": 0.1}, "loss": {"lambda_focal": 0.0, "iou_weight": 0.0},
            "epochs": 2, "batch_size": 4, "max_steps_per_epoch": 4, "min_pixels": 5, "axes": [2],
            "val_fraction": 0.34, "seed": 0, "max_val_samples": 12, "gate": {"margin": 0.0}}


def write_tiny_config(folder: Path) -> Path:
    """A ``SAMRI_CONFIG_DIR``: registry with a tiny model (checkpoint file) and a short training.yaml."""
    from samri.model.builders import load_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ckpt = folder / "tiny.pth"
    torch.save(load_model(tiny_spec()).state_dict(), ckpt)
    models = {"default_model": "tiny", "window": {"lower_percentile": 0.5, "upper_percentile": 99.5},
              "models": {"tiny": {"architecture": dict(TINY_ARCHITECTURE), "checkpoint": str(ckpt),
                                  "preprocessing": {"input_size": 64}}}}
    (folder / "models.yaml").write_text(yaml.safe_dump(models))
    (folder / "training.yaml").write_text(yaml.safe_dump(TRAINING))
    return folder
