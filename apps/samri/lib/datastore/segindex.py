"""Which DICOM SEG on the server is the ``final`` label of which MR series; reading and storing them.

A SEG belongs to the image series its ReferencedSeriesSequence names (read once per SEG from its
WADO-RS metadata, then remembered: instances do not change). When an image has several SEGs the
newest (SeriesDate + SeriesTime, then UID) is its label; older ones stay on the server as history.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from samri.dicomweb.upload import DicomWebError
from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

#: seconds a QIDO listing of SEG series is reused
SEG_TTL_S = 5.0


@dataclass(frozen=True)
class SegRef:
    """One SEG series on the server.

    Attributes:
        seg_uid, study_uid: the SEG's SeriesInstanceUID and StudyInstanceUID.
        image_uid: the series it references (None: no ReferencedSeriesSequence).
        when: ``SeriesDate + SeriesTime`` (for picking the newest).
    """

    seg_uid: str
    study_uid: str
    image_uid: str | None
    when: str


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def headers_from_metadata(metadata: list[dict[str, Any]]) -> list:
    """pydicom Datasets from WADO-RS metadata (bulk data such as PixelData left empty)."""
    from pydicom.dataset import Dataset

    return [Dataset.from_json(m, bulk_data_uri_handler=lambda *args: b"") for m in metadata]


def label_on_image_grid(label, image) -> np.ndarray:
    """The ``(X, Y, Z)`` array of ``label`` (an ImageVolume) after checking it lies on ``image``'s grid.

    Raises:
        SamriInputError: another shape, or an affine more than 1e-3 mm away from the image's.
    """
    arr = np.asarray(label.array)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.shape != tuple(image.array.shape[:3]):
        raise SamriInputError("label", f"shape {arr.shape}", f"is not on the image grid {tuple(image.array.shape)}")
    if not np.allclose(label.affine, image.affine, atol=1e-3):
        raise SamriInputError("label", f"affine {np.round(label.affine, 4).tolist()}",
                              f"is not on the image grid (affine {np.round(image.affine, 4).tolist()})")
    return arr


def compact_values(label: np.ndarray) -> np.ndarray:
    """Label values mapped to ``1..N`` in increasing order (what `label_to_seg` numbers segments)."""
    values = np.unique(label)
    lut = np.zeros(int(values.max()) + 1, dtype=np.uint16)
    for number, value in enumerate(v for v in values if v != 0):
        lut[int(value)] = number + 1
    return lut[label.astype(np.int64)]


class SegIndex:
    """The SEG series of a DICOMweb server, indexed by the image series they reference.

    Args:
        dicomweb_root: the server (for STOW with rollback).
        client: a `dicomweb_client.DICOMwebClient` on it.
    """

    def __init__(self, dicomweb_root: str, client) -> None:
        self.dicomweb_root = dicomweb_root
        self.client = client
        self._refs: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, SegRef]] | None = None

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def _referenced(self, study_uid: str, seg_uid: str) -> str | None:
        if seg_uid not in self._refs:
            from samri.dicomweb.seg import referenced_series_uid

            metadata = self.client.retrieve_series_metadata(study_uid, seg_uid)
            self._refs[seg_uid] = referenced_series_uid(headers_from_metadata(metadata[:1])[0]) if metadata else None
        return self._refs[seg_uid]

    def latest_by_image(self) -> dict[str, SegRef]:
        """``{image series uid: newest SegRef}`` (QIDO re-run after `SEG_TTL_S` seconds)."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < SEG_TTL_S:
                return self._cached[1]
            try:
                found = self.client.search_for_series(search_filters={"Modality": "SEG"},
                                                      fields=["SeriesDate", "SeriesTime"])
                latest: dict[str, SegRef] = {}
                for item in found:
                    seg_uid, study_uid = _value(item, "0020000E"), _value(item, "0020000D")
                    image_uid = self._referenced(study_uid, seg_uid)
                    if image_uid is None:
                        logger.warning("SEG %s ignored: it has no ReferencedSeriesSequence", seg_uid)
                        continue
                    ref = SegRef(seg_uid, study_uid, image_uid, _value(item, "00080021") + _value(item, "00080031"))
                    old = latest.get(image_uid)
                    if old is None or (ref.when, ref.seg_uid) > (old.when, old.seg_uid):
                        latest[image_uid] = ref
            except Exception as exc:
                raise DicomWebError(f"listing SEG series on {self.dicomweb_root} failed: {exc}") from exc
            self._cached = (time.monotonic(), latest)
            return latest

    def source_headers(self, image_uid: str, study_uid: str) -> list:
        try:
            return headers_from_metadata(self.client.retrieve_series_metadata(study_uid, image_uid))
        except Exception as exc:
            raise DicomWebError(f"metadata of series {image_uid} from {self.dicomweb_root} failed: {exc}") from exc

    def read_label(self, ref: SegRef, image_uid: str, image_study: str) -> tuple[np.ndarray, dict[str, int]]:
        """``(label (X, Y, Z) on the image grid, {segment name: value})`` of a SEG."""
        from samri.dicomweb.seg import seg_to_label

        try:
            instances = list(self.client.retrieve_series(ref.study_uid, ref.seg_uid))
        except Exception as exc:
            raise DicomWebError(f"retrieving SEG {ref.seg_uid} from {self.dicomweb_root} failed: {exc}") from exc
        if len(instances) != 1:
            raise SamriInputError("SEG", ref.seg_uid, f"has {len(instances)} instances, expected 1")
        return seg_to_label(instances[0], self.source_headers(image_uid, image_study))

    def store_label(self, label: np.ndarray, image_uid: str, study_uid: str, *, names: Mapping[int, str],
                    creator: str = "") -> tuple[str, dict[str, int]]:
        """Write ``label`` (on the image grid) as a SEG, STOW it (all or nothing); ``(seg uid, names)``."""
        import samri
        from samri.dicomweb.seg import label_to_seg
        from samri.dicomweb.upload import store_datasets

        seg, seg_names = label_to_seg(label, self.source_headers(image_uid, study_uid), names=names,
                                      series_description="SAMRI final label", content_creator=creator or None,
                                      algorithm_version=samri.__version__)
        now = _dt.datetime.now()
        seg.SeriesDate, seg.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
        store_datasets([seg], self.dicomweb_root, series_uid=str(seg.SeriesInstanceUID))
        self._refs[str(seg.SeriesInstanceUID)] = image_uid
        self.invalidate()
        return str(seg.SeriesInstanceUID), seg_names
