"""samri.dicomweb.upload against a real Orthanc: upload, QIDO listing, retrieval geometry, SEG round trip,
all-or-nothing upload, an unreachable server."""

from __future__ import annotations

import numpy as np
import pytest

from samri.dicomweb.orthanc import orthanc_unavailable_reason
from samri.errors import SamriInputError

REASON = orthanc_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"needs Orthanc: {REASON}")


def test_upload_lists_series_with_its_id_and_geometry_matches_nifti(orthanc, study):
    from samri.dicomweb.convert import nifti_to_dicom_series
    from samri.dicomweb.series import series_to_volume
    from samri.dicomweb.upload import retrieve_series, search_series, upload_series

    path, arr, _, affine = study
    datasets = nifti_to_dicom_series(path, uid_seed="geometry")
    uid = upload_series(datasets, orthanc.dicomweb_root)
    assert uid == datasets[0].SeriesInstanceUID
    listed = [s["0020000E"]["Value"][0] for s in search_series(orthanc.dicomweb_root, Modality="MR")]
    assert uid in listed
    vol = series_to_volume(retrieve_series(orthanc.dicomweb_root, uid))
    assert np.abs(vol.affine - affine).max() < 1e-3
    assert vol.array.shape == arr.shape
    assert np.abs(vol.array.astype(np.float64) - arr).max() <= float(datasets[0].RescaleSlope) / 2 + 1e-6


def test_seg_round_trip_through_orthanc_is_voxel_exact(orthanc, study):
    from samri.dicomweb.convert import nifti_to_dicom_series
    from samri.dicomweb.seg import label_to_seg, seg_to_label
    from samri.dicomweb.upload import retrieve_series, store_datasets, upload_series

    path, _, label, _ = study
    datasets = nifti_to_dicom_series(path, uid_seed="seg-source")
    uid = upload_series(datasets, orthanc.dicomweb_root)
    values = [int(v) for v in np.unique(label) if v][:6]
    small = np.where(np.isin(label, values), label, 0)
    seg, names = label_to_seg(small, datasets, names={v: f"structure {v}" for v in values})
    store_datasets([seg], orthanc.dicomweb_root, series_uid=seg.SeriesInstanceUID)
    stored = retrieve_series(orthanc.dicomweb_root, seg.SeriesInstanceUID)
    back, back_names = seg_to_label(stored[0], retrieve_series(orthanc.dicomweb_root, uid))
    assert back_names == names
    for value in values:
        assert np.array_equal(back == names[f"structure {value}"], small == value)


def test_a_bad_series_is_refused_before_anything_is_stored(orthanc):
    from samri.dicomweb.convert import volume_to_dicom_series
    from samri.dicomweb.upload import search_series, upload_series

    datasets = volume_to_dicom_series(np.zeros((8, 8, 4), np.int16), np.eye(4), uid_seed="ct")
    for ds in datasets:
        ds.Modality = "CT"
    with pytest.raises(SamriInputError, match="Modality"):
        upload_series(datasets, orthanc.dicomweb_root)
    assert search_series(orthanc.dicomweb_root, SeriesInstanceUID=datasets[0].SeriesInstanceUID) == []


def test_a_refused_batch_removes_what_was_already_stored(orthanc, monkeypatch):
    from samri.dicomweb import upload
    from samri.dicomweb.convert import volume_to_dicom_series

    datasets = volume_to_dicom_series(np.ones((8, 8, 6), np.int16), np.eye(4), uid_seed="partial")
    del datasets[4].SOPInstanceUID  # Orthanc stores the first two batches, then refuses this instance
    monkeypatch.setattr(upload, "BATCH", 2)
    with pytest.raises(upload.DicomWebError):
        upload.store_datasets(datasets, orthanc.dicomweb_root, series_uid=datasets[0].SeriesInstanceUID)
    assert upload.search_series(orthanc.dicomweb_root, SeriesInstanceUID=datasets[0].SeriesInstanceUID) == []


def test_unreachable_server_is_a_clear_error():
    from samri.dicomweb.orthanc import free_port
    from samri.dicomweb.upload import DicomWebError, check_reachable, search_series

    root = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomWebError, match="unreachable"):
        check_reachable(root)
    with pytest.raises(DicomWebError, match=root):
        search_series(root)
