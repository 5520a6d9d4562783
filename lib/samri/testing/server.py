"""Start and stop a real ``monailabel start_server`` in a subprocess (tests and ``samri bench``).

Standard library (and ``requests``) only, so it imports without MONAI Label or torch::

    with running_server("data/studies") as server:      # precompute off, throw-away cache
        print(http_click_benchmark(server, "colin27_t1", params, 20))

The server runs ``<python> -m monailabel.main start_server`` (what the ``monailabel`` script
execs) in its own process group on a free loopback port; `ServerProcess.stop` ends that group.
Its output goes to a log file, whose tail is put into every error raised here.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from samri.bench.http import http_click_benchmark  # noqa: F401  (one import for `samri bench`)
from samri.processes import stop_process_group

logger = logging.getLogger(__name__)

#: Why servers here run with ``OMP_WAIT_POLICY=PASSIVE`` (unless the caller's env says otherwise):
#: torch's OpenMP threads spin while waiting; when anything else wants the same cores (another
#: process, a background encode) the ~60 ms decoder call then takes ~1 s. PASSIVE keeps it at
#: ~60-110 ms and costs nothing on an idle machine (measured on the 2-core box).
PASSIVE_OMP_NOTE = "OMP_WAIT_POLICY=PASSIVE"

#: the app's folder (``apps/samri`` of this checkout: the library is installed editable).
APP_DIR = Path(__file__).resolve().parents[3] / "apps" / "samri"
#: folders ``start_server`` creates in the app dir, left out of `copy_app`.
RUNTIME_DIRS = ("logs", "model", "bin", "__pycache__")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def copy_app(app_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the app's code (not its logs, models or caches) to ``dest``; returns ``dest``."""
    dest = Path(dest)
    shutil.copytree(app_dir, dest, ignore=shutil.ignore_patterns(*RUNTIME_DIRS, "*.pyc"))
    return dest


@dataclass
class ServerProcess:
    """A running server.

    Attributes:
        base_url: ``http://host:port`` (no trailing slash).
        process: the ``start_server`` process (leader of its own process group).
        log_path: file receiving its stdout and stderr.
    """

    base_url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left after ``timeout_s``."""
        stop_process_group(self.process, f"server {self.base_url}", timeout_s)


def studies_arg(studies: str | os.PathLike) -> str:
    """``--studies`` value: a DICOMweb URL as given, a folder as an absolute path."""
    text = str(studies)
    return text.rstrip("/") if text.startswith(("http://", "https://")) else str(Path(studies).resolve())


def _info_ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/info/", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_server(*, app_dir: str | os.PathLike, studies: str | os.PathLike,
                 conf: Mapping[str, str] | None = None, host: str = "127.0.0.1", port: int | None = None,
                 python: str | None = None, timeout_s: float = 180.0, log_path: str | os.PathLike | None = None,
                 env: Mapping[str, str] | None = None) -> ServerProcess:
    """Start ``monailabel start_server`` and wait until ``GET /info/`` answers 200.

    Args:
        app_dir: the app folder (``apps/samri`` or a `copy_app` copy).
        studies: the datastore folder, or a DICOMweb root URL (e.g. Orthanc's ``.../dicom-web``).
        conf: ``--conf`` pairs (values as strings). ``backend_cache_dir`` defaults to the user's export
            cache (`samri.model.export_cache.default_export_dir`): test and bench servers share one
            export per weights instead of exporting again in every temporary app copy.
        host, port: where to listen; ``port=None`` picks a free one.
        python: interpreter with monailabel installed (default: this one).
        timeout_s: how long to wait for ``/info/``.
        log_path: server output file (default ``<app_dir>/logs/test_server.log``, overwritten).
        env: extra environment variables.

    Raises:
        RuntimeError: the server exited or did not answer in time (with the log's tail).
    """
    port = port or free_port(host)
    app_dir = Path(app_dir).resolve()
    log_path = Path(log_path) if log_path else app_dir / "logs" / "test_server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [python or sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir),
           "--studies", studies_arg(studies), "--host", host, "--port", str(port)]
    from samri.model.export_cache import default_export_dir

    for key, value in {"backend_cache_dir": str(default_export_dir()), **(conf or {})}.items():
        cmd += ["--conf", str(key), str(value)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see PASSIVE_OMP_NOTE
    logger.info("starting %s", " ".join(cmd))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                   start_new_session=True)
    server = ServerProcess(base_url=f"http://{host}:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        if _info_ready(server.base_url):
            logger.info("server ready at %s", server.base_url)
            return server
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"server gave no /info/ within {timeout_s:.0f} s:\n{server.log_tail()}")


@contextmanager
def running_server(studies: str | os.PathLike, *, app_dir: str | os.PathLike | None = None,
                   conf: Mapping[str, str] | None = None, **kwargs) -> Iterator[ServerProcess]:
    """`start_server` as a context manager that always stops the server.

    Args:
        studies: the datastore folder.
        app_dir: default: this app (``apps/samri``).
        conf: ``--conf`` pairs; None means a measurement server: ``precompute false`` and an embedding
            cache in a temporary folder removed afterwards (so first clicks really encode).
        kwargs: passed to `start_server` (``host``, ``port``, ``log_path``, ``env``, ...).
    """
    scratch = None
    if conf is None:
        scratch = tempfile.mkdtemp(prefix="samri_server_cache_")
        conf = {"precompute": "false", "cache_dir": scratch}
    try:
        server = start_server(app_dir=app_dir or APP_DIR, studies=studies, conf=conf, **kwargs)
        try:
            yield server
        finally:
            server.stop()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
