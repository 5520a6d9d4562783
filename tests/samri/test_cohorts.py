"""Held-out cohort writer (samri.cohorts) on tiny synthetic templates and atlases."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.cohorts import (
    CohortRecipe,
    atlas_on_grid,
    clean_name,
    merge_atlases,
    plan_subjects,
    read_jhu_names,
    structure_names,
    write_cohort,
)
from samri.errors import SamriInputError
from samri.sample_data import MNI152_TISSUES, load_label_names

REAL_MRICRON = Path("/usr/share/mricron/templates")
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


def test_clean_name_and_unique_names():
    assert clean_name("jhu", "Fornix_(cres)_/_Stria_terminalis_R") == "jhu_fornix_cres_stria_terminalis_r"
    assert clean_name("ho", "Heschl's Gyrus (includes H1 and H2)") == "ho_heschls_gyrus_includes_h1_and_h2"
    assert clean_name("ho", "Frontal Gyrus, pars triangularis") == "ho_frontal_gyrus_pars_triangularis"
    names = structure_names({1: "Tapetum_R"}, {1: "Frontal Pole"}, 100)
    assert names == {1: "jhu_tapetum_r", 101: "ho_frontal_pole"}
    with pytest.raises(SamriInputError, match="same name"):
        structure_names({1: "Tapetum R", 2: "Tapetum_(R)"}, {}, 100)
    with pytest.raises(SamriInputError) as err:
        structure_names({150: "x"}, {1: "y"}, 100)
    assert err.value.field == "ho_offset"


def test_read_jhu_names_tolerates_crlf_and_skips_unclassified(mricron):
    assert read_jhu_names(mricron / "JHU-WhiteMatter-labels-1mm.nii.txt") == {
        1: "Genu_of_corpus_callosum_L", 2: "Fornix_(cres)_/_Stria_terminalis_R"}


def test_merge_offsets_harvard_oxford_jhu_wins_masks_and_drops_small():
    tissue = np.array([[[0, 1, 2, 2, 3, 3, 3, 2]]], np.uint8)
    jhu = np.array([[[1, 0, 0, 1, 1, 1, 2, 0]]])
    ho = np.array([[[5, 5, 5, 5, 5, 0, 0, 7]]])
    names = {1: "a", 2: "b", 105: "c", 107: "d"}
    recipe = dataclasses.replace(CohortRecipe(), min_voxels=2)
    labels, kept, dropped = merge_atlases(jhu, ho, tissue, recipe, names)
    # outside the brain 0; HO only on grey matter (+100); JHU wins the overlap; b and d too small
    assert labels.tolist() == [[[0, 0, 0, 1, 1, 1, 0, 0]]] and labels.dtype == np.uint8
    assert kept == {1: 3} and dropped == {2: 1, 105: 1, 107: 1}
    everywhere = dataclasses.replace(recipe, ho_tissue=None, min_voxels=1)
    labels, kept, _ = merge_atlases(jhu, ho, tissue, everywhere, names)
    assert labels.tolist() == [[[0, 105, 105, 1, 1, 1, 2, 107]]]
    with pytest.raises(SamriInputError, match="no name"):
        merge_atlases(jhu, ho, tissue, everywhere, {1: "a", 2: "b", 105: "c"})


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


@pytest.mark.skipif(not (REAL_MRICRON / "JHU-WhiteMatter-labels-1mm.nii.gz").is_file(),
                    reason="Debian mricron-data is not installed (/usr/share/mricron/templates)")
def test_real_atlases_are_named_and_resample_onto_a_template_grid():
    from samri.cohorts import HO_ATLAS, JHU_ATLAS, JHU_NAMES, _names

    names = _names(REAL_MRICRON, CohortRecipe())
    assert len(names) == 144 and len(set(names.values())) == 144  # 48 tracts + 48 areas x 2 hemispheres
    assert names[48] == "jhu_tapetum_l" and names[101] == "ho_frontal_pole_l" and names[198] == "ho_occipital_pole_r"
    assert len(read_jhu_names(REAL_MRICRON / JHU_NAMES)) == 48
    coarse = np.diag([6.0, 6.0, 6.0, 1.0])
    coarse[:3, 3] = (-96, -132, -72)
    target = nib.Nifti1Image(np.zeros((33, 39, 32), np.float32), coarse)  # MNI box at 6 mm: quick
    for atlas, offset in ((JHU_ATLAS, 0), (HO_ATLAS, 100)):
        values = set(np.unique(atlas_on_grid(REAL_MRICRON / atlas, target)).tolist()) - {0}
        assert values and {v + offset for v in values} <= set(names)
    assert MNI152_TISSUES["grey_matter"] == 2


def test_harvard_oxford_hemispheres_become_structures_of_their_own(tmp_path):
    import numpy as np

    from samri.cohorts import read_ho_names, split_hemispheres

    atlas = np.zeros((6, 2, 2), np.int32)
    atlas[1, :, :] = 3  # left of the midline
    atlas[4, :, :] = 3  # right
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = -2.5  # voxel i sits at x = i - 2.5 mm
    split = split_hemispheres(atlas, affine, 50)
    assert set(np.unique(split[1])) == {3} and set(np.unique(split[4])) == {53} and not split[0].any()
    path = tmp_path / "ho.json"
    path.write_text('{"Frontal Pole": 1, "Insular Cortex": 2}')
    assert read_ho_names(path, 50) == {1: "Frontal Pole_L", 2: "Insular Cortex_L", 51: "Frontal Pole_R",
                                       52: "Insular Cortex_R"}
    assert read_ho_names(path) == {1: "Frontal Pole", 2: "Insular Cortex"}
