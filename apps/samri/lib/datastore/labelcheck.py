"""Checks of uploaded volume files: images that read as 3D volumes, labels that fit their image.

Shared by the local datastore (`local.SamriLocalDatastore`) and the DICOMweb one. Frames: arrays
are ``(X, Y, Z)`` in file voxel order, affines map voxel ``(i, j, k)`` to RAS millimetres
(`samri.volume`). Every refusal is a `samri.errors.SamriInputError` naming the field and value
(``TooLarge`` for size limits); the datastores turn them into HTTP 422/413.

Rules for a label (`check_label_file`):

* a ``.nii.gz``/``.nii``/``.nrrd`` file (of the datastore's extensions) that reads as a volume;
  an NRRD must carry its data (a detached ``data file:`` header could point at any server file);
* the image's shape exactly, and the image's grid: at every corner of the grid (where an error
  of an affine map is largest) the label's voxel centre lies within `GRID_TOLERANCE_VOXELS` of
  the image's smallest voxel size from the image's own centre, which covers spacing, origin and
  orientation and is far below the half voxel at which voxels would be confused; a file that
  declares no geometry at all (NRRD without ``space*``/``spacings``/``axis mins`` fields, NIfTI
  with qform and sform codes 0) can only mean the image's grid: it is accepted on shape and
  stored with the image's affine (`CheckedLabel.rewrite`);
* non-negative integer values; a float volume whose values are all integral is accepted and
  cast (`CheckedLabel.cast`); NaN/inf or fractions are refused; an all-zero label is accepted;
* ``label_info``, when given (`samri.labels.check_label_info`), a list of ``{"name": non-empty
  str, "idx": int >= 0}`` (``value`` is read for ``idx`` like the trainer does; other keys such as
  ``color`` are kept), no name with two values nor value with two names, and every non-zero value
  of the label among the ``idx`` values (entries for segments absent from the volume are fine:
  3D Slicer lists every segment).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from samri.errors import SamriInputError
from samri.io import FileSignature, file_signature
from samri.labels import check_label_info

logger = logging.getLogger(__name__)

#: volume formats SAMRI reads; a datastore accepts those of them its own extensions list holds
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
#: grid tolerance, as a fraction of the image's smallest voxel size (see the module docstring)
GRID_TOLERANCE_VOXELS = 0.1
#: largest image accepted for upload, in voxels (2**28: e.g. 640**3; about 1 GiB as float32)
MAX_IMAGE_VOXELS = 2 ** 28
#: bytes of an NRRD file read to find the end of its header
NRRD_HEADER_BYTES = 1 << 16


class TooLarge(SamriInputError):
    """An upload over a size limit (HTTP 413)."""


@dataclass(frozen=True)
class Grid:
    """A volume's grid: ``shape`` ``(X, Y, Z)`` and ``affine`` ``(4, 4)`` voxel-to-RAS (mm)."""

    shape: tuple[int, ...]
    affine: np.ndarray


@dataclass(frozen=True)
class CheckedLabel:
    """A label that passed `check_label_file`.

    Attributes:
        array: ``(X, Y, Z)`` integer label on the image grid (cast when ``cast``).
        affine: ``(4, 4)`` voxel-to-RAS of the label file as read.
        values: sorted non-zero voxel values.
        names: ``{name: value}`` from ``label_info`` (None when none was given).
        cast: the file held floats (``array`` is the cast copy).
        geometry: the file declared a grid (else it was taken to be the image's).
    """

    array: np.ndarray
    affine: np.ndarray
    values: tuple[int, ...]
    names: dict[str, int] | None
    cast: bool
    geometry: bool = True

    @property
    def rewrite(self) -> bool:
        """Store ``array`` on the image's affine rather than the uploaded file's bytes."""
        return self.cast or not self.geometry


def allowed_extensions(patterns: Iterable[str]) -> tuple[str, ...]:
    """`VOLUME_EXTENSIONS` that a LocalDatastore ``extensions`` list (``"*.nii.gz"``, ...) also scans."""
    listed = {p.replace("*", "").lower() for p in patterns}
    return tuple(e for e in VOLUME_EXTENSIONS if e in listed)


def volume_extension(field: str, filename: str, allowed: Sequence[str] = VOLUME_EXTENSIONS) -> str:
    """The accepted extension ``filename`` ends with (case-insensitive, longest first), else raise."""
    lower = os.path.basename(str(filename)).lower()
    for ext in sorted(allowed, key=len, reverse=True):
        if lower.endswith(ext) and len(lower) > len(ext):
            return ext
    shown = "".join(Path(lower).suffixes) or lower
    raise SamriInputError(field, shown, f"file type not accepted; use one of {', '.join(allowed)}")


def nrrd_header(path: str | os.PathLike, field: str) -> dict[str, str]:
    """Fields of an NRRD header (``{"sizes": "40 36 8", ...}``), refusing detached data files."""
    with open(path, "rb") as fh:
        head = fh.read(NRRD_HEADER_BYTES).replace(b"\r\n", b"\n")
    if not head.startswith(b"NRRD000"):
        raise SamriInputError(field, Path(path).name, "cannot be read as an image (not an NRRD file)")
    end = head.find(b"\n\n")
    if end < 0:
        raise SamriInputError(field, Path(path).name, "cannot be read as an image (NRRD header not terminated)")
    fields: dict[str, str] = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    if "data file" in fields or "datafile" in fields:
        raise SamriInputError(field, Path(path).name, "NRRD with a detached data file is not accepted")
    return fields


def header_voxels(path: str | os.PathLike, field: str) -> int:
    """Voxel count from the file's header alone (nothing but the header is read)."""
    p = Path(path)
    try:
        if p.name.lower().endswith(".nrrd"):
            sizes = [int(s) for s in nrrd_header(p, field).get("sizes", "").split()]
        else:
            import nibabel as nib

            sizes = [int(s) for s in nib.load(str(p)).shape]
    except SamriInputError:
        raise
    except Exception as exc:  # corrupt headers surface many exception types
        raise SamriInputError(field, p.name, f"cannot be read as an image ({exc})") from exc
    if not sizes or min(sizes) < 1:
        raise SamriInputError(field, p.name, f"cannot be read as an image (sizes {sizes})")
    return math.prod(sizes)


@functools.lru_cache(maxsize=64)
def _grid_cached(sig: FileSignature) -> Grid:
    path = sig.path
    if path.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3 or min(shape) < 1:
            raise SamriInputError("image", f"shape {shape}", "a 3D volume (X, Y, Z) is needed")
        return Grid(shape=shape, affine=np.asarray(img.affine, dtype=np.float64))
    from samri.volume import load_image

    vol = load_image(path, "image")
    return Grid(shape=tuple(int(s) for s in vol.array.shape), affine=vol.affine)


def read_grid(path: str | os.PathLike) -> Grid:
    """Grid of an image file (NIfTI: header only; others read in full), cached per file version.

    Raises:
        SamriInputError: field ``image``: unreadable, or not a 3D volume.
    """
    p = str(path)
    try:
        sig = file_signature(p)
        if sig is None:
            raise FileNotFoundError(f"no such file: {p!r}")
        return _grid_cached(sig)
    except SamriInputError:
        raise
    except Exception as exc:  # corrupt files surface many exception types
        raise SamriInputError("image", Path(p).name, f"cannot be read as an image ({exc})") from exc


def check_image_file(path: str | os.PathLike, allowed: Sequence[str] = VOLUME_EXTENSIONS,
                     field: str = "file") -> Grid:
    """Grid of an uploaded image after checking it: accepted extension, size limit, reads as a 3D volume.

    Raises:
        TooLarge: more than `MAX_IMAGE_VOXELS` voxels.
        SamriInputError: another file type, a corrupt file, not 3D.
    """
    volume_extension(field, str(path), allowed)
    voxels = header_voxels(path, field)
    if voxels > MAX_IMAGE_VOXELS:
        raise TooLarge(field, f"{voxels} voxels", f"is over the limit of {MAX_IMAGE_VOXELS} voxels")
    from samri.volume import load_image

    vol = load_image(path, field)
    return Grid(shape=tuple(int(s) for s in vol.array.shape), affine=vol.affine)


def grid_offset_mm(shape: Sequence[int], affine: np.ndarray, grid: Grid) -> float:
    """Largest distance (mm) between the voxel centres of two affines over the corners of ``shape``."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    diff = corners @ (np.asarray(affine, dtype=np.float64) - grid.affine).T
    return float(np.linalg.norm(diff[:, :3], axis=1).max())


def check_on_grid(shape: Sequence[int], affine: np.ndarray, grid: Grid, field: str = "label") -> None:
    """Raise unless ``shape``/``affine`` is ``grid`` (shape exactly, affine within the tolerance)."""
    if tuple(shape) != tuple(grid.shape):
        raise SamriInputError(field, f"shape {tuple(shape)}", f"is not on the image grid {tuple(grid.shape)}")
    spacing = float(np.linalg.norm(grid.affine[:3, :3], axis=0).min())
    tolerance = GRID_TOLERANCE_VOXELS * spacing
    offset = grid_offset_mm(shape, affine, grid)
    if not offset <= tolerance:  # also refuses NaN affines
        raise SamriInputError(field, f"affine {np.round(np.asarray(affine), 4).tolist()}",
                              f"is not on the image grid (affine {np.round(grid.affine, 4).tolist()}): voxel "
                              f"centres up to {offset:.4g} mm away, tolerance {tolerance:.4g} mm")


def integer_values(array: np.ndarray, field: str = "label") -> tuple[np.ndarray, tuple[int, ...], bool]:
    """``(array as non-negative integers, sorted non-zero values, whether it was cast)``.

    Raises:
        SamriInputError: negative, non-finite or fractional values, or a non-numeric dtype.
    """
    arr = np.asarray(array)
    cast = False
    if arr.dtype == bool:
        arr, cast = arr.astype(np.uint8), True
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise SamriInputError(field, f"dtype {arr.dtype}", "has NaN or infinite values")
        if not np.array_equal(arr, np.floor(arr)):
            raise SamriInputError(field, f"dtype {arr.dtype}", "has non-integer values; labels are integers")
        cast = True
    elif not np.issubdtype(arr.dtype, np.integer):
        raise SamriInputError(field, f"dtype {arr.dtype}", "an integer label volume is needed")
    if arr.size and arr.min() < 0:
        raise SamriInputError(field, f"minimum {arr.min()}", "label values must be non-negative")
    top = int(arr.max()) if arr.size else 0
    if top > np.iinfo(np.uint32).max:
        raise SamriInputError(field, f"maximum {top}", "label values must fit in 32 bits")
    if cast:
        dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
        arr = arr.astype(dtype)
    if top < 65536:  # bincount is ~20x faster than unique on a big volume
        counts = np.bincount(arr.ravel().astype(np.intp, copy=False), minlength=1)
        values = tuple(int(v) for v in np.flatnonzero(counts) if v)
    else:
        values = tuple(int(v) for v in np.unique(arr) if v)
    return arr, values, cast


def declares_geometry(path: str | os.PathLike) -> bool:
    """Whether a (readable) volume file states its voxel-to-world geometry at all."""
    p = Path(path)
    if p.name.lower().endswith(".nrrd"):
        fields = nrrd_header(p, "label")
        return any(k in fields for k in ("space", "space dimension", "space directions", "space origin",
                                         "spacings", "axis mins", "axismins"))
    if p.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        header = nib.load(str(p)).header
        return int(header["qform_code"]) > 0 or int(header["sform_code"]) > 0
    return True


def load_label(path: str | os.PathLike, field: str = "label"):
    """`samri.volume.load_image`, but NRRD/other ITK formats keep their voxel type (MONAI's default is float32)."""
    from samri.volume import ImageVolume, load_image

    p = Path(path)
    if p.name.lower().endswith((".nii", ".nii.gz")):
        return load_image(p, field)
    from monai.transforms import LoadImage

    from samri.intensity import check_volume

    try:
        data = LoadImage(image_only=True, reader="ITKReader", affine_lps_to_ras=True, dtype=None)(str(p))
    except Exception as exc:  # corrupt files surface many exception types
        raise SamriInputError(field, p.name, f"cannot be read as an image ({exc})") from exc
    array = check_volume(np.asarray(data), field)
    return ImageVolume(array=np.asarray(array), affine=np.asarray(data.affine, dtype=np.float64), path=p)


def check_label_file(label_path: str | os.PathLike, image_path: str | os.PathLike,
                     label_info: Mapping[str, Any] | None,
                     allowed: Sequence[str] = VOLUME_EXTENSIONS) -> CheckedLabel:
    """Check an uploaded label against its image (rules in the module docstring).

    Args:
        label_path: the uploaded file (its name's extension decides the format).
        image_path: the image file the label belongs to.
        label_info: the save request's params (``{"label_info": [...], ...}``) or None.
        allowed: accepted label extensions.

    Raises:
        SamriInputError: naming ``label``, ``label_info[...]`` or ``image``.
    """
    volume_extension("label", str(label_path), allowed)
    grid = read_grid(image_path)
    described = check_label_info(label_info)
    voxels = header_voxels(label_path, "label")
    if voxels != math.prod(grid.shape):  # before reading the data: a header may claim any size
        raise SamriInputError("label", f"{voxels} voxels", f"is not on the image grid {tuple(grid.shape)}")
    vol = load_label(label_path)
    geometry = declares_geometry(label_path)
    if geometry:
        check_on_grid(vol.array.shape, vol.affine, grid)
    elif tuple(vol.array.shape) != tuple(grid.shape):
        raise SamriInputError("label", f"shape {tuple(vol.array.shape)}", f"is not on the image grid {grid.shape}")
    else:
        logger.info("label %s declares no geometry: taken to be on the image grid", Path(label_path).name)
    array, values, cast = integer_values(vol.array)
    names = None
    if described is not None:
        idx, names = described
        missing = [v for v in values if v not in idx]
        if missing:
            raise SamriInputError("label_info", sorted(idx),
                                  f"names no segment for the label's values {missing[:20]}")
    return CheckedLabel(array=array, affine=vol.affine, values=values, names=names, cast=cast, geometry=geometry)
