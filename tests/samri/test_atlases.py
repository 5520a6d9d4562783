"""The JHU and Harvard-Oxford atlases as one named label map (samri.atlases): names, hemispheres,
merging, and (with Debian's mricron-data) the real atlases on a template grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.atlases import (
    HO_ATLAS,
    JHU_ATLAS,
    JHU_NAMES,
    atlas_on_grid,
    clean_name,
    merge_atlases,
    read_ho_names,
    read_jhu_names,
    read_structure_names,
    split_hemispheres,
    structure_names,
)
from samri.cohorts import CohortRecipe
from samri.errors import SamriInputError
from samri.sample_data import MNI152_TISSUES

REAL_MRICRON = Path("/usr/share/mricron/templates")


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


def test_read_jhu_names_tolerates_crlf_and_skips_unclassified(tmp_path):
    path = tmp_path / "JHU-WhiteMatter-labels-1mm.nii.txt"
    path.write_bytes(b"0\tUnclassified\r\n1\tGenu_of_corpus_callosum_L\r\n2\tFornix_(cres)_/_Stria_terminalis_R\r\n")
    assert read_jhu_names(path) == {
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


@pytest.mark.skipif(not (REAL_MRICRON / "JHU-WhiteMatter-labels-1mm.nii.gz").is_file(),
                    reason="Debian mricron-data is not installed (/usr/share/mricron/templates)")
def test_real_atlases_are_named_and_resample_onto_a_template_grid():
    recipe = CohortRecipe()
    names = read_structure_names(REAL_MRICRON, ho_right=recipe.ho_right, ho_offset=recipe.ho_offset)
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
