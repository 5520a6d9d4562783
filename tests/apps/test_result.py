"""Result files on the image grid (`lib.infers.result`)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from apps.samri.lib.infers.result import write_result


def _oblique_affine() -> np.ndarray:
    """Voxel-to-RAS with a rotation, a flipped axis and anisotropic spacing."""
    a, b = np.deg2rad(30.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-0.9, 1.1, 2.4])
    affine[:3, 3] = [12.0, -40.0, 7.5]
    return affine


OBLIQUE = _oblique_affine()


@pytest.mark.parametrize("extension, compress", [(".nrrd", True), (".nrrd", False), (".nii.gz", True)])
def test_result_on_image_grid_as_itk_reads_it(tmp_path: Path, extension: str, compress: bool) -> None:
    import SimpleITK as sitk

    shape = (7, 6, 5)
    image = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), OBLIQUE), str(image))
    mask = np.zeros(shape, np.uint8)
    mask[1:3, 2:5, 4] = 1
    path = write_result(mask, OBLIQUE, extension=extension, compress=compress, directory=tmp_path)
    ref, out = sitk.ReadImage(str(image)), sitk.ReadImage(str(path))
    assert out.GetSize() == ref.GetSize() == shape
    np.testing.assert_allclose(out.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(out.GetDirection(), ref.GetDirection(), atol=1e-5)
    assert out.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out).transpose(2, 1, 0), mask)
