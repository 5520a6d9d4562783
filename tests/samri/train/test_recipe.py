"""The default-decoder recipe's studies: training volumes and the held-out-structure validation study."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from samri.errors import SamriInputError
from samri.labels import write_label_names
from samri.train.config import TrainConfig
from samri.train.recipe import (
    COHORT_VALIDATION_SUFFIX,
    PSEUDO_FINE_STUDY,
    PSEUDO_STUDY,
    PSEUDO_TUBE_STUDY,
    VALIDATION_STUDY,
    _copy_cohort_validation,
    _pseudo_metadata,
    build_training_studies,
    pseudo_layout,
    split_validation_labels,
)


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
                                          pseudo={PSEUDO_STUDY: {"grey": 20, "white": 5},
                                                  PSEUDO_TUBE_STUDY: {"white": 8}})
    names = json.loads((out / "label_names.json").read_text())
    assert val_ids == [VALIDATION_STUDY]
    held = set(names[VALIDATION_STUDY])
    assert 20 <= len(held) <= 40 and not any(n.endswith("_L") and n[:-2] + "_R" not in held for n in held)
    training_colin = [k for k in names if k.startswith("colin27_t1") and k not in (VALIDATION_STUDY, PSEUDO_STUDY,
                                                                                     PSEUDO_TUBE_STUDY)]
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
    # tract-like tubes: their own study of the same image, white matter only (no AAL voxel at all)
    tubes = np.asanyarray(nib.load(str(out / "labels" / "final" / f"{PSEUDO_TUBE_STUDY}.nii.gz")).dataobj)
    assert names[PSEUDO_TUBE_STUDY] and all("_tube_" in n for n in names[PSEUDO_TUBE_STUDY])
    assert not ((atlas > 0) & (tubes > 0)).any()
    assert set(np.unique(tubes)) - {0} == set(names[PSEUDO_TUBE_STUDY].values())


def test_pseudo_layout_reads_every_pseudo_study_from_the_config():
    cfg = TrainConfig(pseudo_grey_cells=100, pseudo_white_cells=40, pseudo_fine_white_cells=80, pseudo_white_tubes=60)
    layout = pseudo_layout(cfg)
    assert layout[PSEUDO_STUDY] == {"grey": 100, "white": 40}
    assert layout[PSEUDO_TUBE_STUDY] == {"white": 60}
    assert sum(n for cells in layout.values() for n in cells.values()) == 280
    # the checkpoint records each study that has parcels, with its shape and seed, and only the tissues
    # that have some (the fine study has no grey parcels here)
    assert _pseudo_metadata(layout) == [
        {"study": PSEUDO_STUDY, "shape": "voronoi", "seed": 0, "grey_cells": 100, "white_cells": 40},
        {"study": PSEUDO_FINE_STUDY, "shape": "voronoi", "seed": 1, "white_cells": 80},
        {"study": PSEUDO_TUBE_STUDY, "shape": "tube", "seed": 2, "white_tubes": 60}]
    assert _pseudo_metadata(pseudo_layout(TrainConfig())) is None


def test_a_validation_cohort_adds_validation_studies_naming_only_its_structures(tmp_path):
    """`make val-split`'s subjects join the held-out AAL structures as validation studies; nothing else of
    theirs is named, so no cohort structure trains and no other one validates."""
    cohort = tmp_path / "cohort"
    (cohort / "labels" / "final").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = {"jhu_tract_l": 1, "jhu_tract_r": 2, "ho_area_l": 3}
    for study in ("cohort_s00_t1", "cohort_s01_t2like"):
        nib.save(nib.Nifti1Image(rng.random((8, 8, 4)).astype(np.float32), np.eye(4)), str(cohort / f"{study}.nii.gz"))
        nib.save(nib.Nifti1Image(rng.integers(0, 4, (8, 8, 4)).astype(np.int16), np.eye(4)),
                 str(cohort / "labels" / "final" / f"{study}.nii.gz"))
    write_label_names(cohort, {"cohort_s00_t1": names, "cohort_s01_t2like": names})
    out = tmp_path / "studies"
    (out / "labels" / "final").mkdir(parents=True)
    cohort_names = _copy_cohort_validation(cohort, out, ["jhu_tract_l", "ho_area_l"])
    assert sorted(cohort_names) == [f"cohort_s00_t1{COHORT_VALIDATION_SUFFIX}",
                                    f"cohort_s01_t2like{COHORT_VALIDATION_SUFFIX}"]
    assert all(n == {"jhu_tract_l": 1, "ho_area_l": 3} for n in cohort_names.values())
    for study in cohort_names:
        assert (out / f"{study}.nii.gz").is_file() and (out / "labels" / "final" / f"{study}.nii.gz").is_file()
    with pytest.raises(SamriInputError, match="validation_labels"):
        _copy_cohort_validation(cohort, out, ["jhu_missing_l"])
    with pytest.raises(SamriInputError, match="validation_labels"):
        _copy_cohort_validation(cohort, out, [])
    with pytest.raises(SamriInputError, match="validation_cohort"):
        _copy_cohort_validation(tmp_path / "studies", tmp_path / "elsewhere", ["jhu_tract_l"])
