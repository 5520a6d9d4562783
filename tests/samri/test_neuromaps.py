"""The macaque adaptation domain (samri.neuromaps) and `samri.cohorts` with ``domain="macaque"``,
on a tiny synthetic INIA19-like template with NeuroMaps-like values beyond uint8."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.cohorts import CohortRecipe, write_cohort
from samri.errors import SamriInputError
from samri.labels import load_label_names
from samri.neuromaps import INIA_ATLAS, load_macaque_template
from tests.helpers import INIA_SHAPE as SHAPE
from tests.helpers import write_fake_inia


@pytest.fixture()
def inia(tmp_path: Path) -> Path:
    return write_fake_inia(tmp_path / "mricron")


def test_template_keeps_renumbers_and_names_by_original_value(inia):
    t = load_macaque_template(inia, min_voxels=5)
    assert t.labels.dtype == np.uint8 and t.labels.shape == SHAPE
    assert t.names == {1: "neuromaps_7", 2: "neuromaps_1200"}  # value order
    assert t.dropped == {"neuromaps_1500": 3}
    assert set(np.unique(t.labels)) == {0, 1, 2}
    assert t.kept[1] == int((t.labels == 1).sum()) and t.labels[0, 0, 0] == 0
    with pytest.raises(SamriInputError) as err:
        load_macaque_template(inia.parent, min_voxels=5)
    assert err.value.field == "mricron_dir"


def test_macaque_cohort_keeps_the_half_mm_grid_and_splits_subjects(tmp_path, inia):
    recipe = CohortRecipe(domain="macaque", contrasts=("t2like",), subjects=3, annotate=2, min_voxels=5)
    manifest = write_cohort(tmp_path / "cohort", recipe, mricron_dir=inia, progress=False)
    subjects = manifest["subjects"]
    assert all(s.startswith("macaque_s") for s in subjects)
    annotate = {s for s, v in subjects.items() if v["split"] == "annotate"}
    test = {s for s, v in subjects.items() if v["split"] == "test"}
    assert len(annotate) == 2 and len(test) == 1 and not annotate & test
    for sid in subjects:
        img = nib.load(tmp_path / "cohort" / f"{sid}.nii.gz")
        assert img.shape == SHAPE and np.allclose(img.header.get_zooms(), 0.5)  # template grid kept
        lab = nib.load(tmp_path / "cohort" / "labels" / "final" / f"{sid}.nii.gz")
        assert np.allclose(lab.affine, img.affine)
    names = load_label_names(tmp_path / "cohort")
    assert set(names) == set(subjects) and set(next(iter(names.values()))) <= {"neuromaps_7", "neuromaps_1200"}
    stored = json.loads((tmp_path / "cohort" / "cohort.json").read_text())
    assert stored["recipe"]["domain"] == "macaque" and stored["recipe"]["atlas"] == INIA_ATLAS
    readme = (tmp_path / "cohort" / "README.md").read_text()
    assert "--domain macaque" in readme and "INIA19" in readme
    with pytest.raises(SamriInputError) as err:
        CohortRecipe(domain="mouse").validate()
    assert err.value.field == "domain"
