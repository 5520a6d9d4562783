"""SAMRI's DICOMweb datastore: MR series from a DICOMweb server (Orthanc), final labels as DICOM SEG.

MONAI Label 0.8.5's own ``DICOMWebDatastore`` downloads dcmqi binaries from the internet when the
app starts (``MONAILabelApp._init_dicomweb_datastore``), filters studies to CT, converts with
SimpleITK without checking the geometry, and writes SEG through dcmqi's ``itkimage2segimage``.
This subclass keeps its interface (so the server, OHIF's proxy and the trainer use it unchanged)
and replaces the data paths with `samri.dicomweb`, which makes no request except to the
configured DICOMweb root:

* image id = SeriesInstanceUID; ``list_images`` = QIDO series search with ``Modality=MR``;
* ``get_image_uri``: WADO-RS retrieve, `samri.dicomweb.series.series_to_volume` (MR only, one
  regular volume, else HTTP 422 naming the field), NIfTI cached as ``images/<uid>.nii.gz``;
* ``save_label``: any tag is checked as a name and the label against the image (`labelcheck`:
  grid, integer values, ``label_info`` naming every value); with tag ``final`` it becomes a DICOM SEG
  (`samri.dicomweb.seg.label_to_seg`, segment names from ``label_info``) stored by STOW-RS, and
  only then in the local cache; nothing is kept when either step fails;
* ``get_labeled_images`` / ``get_label_uri``: every SEG on the server whose referenced series is
  an image here (OHIF's own "store segmentation" included), read back on the image grid
  (`samri.dicomweb.seg.seg_to_label`), names in the label info for the trainer.

Errors reach HTTP clients as ``fastapi.HTTPException``: 422 bad series/label, 404 unknown
series, 503 DICOMweb server unreachable (see `dicomweb_errors`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from samri.dicomweb.upload import DicomWebError, quick_retries
from samri.errors import SamriInputError
from samri.io import move_file
from samri.labels import label_info_entries, label_names_from_info

from .segindex import SegIndex

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
#: seconds a QIDO listing of MR series is reused
LIST_TTL_S = 10.0


class SeriesNotFound(SamriInputError):
    """No series with that SeriesInstanceUID on the DICOMweb server (HTTP 404)."""


@contextmanager
def dicomweb_errors(action: str) -> Iterator[None]:
    """Log and re-raise datastore errors as HTTP errors: 404 unknown series, 422 bad input, 503 server."""
    try:
        yield
    except HTTPException:
        raise
    except SeriesNotFound as exc:
        logger.warning("%s: %s", action, exc)
        raise HTTPException(status_code=404, detail=f"{action}: {exc}") from exc
    except SamriInputError as exc:
        logger.warning("%s: rejected: %s", action, exc)
        raise HTTPException(status_code=422, detail=f"{action}: {exc}") from exc
    except DicomWebError as exc:
        logger.error("%s: %s", action, exc)
        raise HTTPException(status_code=503, detail=f"{action}: {exc}") from exc


class SamriDicomWebDatastore(DICOMWebDatastore):
    """MR series of a DICOMweb server as MONAI Label images, DICOM SEG as ``final`` labels.

    Args:
        dicomweb_root: e.g. ``http://127.0.0.1:8042/dicom-web``.
        cache_path: local cache root (NIfTI of images and labels, ``datastore_v2.json``).
        search_filter: QIDO filter for images; ``Modality`` is always ``MR``.
        client: a `dicomweb_client.DICOMwebClient` (default: MONAI Label's ``DICOMwebClientX``).
    """

    def __init__(self, dicomweb_root: str, *, cache_path: str | os.PathLike,
                 search_filter: dict[str, Any] | None = None, client=None) -> None:
        from monailabel.datastore.dicom import DICOMwebClientX

        self.dicomweb_root = dicomweb_root.rstrip("/")
        self._client = quick_retries(client or DICOMwebClientX(url=self.dicomweb_root))
        self._search_filter = {**(search_filter or {}), "Modality": "MR"}
        self._fetch_by_frame = False
        self._convert_to_nifti = True
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._listing: tuple[float, list[dict[str, Any]]] | None = None
        self.segs = SegIndex(self.dicomweb_root, self._client)
        path = Path(cache_path)
        self._incoming = path / ".incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)
        logger.info("SAMRI DICOMweb datastore: %s (filter %s), cache %s", self.dicomweb_root, self._search_filter, path)
        # LocalDatastore without its file watcher: this class registers every file it writes
        LocalDatastore.__init__(self, datastore_path=str(path), auto_reload=False)

    # --- helpers ----------------------------------------------------------------------------------
    def _lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def _series_listing(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self._listing is None or now - self._listing[0] > LIST_TTL_S:
            try:
                found = list(self._client.search_for_series(search_filters=self._search_filter))
            except Exception as exc:
                raise DicomWebError(f"DICOMweb server {self.dicomweb_root} unreachable or failing: {exc}") from exc
            self._listing = (now, found)
        return self._listing[1]

    def _study_of(self, series_uid: str) -> str:
        for item in self._series_listing():
            if item.get("0020000E", {}).get("Value") == [series_uid]:
                return str(item["0020000D"]["Value"][0])
        from samri.dicomweb.upload import study_of_series

        try:
            return study_of_series(self.dicomweb_root, series_uid)
        except SamriInputError as exc:
            raise SeriesNotFound("image", series_uid, f"no such series on {self.dicomweb_root}") from exc

    def _write_nifti(self, final: Path, array, affine) -> None:
        """Write through ``.incoming/`` and rename: a crash never leaves a partial file where it is read."""
        from samri.volume import save_label

        move_file(save_label(self._incoming / final.name, array, affine), final)

    def _register(self, image_id: str, name: str, info: dict[str, Any], tag: str | None = None) -> None:
        ext = ".nii.gz"
        with FileLock(self._lock_file):
            info = {**info, "ts": int(time.time()), "name": name}
            if tag is None:
                obj = self._datastore.objects.get(image_id)
                labels = obj.labels if obj else {}
                self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext), labels=labels)
            else:
                self._datastore.objects[image_id].labels[tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)

    # --- images -----------------------------------------------------------------------------------
    def list_images(self) -> list[str]:
        with dicomweb_errors("list images"):
            return [str(item["0020000E"]["Value"][0]) for item in self._series_listing()]

    def get_image_uri(self, image_id: str) -> str:
        """NIfTI path of series ``image_id`` (retrieved, validated and cached on first use)."""
        with dicomweb_errors(f"image {image_id}"):
            path = Path(self._datastore.image_path()) / f"{image_id}.nii.gz"
            with self._lock(image_id):
                if path.is_file() and image_id in self._datastore.objects:
                    return str(path)
                from samri.dicomweb.series import series_to_volume
                from samri.dicomweb.upload import retrieve_series

                study = self._study_of(image_id)
                start = time.perf_counter()
                datasets = retrieve_series(self.dicomweb_root, image_id, study)
                volume = series_to_volume(datasets)
                self._write_nifti(path, volume.array, volume.affine)
                first = datasets[0]
                info = {"SeriesInstanceUID": image_id, "StudyInstanceUID": study,
                        "PatientID": str(first.get("PatientID", "")), "Modality": str(first.get("Modality", "")),
                        "SeriesDescription": str(first.get("SeriesDescription", "")),
                        "shape": list(volume.array.shape)}
                self._register(image_id, path.name, info)
                logger.info("image %s: %s cached as %s in %.1f s", image_id, volume.array.shape, path,
                            time.perf_counter() - start)
                return str(path)

    # --- labels -----------------------------------------------------------------------------------
    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        if label_tag not in (None, FINAL):
            return LocalDatastore.get_labeled_images(self, label_tag, labels)
        with dicomweb_errors("labelled images"):
            images = set(self.list_images())
            latest = self.segs.latest_by_image()
            for uid, ref in latest.items():
                if uid not in images:
                    logger.warning("SEG %s ignored: it references series %s, which is not an MR series on %s",
                                   ref.seg_uid, uid, self.dicomweb_root)
            return sorted(uid for uid in latest if uid in images)

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labelled = set(self.get_labeled_images(label_tag, labels))
        return [uid for uid in self.list_images() if uid not in labelled]

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        if tag == FINAL:
            with dicomweb_errors(f"label of {image_id}"):
                return image_id if image_id in self.segs.latest_by_image() else ""
        return LocalDatastore.get_label_by_image_id(self, image_id, tag)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """NIfTI path of the newest SEG of image ``image_id or label_id``, on the image's grid."""
        if label_tag != FINAL:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        image_id = image_id or label_id
        with dicomweb_errors(f"label of {image_id}"):
            ref = self.segs.latest_by_image().get(image_id)
            if ref is None:
                return ""
            image_path = self.get_image_uri(image_id)
            path = Path(self._datastore.label_path(FINAL)) / f"{image_id}.nii.gz"
            with self._lock(f"label:{image_id}"):
                obj = self._datastore.objects.get(image_id)
                cached = obj.labels.get(FINAL) if obj else None
                if path.is_file() and cached and cached.info.get("SeriesInstanceUID") == ref.seg_uid:
                    return str(path)
                label, names = self.segs.read_label(ref, image_id, self._study_of(image_id))
                import nibabel as nib

                affine = nib.load(image_path).affine
                self._write_nifti(path, label, affine)
                info = {"SeriesInstanceUID": ref.seg_uid, "StudyInstanceUID": ref.study_uid,
                        "label_info": label_info_entries(names)}
                self._register(image_id, path.name, info, FINAL)
                logger.info("label of %s from SEG %s: %d segments", image_id, ref.seg_uid, len(names))
                return str(path)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        if label_tag == FINAL:
            self.get_label_uri(label_id, label_tag)
        return LocalDatastore.get_label_info(self, label_id, label_tag)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:
        """Store a label; ``final`` goes to the DICOMweb server as SEG first (names from ``label_info``).

        Any tag: a safe name, and the label checked against the image (`labelcheck.check_label_file`).
        """
        from .labelcheck import check_label_file
        from .names import check_name

        with dicomweb_errors(f"save label of {image_id}"):
            check_name("tag", label_tag)
            image_path = self.get_image_uri(image_id)
            label_info = dict(label_info or {})
            converted = ""
            if "".join(Path(label_filename).suffixes) == ".bin":  # OHIF's raw uint8 upload
                from monailabel.datastore.utils.convert import binary_to_image

                label_filename = converted = binary_to_image(image_path, label_filename)
            try:
                check_label_file(label_filename, image_path, label_info)
                if label_tag != FINAL:
                    return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
                return self._save_final(image_id, image_path, label_filename, label_info)
            finally:
                if converted:
                    Path(converted).unlink(missing_ok=True)

    def _save_final(self, image_id: str, image_path: str, label_filename: str, label_info: dict[str, Any]) -> str:
        from samri.volume import load_image

        from .segindex import compact_values, label_on_image_grid

        label = label_on_image_grid(load_image(label_filename, "label"), load_image(image_path, "image"))
        names = {v: n for n, v in (label_names_from_info(label_info) or {}).items()}
        study = self._study_of(image_id)
        seg_uid, seg_names = self.segs.store_label(label, image_id, study, names=names,
                                                    creator=str(label_info.get("user", "") or ""))
        path = Path(self._datastore.label_path(FINAL)) / f"{image_id}.nii.gz"
        relabelled = compact_values(label)  # the values a read-back of the SEG gives (segment numbers)
        import nibabel as nib

        self._write_nifti(path, relabelled, nib.load(image_path).affine)
        info = {k: v for k, v in label_info.items() if k != "label_info"}
        info.update({"SeriesInstanceUID": seg_uid, "StudyInstanceUID": study,
                     "label_info": label_info_entries(seg_names)})
        self._register(image_id, path.name, info, FINAL)
        logger.info("final label of %s saved as SEG %s (%s)", image_id, seg_uid, ", ".join(seg_names))
        return image_id

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """``[{"image": nifti, "label": nifti}]`` of every image with a SEG (downloaded as needed)."""
        out = []
        for image_id in self.get_labeled_images():
            label = self.get_label_uri(image_id, FINAL)
            if label:
                out.append({"image": self.get_image_uri(image_id), "label": label})
        return out
