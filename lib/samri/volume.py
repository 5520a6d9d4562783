"""Image volumes: loading, the windowed copy every model reads, and atomic label writing.

Frame: arrays are ``(X, Y, Z)`` in file voxel order (nibabel), indexed by the IJK that 3D Slicer and
OHIF send; ``affine`` maps IJK to RAS millimetres.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from samri.errors import SamriInputError
from samri.intensity import WindowSettings, check_volume, window_volume
from samri.io import atomic_path

logger = logging.getLogger(__name__)


@dataclass
class ImageVolume:
    """A 3D image on its grid.

    Attributes:
        array: ``(X, Y, Z)`` raw intensities.
        affine: ``(4, 4)`` voxel-to-RAS (mm).
        path: where it was read from, if anywhere.
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def load_image(path: str | os.PathLike, field_name: str = "image") -> ImageVolume:
    """Read a NIfTI/NRRD/MHA file into an `ImageVolume` (3D; a trailing singleton dim is dropped).

    NIfTI goes through nibabel; other formats through ITK via MONAI's ``LoadImage``, both giving
    arrays in ``(X, Y, Z)`` order.
    """
    p = Path(path)
    if not p.is_file():
        raise SamriInputError(field_name, str(p), "file not found")
    name = p.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(p))
            array, affine = np.asanyarray(img.dataobj), img.affine
        else:
            from monai.transforms import LoadImage

            data = LoadImage(image_only=True, reader="ITKReader", affine_lps_to_ras=True)(str(p))
            array, affine = np.asarray(data), np.asarray(data.affine)
    except Exception as exc:  # corrupt or unsupported files surface many exception types
        raise SamriInputError(field_name, str(p), f"cannot be read as an image ({exc})") from exc
    array = check_volume(array, field_name)
    return ImageVolume(array=np.asarray(array), affine=np.asarray(affine, dtype=np.float64), path=p)


def content_hash(array: np.ndarray) -> str:
    """Short hash of an array's shape, dtype and bytes (identity of the image content)."""
    arr = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{arr.shape}:{arr.dtype.str}".encode())
    digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


@dataclass(frozen=True)
class PreparedVolume:
    """The windowed copy of a volume that every model reads slices from.

    Attributes:
        windowed: ``(X, Y, Z)`` float32 in ``[0, 1]`` (`samri.intensity.window_volume`).
        content_key: hash of the raw content plus window settings; part of embedding cache keys.
        affine: ``(4, 4)`` voxel-to-RAS of the source image.
    """

    windowed: np.ndarray
    content_key: str
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.windowed.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def prepare_volume(image: ImageVolume | np.ndarray, window: WindowSettings = WindowSettings(),
                   field_name: str = "image") -> PreparedVolume:
    """Window a raw volume once; the result is shared by all clicks and models."""
    vol = image if isinstance(image, ImageVolume) else ImageVolume(array=np.asarray(image))
    arr = check_volume(vol.array, field_name)
    key = f"{content_hash(arr)}-{window.key()}"
    return PreparedVolume(windowed=window_volume(arr, window, field_name), content_key=key, affine=vol.affine)


def save_label(path: str | os.PathLike, label: np.ndarray, affine: np.ndarray) -> Path:
    """Write a ``(X, Y, Z)`` volume (a label, or any image) atomically (temp file in the folder, then rename).

    The format follows the suffix: ``.nii``/``.nii.gz`` with nibabel, ``.nrrd``/``.mha``/others
    with ITK (via MONAI's ``ITKWriter``, which converts RAS affines to ITK's LPS).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    label = np.asarray(label)
    if label.ndim != 3:
        raise SamriInputError("label", f"shape {label.shape}", "a 3D label volume is needed")
    with atomic_path(p, suffix=None if p.suffix else ".nii.gz") as tmp:  # no suffix: NIfTI
        _write_label_file(tmp, label, np.asarray(affine, dtype=np.float64))
    return p


def _write_label_file(path: Path, label: np.ndarray, affine: np.ndarray) -> None:
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.Nifti1Image(label, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, str(path))
        return
    from monai.data import ITKWriter

    writer = ITKWriter(output_dtype=label.dtype, affine_lps_to_ras=True)
    writer.set_data_array(label, channel_dim=None)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    writer.write(str(path), verbose=False)
