"""Fixtures for training tests: synthetic annotated studies and a config dir with a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from samri.model.builders import load_model
from tests.helpers import TINY_ARCHITECTURE, tiny_spec, write_study


@pytest.fixture()
def studies_dir(tmp_path) -> Path:
    root = tmp_path / "studies"
    for n in range(3):
        write_study(root, f"s{n}", seed=n)
    return root


@pytest.fixture()
def tiny_config_dir(tmp_path) -> Path:
    """SAMRI_CONFIG_DIR with models.yaml naming a tiny model whose checkpoint the test wrote."""
    cfg = tmp_path / "configs"
    cfg.mkdir()
    torch.manual_seed(0)
    model = load_model(tiny_spec())
    ckpt = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), ckpt)
    models = {"default_model": "tiny", "window": {"lower_percentile": 0.5, "upper_percentile": 99.5},
              "models": {"tiny": {"architecture": dict(TINY_ARCHITECTURE), "checkpoint": str(ckpt),
                                  "preprocessing": {"input_size": 64}}}}
    (cfg / "models.yaml").write_text(yaml.safe_dump(models))
    training = {"optimizer": {"lr": 1e-3, "weight_decay": 0.1}, "epochs": 2, "batch_size": 4,
                "max_steps_per_epoch": 3, "min_pixels": 5, "axes": [2], "val_fraction": 0.34, "seed": 0,
                "max_val_samples": 16, "gate": {"margin": 0.0}}
    (cfg / "training.yaml").write_text(yaml.safe_dump(training))
    return cfg
