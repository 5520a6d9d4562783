"""On-disk cache of exported networks (OpenVINO IR), keyed, written atomically and verified on use.

One export is one folder ``<root>/<ExportKey.folder_name()>/`` holding the runtime's files
(``model.xml`` + ``model.bin``) and ``manifest.json``, written last, which records the key and each
file's size and BLAKE2b digest. A folder is served only when its manifest matches the key and every
file matches its digest; anything else (a crash mid-export, a truncated or flipped byte, another
runtime version, another export format) is moved aside and rebuilt, never served.

A new export is built in a hidden staging folder next to the target and renamed into place in one
``os.replace``, so a concurrent reader sees no folder or a complete one. Two processes exporting the
same key at once both succeed: the second finds the first's folder and serves it after verifying.

The key has no precision: an OpenVINO IR holds fp32 weights and the precision (fp32 or bf16) is
a compile option, so one export serves both (keying by precision would repeat a ~30 s export for
the same files). What a precision changes -- the numbers -- is keyed where it matters: in the
embedding cache (`samri.model.builders.SamModel.cache_key`).

Nothing heavy is imported here (no torch, no openvino).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from samri.io import write_json

logger = logging.getLogger(__name__)

#: bump when the exported graphs change (wrapper signature, inputs, outputs): old folders are then stale
EXPORT_FORMAT = 2
MANIFEST = "manifest.json"
#: exports kept per part and backend (newest first); older ones (other weights, other versions) are removed
KEEP_PER_PART = 4
#: where exports go when no folder is configured (``$SAMRI_BACKEND_CACHE``, else the user's cache)
CACHE_ENV = "SAMRI_BACKEND_CACHE"

_locks_guard = threading.Lock()
_locks: dict[Path, threading.Lock] = {}


def default_export_dir() -> Path:
    """``$SAMRI_BACKEND_CACHE``, else ``$XDG_CACHE_HOME/samri/backends`` (``~/.cache/samri/backends``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "samri" / "backends"


@dataclass(frozen=True)
class ExportKey:
    """Identity of one exported network.

    Attributes:
        part: ``"encoder"`` or ``"decoder"``.
        fingerprint: hash of the weights (and input geometry) the export was made from.
        backend: the runtime (``"openvino"``).
        runtime_version: the runtime's full version string.
        export_format: `EXPORT_FORMAT` of the code that wrote it.
    """

    part: str
    fingerprint: str
    backend: str
    runtime_version: str
    export_format: int = EXPORT_FORMAT

    def folder_name(self) -> str:
        """``encoder-<fingerprint>-openvino-ov2026.4.1-<hash of the full version>-f1``."""
        short = re.sub(r"[^0-9A-Za-z.]+", "_", self.runtime_version.split("-")[0])[:20]
        digest = hashlib.blake2b(self.runtime_version.encode(), digest_size=3).hexdigest()
        return (f"{self.part}-{self.fingerprint}-{self.backend}-ov{short}-{digest}"
                f"-f{self.export_format}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_digest(path: Path) -> str:
    """BLAKE2b (16 bytes) of a file's content, read in 1 MiB blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_export(folder: Path, key: ExportKey) -> str | None:
    """Why ``folder`` may not be served for ``key`` (None: it may).

    Checks the manifest's key and every listed file's size and digest.
    """
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        return "missing"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc.__class__.__name__})"
    if not isinstance(manifest, dict) or manifest.get("key") != key.to_dict():
        return "manifest of another key (stale)"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    for name, entry in files.items():
        path = folder / name
        try:
            if path.stat().st_size != entry["size"]:
                return f"{name}: size differs from the manifest"
            if file_digest(path) != entry["blake2b"]:
                return f"{name}: content differs from the manifest"
        except (OSError, KeyError, TypeError) as exc:
            return f"{name}: {exc.__class__.__name__}"
    return None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a verified export folder."""
    return json.loads((folder / MANIFEST).read_text())


def _lock_for(folder: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(folder, threading.Lock())


def discard(folder: Path) -> None:
    """Move ``folder`` aside (one rename), then delete it; a reader never sees half a folder."""
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, trash)
    except OSError as exc:
        logger.warning("could not move %s aside (%s)", folder, exc)
        return
    shutil.rmtree(trash, ignore_errors=True)


def export_folder(root: str | os.PathLike, key: ExportKey, build: Callable[[Path], dict[str, Any]], *,
                  lineage: str = "") -> Path:
    """The verified export folder of ``key`` under ``root``, built with ``build`` when needed.

    Args:
        root: the export cache folder (created if needed).
        key: what the export is of.
        build: ``build(staging_folder) -> facts``: writes the runtime's files into the (empty)
            staging folder and returns JSON-friendly facts for the manifest (e.g. the check
            against eager PyTorch). It may raise; nothing is then published.
        lineage: the registry model the weights belong to (written to the manifest): pruning after
            this export removes only older exports of the same lineage (`prune`).

    Returns:
        The folder, whose files match its manifest.

    Raises:
        whatever ``build`` raises; OSError when the folder cannot be written.
    """
    root = Path(root)
    folder = root / key.folder_name()
    with _lock_for(folder):
        problem = check_export(folder, key)
        if problem is None:
            return folder
        if problem != "missing":
            logger.warning("export %s cannot be served (%s): rebuilding it", folder, problem)
            discard(folder)
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".staging-{key.folder_name()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            start = time.perf_counter()
            facts = build(staging)
            files = {p.name: {"size": p.stat().st_size, "blake2b": file_digest(p)}
                     for p in sorted(staging.iterdir()) if p.is_file() and not p.name.startswith(".")}
            write_json(staging / MANIFEST, {"key": key.to_dict(), "lineage": lineage, "files": files,
                                            "export_s": round(time.perf_counter() - start, 2),
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **facts})
            try:
                os.replace(staging, folder)
            except OSError:  # another process published the same key meanwhile: serve theirs if sound
                problem = check_export(folder, key)
                if problem is not None:
                    raise
                logger.info("export %s was published by another process meanwhile", folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        logger.info("exported %s in %.1f s", folder, time.perf_counter() - start)
        prune(root, key, keep=KEEP_PER_PART, lineage=lineage)
        return folder


def _lineage_of(folder: Path) -> str | None:
    """The lineage in ``folder``'s manifest; None for a folder written before lineages (or unreadable)."""
    try:
        value = read_manifest(folder).get("lineage")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) and value else None


def prune(root: Path, key: ExportKey, keep: int = KEEP_PER_PART, lineage: str = "") -> list[Path]:
    """Remove all but the ``keep`` newest export folders of ``key``'s part, backend and lineage
    (``key``'s own stays).

    A decoder the trainer publishes gets its own export, so without this the folder would grow by
    one export per published version. Only the same lineage (registry model) competes, so exports of
    another model (a SAM ViT benchmark with random weights, say) never push out the served model's.
    A folder without a lineage (an older manifest) competes with every lineage. Returns the removed folders.
    """
    prefix = f"{key.part}-"
    mine = key.folder_name()
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix)
               and f"-{key.backend}-" in p.name and p.name != mine
               and _lineage_of(p) in (None, lineage or None)]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = folders[max(keep - 1, 0):]
    for old in removed:
        logger.info("removing old export %s", old)
        discard(old)
    return removed
