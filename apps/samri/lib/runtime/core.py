"""`SamriRuntime`: per-process serving state shared by the SAMRI infer, train and scoring tasks.

Constructing it is cheap (the server builds the app again in a subprocess for every train and
scoring job): the network (`models.ModelHolder`), the embedding cache, the volume cache and the
precompute worker are created on first use.
"""

from __future__ import annotations

import threading
from typing import Any

from samri.inference.click_history import ClickHistory

from ..configs.settings import AppSettings
from .client_state import ClientStateStore
from .models import DecoderSelector, ModelHolder
from .precompute import Activity, Precomputer
from .volumes import VolumeStore


class SamriRuntime:
    """Model, caches, client state and precompute worker of one server process.

    Args:
        settings: the parsed ``--conf`` (`AppSettings`).
    """

    def __init__(self, *, settings: AppSettings) -> None:
        self.settings = settings
        self.states = ClientStateStore()
        self.click_history = ClickHistory()  # clients without client_id (OHIF)
        self.activity = Activity()
        self._lock = threading.Lock()
        self._cache = None
        self._holder: ModelHolder | None = None
        self._volumes: VolumeStore | None = None
        self._precomputer: Precomputer | None = None
        self.decoders = DecoderSelector(settings)

    # --- lazily created parts ---------------------------------------------------------------------
    def _model_holder(self) -> ModelHolder:
        with self._lock:
            if self._holder is None:
                from samri.inference.embeddings import EmbeddingCache

                self._cache = EmbeddingCache(cache_dir=self.settings.cache_dir,
                                             max_memory_bytes=self.settings.cache_memory_bytes)
                self._holder = ModelHolder(settings=self.settings, cache=self._cache, decoders=self.decoders)
            return self._holder

    def segmenter(self):
        """The shared `samri.inference.segmenter.Segmenter` (loads the network on first use)."""
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
                               "decoders": {"live": self.decoders.live_version(),
                                            "pinned": self.settings.decoder_version,
                                            "serves": self.decoders.choose().summary(),
                                            "store": str(self.decoders.root)},
                               "client_states": len(self.states), "click_history": len(self.click_history)}
        if self._cache is not None:
            out["embedding_cache"] = dict(self._cache.stats)
        if self._precomputer is not None:
            out["precompute"] = self._precomputer.status()
        return out

    def close(self) -> None:
        if self._precomputer is not None:
            self._precomputer.close()
