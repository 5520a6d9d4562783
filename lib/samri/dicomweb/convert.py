"""NIfTI volume -> DICOM MR series (MR Image Storage, one uncompressed instance per slice).

Geometry. The NIfTI array is ``(X, Y, Z)`` with a voxel-to-RAS affine ``A``. In LPS,
``M = diag(-1, -1, 1) @ A[:3]``; its columns ``e0, e1, e2`` are one voxel step along each array
axis. Slice ``k`` is the DICOM image ``array[:, :, k].T`` (rows follow Y, columns follow X), so

* ``ImageOrientationPatient = e0/|e0| (along a row, i.e. increasing column) + e1/|e1|``,
* ``PixelSpacing = [|e1| (between rows), |e0| (between columns)]``,
* ``ImagePositionPatient(k) = M @ (0, 0, k, 1)`` (centre of the first pixel of slice k),
* ``InstanceNumber`` 1..N in decreasing position along the normal ``row x column`` (the slice
  furthest along it is 1; `instance_numbers_along_normal` says why: OHIF's SEG export relies on it),
* ``SliceThickness = SpacingBetweenSlices = |e2|``.

The in-plane axes must be orthogonal and ``e2`` parallel to the slice normal (no shear), otherwise
a `samri.errors.SamriInputError` names the affine. Reading the series back with
`samri.dicomweb.series.series_to_volume` gives the same affine (to float precision of the DS
strings, well under 1e-3 mm) when ``e2`` points along ``e0 x e1`` (true for RAS-oriented NIfTI).

Intensities. Integer data that fits int16 (or uint16) is stored as is (slope 1, intercept 0).
Other data (float, wide integers) is mapped linearly onto uint16 with ``RescaleSlope`` /
``RescaleIntercept`` = range/65535, min (one pair for the whole series); NaN/inf become the
minimum. Nothing is ever wrapped through 8 bits. What a reader gets back
(`samri.dicomweb.series.series_to_volume`) is the NIfTI's own values: exact for such integers,
within ``RescaleSlope / 2`` (range / 131070) for everything else; no value is scaled or shifted.

Display window. ``WindowCenter`` / ``WindowWidth`` are in real-value (rescaled) units and follow
the DICOM LINEAR VOI function (PS3.3 C.11.2.1.2.1), which viewers apply literally: OHIF v3's
cornerstone maps ``[c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2]`` to black..white (and drops
a window whose ends are both 0). The window written maps exactly the series' value range
``[lo, hi]``: ``w = hi - lo + 1``, ``c = (lo + hi + 1) / 2`` (`display_window`). The naive
``c = (lo + hi) / 2, w = hi - lo`` breaks for small-range float data: nilearn's MNI152 in [0, 1]
gave c 0.5 / w 1, i.e. the empty range [0, 0], and OHIF showed it black.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
#: tolerance on direction cosines (orthogonality, shear)
ORTHO_TOL = 1e-4


def make_uid(seed: str | None, *parts: str) -> str:
    """A DICOM UID: deterministic from ``seed`` and ``parts`` when a seed is given, random otherwise."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[seed, *parts]) if seed is not None else generate_uid()


def ds_number(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS) keeping as many digits as fit."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def lps_geometry(affine: np.ndarray, field_name: str = "affine") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(M, spacing, cosines)`` of a voxel-to-RAS affine: M ``(3, 4)`` voxel-to-LPS, spacing ``(3,)``
    in mm along X, Y, Z, and unit columns ``(3, 3)``.

    Raises:
        SamriInputError: a singular, non-orthogonal in-plane or sheared grid.
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise SamriInputError(field_name, aff.tolist(), "must be a finite 4x4 voxel-to-RAS matrix")
    m = LPS_FROM_RAS @ aff[:3]
    spacing = np.linalg.norm(m[:, :3], axis=0)
    if np.any(spacing <= 1e-9):
        raise SamriInputError(field_name, aff.tolist(), "has a zero voxel size")
    cos = m[:, :3] / spacing
    if abs(float(cos[:, 0] @ cos[:, 1])) > ORTHO_TOL:
        raise SamriInputError(field_name, aff.round(6).tolist(),
                              "in-plane axes are not orthogonal: cannot be written as DICOM images")
    normal = np.cross(cos[:, 0], cos[:, 1])
    if np.linalg.norm(np.cross(normal, cos[:, 2])) > ORTHO_TOL:
        raise SamriInputError(field_name, aff.round(6).tolist(),
                              "is sheared (slice axis not along the slice normal): resample the image first")
    return m, spacing, cos


def to_stored_pixels(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(stored int16/uint16 (X, Y, Z), slope, intercept)`` with ``real = stored * slope + intercept``."""
    arr = np.asarray(array)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo >= -32768 and hi <= 32767:
            return arr.astype(np.int16), 1.0, 0.0
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16), 1.0, 0.0
    data = arr.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        raise SamriInputError("image", f"dtype {arr.dtype}", "has no finite voxel")
    lo, hi = float(data[finite].min()), float(data[finite].max())
    data[~finite] = lo
    if np.all(data == np.round(data)) and lo >= -32768 and hi <= 32767:
        return data.astype(np.int16), 1.0, 0.0  # float dtype holding small integers: exact
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.clip(np.round((data - lo) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, lo


def display_window(lo: float, hi: float) -> tuple[float, float]:
    """``(WindowCenter, WindowWidth)`` whose DICOM LINEAR VOI range is exactly ``[lo, hi]`` (real values).

    DICOM's LINEAR function shows ``x <= c - 0.5 - (w - 1) / 2`` black and ``x > c - 0.5 + (w - 1) / 2``
    white, so ``w = hi - lo + 1`` and ``c = (lo + hi + 1) / 2``. A constant image (``hi == lo``) gets
    ``w = 1``. Works for any range, including float data in [0, 1] (c 1.0, w 2.0).
    """
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise SamriInputError("window", [lo, hi], "needs finite lo <= hi")
    width = float(hi - lo) + 1.0
    return float(lo) + width / 2.0, width


def instance_numbers_along_normal(m: np.ndarray, n_slices: int) -> list[int]:
    """InstanceNumber of each array slice k: ``1..N`` in *decreasing* position along the slice normal
    ``row x column`` (for a RAS-oriented axial volume: 1 = the most superior slice, head to feet).

    The order is what OHIF v3's "Export DICOM SEG" needs: its labelmap is a stack derived from the
    display set's images, which OHIF sorts by InstanceNumber; the cornerstone adapter hands that
    stack's frames to dcmjs as frames ``1..N``, but dcmjs (``ImageNormalizer.convertToMultiframe``)
    re-sorts the source images by decreasing position along the normal and takes frame ``i``'s
    source image (ReferencedSOPInstanceUID and ImagePositionPatient) from that sorted list. Only
    when InstanceNumber already increases against the normal do the two orders agree; numbered
    along the normal (``k + 1``), OHIF's SEG puts labelmap slice k on source image ``N-1-k``.
    """
    normal = np.cross(m[:, 0], m[:, 1])
    along = np.array([float((m @ np.array([0.0, 0.0, float(k), 1.0])) @ normal) for k in range(n_slices)])
    ranks = np.empty(n_slices, dtype=int)
    ranks[np.argsort(-along, kind="stable")] = np.arange(1, n_slices + 1)
    return [int(r) for r in ranks]


def volume_to_dicom_series(array: np.ndarray, affine: np.ndarray, *, patient_id: str = "SAMRI",
                           patient_name: str = "SAMRI^Sample", study_uid: str | None = None,
                           series_uid: str | None = None, series_description: str | None = None,
                           series_number: int = 1, uid_seed: str | None = None,
                           study_description: str = "SAMRI MRI") -> list:
    """One `pydicom.Dataset` per slice k of an ``(X, Y, Z)`` volume with a voxel-to-RAS ``affine``.

    Args:
        array: ``(X, Y, Z)`` intensities (a trailing singleton 4th dimension is dropped).
        affine: ``(4, 4)`` voxel-to-RAS (mm).
        patient_id, patient_name: patient module values.
        study_uid, series_uid: UIDs to use; None derives them from ``uid_seed`` (deterministic) or
            makes new random ones.
        series_description: SeriesDescription (shown by OHIF).
        series_number: SeriesNumber.
        uid_seed: makes every generated UID (study, series, frame of reference, instances) a
            deterministic function of the seed, so converting the same file twice gives the same series.

    Returns:
        datasets in array slice order k (InstanceNumber from `instance_numbers_along_normal`: 1 is
        the slice furthest along the normal), each with ``file_meta`` set, ready for ``save_as`` or
        STOW-RS.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    arr = np.asarray(array)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise SamriInputError("image", f"shape {arr.shape}", "a 3D volume is needed")
    if arr.shape[2] < 2:
        raise SamriInputError("image", f"shape {arr.shape}", "has a single slice: not a volume")
    m, spacing, cos = lps_geometry(affine)
    stored, slope, intercept = to_stored_pixels(arr)
    real_lo, real_hi = float(stored.min()) * slope + intercept, float(stored.max()) * slope + intercept
    center, width = display_window(real_lo, real_hi)
    study_uid = study_uid or make_uid(uid_seed, "study")
    series_uid = series_uid or make_uid(uid_seed, "series", study_uid)
    frame_uid = make_uid(uid_seed, "frame", series_uid)
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    iop = [ds_number(v) for v in (*cos[:, 0], *cos[:, 1])]
    pixel_spacing = [ds_number(spacing[1]), ds_number(spacing[0])]
    normal = np.cross(cos[:, 0], cos[:, 1])
    instance_numbers = instance_numbers_along_normal(m, arr.shape[2])
    out = []
    for k in range(arr.shape[2]):
        sop_uid = make_uid(uid_seed, "instance", series_uid, str(k)) if uid_seed is not None else make_uid(None)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.preamble = b"\0" * 128  # STOW-RS sends what save_as writes: keep a Part 10 file
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, sop_uid
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", ""
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, date, time
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDescription = study_description
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, int(series_number)
        ds.SeriesDescription = series_description or "MR volume"
        ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = date, time, date, time
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer = "SAMRI (converted from NIfTI)"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "3D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "", "", ""
        ds.InstanceNumber = instance_numbers[k]
        position = m @ np.array([0.0, 0.0, float(k), 1.0])
        ds.ImagePositionPatient = [ds_number(v) for v in position]
        ds.ImageOrientationPatient = iop
        ds.SliceLocation = ds_number(float(position @ normal))
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = ds.SpacingBetweenSlices = ds_number(spacing[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = ds_number(slope), ds_number(intercept), "US"
        ds.WindowCenter, ds.WindowWidth = ds_number(center), ds_number(width)
        ds.VOILUTFunction = "LINEAR"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        out.append(ds)
    return out


def nifti_to_dicom_series(path: str | os.PathLike, *, patient_id: str | None = None,
                          patient_name: str | None = None, study_uid: str | None = None,
                          series_description: str | None = None, uid_seed: str | None = None,
                          series_number: int = 1) -> list:
    """Read a NIfTI (or NRRD/MHA) volume with `samri.volume.load_image` and convert it.

    Args:
        path: image file.
        patient_id: default: the file's stem (e.g. ``colin27_t1``).
        patient_name: default ``SAMRI^<stem>``.
        study_uid: put the series into this study (default: a new one, or from ``uid_seed``).
        series_description: default: the file's stem.
        uid_seed: deterministic UIDs (see `volume_to_dicom_series`).

    Returns:
        the series' datasets (`volume_to_dicom_series`).
    """
    from samri.volume import load_image

    image = load_image(path, "image")
    stem = Path(path).name.split(".")[0]
    datasets = volume_to_dicom_series(image.array, image.affine, patient_id=patient_id or stem,
                                      patient_name=patient_name or f"SAMRI^{stem}", study_uid=study_uid,
                                      series_description=series_description or stem, uid_seed=uid_seed,
                                      series_number=series_number)
    logger.info("converted %s %s -> %d MR instances (series %s)", path, image.array.shape, len(datasets),
                datasets[0].SeriesInstanceUID)
    return datasets


def write_series(datasets: Sequence, folder: str | os.PathLike) -> list[Path]:
    """Save datasets as ``<folder>/<SOPInstanceUID>.dcm`` (each file written atomically)."""
    from samri.io import atomic_write

    folder = Path(folder)
    out = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        atomic_write(path, lambda f, ds=ds: ds.save_as(f, write_like_original=False))
        out.append(path)
    return out
