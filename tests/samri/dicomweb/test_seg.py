"""samri.dicomweb.seg: a label volume as DICOM SEG and back, voxel-exact, with names; SEG errors."""

from __future__ import annotations

import numpy as np
import pytest

from samri.dicomweb.convert import volume_to_dicom_series
from samri.dicomweb.seg import label_to_seg, seg_to_label
from samri.dicomweb.series import series_to_volume
from samri.errors import SamriInputError
from tests.helpers import reread_datasets, rotation_xz, small_dicom_series


def test_seg_round_trip_is_voxel_exact_with_names():
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 400, size=(20, 18, 10)).astype(np.int16)
    affine = np.eye(4)
    affine[:3, :3] = rotation_xz(10, 30) @ np.diag([1.2, 1.2, 3.0])
    source = reread_datasets(volume_to_dicom_series(arr, affine, uid_seed="segsrc"))
    label = np.zeros(arr.shape, np.uint8)
    label[2:9, 3:10, 1:4] = 7
    label[10:15, 5:12, 5:9] = 3
    label[0, 0, 9] = 12
    seg, names = label_to_seg(label, source, names={3: "putamen", 7: "caudate"})
    assert names == {"putamen": 1, "caudate": 2, "label_12": 3}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["putamen", "caudate", "label_12"]
    back, back_names = seg_to_label(reread_datasets([seg])[0], source[::-1])
    assert back_names == names
    for value, name in ((3, "putamen"), (7, "caudate"), (12, "label_12")):
        assert np.array_equal(back == names[name], label == value)
    assert np.count_nonzero(back) == np.count_nonzero(label)
    # and on the grid of the image read back from the same series
    vol = series_to_volume(source)
    assert back.shape == vol.array.shape


def test_seg_errors():
    source = reread_datasets(small_dicom_series())
    other = reread_datasets(volume_to_dicom_series(np.zeros((8, 6, 4), np.int16), np.eye(4), uid_seed="other"))
    label = np.zeros((8, 6, 4), np.uint8)
    with pytest.raises(SamriInputError, match="nothing to save"):
        label_to_seg(label, source)
    with pytest.raises(SamriInputError, match="not on the image grid"):
        label_to_seg(np.ones((8, 6, 5), np.uint8), source)
    label[1:3, 1:3, 1:3] = 1
    seg, _ = label_to_seg(label, source)
    with pytest.raises(SamriInputError) as err:
        seg_to_label(seg, other)
    assert err.value.field == "ReferencedSeriesSequence"


def test_seg_without_spatial_locations_preserved_is_read_after_checking_frame_positions():
    """OHIF's dcmjs SEG leaves SpatialLocationsPreserved out: read it when every frame lies on its source image."""
    source = reread_datasets(volume_to_dicom_series(np.zeros((10, 8, 5), np.int16), np.eye(4), uid_seed="dcmjs"))
    label = np.zeros((10, 8, 5), np.uint8)
    label[2:6, 1:4, 1:3] = 1
    seg, _ = label_to_seg(label, source, names={1: "object"})
    for frame in seg.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence[0].SourceImageSequence[0].SpatialLocationsPreserved
    back, names = seg_to_label(reread_datasets([seg])[0], source)
    assert names == {"object": 1} and np.array_equal(back > 0, label > 0)
    moved = reread_datasets([seg])[0]
    moved.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient[2] += 1.0
    with pytest.raises(SamriInputError) as err:
        seg_to_label(moved, source)
    assert err.value.field == "ImagePositionPatient"
