"""The app's ``--conf`` keys, parsed once into `AppSettings` (cheap: no network is loaded here).

``monailabel start_server ... --conf KEY VALUE`` keys (all values arrive as strings):

========================  ==============================================================
``model``                 registry name from ``configs/models.yaml`` (default: the registry's
                          ``default_model``, samri_lite)
``checkpoint``            full SAM-family weights file overriding the registry's
``decoder``               decoder-only checkpoint (`samri.model.checkpoints.save_decoder_checkpoint`);
                          may not exist yet: it is picked up when it appears or changes. When
                          given, it is served instead of the trainer's published decoders
``decoder_version``       pin the served decoder to a version the ``samri`` trainer published
                          into ``<app>/model/decoders`` (``v0001``, ...) or ``base`` (the model's
                          own decoder); default: follow the store's ``live.json``, so a newly
                          published or rolled-back decoder is served on the next request without a
                          restart. A pin affects this server only; ``POST /train/samri`` with
                          ``{"rollback": "v0001"}`` (or ``"base"``, ``"previous"``) moves the live
                          version for every server sharing the app folder
``labels``                labels file (JSON/YAML): a list of names, ``{name: value}``, or the
                          datastore's ``{study: {name: value}}``; default: the studies'
                          ``label_names.json``
``precompute``            ``true``/``false``: encode a study's slices in the background when it
                          is first inferred or served by active learning (default ``true``)
``cache_dir``             folder of the on-disk embedding cache (default
                          ``<app>/model/embedding_cache``); ``none`` keeps embeddings in memory
``cache_memory_mb``       bound of the in-memory embedding LRU (default 1024)
``device``                torch device for the network (default ``cpu``)
``backend``               inference runtime of the encoder and decoder: ``torch`` (PyTorch eager fp32),
                          ``openvino`` (CPU) or ``auto`` (OpenVINO on a CPU device, PyTorch on CUDA);
                          default: the registry's (``auto``). PyTorch serves until the OpenVINO copy
                          is ready: exported in a thread (about 30 s on 2 cores, once per weights:
                          cached in ``backend_cache_dir``); a backend that cannot serve falls back to
                          PyTorch and ``/info/`` says which serves (`samri.model.backends`)
``precision``             ``fp32``, ``bf16`` or ``auto`` (bf16 where the CPU has native bf16, with
                          OpenVINO only); default: the registry entry's (``auto``)
``backend_cache_dir``     folder of the exported networks (default ``<app>/model/backend_cache``)
``max_slices_3d``         most slices one ``samri_3d`` request predicts, prompted slices included
                          (default 96: twice the axial extent of the longest deep grey structure,
                          about 40 mm, at 1 mm). Propagation alternates up and down, so a result cut
                          here is centred on the prompt and marked ``partial``; more prompted slices
                          than this are a 422 before any work
``max_seconds_3d``        wall seconds after which a ``samri_3d`` request stops propagating and
                          returns what it has, marked ``partial`` (default 40: on 2 CPU cores an
                          uncached slice costs 1-1.7 s to encode, a cached one 65 ms, so a click on
                          an uncached thalamus or putamen completes and cached requests never get
                          near it; the slice under way is finished: worst case this plus one encode)
``cors_origins``          comma-separated origins (``https://viewer.example:443``) whose browser
                          pages may call this server; default none: only same-origin pages
                          (OHIF at ``/ohif/``) and non-browser clients (Slicer). See
                          ``lib/server/guard.py``
``max_body_mb``           largest request body accepted, MiB (default 1024; 413 beyond)
``expose_logs``           ``true`` serves ``GET /logs/`` (every client's request parameters)
                          without MONAI Label's auth; default ``false`` (403)
========================  ==============================================================
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from samri.errors import SamriInputError

from ..server.settings import SERVER_CONF_KEYS

logger = logging.getLogger(__name__)

CONF_KEYS = ("model", "checkpoint", "decoder", "decoder_version", "labels", "precompute", "cache_dir",
             "cache_memory_mb", "device", "max_slices_3d", "max_seconds_3d", "backend", "precision",
             "backend_cache_dir") + SERVER_CONF_KEYS
#: folder of the trainer's published decoder versions, under ``<app>/model``.
DECODER_STORE_DIR = "decoders"
#: default folder of the exported networks (`samri.model.backends`), under ``<app>/model``.
BACKEND_CACHE_DIR = "backend_cache"
#: ``decoder_version`` values: ``vNNNN`` or ``base``.
_VERSION_RE = re.compile(r"^(v\d{4,}|base)$")
#: label used when neither a labels file nor the studies name any.
DEFAULT_LABEL = "object"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value: Any, field_name: str) -> bool:
    """``True``/``False`` from a bool or a string such as ``"true"``/``"0"``; raises naming the field."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise SamriInputError(field_name, value, "must be true or false")


@dataclass(frozen=True)
class AppSettings:
    """Validated app configuration.

    Attributes:
        app_dir: the app folder (``apps/samri``).
        studies: the datastore (a folder or a DICOMweb URL).
        model: registry name of the model variant.
        checkpoint: full checkpoint path overriding the registry's, or None.
        decoder: decoder-only checkpoint path, or None.
        decoder_version: pinned published decoder (``vNNNN`` or ``base``), or None to follow the
            store's live version.
        labels: label names declared by the infer tasks, in client order.
        precompute: background embedding precompute on/off.
        cache_dir: embedding disk cache folder, or None for memory only.
        cache_memory_bytes: in-memory embedding LRU bound.
        device: torch device string.
        max_slices_3d: slice budget of one 3D request.
        max_seconds_3d: wall-clock budget of one 3D request, seconds.
        backend: ``torch``, ``openvino`` or ``auto`` (`samri.model.backends.apply_backend`).
        precision: ``fp32``, ``bf16`` or ``auto``.
        backend_cache_dir: folder of the exported networks.
    """

    app_dir: Path
    studies: str
    model: str
    checkpoint: Path | None = None
    decoder: Path | None = None
    decoder_version: str | None = None
    labels: tuple[str, ...] = (DEFAULT_LABEL,)
    precompute: bool = True
    cache_dir: Path | None = None
    cache_memory_bytes: int = 1 << 30
    device: str = "cpu"
    max_slices_3d: int = 96
    max_seconds_3d: float = 40.0
    backend: str = "torch"
    precision: str = "auto"
    backend_cache_dir: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_conf(cls, conf: Mapping[str, str] | None, *, app_dir: str | os.PathLike,
                  studies: str) -> "AppSettings":
        """Parse MONAI Label's ``conf`` dict; raises `SamriInputError` naming the bad key."""
        from samri.config import load_registry

        conf = dict(conf or {})
        app_dir = Path(app_dir)
        registry = load_registry()
        model = str(conf.get("model") or registry.default_model)
        spec = registry.spec(model)  # raises on an unknown name, listing the known ones
        checkpoint = _optional_path(conf.get("checkpoint"))
        if checkpoint is not None and not checkpoint.is_file():
            raise SamriInputError("checkpoint", str(checkpoint), "file not found")
        if checkpoint is None and spec.checkpoint is None and not spec.random_init:
            raise SamriInputError("checkpoint", None, f"model '{model}' has no bundled weights: "
                                  "pass --conf checkpoint /path/to/weights.pth")
        decoder = _optional_path(conf.get("decoder"))
        if decoder is not None and not decoder.is_file():
            logger.warning("decoder %s does not exist yet; serving the base decoder until it appears", decoder)
        decoder_version = conf.get("decoder_version")
        if decoder_version is not None:
            decoder_version = str(decoder_version).strip() or None
        if decoder_version is not None and not _VERSION_RE.match(decoder_version):
            raise SamriInputError("decoder_version", decoder_version, "must be vNNNN (e.g. v0001) or base")
        cache_dir: Path | None = app_dir / "model" / "embedding_cache"
        if "cache_dir" in conf:
            raw = str(conf["cache_dir"]).strip()
            cache_dir = None if raw.lower() in ("", "none", "off") else Path(raw).expanduser()
        memory_mb = conf.get("cache_memory_mb", "1024")
        try:
            memory_bytes = int(float(memory_mb) * (1 << 20))
        except (TypeError, ValueError):
            raise SamriInputError("cache_memory_mb", memory_mb, "must be a number of MiB") from None
        if memory_bytes <= 0:
            raise SamriInputError("cache_memory_mb", memory_mb, "must be positive")
        labels = load_labels(conf.get("labels"), studies)
        backend, precision = _backend(conf, spec)
        backend_cache_dir = _optional_path(conf.get("backend_cache_dir")) or app_dir / "model" / BACKEND_CACHE_DIR
        unknown = sorted(set(conf) - set(CONF_KEYS))
        if unknown:
            logger.info("conf keys not used by SAMRI (left to MONAI Label): %s", unknown)
        return cls(app_dir=app_dir, studies=str(studies), model=model, checkpoint=checkpoint, decoder=decoder,
                   decoder_version=decoder_version, labels=labels,
                   precompute=parse_bool(conf.get("precompute", "true"), "precompute"),
                   cache_dir=cache_dir, cache_memory_bytes=memory_bytes, device=str(conf.get("device", "cpu")),
                   backend=backend, precision=precision, backend_cache_dir=backend_cache_dir,
                   extra={k: conf[k] for k in unknown}, **_budget_3d(conf))

    @property
    def decoder_store(self) -> Path:
        """Folder of the trainer's published decoders (`samri.train.store.DecoderStore`)."""
        return self.app_dir / "model" / DECODER_STORE_DIR

    def summary(self) -> dict[str, Any]:
        """JSON-friendly view for ``/info/`` and logs."""
        return {"model": self.model, "checkpoint": _str(self.checkpoint), "decoder": _str(self.decoder),
                "decoder_version": self.decoder_version, "precompute": self.precompute,
                "cache_dir": _str(self.cache_dir), "device": self.device, "labels": len(self.labels),
                "max_slices_3d": self.max_slices_3d, "max_seconds_3d": self.max_seconds_3d,
                "backend": self.backend, "precision": self.precision}


def _backend(conf: Mapping[str, Any], spec) -> tuple[str, str]:
    """``backend`` and ``precision`` (conf, else the registry entry's), checked now so a bad value
    stops the server at start with the key and the value named (`samri.model.backends.resolve_backend`)."""
    from samri.model.backends import resolve_backend

    backend = str(conf.get("backend") or spec.backend).strip().lower()
    precision = str(conf.get("precision") or spec.precision).strip().lower()
    resolve_backend(backend, precision, str(conf.get("device", "cpu")), have_openvino=True)
    return backend, precision


def _budget_3d(conf: Mapping[str, Any]) -> dict[str, Any]:
    """``max_slices_3d`` (int >= 1) and ``max_seconds_3d`` (> 0) from ``conf``, defaults where absent."""
    out: dict[str, Any] = {}
    for key, kind in (("max_slices_3d", int), ("max_seconds_3d", float)):
        raw = conf.get(key)
        if raw is None or not str(raw).strip():
            continue
        try:
            value = kind(str(raw).strip())
        except ValueError:
            raise SamriInputError(key, raw, "must be an integer" if kind is int else "must be a number") from None
        if not (value > 0 and math.isfinite(value)):  # also rejects nan
            raise SamriInputError(key, raw, "must be positive and finite")
        out[key] = value
    return out


def _optional_path(value: Any) -> Path | None:
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    return Path(str(value)).expanduser()


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def load_labels(path: str | os.PathLike | None, studies: str) -> tuple[str, ...]:
    """Label names for the infer tasks.

    Args:
        path: a labels file (JSON or YAML): ``[name, ...]``, ``{name: value}`` (ordered by value)
            or ``{study: {name: value}}``; None reads ``<studies>/label_names.json``.
        studies: the datastore folder (ignored when it is a URL).

    Returns:
        Unique names in a stable order; ``(DEFAULT_LABEL,)`` when nothing names any.
    """
    if path is not None and str(path).strip():
        from samri.config import read_yaml

        names = _names_from(read_yaml(path, field="labels"), str(path))
    elif studies and not studies.startswith(("http://", "https://")):
        from samri.labels import load_label_names

        names = _names_from(load_label_names(studies, strict=False), "label_names.json")
    else:
        names = []
    return tuple(names) if names else (DEFAULT_LABEL,)


def _names_from(data: Any, source: str) -> list[str]:
    """Flatten the three accepted label layouts into unique names."""
    if data is None:
        return []
    if isinstance(data, (list, tuple)):
        items = [(i, name) for i, name in enumerate(data)]
    elif isinstance(data, Mapping) and all(isinstance(v, Mapping) for v in data.values()):
        out: list[str] = []
        for per_study in data.values():
            out += [n for n in _names_from(dict(per_study), source) if n not in out]
        return out
    elif isinstance(data, Mapping):
        items = []
        for name, value in data.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SamriInputError(f"labels[{name!r}]", value, f"needs a numeric label value ({source})")
            items.append((value, name))
        items.sort(key=lambda item: item[0])
    else:
        raise SamriInputError("labels", source, "needs a list of names or a {name: value} mapping")
    names: list[str] = []
    for _, name in items:
        if not isinstance(name, str) or not name.strip():
            raise SamriInputError("labels", name, f"label names must be non-empty strings ({source})")
        if name not in names and name != "background":
            names.append(name)
    return names
