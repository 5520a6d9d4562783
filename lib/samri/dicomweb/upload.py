"""STOW-RS upload of whole series, and the QIDO/WADO look-ups the datastore and tests need.

An upload is all or nothing as far as the server allows: the series is validated before anything
is sent, sent in batches, and when any instance is refused (or a request fails) the instances
already stored are deleted again through Orthanc's REST API (the DICOMweb standard has no delete).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any, Sequence

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

#: instances per STOW-RS request (a 256x256 16-bit slice is 128 kB)
BATCH = 64


class DicomWebError(RuntimeError):
    """The DICOMweb server is unreachable or refused a request (not the user's input)."""


def dicomweb_client(dicomweb_root: str):
    """A `dicomweb_client.DICOMwebClient` for ``dicomweb_root`` (e.g. ``http://127.0.0.1:8042/dicom-web``)."""
    from dicomweb_client import DICOMwebClient

    return quick_retries(DICOMwebClient(url=dicomweb_root.rstrip("/")))


def quick_retries(client):
    """Two attempts 0.1 s apart instead of dicomweb-client's five over ~30 s: a local server that is
    down should be reported at once (HTTP 503), not after half a minute per request."""
    client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=100)
    return client


def orthanc_rest_root(dicomweb_root: str) -> str | None:
    """Orthanc's REST root for a ``.../dicom-web`` root, or None for other servers."""
    root = dicomweb_root.rstrip("/")
    return root[: -len("/dicom-web")] if root.endswith("/dicom-web") else None


def _orthanc_request(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 30) -> Any:
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = resp.read()
    return json.loads(data) if data else None


def delete_series(dicomweb_root: str, series_uid: str) -> bool:
    """Delete a series from Orthanc (REST ``/tools/lookup`` + ``DELETE /series/{id}``); False if absent."""
    rest = orthanc_rest_root(dicomweb_root)
    if rest is None:
        logger.error("cannot delete series %s: %s is not an Orthanc DICOMweb root", series_uid, dicomweb_root)
        return False
    found = _orthanc_request(f"{rest}/tools/lookup", "POST", series_uid.encode()) or []
    ids = [f["ID"] for f in found if f.get("Type") == "Series"]
    for oid in ids:
        _orthanc_request(f"{rest}/series/{oid}", "DELETE")
    logger.info("deleted series %s from Orthanc (%d)", series_uid, len(ids))
    return bool(ids)


def _failed(response) -> list[str]:
    """SOPInstanceUIDs in a STOW-RS response's FailedSOPSequence."""
    if response is None or "FailedSOPSequence" not in response:
        return []
    return [str(item.get("ReferencedSOPInstanceUID", "?")) for item in response.FailedSOPSequence]


def store_datasets(datasets: Sequence, dicomweb_root: str, *, series_uid: str) -> None:
    """STOW-RS ``datasets`` in batches; on any failure delete ``series_uid`` again and raise `DicomWebError`."""
    client = dicomweb_client(dicomweb_root)
    try:
        for start in range(0, len(datasets), BATCH):
            batch = list(datasets[start:start + BATCH])
            response = client.store_instances(batch)
            failed = _failed(response)
            if failed:
                raise DicomWebError(f"{dicomweb_root} refused {len(failed)} instance(s) of series {series_uid} "
                                    f"(first {failed[0]})")
    except Exception as exc:
        try:
            delete_series(dicomweb_root, series_uid)
        except Exception as cleanup:  # noqa: BLE001  report the original error, log the cleanup one
            logger.error("could not remove the partial series %s: %s", series_uid, cleanup)
        if isinstance(exc, DicomWebError):
            raise
        raise DicomWebError(f"uploading series {series_uid} to {dicomweb_root} failed: {exc}") from exc


def upload_series(datasets: Sequence, dicomweb_root: str, *, modality: str | None = "MR") -> str:
    """Validate one series (`samri.dicomweb.series.series_geometry`) and STOW-RS it.

    Args:
        datasets: the instances of one series.
        dicomweb_root: e.g. ``http://127.0.0.1:8042/dicom-web``.
        modality: required Modality (None: any).

    Returns:
        its SeriesInstanceUID (the MONAI Label image id).

    Raises:
        SamriInputError: the series is not one valid volume (nothing is sent).
        DicomWebError: the server is unreachable or refused instances (nothing stays stored).
    """
    from samri.dicomweb.series import series_geometry

    series_geometry(datasets, modality=modality)
    series_uid = str(datasets[0].SeriesInstanceUID)
    store_datasets(datasets, dicomweb_root, series_uid=series_uid)
    logger.info("uploaded series %s (%d instances) to %s", series_uid, len(datasets), dicomweb_root)
    return series_uid


def search_series(dicomweb_root: str, **filters: str) -> list[dict[str, Any]]:
    """QIDO-RS series search; each result as pydicom's JSON model (``{"0020000E": {...}}``)."""
    try:
        return list(dicomweb_client(dicomweb_root).search_for_series(search_filters=filters or None))
    except Exception as exc:
        raise DicomWebError(f"QIDO search on {dicomweb_root} failed: {exc}") from exc


def stored_instance_numbers(dicomweb_root: str, series_uid: str) -> dict[str, int]:
    """QIDO-RS: ``{SOPInstanceUID: InstanceNumber}`` of a series' instances as stored on the server."""
    try:
        items = dicomweb_client(dicomweb_root).search_for_instances(
            search_filters={"SeriesInstanceUID": series_uid}, fields=["InstanceNumber"])
    except Exception as exc:
        raise DicomWebError(f"QIDO search on {dicomweb_root} failed: {exc}") from exc
    out = {}
    for item in items:
        sop, number = item.get("00080018", {}).get("Value"), item.get("00200013", {}).get("Value")
        if sop and number:
            out[str(sop[0])] = int(number[0])
    return out


def study_of_series(dicomweb_root: str, series_uid: str) -> str:
    """StudyInstanceUID of a series.

    Raises:
        SamriInputError: no such series on the server (field ``image``).
        DicomWebError: the server is unreachable.
    """
    for item in search_series(dicomweb_root, SeriesInstanceUID=series_uid):
        if item.get("0020000E", {}).get("Value") == [series_uid]:
            return str(item["0020000D"]["Value"][0])
    raise SamriInputError("image", series_uid, f"no such series on {dicomweb_root}")


def retrieve_series(dicomweb_root: str, series_uid: str, study_uid: str | None = None) -> list:
    """WADO-RS: every instance of a series as pydicom Datasets (study looked up when not given)."""
    study_uid = study_uid or study_of_series(dicomweb_root, series_uid)
    try:
        return list(dicomweb_client(dicomweb_root).retrieve_series(study_uid, series_uid))
    except Exception as exc:
        raise DicomWebError(f"WADO retrieve of series {series_uid} from {dicomweb_root} failed: {exc}") from exc


def check_reachable(dicomweb_root: str, timeout: float = 5.0) -> None:
    """Raise `DicomWebError` naming the URL unless ``<root>/studies`` answers."""
    url = dicomweb_root.rstrip("/") + "/studies?limit=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status not in (200, 204):
                raise DicomWebError(f"DICOMweb server {dicomweb_root} answered HTTP {resp.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise DicomWebError(f"DICOMweb server {dicomweb_root} is unreachable ({exc})") from exc
