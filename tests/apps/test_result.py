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


@pytest.mark.parametrize("filled", [[], [0], [4], [1, 2], [0, 2, 4], [0, 1, 2, 3, 4]])
def test_gzip_nrrd_is_one_valid_member_for_any_filled_slices(tmp_path: Path, filled: list[int]) -> None:
    """Empty slices share one precompressed block; the stream must still be one valid gzip member
    (CRC-32 and size checked by ``gzip.decompress``) holding the mask in NRRD's order."""
    import gzip

    import nrrd

    from apps.samri.lib.infers.result import filled_slices

    rng = np.random.default_rng(len(filled))
    mask = np.zeros((9, 7, 5), np.uint8)
    for k in filled:
        mask[:, :, k] = rng.integers(0, 2, size=(9, 7))
        mask[0, 0, k] = 1  # never empty
    assert filled_slices(mask).tolist() == filled
    path = write_result(mask, OBLIQUE, extension=".nrrd", compress=True, directory=tmp_path)
    raw = path.read_bytes()
    body = raw[raw.index(b"\n\n") + 2:]
    assert gzip.decompress(body) == mask.tobytes(order="F")
    data, header = nrrd.read(str(path))
    np.testing.assert_array_equal(data, mask)
    assert header["encoding"] == "gzip" and list(header["sizes"]) == [9, 7, 5]


def test_nrrd_header_matches_pynrrd(tmp_path: Path) -> None:
    """The hand-written header says what pynrrd's writer would for the same mask and affine."""
    import nrrd

    from apps.samri.lib.infers.result import nrrd_header

    mask = np.zeros((4, 3, 2), np.uint8)
    mask[1, 2, 1] = 1
    ours = write_result(mask, OBLIQUE, extension=".nrrd", compress=False, directory=tmp_path)
    theirs = tmp_path / "pynrrd.nrrd"
    nrrd.write(str(theirs), mask, nrrd_header(OBLIQUE, compress=False))
    (a, ha), (b, hb) = nrrd.read(str(ours)), nrrd.read(str(theirs))
    np.testing.assert_array_equal(a, b)
    assert ha.keys() == hb.keys()
    for key in ha:
        if isinstance(ha[key], np.ndarray):
            np.testing.assert_allclose(ha[key], hb[key], rtol=0, atol=0)
        else:
            assert ha[key] == hb[key], key
