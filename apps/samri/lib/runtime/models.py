"""The served model: `ModelHolder` (lazy load, reload on file change), `DecoderSelector` and
`load_model_with_decoder` (the network with the chosen decoder, else the base; the trainer uses it too).

Constructing `SamriRuntime` is cheap (the server builds the app again in a subprocess for every
train and scoring job): the network, the embedding cache, the volume cache and the precompute worker
are created on first use. The model is reloaded when its checkpoint or decoder file changes (mtime
and size), so a decoder written by the trainer is served without a restart.

Inference backend (``--conf backend``/``precision``, `samri.model.backends`): a freshly loaded
network is served by PyTorch at once, while a thread exports (first use of these
weights) or verifies and compiles the OpenVINO parts on a copy; the copy replaces it when ready,
unless the weight files changed meanwhile. So a decoder the trainer publishes is served within one
request and becomes fast seconds later; ``/info/`` shows ``backend.pending`` until then.

Which decoder is served (`DecoderSelector`, checked on every request): ``--conf decoder`` if
given; else ``--conf decoder_version`` (a pinned published version, or ``base``); else the live
version of the trainer's store ``<app>/model/decoders/live.json`` (read by
`samri.train.store.DecoderStore` only; the selector caches it per file version), so publishing or
rolling back in any process is picked up by the next request.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samri.errors import SamriInputError
from samri.io import FileSignature, file_signature
from samri.train.store import DecoderStore

from ..configs.settings import AppSettings

logger = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """The configured model cannot be loaded: a server configuration problem, not the request's."""


@dataclass(frozen=True)
class DecoderChoice:
    """The decoder a server should serve now.

    Attributes:
        source: ``"conf"`` (``--conf decoder``), ``"pinned"`` (``--conf decoder_version``) or
            ``"store"`` (the store's live version).
        version: published version (``vNNNN``), ``"base"`` for the model's own decoder (nothing
            live, or pinned to ``base``), or None (``source="conf"``).
        path: decoder-only checkpoint to apply, or None for the registry's own decoder.
    """

    source: str
    version: str | None
    path: Path | None

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "version": self.version, "path": None if self.path is None else str(self.path)}


class DecoderSelector:
    """Resolves `DecoderChoice` from the settings and the store's live entry (cheap: one stat).

    A thin cache over `samri.train.store.DecoderStore`: the live entry is re-read only when
    ``live.json`` changed, and an unreadable one keeps the previous choice.

    Args:
        settings: ``decoder``, ``decoder_version`` and the store folder (``settings.decoder_store``).
    """

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._reader = DecoderStore(settings.decoder_store)
        self._live_sig: FileSignature | None | str = "unread"
        self._live: dict[str, Any] | None = None
        self._base_model: str | None = None

    @property
    def root(self) -> Path:
        return self.settings.decoder_store

    def store(self) -> DecoderStore:
        """The `samri.train.store.DecoderStore` of this app and model (reads the registry once)."""
        if self._base_model is None:
            from samri.config import load_registry

            self._base_model = load_registry().spec(self.settings.model).base_name
        return DecoderStore(self.root, base_model=self._base_model)

    def live(self) -> dict[str, Any] | None:
        """The store's live entry (re-read only when ``live.json`` changed), or None (base decoder)."""
        path = self._reader.live_file
        sig = file_signature(path)
        with self._lock:
            if sig == self._live_sig:
                return self._live
            try:
                live = self._reader.live()
            except (OSError, ValueError) as exc:
                logger.error("ignoring unreadable %s (%s); keeping the previous decoder choice", path, exc)
                return self._live
            if live is None:
                sig = None
            self._live_sig, self._live = sig, live
            return live

    def live_version(self) -> str:
        """``vNNNN`` of the live published decoder, or ``"base"``."""
        live = self.live()
        return live["version"] if live else "base"

    def choose(self) -> DecoderChoice:
        settings = self.settings
        if settings.decoder is not None:
            return DecoderChoice("conf", None, settings.decoder)
        pinned = settings.decoder_version
        if pinned:
            return DecoderChoice("pinned", *self._reader.resolve(pinned))
        return DecoderChoice("store", *self._reader.resolve(live=self.live()))


def load_model_with_decoder(settings: AppSettings, choice: DecoderChoice, *, registry=None):
    """The network of ``settings.model`` with ``choice``'s decoder, else with the base model's own.

    The base decoder is used when the chosen file does not exist (yet), or when a published or
    pinned decoder cannot be applied to this model (e.g. ``--conf model`` changed); a
    ``--conf decoder`` that cannot be applied is an error. Shared by `ModelHolder` (serving) and
    the trainer (which starts from what is served).

    Returns:
        ``(model, served)``: the `samri.model.builders.SamModel` and ``choice.summary()`` updated
        to what was loaded (``version`` ``"base"`` on a fallback, with ``requested`` and
        ``missing`` or ``error``).
    """
    from samri.config import load_registry
    from samri.model.builders import load_model

    spec = (registry or load_registry()).spec(settings.model)
    decoder = choice.path if choice.path is not None and choice.path.is_file() else None
    served = {**choice.summary(), "path": None if decoder is None else str(decoder)}
    if choice.path is not None and decoder is None:
        logger.warning("decoder %s (%s) does not exist (yet): using the model's own decoder",
                       choice.path, choice.source)
        served.update(version="base", requested=choice.version, missing=str(choice.path))
    try:
        model = load_model(spec, checkpoint=settings.checkpoint, decoder=decoder, device=settings.device)
    except (SamriInputError, OSError, RuntimeError) as exc:
        if choice.source == "conf" or decoder is None:
            raise
        logger.error("published decoder %s cannot be applied (%s): using the model's own decoder", decoder, exc)
        model = load_model(spec, checkpoint=settings.checkpoint, decoder=None, device=settings.device)
        served.update(path=None, version="base", requested=choice.version, error=str(exc))
    return model, served


class ModelHolder:
    """One lazily loaded `samri.inference.segmenter.Segmenter`, rebuilt when its weight files change.

    Args:
        settings: model name, checkpoint path, device.
        cache: the shared embedding cache (kept across reloads; its keys name the encoder).
        decoders: which decoder file to serve (default: a `DecoderSelector` over ``settings``).
    """

    def __init__(self, *, settings: AppSettings, cache, decoders: DecoderSelector | None = None) -> None:
        self.settings = settings
        self.cache = cache
        self.decoders = decoders or DecoderSelector(settings)
        self._lock = threading.Lock()
        self._segmenter = None
        self._loaded: tuple | None = None
        self._failed: tuple | None = None
        self._checkpoint_path: Path | None = None
        self._served: dict[str, Any] = {}
        self.loads = 0
        self._export_thread: threading.Thread | None = None

    def _files(self) -> tuple[FileSignature | None, FileSignature | None, DecoderChoice]:
        """Signatures of the weight files to serve now, and the decoder choice (its path may not exist)."""
        if self._checkpoint_path is None:
            from samri.config import load_registry
            from samri.model.builders import resolve_checkpoint

            spec = load_registry().spec(self.settings.model).with_checkpoint(self.settings.checkpoint)
            self._checkpoint_path = resolve_checkpoint(spec) or Path(os.devnull)
        choice = self.decoders.choose()
        return file_signature(self._checkpoint_path), file_signature(choice.path), choice

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

    def _load(self, files: tuple[FileSignature | None, FileSignature | None, DecoderChoice]):
        """PyTorch-served segmenter of ``files``; starts the backend export thread when one is configured."""
        from samri.inference.segmenter import Segmenter
        from samri.model.backends import resolve_backend

        start = time.perf_counter()
        choice = files[2]
        model, served = load_model_with_decoder(self.settings, choice)
        backend = resolve_backend(self.settings.backend, self.settings.precision, str(model.device))
        model.backend_info = {"backend": "torch", "precision": "fp32", "requested": backend.requested,
                              "reason": backend.reason}
        self.loads += 1
        self._served = served
        logger.info("loaded model %s (decoder %s, %s) in %.1f s", model.spec.name, served["path"], choice.source,
                    time.perf_counter() - start)
        if backend.backend != "torch":
            model.backend_info["pending"] = f"{backend.backend} {backend.precision}: preparing in the background"
            self._start_export(files, model)
        return Segmenter(model, self.cache)

    def _start_export(self, files: tuple, model) -> None:
        """Prepare the configured backend on a copy of ``model`` in a thread; swap it in when ready."""
        thread = threading.Thread(target=self._export, args=(files, model), name="samri-backend-export", daemon=True)
        self._export_thread = thread
        thread.start()

    def _export(self, files: tuple, model) -> None:
        from samri.inference.segmenter import Segmenter
        from samri.model.backends import apply_backend, warm_up

        # Not niced: OpenVINO's worker threads started from here (compile, export check) would inherit a
        # lower priority and serve every later click with it. A decoder export takes seconds; the
        # encoder's is made once per encoder and kept in the export cache.
        fast = copy.copy(model)  # shares the eager weights; its own module table, so the served model is untouched
        fast._modules = dict(model._modules)
        try:
            apply_backend(fast, self.settings.backend, self.settings.precision,
                          export_dir=self.settings.backend_cache_dir)
            if fast.backend_info.get("backend") != "torch":
                warm_up(fast)  # OpenVINO's threads start here, at normal priority (`warm_up`)
        except Exception as exc:  # never let a background failure take the server down
            logger.exception("backend export failed: serving PyTorch")
            fast.backend_info = {"backend": "torch", "precision": "fp32", "reason": f"fallback: {exc}"}
        with self._lock:
            current = self._segmenter
            if current is None or current.model is not model or self._loaded != files:
                logger.info("backend ready for weights no longer served: dropped")
                return
            if fast.backend_info.get("backend") == "torch":
                model.backend_info = dict(fast.backend_info)  # the fallback and its reason, for /info/
                return
            self._segmenter = Segmenter(fast, self.cache)

    def wait_backend(self, timeout: float | None = None) -> bool:
        """Wait for the backend export thread (tests, benchmarks); True when none is running."""
        thread = self._export_thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def info(self) -> dict[str, Any]:
        seg = self._segmenter
        if seg is None:
            return {"loaded": False}
        return {"loaded": True, "name": seg.model.spec.name, "encoder": seg.model.cache_key(),
                "decoder": dict(seg.model.decoder_info), "decoder_version": self._served.get("version"),
                "decoder_source": dict(self._served), "loads": self.loads,
                "backend": dict(getattr(seg.model, "backend_info", {}))}
