"""Datastores of the SAMRI app: `SamriDicomWebDatastore` for a DICOMweb ``--studies`` URL (OHIF), and
`local.SamriLocalDatastore` for a folder (MONAI Label's ``LocalDatastore`` with ids and tags confined to
the folder, every label checked against its image, and replaced labels kept in ``.samri/label-history``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

#: ``--conf`` key: local cache folder of the DICOMweb datastore
CACHE_CONF = "dicomweb_cache"


def dicomweb_cache_path(studies: str, conf: Mapping[str, str]) -> Path:
    """Cache folder: ``--conf dicomweb_cache``, else MONAI Label's ``MONAI_LABEL_DICOMWEB_CACHE_PATH``
    (``MONAI_LABEL_DATASTORE_CACHE_PATH``), else ``~/.cache/monailabel/dicom``; one subfolder per server URL."""
    from monailabel.config import settings

    root = (conf.get(CACHE_CONF) or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH
            or settings.MONAI_LABEL_DATASTORE_CACHE_PATH or "").strip()
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "monailabel" / "dicom"
    return base / ("samri-" + hashlib.md5(studies.encode()).hexdigest()[:16])


def init_dicomweb_datastore(studies: str, *, conf: Mapping[str, str]):
    """`SamriDicomWebDatastore` for ``studies`` (a DICOMweb root URL), with MONAI Label's user/password
    settings if given. Nothing is downloaded (MONAI Label's dcmqi download is skipped)."""
    from monailabel.config import settings

    from .dicomweb import SamriDicomWebDatastore

    client = None
    user = settings.MONAI_LABEL_DICOMWEB_USERNAME or settings.MONAI_LABEL_DATASTORE_USERNAME
    password = settings.MONAI_LABEL_DICOMWEB_PASSWORD or settings.MONAI_LABEL_DATASTORE_PASSWORD
    if user and password:
        from dicomweb_client.session_utils import create_session_from_user_pass
        from monailabel.datastore.dicom import DICOMwebClientX

        client = DICOMwebClientX(url=studies, session=create_session_from_user_pass(user, password))
    search = dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER or {})
    if search.get("Modality") not in (None, "MR"):
        logger.info("DICOMweb search filter Modality=%s replaced by MR (SAMRI serves MR series)", search["Modality"])
    return SamriDicomWebDatastore(studies, cache_path=dicomweb_cache_path(studies, conf), search_filter=search,
                                  client=client)


__all__ = ["CACHE_CONF", "dicomweb_cache_path", "init_dicomweb_datastore"]
