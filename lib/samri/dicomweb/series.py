"""DICOM MR series -> one validated volume on its RAS grid (the reverse of `samri.dicomweb.convert`).

Slices are ordered by their position along the slice normal ``n = row x column`` (the DICOM
convention readers share), and the volume is ``(X = columns, Y = rows, Z = slices)`` with the
voxel-to-RAS affine ``diag(-1, -1, 1, 1) @ [row*dc, col*dr, n*dz, IPP(first)]``. Real values are
``stored * RescaleSlope + RescaleIntercept`` per instance.

Everything a volume needs is checked, and a `samri.errors.SamriInputError` names the first field
that fails: Modality (MR only), single-frame instances, at least 2 slices, present and consistent
ImagePositionPatient / ImageOrientationPatient / PixelSpacing / Rows / Columns, distinct
positions, uniform spacing along the normal, positions stacked along the normal (no gantry tilt).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: relative tolerance on slice spacing uniformity and on stacking along the normal
SPACING_RTOL = 1e-2
#: absolute tolerance (mm) added to it
SPACING_ATOL = 1e-3


@dataclass(frozen=True)
class SeriesGeometry:
    """Sorted slices of a series and their grid.

    Attributes:
        order: indices into the input datasets, in slice order along the normal.
        affine: ``(4, 4)`` voxel-to-RAS of the ``(X, Y, Z)`` volume.
        shape: ``(X, Y, Z)`` = (Columns, Rows, slices).
        sop_uids: SOPInstanceUID of each slice k.
    """

    order: tuple[int, ...]
    affine: np.ndarray
    shape: tuple[int, int, int]
    sop_uids: tuple[str, ...]


def _floats(ds, keyword: str, count: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or value == "":
        raise SamriInputError(keyword, where, "is missing: the series is not a volume")
    items = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    try:
        out = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        raise SamriInputError(keyword, f"{where}: {value}", "is not numeric") from None
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise SamriInputError(keyword, f"{where}: {items}", f"needs {count} finite numbers")
    return out


def series_geometry(datasets: Sequence, *, modality: str | None = "MR") -> SeriesGeometry:
    """Validate a series' headers and compute its slice order and affine (pixel data not needed).

    Args:
        datasets: the instances of one series (pydicom Datasets, any order).
        modality: required Modality, or None to accept any.

    Raises:
        SamriInputError: naming the failing field, the instance and the value.
    """
    if not datasets:
        raise SamriInputError("series", "[]", "has no instances")
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series_uids) != 1:
        raise SamriInputError("SeriesInstanceUID", sorted(series_uids), "instances from several series")
    series = series_uids.pop()
    for ds in datasets:
        mod = str(ds.get("Modality", ""))
        if modality is not None and mod != modality:
            raise SamriInputError("Modality", mod, f"series {series} is not {modality}: only MR volumes are served")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames != 1:
            raise SamriInputError("NumberOfFrames", frames, f"series {series}: multi-frame (enhanced) images "
                                  "are not supported; export the series as single-frame MR images")
    if len(datasets) < 2:
        raise SamriInputError("series", series, "has a single image: not a volume")
    first = datasets[0]
    where0 = f"instance {first.get('SOPInstanceUID', 0)}"
    iop = _floats(first, "ImageOrientationPatient", 6, where0)
    spacing = _floats(first, "PixelSpacing", 2, where0)
    rows, cols = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    if rows < 1 or cols < 1:
        raise SamriInputError("Rows/Columns", f"{where0}: {rows}x{cols}", "must be positive")
    row_cos, col_cos = iop[:3], iop[3:]
    if abs(np.linalg.norm(row_cos) - 1) > 1e-3 or abs(np.linalg.norm(col_cos) - 1) > 1e-3 \
            or abs(float(row_cos @ col_cos)) > 1e-3:
        raise SamriInputError("ImageOrientationPatient", f"{where0}: {iop.tolist()}", "is not two orthonormal vectors")
    normal = np.cross(row_cos, col_cos)
    positions = []
    for i, ds in enumerate(datasets):
        where = f"instance {ds.get('SOPInstanceUID', i)}"
        if i:
            if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, where), iop, atol=1e-4):
                raise SamriInputError("ImageOrientationPatient", where, "differs between slices")
            if not np.allclose(_floats(ds, "PixelSpacing", 2, where), spacing, rtol=1e-5, atol=1e-6):
                raise SamriInputError("PixelSpacing", where, "differs between slices")
            if (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) != (rows, cols):
                raise SamriInputError("Rows/Columns", where, "differ between slices")
        positions.append(_floats(ds, "ImagePositionPatient", 3, where))
    pos = np.stack(positions)
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    if np.any(steps <= SPACING_ATOL):
        k = int(np.argmin(steps))
        raise SamriInputError("ImagePositionPatient", pos[order[k + 1]].tolist(),
                              "two slices at the same position: not one volume")
    dz = float(np.mean(steps))
    if np.max(np.abs(steps - dz)) > SPACING_ATOL + SPACING_RTOL * dz:
        raise SamriInputError("ImagePositionPatient", f"slice spacings {np.round(steps, 4).tolist()[:20]}",
                              "inconsistent spacing between slices: not one regular volume")
    offsets = pos[order] - pos[order[0]]
    sideways = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if np.max(sideways) > SPACING_ATOL + SPACING_RTOL * dz:
        raise SamriInputError("ImagePositionPatient", f"max {float(np.max(sideways)):.4f} mm off the normal",
                              "slices are not stacked along the slice normal (gantry tilt): not supported")
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[1]
    lps[:3, 1] = col_cos * spacing[0]
    lps[:3, 2] = normal * dz
    lps[:3, 3] = pos[order[0]]
    sops = tuple(str(datasets[i].get("SOPInstanceUID", "")) for i in order)
    return SeriesGeometry(order=tuple(int(i) for i in order), affine=RAS_FROM_LPS @ lps,
                          shape=(cols, rows, len(datasets)), sop_uids=sops)


def series_to_volume(datasets: Sequence, *, modality: str | None = "MR"):
    """Validated `samri.volume.ImageVolume` of a series: ``(X, Y, Z)`` real values, voxel-to-RAS affine.

    The array is int16/uint16 when every instance has slope 1 and intercept 0, float32 otherwise.
    """
    from samri.volume import ImageVolume

    geom = series_geometry(datasets, modality=modality)
    slices, rescaled = [], False
    for i in geom.order:
        ds = datasets[i]
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for missing/undecodable pixel data
            raise SamriInputError("PixelData", f"instance {ds.get('SOPInstanceUID')}", f"cannot be decoded ({exc})") \
                from exc
        if pixels.shape != (geom.shape[1], geom.shape[0]):
            raise SamriInputError("PixelData", f"instance {ds.get('SOPInstanceUID')}",
                                  f"shape {pixels.shape} is not Rows x Columns")
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if (slope, intercept) != (1.0, 0.0):
            rescaled = True
        slices.append((pixels, slope, intercept))
    if rescaled:
        array = np.stack([(p.astype(np.float32) * s + b).T for p, s, b in slices], axis=2)
    else:
        array = np.stack([p.T for p, _, _ in slices], axis=2)
    logger.info("series %s: %s volume, spacing %s mm", datasets[0].get("SeriesInstanceUID"), array.shape,
                np.round(np.linalg.norm(geom.affine[:3, :3], axis=0), 4).tolist())
    return ImageVolume(array=array, affine=geom.affine)
