"""samri.dicomweb.cli against a real Orthanc: ``samri dicom upload`` and re-uploading a series numbered by an
older version."""

from __future__ import annotations

import nibabel as nib
import pytest

from samri.dicomweb.orthanc import orthanc_unavailable_reason

REASON = orthanc_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"needs Orthanc: {REASON}")


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
