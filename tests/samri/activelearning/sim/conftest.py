"""Fixtures for the active-learning simulation tests: small labelled source studies."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import ellipsoid_mask, synthetic_array


@pytest.fixture()
def sim_studies(tmp_path: Path, tiny_registry: Path) -> Path:
    """Two labelled sources (``src_a``, ``src_b``); ``tiny_registry`` makes the tiny model the default."""
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    label = ellipsoid_mask().astype(np.uint8)
    label[ellipsoid_mask(radii=(4.0, 4.0, 3.0))] = 2
    for n, name in enumerate(("src_a", "src_b")):
        nib.save(nib.Nifti1Image(synthetic_array(seed=n), affine), str(studies / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(studies / "labels" / "final" / f"{name}.nii.gz"))
    names = {"blob": 1, "core": 2}
    (studies / "label_names.json").write_text(json.dumps({"src_a": names, "src_b": names}))
    return studies
