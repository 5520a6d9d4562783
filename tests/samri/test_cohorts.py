"""Held-out cohort writer (samri.cohorts) on tiny synthetic templates and atlases (the atlas handling
itself: tests/samri/test_atlases.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.cohorts import CohortRecipe, plan_subjects, write_cohort
from samri.errors import SamriInputError
from samri.sample_data import load_label_names

SHAPE = (24, 28, 22)
AFFINE = np.array([[1.0, 0, 0, -12.0], [0, 1.0, 0, -14.0], [0, 0, 1.0, -11.0], [0, 0, 0, 1]])
#: tiny cohort: small structures allowed, the default contrasts (one on a 1.5 mm grid)
TINY = CohortRecipe(min_voxels=5, ho_right=0)  # bilateral areas here; the split has its own test


def _tiny_template() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Nested ellipsoids: CSF shell, grey-matter shell, white-matter core, T1 intensities."""
    idx = np.indices(SHAPE).astype(np.float32)
    r = np.sqrt(sum(((idx[a] - (SHAPE[a] - 1) / 2) / (SHAPE[a] / 2.4)) ** 2 for a in range(3)))
    tissue = np.select([r < 0.45, r < 0.75, r < 0.95], [3, 2, 1], 0).astype(np.uint8)
    t1 = np.choose(tissue, [0.0, 0.3, 0.6, 0.9]).astype(np.float32)
    t1 += np.where(tissue > 0, 0.01 * np.random.default_rng(0).standard_normal(SHAPE), 0).astype(np.float32)
    return nib.Nifti1Image(t1, AFFINE), nib.Nifti1Image(tissue, AFFINE)


@pytest.fixture()
def mricron(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake mricron folder: JHU on a shifted grid, Harvard-Oxford on an x-flipped grid (FSL's)."""
    folder = tmp_path / "mricron"
    folder.mkdir()
    _, tissue = _tiny_template()
    wm = np.asarray(tissue.dataobj) == 3
    jhu = np.zeros((30, 30, 30), np.uint8)  # voxel (i, j, k) of this grid = template voxel (i - 3, j - 1, k - 4)
    jhu[3:27, 1:29, 4:26][wm] = 1
    jhu[15:27, 1:29, 4:26][wm[12:]] = 2  # right half of the white matter
    jhu_affine = AFFINE.copy()
    jhu_affine[:3, 3] -= (3, 1, 4)
    nib.save(nib.Nifti1Image(jhu, jhu_affine), folder / "JHU-WhiteMatter-labels-1mm.nii.gz")
    (folder / "JHU-WhiteMatter-labels-1mm.nii.txt").write_bytes(
        b"0\tUnclassified\r\n1\tGenu_of_corpus_callosum_L\r\n2\tFornix_(cres)_/_Stria_terminalis_R\r\n")
    ho = np.zeros(SHAPE, np.uint8)
    ho[:, :14] = 3  # one area per half along j, over the whole volume (also white matter, outside the brain)
    ho[:, 14:] = 45
    flip = AFFINE.copy()
    flip[0, 0], flip[0, 3] = -1.0, AFFINE[0, 3] + SHAPE[0] - 1
    nib.save(nib.Nifti1Image(ho[::-1].copy(), flip), folder / "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz")
    monkeypatch.setenv("SAMRI_MRICRON_DIR", str(folder))
    return folder


def test_plan_never_shares_a_subject_or_seed_and_annotate_nests():
    plans = {k: plan_subjects(CohortRecipe(subjects=8, annotate=k, seed=3)) for k in range(9)}
    for k, plan in plans.items():
        assert len(plan) == 8 and len({s["seed"] for s in plan.values()}) == 8
        assert sum(s["split"] == "annotate" for s in plan.values()) == k
        chosen = {sid for sid, s in plan.items() if s["split"] == "annotate"}
        if k:
            previous = {sid for sid, s in plans[k - 1].items() if s["split"] == "annotate"}
            assert previous < chosen  # raising --annotate only moves test subjects
    default = plan_subjects(CohortRecipe())
    assert [s["contrast"] for s in default.values()] == ["t1", "t2like", "inverted+bias", "lowres+noise"]
    assert {s["split"] for s in default.values()} == {"test"}
    more = plan_subjects(CohortRecipe(subjects=6))
    assert all(more[sid]["seed"] == s["seed"] for sid, s in default.items())  # stable when N grows
    other = plan_subjects(CohortRecipe(seed=1))
    assert not {s["seed"] for s in other.values()} & {s["seed"] for s in default.values()}


@pytest.mark.parametrize("field, kwargs", [("subjects", {"subjects": 0}), ("annotate", {"annotate": 5}),
                                           ("seed", {"seed": -1}), ("contrasts", {"contrasts": ("pd",)}),
                                           ("ho_tissue", {"ho_tissue": "bone"})])
def test_bad_recipe_names_the_field(field, kwargs):
    with pytest.raises(SamriInputError) as err:
        plan_subjects(CohortRecipe(**kwargs))
    assert err.value.field == field


def test_write_cohort_layout_determinism_and_resume(tmp_path, mricron):
    a = write_cohort(tmp_path / "a", TINY, template=_tiny_template(), progress=False)
    b = write_cohort(tmp_path / "b", TINY, template=_tiny_template(), progress=False)
    assert a == b and set(a["structures"]) == {"jhu_genu_of_corpus_callosum_l", "jhu_fornix_cres_stria_terminalis_r",
                                               "ho_superior_frontal_gyrus", "ho_heschls_gyrus_includes_h1_and_h2"}
    names = load_label_names(tmp_path / "a")
    assert set(names) == set(a["subjects"])
    for sid, spec in a["subjects"].items():
        img_a, img_b = nib.load(tmp_path / "a" / f"{sid}.nii.gz"), nib.load(tmp_path / "b" / f"{sid}.nii.gz")
        lab = nib.load(tmp_path / "a" / "labels" / "final" / f"{sid}.nii.gz")
        assert img_a.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        assert img_a.shape == lab.shape and np.allclose(img_a.affine, lab.affine)
        np.testing.assert_array_equal(np.asarray(img_a.dataobj), np.asarray(img_b.dataobj))
        values = set(np.unique(np.asarray(lab.dataobj)).tolist()) - {0}
        assert values == set(names[sid].values()) and values <= {1, 2, 103, 145}
        spacing = np.linalg.norm(img_a.affine[:3, :3], axis=0)
        assert np.allclose(spacing, 1.0) != (spec["contrast"] == "lowres+noise"), (sid, spacing)
    t1 = np.asarray(nib.load(tmp_path / "a" / "cohort_s00_t1.nii.gz").dataobj)
    assert not np.allclose(t1, np.asarray(_tiny_template()[0].dataobj))  # deformed
    manifest = json.loads((tmp_path / "a" / "cohort.json").read_text())
    assert manifest["seed"] == 0 and manifest["recipe"]["min_voxels"] == 5
    assert "seed 0" in (tmp_path / "a" / "README.md").read_text()

    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("cohort_s*.nii.gz")}
    again = write_cohort(tmp_path / "a", dataclasses.replace(TINY, annotate=2), template=_tiny_template(),
                         progress=False)  # splits change, voxels do not: nothing rebuilt
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert sum(s["split"] == "annotate" for s in again["subjects"].values()) == 2
    assert again["structures"] == a["structures"]
    (tmp_path / "a" / "label_names.json").unlink()  # as after a run killed between subjects
    write_cohort(tmp_path / "a", TINY, template=_tiny_template(), progress=False)
    assert load_label_names(tmp_path / "a") == names  # read back from the label files
    with pytest.raises(SamriInputError) as err:
        write_cohort(tmp_path / "a", dataclasses.replace(TINY, seed=1), template=_tiny_template(), progress=False)
    assert err.value.field == "out"


def test_cli_rejects_bad_arguments(tmp_path, mricron, capsys):
    from samri.cli import main

    assert main(["cohort", str(tmp_path / "c"), "--subjects", "2", "--annotate", "3"]) == 2
    assert "annotate=3" in capsys.readouterr().err
    assert main(["cohort", str(tmp_path / "c"), "--mricron-dir", str(tmp_path / "none")]) == 2
    assert "mricron_dir=" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
