"""samri.activelearning.sim.pool: the simulated pool's slabs keep the grid and the labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.activelearning.sim.pool import build_pool, slab_affine, slab_indices
from samri.errors import SamriInputError
from tests.helpers import ellipsoid_mask


def test_pool_slabs_keep_the_grid_and_the_labels(sim_studies: Path, tmp_path: Path) -> None:
    studies = build_pool(sim_studies, tmp_path / "pool", pool={"src_a": ["", "inverted+noise:0.02"]},
                         held_out={"src_b": ["lowres:2"]}, labels=["blob"], z_step=3)
    assert [s.study_id for s in studies] == ["src_a", "src_a__inverted+noise-0.02", "src_b__lowres-2"]
    assert [s.held_out for s in studies] == [False, False, True]
    img = nib.load(str(studies[1].image))
    lab = np.asarray(nib.load(str(studies[1].label)).dataobj)
    z = slab_indices(ellipsoid_mask().astype(np.uint8), 3)
    assert img.shape == (40, 48, len(z)) and set(np.unique(lab)) == {0, 1}  # "core" (2) is not kept
    assert np.allclose(img.affine, slab_affine(np.diag([1.0, 1.0, 1.5, 1.0]), int(z[0]), 3))
    assert img.affine[2, 2] == pytest.approx(4.5) and studies[0].label_names == {"blob": 1}
    with pytest.raises(SamriInputError, match="variant"):
        build_pool(sim_studies, tmp_path / "bad", pool={"src_a": ["sharpen"]}, held_out={"src_b": [""]},
                   labels=[], z_step=3)
