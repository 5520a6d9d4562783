"""Against a real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``, started by the project's code):
upload, QIDO listing, retrieval geometry, SEG round trip, all-or-nothing upload, the CLI."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.dicomweb.orthanc import orthanc_unavailable_reason, running_orthanc
from samri.errors import SamriInputError

REASON = orthanc_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"needs Orthanc: {REASON}")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def study(tmp_path_factory, sample_studies_dir):
    """32-slice crop of Colin27 (uint8 + AAL labels) or MNI152 (float + tissues), written as NIfTI."""
    name = next(n for n in ("colin27_t1", "mni152_t1") if (sample_studies_dir / f"{n}.nii.gz").is_file())
    img = nib.load(str(sample_studies_dir / f"{name}.nii.gz"))
    lab = nib.load(str(sample_studies_dir / "labels" / "final" / f"{name}.nii.gz"))
    k0 = 60
    affine = img.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ [0, 0, k0] + affine[:3, 3]
    arr, label = np.asarray(img.dataobj)[:, :, k0:k0 + 32], np.asarray(lab.dataobj)[:, :, k0:k0 + 32]
    folder = tmp_path_factory.mktemp("nifti")
    nib.save(nib.Nifti1Image(arr, affine), str(folder / "crop.nii.gz"))
    return folder / "crop.nii.gz", arr, label, affine


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def test_orthanc_is_loopback_only_and_has_no_peers(orthanc):
    config = json.loads((orthanc.storage_dir / "orthanc.json").read_text())
    assert config["RemoteAccessAllowed"] is False and config["DicomServerEnabled"] is False
    assert config["DicomModalities"] == {} and config["OrthancPeers"] == {}
    assert Path(config["StorageDirectory"]).is_relative_to(orthanc.storage_dir)
    assert _get_json(orthanc.url + "/system")["Name"] == "SAMRI"
    assert orthanc.dicomweb_root == orthanc.url + "/dicom-web"


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


def test_cli_upload_prints_the_series_uid_and_is_idempotent(orthanc, study, capsys):
    from samri.cli import main

    path = study[0]
    assert main(["dicom", "upload", str(path), "--url", orthanc.dicomweb_root]) == 0
    first = capsys.readouterr().out.split()
    assert main(["dicom", "upload", str(path), "--url", orthanc.dicomweb_root]) == 0
    assert capsys.readouterr().out.split() == first
    assert main(["dicom", "upload", str(path.with_name("missing.nii.gz")), "--url", orthanc.dicomweb_root]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err


def test_upload_replaces_a_series_numbered_along_the_normal_by_an_older_version(orthanc, study, monkeypatch):
    """Series uploaded before InstanceNumber ran against the slice normal (OHIF's SEG export mirrors
    those) are sent again by `upload_images` instead of being skipped as already there."""
    from samri.dicomweb import convert
    from samri.dicomweb.cli import upload_images
    from samri.dicomweb.upload import stored_instance_numbers

    arr, affine = study[1][:, :, :6], study[3]
    path = study[0].with_name("renumber.nii.gz")
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    with monkeypatch.context() as patch:
        patch.setattr(convert, "instance_numbers_along_normal", lambda m, n: list(range(1, n + 1)))
        (uid,) = upload_images([path], orthanc.dicomweb_root)
        old = stored_instance_numbers(orthanc.dicomweb_root, uid)
    assert sorted(old.values()) == list(range(1, 7))
    assert upload_images([path], orthanc.dicomweb_root) == [uid]
    new = stored_instance_numbers(orthanc.dicomweb_root, uid)
    assert set(new) == set(old) and all(new[sop] == 7 - old[sop] for sop in old)
