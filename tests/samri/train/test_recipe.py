"""The default-decoder recipe's studies: training volumes and the held-out-structure validation study."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from samri.errors import SamriInputError
from samri.train.recipe import PSEUDO_STUDY, VALIDATION_STUDY, build_training_studies, split_validation_labels


def test_split_validation_labels_holds_out_every_nth_structure_with_its_twin():
    names = {"A_L": 1, "A_R": 2, "B_L": 3, "B_R": 4, "Vermis_1": 5, "C_L": 6, "C_R": 7, "D": 8}
    train, held = split_validation_labels(names, 2)
    # structures in value order: A, B, Vermis_1, C, D -> the 2nd and 4th (B, C) with both sides
    assert held == {"B_L": 3, "B_R": 4, "C_L": 6, "C_R": 7}
    assert set(train) | set(held) == set(names) and not set(train) & set(held)
    assert split_validation_labels(names, 0) == (names, {})
    with pytest.raises(SamriInputError, match="validation.label_stride"):
        split_validation_labels(names, 1)


def test_recipe_studies_hold_validation_structures_apart(sample_studies_dir, tmp_path):
    names_in = json.loads((sample_studies_dir / "label_names.json").read_text())
    if "colin27_t1" not in names_in:
        pytest.skip("Colin27 (Debian mricron-data) not installed: the recipe trains on MNI152 alone")
    samples = tmp_path / "samples"
    samples.mkdir()
    for sub in ("", "labels/final"):
        (samples / sub).mkdir(parents=True, exist_ok=True)
        for study in names_in:
            (samples / sub / f"{study}.nii.gz").symlink_to(sample_studies_dir / sub / f"{study}.nii.gz")
    (samples / "label_names.json").write_text(json.dumps(names_in))
    out, val_ids = build_training_studies(samples, tmp_path / "studies", label_stride=4,
                                          pseudo_cells={"grey": 20, "white": 5})
    names = json.loads((out / "label_names.json").read_text())
    assert val_ids == [VALIDATION_STUDY]
    held = set(names[VALIDATION_STUDY])
    assert 20 <= len(held) <= 40 and not any(n.endswith("_L") and n[:-2] + "_R" not in held for n in held)
    training_colin = [k for k in names if k.startswith("colin27_t1") and k not in (VALIDATION_STUDY, PSEUDO_STUDY)]
    assert len(training_colin) == 2  # the original and the bias-field copy
    for study in training_colin:
        assert held.isdisjoint(names[study]) and held | set(names[study]) == set(names_in["colin27_t1"])
    # the validation image is the original Colin27 (same content, so no extra encoding)
    val_img = nib.load(str(out / f"{VALIDATION_STUDY}.nii.gz"))
    src_img = nib.load(str(sample_studies_dir / "colin27_t1.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(val_img.dataobj), np.asanyarray(src_img.dataobj))
    assert (out / "labels" / "final" / f"{VALIDATION_STUDY}.nii.gz").is_file()
    # pseudo-structures: parcels of training tissue only, never a validation structure's voxel
    atlas = np.asanyarray(nib.load(str(sample_studies_dir / "labels" / "final" / "colin27_t1.nii.gz")).dataobj)
    pseudo = np.asanyarray(nib.load(str(out / "labels" / "final" / f"{PSEUDO_STUDY}.nii.gz")).dataobj)
    held_values = [names_in["colin27_t1"][n] for n in held]
    assert not (np.isin(atlas, held_values) & (pseudo > 0)).any()
    assert 15 <= len(names[PSEUDO_STUDY]) <= 25 and set(np.unique(pseudo)) - {0} == set(names[PSEUDO_STUDY].values())
    assert any(n.startswith("pseudo_white_") for n in names[PSEUDO_STUDY])
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out / f"{PSEUDO_STUDY}.nii.gz")).dataobj),
                                  np.asanyarray(src_img.dataobj))
