"""samri.dicomweb.orthanc against a real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``, started by the
project's code): loopback only, no peers."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from samri.dicomweb.orthanc import orthanc_unavailable_reason

REASON = orthanc_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"needs Orthanc: {REASON}")


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def test_orthanc_is_loopback_only_and_has_no_peers(orthanc):
    config = json.loads((orthanc.storage_dir / "orthanc.json").read_text())
    assert config["RemoteAccessAllowed"] is False and config["DicomServerEnabled"] is False
    assert config["DicomModalities"] == {} and config["OrthancPeers"] == {}
    assert Path(config["StorageDirectory"]).is_relative_to(orthanc.storage_dir)
    assert _get_json(orthanc.url + "/system")["Name"] == "SAMRI"
    assert orthanc.dicomweb_root == orthanc.url + "/dicom-web"
