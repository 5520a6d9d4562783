"""Debian's Orthanc with its DICOMweb plugin, run by the project as a loopback-only subprocess.

`running_orthanc` writes a configuration into the storage folder (HTTP on 127.0.0.1 only, no DICOM
listener, no authentication, no peers or modalities, so Orthanc never connects anywhere), starts
``Orthanc`` in its own process group, waits until both its REST API and its DICOMweb root answer,
and stops it on exit. The DICOM files and Orthanc's SQLite index live in ``<storage>/db``::

    with running_orthanc(Path("data/orthanc")) as orthanc:
        print(orthanc.dicomweb_root)   # http://127.0.0.1:8042/dicom-web

Binaries: ``$SAMRI_ORTHANC`` or ``Orthanc`` on PATH or ``/usr/sbin/Orthanc``; the plugin
``$SAMRI_ORTHANC_DICOMWEB_PLUGIN`` or Debian's ``/usr/share/orthanc/plugins/libOrthancDicomWeb.so``
(``apt-get install orthanc orthanc-dicomweb``, or ``make sysdeps-ohif``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from samri.processes import stop_process_group

logger = logging.getLogger(__name__)

ORTHANC_ENV = "SAMRI_ORTHANC"
PLUGIN_ENV = "SAMRI_ORTHANC_DICOMWEB_PLUGIN"
#: where Debian's packages put them
DEBIAN_BINARY = "/usr/sbin/Orthanc"
DEBIAN_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
PLUGIN_NAME = "libOrthancDicomWeb.so"
#: DICOMweb root path inside Orthanc (the plugin's ``DicomWeb.Root``)
DICOMWEB_PATH = "/dicom-web/"
INSTALL_HINT = "install Debian's packages: apt-get install orthanc orthanc-dicomweb (or `make sysdeps-ohif` as root)"


def find_orthanc() -> Path | None:
    """The Orthanc executable, or None."""
    env = os.environ.get(ORTHANC_ENV)
    candidates = [env] if env else [shutil.which("Orthanc"), DEBIAN_BINARY]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return Path(c)
    return None


def find_dicomweb_plugin() -> Path | None:
    """Orthanc's DICOMweb plugin (a shared library), or None."""
    env = os.environ.get(PLUGIN_ENV)
    candidates = [Path(env)] if env else [Path(d) / PLUGIN_NAME for d in DEBIAN_PLUGIN_DIRS]
    return next((c for c in candidates if c.is_file()), None)


def orthanc_unavailable_reason() -> str | None:
    """Why Orthanc cannot be run here (a sentence naming what is missing), or None when it can."""
    if find_orthanc() is None:
        where = f"${ORTHANC_ENV}={os.environ[ORTHANC_ENV]}" if os.environ.get(ORTHANC_ENV) else \
            f"'Orthanc' on PATH or {DEBIAN_BINARY}"
        return f"Orthanc not found ({where}): {INSTALL_HINT}"
    if find_dicomweb_plugin() is None:
        where = os.environ.get(PLUGIN_ENV) or " or ".join(str(Path(d) / PLUGIN_NAME) for d in DEBIAN_PLUGIN_DIRS)
        return f"Orthanc's DICOMweb plugin not found ({where}): {INSTALL_HINT}"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def orthanc_config(storage_dir: Path, *, http_port: int, plugin: Path, name: str = "SAMRI") -> dict[str, Any]:
    """Orthanc's configuration: loopback HTTP, no DICOM listener, DICOMweb at ``/dicom-web/``.

    Orthanc 1.10 (Debian 12) binds its HTTP server on all interfaces and has no bind-address option;
    ``RemoteAccessAllowed: false`` makes it refuse every request that does not come from the
    loopback interface. No ``DicomModalities``/``OrthancPeers`` and no Lua: it never connects out.
    """
    db = Path(storage_dir).resolve() / "db"
    return {
        "Name": name,
        "StorageDirectory": str(db),
        "IndexDirectory": str(db),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": int(http_port),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "WebDavEnabled": False,
        "DicomServerEnabled": False,
        "DicomModalities": {},
        "OrthancPeers": {},
        "HttpProxy": "",
        "ExecuteLuaEnabled": False,
        "LuaScripts": [],
        "SaveJobs": False,
        "OverwriteInstances": True,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 8,
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_PATH,
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


@dataclass
class OrthancProcess:
    """A running Orthanc.

    Attributes:
        url: ``http://127.0.0.1:PORT`` (REST API, no trailing slash).
        dicomweb_root: ``<url>/dicom-web`` (what ``monailabel --studies`` and dicomweb-client take).
        process: the Orthanc process (leader of its own process group).
        storage_dir: the project folder holding ``db/``, the config and the log.
        log_path: Orthanc's stdout + stderr.
    """

    url: str
    dicomweb_root: str
    process: subprocess.Popen
    storage_dir: Path
    log_path: Path

    @property
    def http_port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM Orthanc's process group (it flushes its index), SIGKILL after ``timeout_s``."""
        stop_process_group(self.process, f"Orthanc {self.url}", timeout_s)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status in (200, 204)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_orthanc(storage_dir: str | os.PathLike, *, http_port: int | None = None,
                  timeout_s: float = 60.0) -> OrthancProcess:
    """Write ``<storage_dir>/orthanc.json`` and start Orthanc on ``127.0.0.1:http_port``.

    Args:
        storage_dir: project folder for Orthanc's DICOM files and index (created if missing).
        http_port: HTTP port; None picks a free one.
        timeout_s: how long to wait for ``/system`` and the DICOMweb root to answer.

    Raises:
        RuntimeError: Orthanc or its plugin is missing, it exited (port taken, bad storage...), or
            it did not answer in time; the message carries the log's tail.
    """
    reason = orthanc_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    storage = Path(storage_dir).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    port = int(http_port) if http_port else free_port()
    config_path = storage / "orthanc.json"
    config_path.write_text(json.dumps(orthanc_config(storage, http_port=port, plugin=find_dicomweb_plugin()),
                                      indent=2))
    log_path = storage / "orthanc.log"
    cmd = [str(find_orthanc()), str(config_path)]
    logger.info("starting %s (log %s)", " ".join(cmd), log_path)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=storage, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    orthanc = OrthancProcess(url=url, dicomweb_root=url + DICOMWEB_PATH.rstrip("/"), process=process,
                             storage_dir=storage, log_path=log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not orthanc.alive():
            raise RuntimeError(f"Orthanc exited with status {process.returncode} "
                               f"(port {port} taken?):\n{orthanc.log_tail()}")
        if _answers(url + "/system") and _answers(orthanc.dicomweb_root + "/studies"):
            logger.info("Orthanc ready: DICOMweb root %s, storage %s", orthanc.dicomweb_root, storage / "db")
            return orthanc
        time.sleep(0.2)
    orthanc.stop()
    raise RuntimeError(f"Orthanc gave no answer on {url} within {timeout_s:.0f} s:\n{orthanc.log_tail()}")


@contextmanager
def running_orthanc(storage_dir: str | os.PathLike, *, http_port: int | None = None,
                    timeout_s: float = 60.0) -> Iterator[OrthancProcess]:
    """`start_orthanc` as a context manager that always stops it (the stored studies stay)."""
    orthanc = start_orthanc(storage_dir, http_port=http_port, timeout_s=timeout_s)
    try:
        yield orthanc
    finally:
        orthanc.stop()
