"""Pseudo-structures (tissue cut into random parcels) on synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest

from samri.errors import SamriInputError
from samri.train.pseudo_structures import (
    pseudo_structure_labels,
    tissue_from_grey_labels,
    tube_parcels,
    voronoi_parcels,
)


def _phantom(size: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ball: grey shell (intensity 80) around bright white matter (120) with a dark ventricle (30)."""
    x, y, z = np.mgrid[:size, :size, :size] - (size - 1) / 2
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    grey = (r >= 12) & (r < 16)
    ventricle = r < 4
    image = np.zeros((size,) * 3, dtype=np.float32)
    image[r < 12] = 120
    image[ventricle] = 30
    image[grey] = 80
    return image, grey, ventricle


def test_white_matter_is_the_bright_interior_not_the_ventricle():
    image, grey, ventricle = _phantom()
    white = tissue_from_grey_labels(image, grey)
    expected = (image == 120) & ~grey
    assert not (white & grey).any() and not (white & ventricle).any()
    assert (white == expected).mean() > 0.999
    with pytest.raises(SamriInputError, match="grey"):
        tissue_from_grey_labels(image, grey[:-1])


def test_voronoi_parcels_cover_the_mask_and_follow_the_seed():
    _, grey, _ = _phantom()
    a = voronoi_parcels(grey, 8, np.random.default_rng(3))
    b = voronoi_parcels(grey, 8, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert ((a > 0) == grey).all()
    assert set(np.unique(a[grey])) == set(range(1, 9))
    # each voxel belongs to the parcel of its nearest seed, so parcels are compact: every one is one
    # connected piece of the shell here, and none holds more than half of it
    assert np.bincount(a[grey]).max() < grey.sum() / 2
    with pytest.raises(SamriInputError, match="cells"):
        voronoi_parcels(grey, 0, np.random.default_rng(0))


def test_pseudo_structure_labels_name_every_kept_parcel():
    image, grey, _ = _phantom()
    white = tissue_from_grey_labels(image, grey)
    labels, names = pseudo_structure_labels({"grey": grey, "white": white}, {"grey": 6, "white": 3}, seed=1,
                                            min_voxels=50)
    assert labels.dtype == np.int16 and labels.shape == grey.shape
    assert sorted(names.values()) == list(range(1, len(names) + 1))
    assert {n.split("_")[1] for n in names} == {"grey", "white"}
    for name, value in names.items():
        region = labels == value
        assert region.sum() >= 50
        assert (grey if "_grey_" in name else white)[region].all()
    again, _ = pseudo_structure_labels({"grey": grey, "white": white}, {"grey": 6, "white": 3}, seed=1,
                                       min_voxels=50)
    np.testing.assert_array_equal(labels, again)
    # parcels below min_voxels are dropped, not named
    _, few = pseudo_structure_labels({"grey": grey}, {"grey": 6}, seed=1, min_voxels=10 ** 6)
    assert few == {}
    with pytest.raises(SamriInputError, match="cells"):
        pseudo_structure_labels({"grey": grey, "white": white}, {"grey": 6}, seed=1)


def test_tube_parcels_are_thin_elongated_pieces_of_the_tissue():
    tissue = np.zeros((64, 32, 32), dtype=bool)
    tissue[2:62, 4:28, 4:28] = True
    kwargs = {"radius_mm": (1.5, 1.5), "length_mm": (30.0, 30.0)}
    tubes = tube_parcels(tissue, 6, np.random.default_rng(5), **kwargs)
    np.testing.assert_array_equal(tubes, tube_parcels(tissue, 6, np.random.default_rng(5), **kwargs))
    assert not (tubes > 0)[~tissue].any()  # inside the tissue only
    for k in range(1, 7):
        voxels = np.argwhere(tubes == k)
        # long and thin: about 30 mm long, and a cross-section of a 1.5 mm radius (about 7-20 voxels)
        extent = voxels.max(axis=0) - voxels.min(axis=0) + 1
        assert extent.max() >= 15
        assert 0 < len(voxels) < 25 * extent.max()
    with pytest.raises(SamriInputError, match="tubes"):
        tube_parcels(tissue, 0, np.random.default_rng(0))
    with pytest.raises(SamriInputError, match="mask"):
        tube_parcels(np.zeros_like(tissue), 2, np.random.default_rng(0))


def test_pseudo_structure_labels_name_tubes_and_refuse_unknown_shapes():
    image, grey, _ = _phantom(48)
    labels, names = pseudo_structure_labels({"grey": grey}, {"grey": 4}, seed=2, min_voxels=20, shape="tube")
    assert names and all(n.startswith("pseudo_grey_tube_") for n in names)
    assert set(np.unique(labels)) - {0} == set(names.values())
    with pytest.raises(SamriInputError, match="shape"):
        pseudo_structure_labels({"grey": grey}, {"grey": 4}, seed=2, shape="star")
