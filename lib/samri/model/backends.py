"""Inference backends: which runtime runs a model's image encoder and mask decoder, at which precision.

Options (registry entry fields ``backend``/``precision``, app ``--conf backend``/``precision``):

- ``backend``: ``torch`` (PyTorch eager, the reference), ``openvino`` (exported to OpenVINO IR,
  run on the CPU; `samri.model.openvino_runtime`) or ``auto``: OpenVINO on a CPU device when it is
  installed, PyTorch on CUDA and wherever OpenVINO is missing.
- ``precision``: ``fp32``, ``bf16`` or ``auto``: bf16 where the CPU computes it natively
  (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``) and the backend is OpenVINO, else fp32.
  PyTorch serves fp32 only.

`apply_backend` puts the chosen runtime behind the model object: ``model.image_encoder`` and
``model.mask_decoder`` become wrappers with the same call signature (the eager modules stay inside
them), so the embedding cache and the segmenter need no change. ``model.cache_key()`` then names the
backend and precision, because a bf16 embedding is a different value from an fp32 one. A backend
that cannot serve (not installed, export failed, check against eager failed) leaves the model on
PyTorch with one log line, and ``model.backend_info`` says which backend serves and why.

Use it on models that serve. On a model being trained only with ``parts=("encoder",)``: the trainer's
stage 1 then computes the embeddings serving computes (same numerics, same cache keys), while the
decoder it trains stays PyTorch (an exported decoder would not follow its changing weights).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino", "auto")
PRECISIONS = ("fp32", "bf16", "auto")
#: ``/proc/cpuinfo`` flags that mean native bf16 arithmetic (AVX-512 BF16 or AMX)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU computes bf16 natively (see `BF16_FLAGS`)."""
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@dataclass(frozen=True)
class BackendChoice:
    """A resolved backend.

    Attributes:
        backend: ``"torch"`` or ``"openvino"``.
        precision: ``"fp32"`` or ``"bf16"``.
        requested: what was asked for, as ``"backend/precision"``.
        reason: why this was chosen (for logs and ``/info/``).
    """

    backend: str
    precision: str
    requested: str = ""
    reason: str = ""

    @property
    def key(self) -> str:
        """Suffix of the embedding cache key: ``""`` for the PyTorch reference, else ``openvino-bf16``."""
        return "" if self.backend == "torch" else f"{self.backend}-{self.precision}"


def check_option(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` lower-cased if it is one of ``allowed``; else `SamriInputError` naming ``field``."""
    text = str(value).strip().lower() if value is not None else ""
    if text not in allowed:
        raise SamriInputError(field, value, f"must be one of {list(allowed)}")
    return text


def resolve_backend(backend: str = "auto", precision: str = "auto", device: str = "cpu", *,
                    flags: frozenset[str] | None = None, have_openvino: bool | None = None,
                    fields: tuple[str, str] = ("backend", "precision")) -> BackendChoice:
    """Turn ``backend``/``precision`` options (`BACKENDS`, `PRECISIONS`) into a concrete choice.

    Args:
        device: the torch device the model runs on (``cuda...`` keeps PyTorch).
        flags: CPU flags (default `cpu_flags`), for tests.
        have_openvino: whether OpenVINO is installed (default: looked up), for tests.
        fields: the option names used in errors (e.g. ``models.x.backend``).

    Raises:
        SamriInputError: an unknown value, ``openvino`` on a non-CPU device, or ``bf16`` with PyTorch.
    """
    backend = check_option(fields[0], backend, BACKENDS)
    precision = check_option(fields[1], precision, PRECISIONS)
    on_cpu = str(device).strip().lower().startswith("cpu")
    have_openvino = openvino_installed() if have_openvino is None else have_openvino
    requested = f"{backend}/{precision}"
    if backend == "openvino" and not on_cpu:
        raise SamriInputError(fields[0], backend, f"runs on the CPU; the model's device is {device!r}")
    if backend == "torch" and precision == "bf16":
        raise SamriInputError(fields[1], precision, "PyTorch serves fp32; bf16 needs backend openvino or auto")
    if backend == "auto":
        if not on_cpu:
            return BackendChoice("torch", "fp32", requested, f"device {device}: PyTorch")
        if not have_openvino:
            logger.warning("backend auto: openvino is not installed, serving PyTorch eager fp32")
            return BackendChoice("torch", "fp32", requested, "openvino not installed")
        backend = "openvino"
    if backend == "torch":
        return BackendChoice("torch", "fp32", requested, "PyTorch eager (the reference)")
    bf16 = native_bf16(flags)
    if precision == "bf16" and not bf16:
        logger.warning("precision bf16: this CPU has no native bf16 (%s), serving fp32", "/".join(sorted(BF16_FLAGS)))
        return BackendChoice(backend, "fp32", requested, "no native bf16 on this CPU")
    if precision == "auto":
        precision = "bf16" if bf16 else "fp32"
    return BackendChoice(backend, precision, requested,
                         f"{backend} {precision}" + (" (native bf16)" if precision == "bf16" else ""))


def eager_parts(model):
    """``(image_encoder, mask_decoder)`` as eager PyTorch modules (unwrapping a served backend)."""
    return getattr(model.image_encoder, "eager", model.image_encoder), getattr(model.mask_decoder, "eager",
                                                                               model.mask_decoder)


def apply_backend(model, backend: str | None = None, precision: str | None = None, *,
                  export_dir: str | os.PathLike | None = None, flags: frozenset[str] | None = None,
                  parts: tuple[str, ...] = ("encoder", "decoder")):
    """Serve ``model`` (a `samri.model.builders.SamModel`) with a backend, in place; returns it.

    Args:
        backend, precision: options (default: the registry entry's ``model.spec.backend`` /
            ``model.spec.precision``).
        export_dir: the export cache (default `samri.model.export_cache.default_export_dir`).
        flags: CPU flags (default `cpu_flags`), for tests.
        parts: what the backend runs. ``("encoder",)`` is the trainer's: its embeddings (and cache
            keys) are the served ones, while the decoder it trains stays a PyTorch module.

    Raises:
        SamriInputError: invalid options (see `resolve_backend`). A backend that cannot serve is
        not an error: the model stays on PyTorch and ``model.backend_info`` says why.
    """
    from samri.model.export_cache import default_export_dir

    backend = backend if backend is not None else getattr(model.spec, "backend", "torch")
    precision = precision if precision is not None else getattr(model.spec, "precision", "auto")
    choice = resolve_backend(backend, precision, str(model.device), flags=flags)
    encoder, decoder = eager_parts(model)
    model.image_encoder, model.mask_decoder = encoder, decoder
    model.backend_key = ""
    if choice.backend == "torch":
        model.backend_info = {"backend": "torch", "precision": "fp32", "requested": choice.requested,
                              "reason": choice.reason}
        return model
    root = Path(export_dir).expanduser() if export_dir is not None else default_export_dir()
    start = time.perf_counter()
    try:
        from samri.model import openvino_runtime as ovr

        precisions = ("fp32", "bf16") if native_bf16(flags) else ("fp32",)
        enc, enc_facts = ovr.load_part("encoder", model, choice.precision, root, precisions=precisions)
        dec, dec_facts = (ovr.load_part("decoder", model, choice.precision, root, precisions=precisions,
                                        eager_decoder=decoder) if "decoder" in parts else (None, {"check": None}))
    except Exception as exc:  # any failure of an optional runtime: serve the reference instead
        logger.error("backend %s/%s cannot serve model %s (%s): serving PyTorch eager fp32",
                     choice.backend, choice.precision, model.spec.name, exc)
        model.backend_info = {"backend": "torch", "precision": "fp32", "requested": choice.requested,
                              "reason": f"fallback: {exc}"}
        return model
    model.image_encoder = ovr.OpenVinoEncoder(enc, encoder, part="encoder", precision=choice.precision)
    box_variant = None
    if dec is not None:
        try:
            box_variant = ovr.compile_box_variant(Path(dec_facts["folder"]), choice.precision, model.embedding_shape,
                                                  dynamic=dec)
        except Exception as exc:  # the dynamic graph serves every prompt: slower, not wrong
            logger.warning("decoder box variant not served (%s): the dynamic graph serves box prompts", exc)
        model.mask_decoder = ovr.OpenVinoMaskDecoder(dec, decoder, part="decoder", precision=choice.precision,
                                                     image_pe=model.prompt_encoder.get_dense_pe(),
                                                     box_variant=box_variant)
    model.backend_key = choice.key
    model.backend_info = {"backend": choice.backend, "precision": choice.precision, "requested": choice.requested,
                          "reason": choice.reason, "export_dir": str(root), "parts": list(parts),
                          "checks": {"encoder": enc_facts["check"], "decoder": dec_facts["check"]},
                          "decoder_box_variant": box_variant is not None,
                          "load_s": round(time.perf_counter() - start, 2)}
    logger.info("model %s served by %s %s (%s; ready in %.1f s)", model.spec.name, choice.backend,
                choice.precision, choice.reason, time.perf_counter() - start)
    return model


def warm_up(model) -> None:
    """Run the model's encoder and a box decode once on zeros, from the calling thread.

    OpenVINO starts its worker threads on first use, at the CPU priority of the thread that uses it;
    warming up from a normal-priority thread keeps a niced precompute thread from starting them
    niced (they would then serve every click at its low priority under contention).
    """
    import torch

    c, h, w = model.embedding_shape
    box = torch.tensor([[0.0, 0.0, float(model.input_size - 1), float(model.input_size - 1)]])
    with torch.inference_mode():
        model.image_encoder(torch.zeros(1, 3, model.input_size, model.input_size))
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        model.mask_decoder(image_embeddings=torch.zeros(1, c, h, w), image_pe=model.prompt_encoder.get_dense_pe(),
                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
