"""Check that a server makes no outbound connection: an audit hook in every Python subprocess.

    env = audit_env(tmp / "net.log")               # pass to the server's subprocess
    ...                                            # run everything
    assert outbound_attempts(tmp / "net.log") == []
    assert loopback_connects(tmp / "net.log") > 0   # the hook was active

The hook (``audit_site/sitecustomize.py``) records every ``socket.connect`` and host name lookup to
a non-loopback target, from the server and any Python process it starts (train/scoring jobs
inherit the environment). Orthanc (C++) is covered by its configuration instead: no peers, no
modalities, no DICOM listener, no Lua (`samri.dicomweb.orthanc.orthanc_config`).
"""

from __future__ import annotations

import os
from pathlib import Path

SITE_DIR = Path(__file__).resolve().parent / "audit_site"
ENV_VAR = "SAMRI_NET_AUDIT"


def audit_env(record: str | os.PathLike, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment additions that install the audit hook, recording to ``record``."""
    base = dict(os.environ if base is None else base)
    path = str(SITE_DIR) + (os.pathsep + base["PYTHONPATH"] if base.get("PYTHONPATH") else "")
    return {"PYTHONPATH": path, ENV_VAR: str(Path(record).resolve())}


def outbound_attempts(record: str | os.PathLike) -> list[str]:
    """Recorded non-loopback attempts (``pid<TAB>event<TAB>host:port`` lines)."""
    p = Path(record)
    return [line for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def loopback_connects(record: str | os.PathLike) -> int:
    """How many loopback connects the hook saw (proof that it was installed)."""
    p = Path(str(record) + ".loopback")
    if not p.is_file():
        return 0
    with p.open() as f:
        return sum(1 for _ in f)
