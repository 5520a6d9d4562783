"""A bounded cache of windowed volumes, so a click does not re-read and re-window its NIfTI.

Key: the file's `samri.io.FileSignature` (real path, size, mtime, inode); a rewritten file is read again.
One lock per key makes concurrent first requests (or a request and the precompute worker) read a
file once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from cachetools import LRUCache

from samri.errors import SamriInputError
from samri.io import FileSignature, file_signature
from samri.volume import PreparedVolume, load_image, prepare_volume

logger = logging.getLogger(__name__)

VolumeKey = FileSignature


def file_key(path: str | os.PathLike, field_name: str = "image") -> VolumeKey:
    """`samri.io.FileSignature` of an image file under its real path; raises naming ``field_name`` if missing."""
    real = os.path.realpath(path)
    key = file_signature(real)
    if key is None:
        raise SamriInputError(field_name, str(path), "image file not found")
    if not Path(real).is_file():
        raise SamriInputError(field_name, str(path), "is not an image file (DICOM folders are not supported)")
    return key


class VolumeStore:
    """LRU (`cachetools.LRUCache`) of `samri.volume.PreparedVolume` per image file version.

    Args:
        window: the registry's `samri.intensity.WindowSettings`.
        max_items: volumes kept (a 181x217x181 volume is about 28 MB of float32).
    """

    def __init__(self, *, window, max_items: int = 4) -> None:
        self.window = window
        self.max_items = max(1, int(max_items))
        self._items: LRUCache[VolumeKey, PreparedVolume] = LRUCache(maxsize=self.max_items)
        self._lock = threading.Lock()
        self._loading: dict[VolumeKey, threading.Lock] = {}
        self.stats = {"hits": 0, "loads": 0}

    def get(self, path: str | os.PathLike, field_name: str = "image") -> PreparedVolume:
        """The windowed volume of ``path`` (read and windowed on the first call for its version)."""
        key = file_key(path, field_name)
        hit = self._lookup(key)
        if hit is not None:
            return hit
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            hit = self._lookup(key)
            if hit is not None:
                return hit
            start = time.perf_counter()
            try:
                volume = prepare_volume(load_image(key.path, field_name), self.window, field_name)
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._loading.pop(key, None)
                self._items[key] = volume  # evicts the least recently used beyond max_items
                self.stats["loads"] += 1
            logger.info("prepared %s %s in %.2f s", key.path, volume.shape, time.perf_counter() - start)
            return volume

    def _lookup(self, key: VolumeKey) -> PreparedVolume | None:
        with self._lock:
            hit = self._items.get(key)  # a hit becomes the most recently used
            if hit is not None:
                self.stats["hits"] += 1
            return hit
