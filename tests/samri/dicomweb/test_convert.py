"""samri.dicomweb.convert: NIfTI -> DICOM MR series geometry and values, display window, UIDs, instance
numbering (in memory: no server needed)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.dicomweb.convert import display_window, nifti_to_dicom_series, to_stored_pixels, volume_to_dicom_series
from samri.dicomweb.series import series_to_volume
from samri.errors import SamriInputError
from tests.helpers import reread_datasets, rotation_xz

REPO = Path(__file__).resolve().parents[3]
STUDIES = REPO / "data" / "studies"


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """32 axial slices of a sample study (MNI152 float, else synthetic), as a NIfTI file."""
    src = STUDIES / "mni152_t1.nii.gz"
    if src.is_file():
        img = nib.load(str(src))
        arr = np.asarray(img.dataobj)[:, :, 80:112].astype(np.float32)
        affine = img.affine.copy()
        affine[:3, 3] = affine[:3, :3] @ [0, 0, 80] + affine[:3, 3]
    else:
        rng = np.random.default_rng(0)
        arr = rng.random((40, 48, 32), dtype=np.float32)
        affine = np.diag([1.0, 1.0, 1.5, 1.0])
    path = tmp_path_factory.mktemp("crop") / "crop.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path, arr, affine


def test_nifti_file_round_trip_geometry_and_values(crop):
    path, arr, affine = crop
    datasets = nifti_to_dicom_series(path, patient_id="P1", uid_seed="t")
    assert len(datasets) == arr.shape[2]
    ds0 = datasets[0]
    assert ds0.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds0.Modality == "MR"
    assert (ds0.Rows, ds0.Columns) == (arr.shape[1], arr.shape[0])
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    for k in (0, 5, arr.shape[2] - 1):  # position of voxel (0, 0, k) in LPS
        assert np.allclose([float(v) for v in datasets[k].ImagePositionPatient], lps @ [0, 0, k, 1], atol=1e-4)
    assert np.allclose([float(v) for v in ds0.PixelSpacing], [np.linalg.norm(lps[:, 1]), np.linalg.norm(lps[:, 0])])
    vol = series_to_volume(reread_datasets(datasets[::-1]))  # order of arrival does not matter
    assert np.abs(vol.affine - affine).max() < 1e-3
    slope = float(ds0.RescaleSlope)
    # preserved: the values themselves (no scaling, no shift), to half a quantisation step
    assert np.abs(vol.array - arr).max() <= slope / 2 + 1e-6
    assert abs(float(vol.array.min()) - float(arr.min())) <= slope and \
        abs(float(vol.array.max()) - float(arr.max())) <= slope


def _linear_voi(ds) -> tuple[float, float]:
    """The real-value range that DICOM's LINEAR VOI function (what OHIF's cornerstone applies) shows black..white."""
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2


@pytest.mark.parametrize("lo, hi, dtype", [(0.0, 1.0, np.float32),      # nilearn's MNI152
                                            (-0.004, 0.003, np.float64),  # tiny float range
                                            (0, 254, np.uint8),            # Colin27
                                            (-1000, 3000, np.int16),
                                            (0.0, 4.2e6, np.float32)])     # wide float range
def test_display_window_covers_the_value_range(lo, hi, dtype):
    rng = np.random.default_rng(3)
    arr = (lo + (hi - lo) * rng.random((12, 10, 4))).astype(dtype)
    arr.flat[0], arr.flat[1] = lo, hi
    ds0 = volume_to_dicom_series(arr, np.eye(4), uid_seed="window")[0]
    stored, slope, intercept = to_stored_pixels(arr)
    real_lo, real_hi = stored.min() * slope + intercept, stored.max() * slope + intercept
    lower, upper = _linear_voi(ds0)
    tol = 1e-6 * max(1.0, abs(hi - lo))
    assert abs(lower - real_lo) <= tol and abs(upper - real_hi) <= tol, (ds0.WindowCenter, ds0.WindowWidth)
    assert upper > lower  # not the empty window [0, 0] that OHIF drops (and then shows 0..1024)
    assert ds0.VOILUTFunction == "LINEAR"


def test_display_window_of_a_constant_image_and_bad_input():
    assert display_window(5.0, 5.0) == (5.5, 1.0)
    with pytest.raises(SamriInputError):
        display_window(1.0, 0.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16])
def test_integer_data_is_exact_and_oblique_affine_round_trips(dtype):
    rng = np.random.default_rng(1)
    hi = {np.uint8: 255, np.int16: 3000, np.uint16: 60000}[dtype]
    arr = rng.integers(0, hi, size=(24, 20, 12)).astype(dtype)
    affine = np.eye(4)
    affine[:3, :3] = rotation_xz(20, -35) @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [12.5, -40.25, 7.0]
    datasets = volume_to_dicom_series(arr, affine, uid_seed="oblique")
    vol = series_to_volume(reread_datasets(datasets))
    assert np.abs(vol.affine - affine).max() < 1e-3
    assert np.array_equal(vol.array.astype(np.int64), arr.astype(np.int64))


def test_uids_are_deterministic_with_a_seed_and_fresh_without():
    arr = np.zeros((8, 8, 3), np.int16)
    a = volume_to_dicom_series(arr, np.eye(4), uid_seed="s")
    b = volume_to_dicom_series(arr, np.eye(4), uid_seed="s")
    c = volume_to_dicom_series(arr, np.eye(4))
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].SeriesInstanceUID != c[0].SeriesInstanceUID
    assert len({d.SOPInstanceUID for d in a}) == 3


def test_sheared_affine_is_refused():
    affine = np.eye(4)
    affine[0, 2] = 0.5  # slice axis leans along x
    with pytest.raises(SamriInputError, match="sheared"):
        volume_to_dicom_series(np.zeros((4, 4, 3), np.int16), affine)


def _ohif_seg_frame_sources(datasets) -> tuple[list[str], list[str]]:
    """What OHIF v3's "Export DICOM SEG" pairs, as SOPInstanceUIDs: (labelmap frame i's own image,
    the source image dcmjs writes frame i onto).

    OHIF's labelmap is derived from the display set's images, sorted by InstanceNumber; the
    cornerstone adapter passes them in that order, and dcmjs' ``ImageNormalizer.convertToMultiframe``
    re-sorts them by decreasing ``(IPP - IPP_first) . (row x column)`` and references frame i of the
    SEG to the i-th of its own order (ReferencedSOPInstanceUID and PlanePosition alike)."""
    display = sorted(datasets, key=lambda d: int(d.InstanceNumber))
    iop = np.asarray([float(v) for v in display[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ref = np.asarray([float(v) for v in display[0].ImagePositionPatient])
    dcmjs = sorted(display,
                   key=lambda d: -float((np.asarray([float(v) for v in d.ImagePositionPatient]) - ref) @ normal))
    return [str(d.SOPInstanceUID) for d in display], [str(d.SOPInstanceUID) for d in dcmjs]


@pytest.mark.parametrize("axes", [(1, 1, 1), (1, 1, -1), (-1, 1, 1), (1, -1, -1), "oblique"])
def test_instance_numbers_decrease_along_the_normal_as_ohif_seg_export_needs(axes):
    """InstanceNumber 1 is the slice furthest along row x column, for any axis flips or rotation, so
    that OHIF's SEG export writes every labelmap slice onto its own source image (numbered ``k + 1``
    along the normal, a RAS volume's SEG came back mirrored along the slice axis)."""
    affine = np.eye(4)
    if axes == "oblique":
        affine[:3, :3] = rotation_xz(25, -40) @ np.diag([0.9, 1.1, 2.0])
    else:
        affine[:3, :3] = np.diag(axes) @ np.diag([1.0, 1.0, 2.0])
    datasets = reread_datasets(volume_to_dicom_series(np.zeros((6, 5, 7), np.int16), affine, uid_seed=f"order{axes}"))
    numbers = [int(d.InstanceNumber) for d in datasets]
    assert sorted(numbers) == list(range(1, 8))
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    along = [float(np.asarray([float(v) for v in d.ImagePositionPatient]) @ np.cross(iop[:3], iop[3:]))
             for d in datasets]
    assert [numbers[i] for i in np.argsort(along)[::-1]] == list(range(1, 8))
    own, written_onto = _ohif_seg_frame_sources(datasets)
    assert own == written_onto
