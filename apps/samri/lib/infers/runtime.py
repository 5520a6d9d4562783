"""Per-process serving state shared by the SAMRI infer tasks.

Constructing `SamriRuntime` is cheap (the server builds the app again in a subprocess for every
train and scoring job): the network, the embedding cache, the volume cache and the precompute worker
are created on first use. The model is reloaded when its checkpoint or decoder file changes (mtime
and size), so a decoder written by the trainer is served without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from samri.errors import SamriInputError

from ..configs.settings import AppSettings
from .precompute import Activity, Precomputer
from .state import ClientStateStore
from .volumes import VolumeStore

logger = logging.getLogger(__name__)

FileSignature = tuple[str, int, int] | None


class ModelUnavailable(RuntimeError):
    """The configured model cannot be loaded: a server configuration problem, not the request's."""


def _signature(path: Path | None) -> FileSignature:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(path), st.st_mtime_ns, st.st_size


class ModelHolder:
    """One lazily loaded `samri.predict.Segmenter`, rebuilt when its weight files change.

    Args:
        settings: model name, checkpoint and decoder paths, device.
        cache: the shared embedding cache (kept across reloads; its keys name the encoder).
    """

    def __init__(self, *, settings: AppSettings, cache) -> None:
        self.settings = settings
        self.cache = cache
        self._lock = threading.Lock()
        self._segmenter = None
        self._loaded: tuple | None = None
        self._failed: tuple | None = None
        self._checkpoint_path: Path | None = None
        self.loads = 0

    def _files(self) -> tuple[FileSignature, FileSignature]:
        if self._checkpoint_path is None:
            from samri.config import load_registry
            from samri.models import resolve_checkpoint

            spec = load_registry().spec(self.settings.model).with_checkpoint(self.settings.checkpoint)
            self._checkpoint_path = resolve_checkpoint(spec) or Path(os.devnull)
        return _signature(self._checkpoint_path), _signature(self.settings.decoder)

    def segmenter(self):
        """The current segmenter; loads or reloads under a lock when the weight files changed."""
        try:
            files = self._files()
        except SamriInputError as exc:
            raise ModelUnavailable(f"model '{self.settings.model}': {exc}") from exc
        current = self._segmenter
        if current is not None and files in (self._loaded, self._failed):
            return current
        with self._lock:
            files = self._files()
            if self._segmenter is not None and files in (self._loaded, self._failed):
                return self._segmenter
            try:
                self._segmenter = self._load(files)
                self._loaded, self._failed = files, None
            except (SamriInputError, OSError, RuntimeError) as exc:
                self._failed = files
                if self._segmenter is None:
                    raise ModelUnavailable(f"model '{self.settings.model}' could not be loaded: {exc}") from exc
                logger.error("keeping the previous model: reloading %s failed (%s)", files, exc)
            return self._segmenter

    def _load(self, files: tuple[FileSignature, FileSignature]):
        from samri.config import load_registry
        from samri.models import load_model
        from samri.predict import Segmenter

        start = time.perf_counter()
        spec = load_registry().spec(self.settings.model)
        decoder = self.settings.decoder if files[1] is not None else None
        model = load_model(spec, checkpoint=self.settings.checkpoint, decoder=decoder, device=self.settings.device)
        self.loads += 1
        logger.info("loaded model %s (decoder %s) in %.1f s", spec.name, decoder, time.perf_counter() - start)
        return Segmenter(model, self.cache)

    def info(self) -> dict[str, Any]:
        seg = self._segmenter
        if seg is None:
            return {"loaded": False}
        return {"loaded": True, "name": seg.model.spec.name, "encoder": seg.model.cache_key(),
                "decoder": dict(seg.model.decoder_info), "loads": self.loads}


class SamriRuntime:
    """Model, caches, client state and precompute worker of one server process.

    Args:
        settings: the parsed ``--conf`` (`AppSettings`).
    """

    def __init__(self, *, settings: AppSettings) -> None:
        self.settings = settings
        self.states = ClientStateStore()
        self.activity = Activity()
        self._lock = threading.Lock()
        self._cache = None
        self._holder: ModelHolder | None = None
        self._volumes: VolumeStore | None = None
        self._precomputer: Precomputer | None = None

    # --- lazily created parts ---------------------------------------------------------------------
    def _model_holder(self) -> ModelHolder:
        with self._lock:
            if self._holder is None:
                from samri.embeddings import EmbeddingCache

                self._cache = EmbeddingCache(cache_dir=self.settings.cache_dir,
                                             max_memory_bytes=self.settings.cache_memory_bytes)
                self._holder = ModelHolder(settings=self.settings, cache=self._cache)
            return self._holder

    def segmenter(self):
        """The shared `samri.predict.Segmenter` (loads the network on first use)."""
        return self._model_holder().segmenter()

    def volumes(self) -> VolumeStore:
        with self._lock:
            if self._volumes is None:
                from samri.config import load_registry

                self._volumes = VolumeStore(window=load_registry().window)
            return self._volumes

    def volume(self, path: str, field_name: str = "image"):
        """Windowed volume of an image file (cached per file version)."""
        return self.volumes().get(path, field_name)

    def schedule_precompute(self, path: str, around: int | None = None) -> bool:
        """Queue a study for background encoding along axis 2 (no-op when ``precompute`` is off)."""
        if not self.settings.precompute or not path:
            return False
        with self._lock:
            if self._precomputer is None:
                self._precomputer = Precomputer(volume_fn=self.volume, segmenter_fn=self.segmenter,
                                                activity=self.activity)
            precomputer = self._precomputer
        return precomputer.schedule(path, around)

    @property
    def precomputer(self) -> Precomputer | None:
        return self._precomputer

    def status(self) -> dict[str, Any]:
        """JSON-friendly state for ``/info/`` (cheap; loads nothing)."""
        out: dict[str, Any] = {"settings": self.settings.summary(),
                               "model": self._holder.info() if self._holder else {"loaded": False},
                               "client_states": len(self.states)}
        if self._cache is not None:
            out["embedding_cache"] = dict(self._cache.stats)
        if self._precomputer is not None:
            out["precompute"] = self._precomputer.status()
        return out

    def close(self) -> None:
        if self._precomputer is not None:
            self._precomputer.close()
