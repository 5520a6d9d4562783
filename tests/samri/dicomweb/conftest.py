"""Fixtures for the tests against a real Orthanc (test_orthanc, test_upload, test_cli): one loopback server
for the package, and a 32-slice sample study to upload."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from samri.dicomweb.orthanc import running_orthanc


@pytest.fixture(scope="package")
def orthanc(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="package")
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
