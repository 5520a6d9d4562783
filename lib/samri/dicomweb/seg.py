"""Label volumes <-> DICOM SEG (highdicom), on the grid of the source MR series, voxel-exact.

Writing: an ``(X, Y, Z)`` label volume on the source series' grid (`series_geometry` order: slice
k is the k-th slice along the normal) becomes a BINARY Segmentation with one segment per non-zero
value, segment numbers ``1..N`` in increasing value order, each segment labelled with its name,
every frame referencing its source instance and the SEG referencing the source series. Empty
frames are omitted (highdicom).

Reading: a SEG (ours, or OHIF's dcmjs export) is mapped frame by frame onto the source instances
it references (``get_pixels_by_source_instance``), so the result lies exactly on the image grid
of `samri.dicomweb.series.series_to_volume` of the same source series. Values are segment
numbers; the names come back as ``{segment label: segment number}``. OHIF v3's "Export DICOM SEG"
(dcmjs) does not write ``SpatialLocationsPreserved``, which highdicom then refuses to map by
source instance; `check_frame_geometry` verifies instead that every frame has its source
instance's Rows/Columns, orientation, pixel spacing and position, and only then is highdicom told
to map it (a SEG that says ``SpatialLocationsPreserved = NO`` is refused).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: SCT "Anatomical structure" as category and type (the names say which structure)
_CATEGORY = ("123037004", "SCT", "Anatomical Structure")
_TYPE = ("91723000", "SCT", "Anatomical Structure")


def referenced_series_uid(seg) -> str | None:
    """SeriesInstanceUID that a SEG's ReferencedSeriesSequence names (first item), or None."""
    refs = seg.get("ReferencedSeriesSequence")
    if refs:
        uid = refs[0].get("SeriesInstanceUID")
        return str(uid) if uid else None
    return None


def _label_values(label: np.ndarray) -> list[int]:
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)):
            raise SamriInputError("label", f"dtype {label.dtype}", "values must be integers")
    values = [int(v) for v in np.unique(label) if v != 0]
    if any(v < 0 for v in values):
        raise SamriInputError("label", min(values), "values must be non-negative")
    if not values:
        raise SamriInputError("label", "all zero", "has no labelled voxel: nothing to save")
    return values


def label_to_seg(label: np.ndarray, source_datasets: Sequence, *, names: Mapping[int, str] | None = None,
                 series_description: str = "SAMRI label", series_number: int = 300,
                 series_uid: str | None = None, content_creator: str | None = None,
                 algorithm_version: str = "0"):
    """A DICOM SEG (`highdicom.seg.Segmentation`) of ``label`` referencing ``source_datasets``.

    Args:
        label: ``(X, Y, Z)`` integer label volume on the source series' grid (0 = background).
        source_datasets: the source MR series' instances (any order; pixel data not needed).
        names: ``{label value: segment name}``; values without a name get ``label_<value>``.
        series_description, series_number: of the new SEG series.
        series_uid: SEG SeriesInstanceUID (default: a new one).
        content_creator: ContentCreatorName (e.g. the annotator).
        algorithm_version: software version written into the SEG.

    Returns:
        ``(seg dataset, {segment name: segment number})``.

    Raises:
        SamriInputError: a label not on the source grid, empty, negative or non-integer.
    """
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept

    from samri.dicomweb.series import series_geometry

    geom = series_geometry(source_datasets, modality=None)
    label = np.asarray(label)
    if label.ndim == 4 and label.shape[3] == 1:
        label = label[..., 0]
    if tuple(label.shape) != geom.shape:
        raise SamriInputError("label", f"shape {tuple(label.shape)}",
                              f"is not on the image grid {geom.shape} of series {source_datasets[0].SeriesInstanceUID}")
    values = _label_values(label)
    names = {int(k): str(v) for k, v in (names or {}).items()}
    seg_names: dict[str, int] = {}
    descriptions = []
    lut = np.zeros(max(values) + 1, dtype=np.uint16)
    for number, value in enumerate(values, start=1):
        name = names.get(value) or f"label_{value}"
        if name in seg_names:
            raise SamriInputError("label_info", name, "names two label values")
        seg_names[name] = number
        lut[value] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=CodedConcept(*_CATEGORY), segmented_property_type=CodedConcept(*_TYPE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="SAMRI", version=algorithm_version, family=CodedConcept("123109", "DCM", "Manual Processing")),
        ))
    segment_map = lut[label.astype(np.int64)]                       # (X, Y, Z) segment numbers
    frames = np.ascontiguousarray(np.transpose(segment_map, (2, 1, 0)))  # (Z, rows=Y, cols=X)
    sources = [source_datasets[i] for i in geom.order]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=series_uid or hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="SAMRI",
        manufacturer_model_name="SAMRI MONAI Label app", software_versions=str(algorithm_version),
        device_serial_number="0", content_label="SAMRI", content_description=series_description[:64],
        content_creator_name=content_creator, omit_empty_frames=True,
    )
    seg.SeriesDescription = series_description
    seg.preamble = b"\0" * 128
    logger.info("SEG %s: %d segments, %d frames, source series %s", seg.SeriesInstanceUID, len(values),
                int(seg.NumberOfFrames), sources[0].SeriesInstanceUID)
    return seg, seg_names


def seg_segment_names(seg) -> dict[str, int]:
    """``{SegmentLabel: SegmentNumber}`` of a SEG dataset (duplicate labels get ``_<number>``)."""
    out: dict[str, int] = {}
    for item in seg.get("SegmentSequence", []):
        number = int(item.SegmentNumber)
        name = str(item.get("SegmentLabel", "") or f"segment_{number}")
        out[name if name not in out else f"{name}_{number}"] = number
    return out


#: mm; tolerance on frame positions (DS strings carry ~1e-4 mm) and relative on spacing/orientation
POSITION_TOL_MM = 1e-2
DIRECTION_TOL = 1e-4


def _item(seq_owner, keyword: str):
    seq = seq_owner.get(keyword) if seq_owner is not None else None
    return seq[0] if seq else None


def _frame_attr(seg, frame, group: str, keyword: str):
    """``keyword`` from the frame's functional group ``group``, else from the shared groups."""
    for owner in (frame, _item(seg, "SharedFunctionalGroupsSequence")):
        item = _item(owner, group)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def check_frame_geometry(seg, source_datasets: Sequence) -> bool:
    """Check that every SEG frame lies on the source instance it references; True when the SEG itself
    says so (``SpatialLocationsPreserved = YES`` on every frame).

    Raises:
        SamriInputError: naming the field: Rows/Columns, ImageOrientationPatient, PixelSpacing or
            ImagePositionPatient of a frame that differs from its source instance, a frame without a
            source instance of the series, or ``SpatialLocationsPreserved = NO``.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_datasets}
    first = source_datasets[0]
    if (int(seg.Rows), int(seg.Columns)) != (int(first.Rows), int(first.Columns)):
        raise SamriInputError("Rows/Columns", [int(seg.Rows), int(seg.Columns)],
                              f"SEG frames are not the source images' size {[int(first.Rows), int(first.Columns)]}")
    declared = True
    for n, frame in enumerate(seg.get("PerFrameFunctionalGroupsSequence", []), start=1):
        source = _item(_item(frame, "DerivationImageSequence"), "SourceImageSequence")
        uid = str(source.get("ReferencedSOPInstanceUID", "")) if source is not None else ""
        if uid not in by_uid:
            raise SamriInputError("ReferencedSOPInstanceUID", uid or "missing",
                                  f"frame {n} of SEG {seg.SeriesInstanceUID} has no source instance in the series")
        preserved = str(source.get("SpatialLocationsPreserved", "") or "")
        if preserved == "NO":
            raise SamriInputError("SpatialLocationsPreserved", preserved, f"frame {n}: not on its source image")
        declared &= preserved == "YES"
        src = by_uid[uid]
        checks = (("ImageOrientationPatient", _frame_attr(seg, frame, "PlaneOrientationSequence",
                                                          "ImageOrientationPatient"), DIRECTION_TOL),
                  ("PixelSpacing", _frame_attr(seg, frame, "PixelMeasuresSequence", "PixelSpacing"), DIRECTION_TOL),
                  ("ImagePositionPatient", _frame_attr(seg, frame, "PlanePositionSequence", "ImagePositionPatient"),
                   POSITION_TOL_MM))
        for keyword, value, tol in checks:
            expected = np.asarray([float(v) for v in src.get(keyword)], dtype=float)
            got = np.asarray([float(v) for v in value], dtype=float) if value is not None else None
            if got is None or got.shape != expected.shape or np.abs(got - expected).max() > tol * (
                    1.0 if keyword == "ImagePositionPatient" else max(1.0, float(np.abs(expected).max()))):
                raise SamriInputError(keyword, None if got is None else got.tolist(),
                                      f"frame {n} of SEG {seg.SeriesInstanceUID} is not on its source image {uid} "
                                      f"({keyword} {expected.tolist()})")
    return declared


def seg_to_label(seg, source_datasets: Sequence) -> tuple[np.ndarray, dict[str, int]]:
    """The ``(X, Y, Z)`` uint16 label volume of a SEG on its source series' grid, and its names.

    Args:
        seg: the SEG (pydicom Dataset, e.g. from WADO-RS).
        source_datasets: the instances of the series it references (pixel data not needed).

    Returns:
        ``(label, {segment name: value})``: value = segment number; where segments overlap the
        higher segment number wins (a warning is logged).

    Raises:
        SamriInputError: not a SEG, referencing another series, or frames that reference
            instances outside the source series or do not lie on them (`check_frame_geometry`).
    """
    import highdicom as hd

    from samri.dicomweb.series import series_geometry

    if str(seg.get("SOPClassUID", "")) != SEG_STORAGE:
        raise SamriInputError("SOPClassUID", str(seg.get("SOPClassUID", "")), "is not a DICOM SEG")
    geom = series_geometry(source_datasets, modality=None)
    source_uid = str(source_datasets[0].SeriesInstanceUID)
    ref = referenced_series_uid(seg)
    if ref != source_uid:
        raise SamriInputError("ReferencedSeriesSequence", ref, f"SEG {seg.SeriesInstanceUID} does not reference "
                              f"series {source_uid}")
    names = seg_segment_names(seg)
    declared = check_frame_geometry(seg, source_datasets)
    try:
        seg_obj = hd.seg.Segmentation.from_dataset(seg, copy=False)
        frames = seg_obj.get_pixels_by_source_instance(source_sop_instance_uids=list(geom.sop_uids),
                                                       combine_segments=False, dtype=np.uint8,
                                                       ignore_spatial_locations=not declared)
    except (ValueError, KeyError, AttributeError) as exc:
        raise SamriInputError("SEG", str(seg.get("SeriesInstanceUID")),
                              f"cannot be mapped onto series {source_uid} ({exc})") from exc
    # frames: (Z, rows, cols, segments) in the order of the segment numbers of the SEG
    numbers = sorted(int(item.SegmentNumber) for item in seg.SegmentSequence)
    label_zyx = np.zeros(frames.shape[:3], dtype=np.uint16)
    covered = np.zeros(frames.shape[:3], dtype=bool)
    overlap = 0
    for channel, number in enumerate(numbers):
        mask = frames[..., channel] > 0
        overlap += int(np.count_nonzero(mask & covered))
        label_zyx[mask] = number
        covered |= mask
    if overlap:
        logger.warning("SEG %s: %d voxels in several segments (the higher segment number kept)",
                       seg.SeriesInstanceUID, overlap)
    return np.ascontiguousarray(np.transpose(label_zyx, (2, 1, 0))), names
