"""OpenVINO versions of a `samri.model.builders.SamModel`'s image encoder and mask decoder.

Both are exported from the loaded PyTorch modules (``openvino.convert_model`` on a trace; nothing is
downloaded), saved as fp32 IR in the export cache (`samri.model.export_cache`) and compiled for the
CPU in fp32 or bf16 (``INFERENCE_PRECISION_HINT``; OpenVINO would otherwise pick bf16 by itself on
CPUs with AMX). Each export is checked against eager PyTorch on a fixed input when it is written;
the figures go into its manifest and an export whose check fails is not served.

Graphs:
    encoder: ``image (1, 3, S, S)`` -> ``embedding (1, C, h, w)``; batches are run one slice at a
        time (TinyViT's trace fixes the batch size, and on a CPU a batch buys nothing).
    decoder: SAM's ``MaskDecoder.predict_masks`` with the prompt encoder's positional encoding
        ``image_pe`` built in: ``image_embeddings (1, C, h, w)``, ``sparse (B, N, C)``, ``dense (B, C,
        h, w)`` or ``(B, C, 1, 1)`` (no mask prompt: SAM's ``no_mask_embed``, broadcast) with dynamic B
        and N -> ``masks (B, 4, s, s)`` logits, ``iou (B, 4)``. The prompt encoder stays in PyTorch (a
        few small ops), so every prompt is encoded exactly as eager does; a click copies no 4 MB input.

The wrappers are ``nn.Module``s with the call signature of the module they replace and keep that
module as ``eager``: an inference error is logged once and the call is answered by eager PyTorch
from then on (slower, never wrong).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from samri.model.export_cache import ExportKey, check_export, export_folder, read_manifest

logger = logging.getLogger(__name__)

MODEL_XML = "model.xml"
#: OpenVINO names of our precisions
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
#: smallest agreement with eager PyTorch (on the export check's fixed input) for an export to be served:
#: embedding cosine, and Dice of the box click's mask (logits > 0). Measured: fp32 1.0 / 1.0 (cosine
#: 0.999999+), bf16 0.9992+ / 0.996+ on random input (docs/BENCHMARKS.md); these only catch broken exports.
MIN_CHECK = {"fp32": {"cosine": 0.9999, "dice": 0.99}, "bf16": {"cosine": 0.99, "dice": 0.95}}
#: largest predicted-IoU difference between the static box variant and the dynamic graph on the seeded
#: check input. bf16 (AMD EPYC with avx512_bf16, 2026-12-04, shipped decoder): 0.0054 there; on 15 real
#: Colin27 box prompts static vs dynamic 0.0014 at most, each against eager fp32 0.0034 / 0.0035.
BOX_VARIANT_IOU_ATOL = {"fp32": 1e-3, "bf16": 2e-2}


class BackendUnavailable(RuntimeError):
    """The runtime cannot serve this model here (not installed, export or check failed)."""


def import_openvino():
    """``import openvino``, with its usage telemetry blocked: nothing leaves the machine.

    ``import openvino`` imports its model converter, which sends usage events to Google Analytics
    through the optional ``openvino_telemetry`` package unless the user opted out in their home
    folder. When that package cannot be imported OpenVINO uses its own no-op stub, so it is made
    unimportable (``sys.modules`` entry None) before OpenVINO's first import in this process.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    elif sys.modules.get("openvino_telemetry") is not None:
        logger.warning("openvino was imported before samri blocked its telemetry (openvino_telemetry)")
    import openvino

    return openvino


@functools.lru_cache(maxsize=1)
def core():
    """The process's ``openvino.Core`` (created on first use)."""
    return import_openvino().Core()


def runtime_version() -> str:
    return import_openvino().get_version()


def _short_hash(*parts: Any) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=10).hexdigest()


def encoder_fingerprint(model) -> str:
    """Identity of the encoder export: its weights (``model.encoder_id``) and input size."""
    from samri.model.builders import state_fingerprint

    ident = model.encoder_id or state_fingerprint(model.image_encoder)
    return _short_hash(ident, model.input_size)


def decoder_fingerprint(model, decoder: nn.Module | None = None) -> str:
    """Identity of the decoder export: the mask decoder's and prompt encoder's weights (its positional
    encoding is built in) and the embedding shape."""
    from samri.model.builders import state_fingerprint

    return _short_hash(state_fingerprint(decoder if decoder is not None else model.mask_decoder),
                       state_fingerprint(model.prompt_encoder), model.embedding_shape)


class _DecoderGraph(nn.Module):
    """What is traced for the decoder: ``predict_masks`` (all 4 masks; the caller picks), ``image_pe`` a constant."""

    def __init__(self, decoder: nn.Module, image_pe: torch.Tensor) -> None:
        super().__init__()
        self.decoder = decoder
        self.register_buffer("image_pe", image_pe.detach().clone())

    def forward(self, image_embeddings: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense)


def _check_inputs(model, eager_decoder: nn.Module) -> dict[str, torch.Tensor]:
    """Fixed inputs of the export check: a seeded image, its eager embedding, one box prompt."""
    s = model.input_size
    image = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        embedding = model.image_encoder(image).float()
        box = torch.tensor([[0.25 * s, 0.3 * s, 0.6 * s, 0.7 * s]])
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        pe = model.prompt_encoder.get_dense_pe()
        masks, iou = eager_decoder.predict_masks(embedding, pe, sparse, dense)
    return {"image": image, "embedding": embedding, "pe": pe, "sparse": sparse, "dense": dense.contiguous(),
            "masks": masks, "iou": iou}


def agreement(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """Cosine, max abs difference and Dice of ``> 0`` between two tensors of one shape."""
    ref, out = ref.float().flatten(), out.float().flatten()
    cos = float(torch.nn.functional.cosine_similarity(ref, out, dim=0))
    a, b = ref > 0, out > 0
    total = int(a.sum() + b.sum())
    dice = 1.0 if total == 0 else float(2 * (a & b).sum() / total)
    return {"cosine": round(cos, 6), "max_abs": float((ref - out).abs().max()), "dice": round(dice, 6)}


def _compile(folder: Path, precision: str, graph=None):
    graph = graph if graph is not None else core().read_model(str(folder / MODEL_XML))
    return core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
                                               "PERFORMANCE_HINT": "LATENCY"})


def compile_box_variant(folder: Path, precision: str, embedding_shape: tuple[int, int, int], dynamic=None):
    """The decoder export compiled for one prompt of 2 sparse tokens and no mask prompt (a box, or a
    lone point with SAM's padding point): every first box click and every propagated 3D slice.

    Static shapes let OpenVINO pick fixed kernels: 48 vs 56-60 ms per decode on 2 cores
    (docs/BENCHMARKS.md). The variant is checked against the dynamic graph on a seeded input
    before it serves.

    Args:
        dynamic: the export already compiled with dynamic shapes (`load_part`), else compiled here.

    Raises:
        BackendUnavailable: the variant disagrees with the dynamic graph.
    """
    c, h, w = embedding_shape
    graph = core().read_model(str(folder / MODEL_XML))
    graph.reshape({graph.inputs[0]: [1, c, h, w], graph.inputs[1]: [1, 2, c], graph.inputs[2]: [1, c, 1, 1]})
    static = _compile(folder, precision, graph)
    dynamic = dynamic if dynamic is not None else _compile(folder, precision)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in ((1, c, h, w), (1, 2, c), (1, c, 1, 1))]
    ref, out = _run(dynamic, inputs), _run(static, inputs)
    check = agreement(torch.from_numpy(ref[0]), torch.from_numpy(out[0]))
    check["iou_max_abs"] = float(np.abs(ref[1] - out[1]).max())
    if check["dice"] < MIN_CHECK[precision]["dice"] or check["iou_max_abs"] > BOX_VARIANT_IOU_ATOL[precision]:
        raise BackendUnavailable(f"decoder box variant disagrees with the dynamic graph: {check}")
    return static


def _run(compiled, inputs: list[np.ndarray]) -> list[np.ndarray]:
    result = compiled.create_infer_request().infer(inputs)
    return [result[out] for out in compiled.outputs]


def _build(part: str, model, precisions: tuple[str, ...], eager_decoder: nn.Module):
    """``build(staging)`` for `export_folder`: convert, save fp32 IR, check each precision vs eager."""

    def build(staging: Path) -> dict[str, Any]:
        ov = import_openvino()
        ref = _check_inputs(model, eager_decoder)
        with torch.inference_mode():
            if part == "encoder":
                graph = ov.convert_model(model.image_encoder, example_input=ref["image"])
            else:
                c, h, w = model.embedding_shape
                graph = ov.convert_model(
                    _DecoderGraph(eager_decoder, ref["pe"]).eval(),
                    example_input=(ref["embedding"], ref["sparse"], ref["dense"]),
                    input=[ov.PartialShape([1, c, h, w]), ov.PartialShape([-1, -1, c]),
                           ov.PartialShape([-1, c, -1, -1])])
        ov.save_model(graph, str(staging / MODEL_XML), compress_to_fp16=False)
        checks = {}
        for precision in precisions:
            compiled = _compile(staging, precision)
            if part == "encoder":
                out = torch.from_numpy(_run(compiled, [ref["image"].numpy()])[0])
                checks[precision] = agreement(ref["embedding"], out)
            else:
                out = _run(compiled, [ref[k].numpy() for k in ("embedding", "sparse", "dense")])
                checks[precision] = {**agreement(ref["masks"][:, :1], torch.from_numpy(out[0][:, :1])),
                                     "iou_max_abs": float(np.abs(out[1] - ref["iou"].numpy()).max())}
            logger.info("openvino %s %s vs eager on the check input: %s", part, precision, checks[precision])
        return {"checks": checks}

    return build


def load_part(part: str, model, precision: str, root: Path, *, precisions: tuple[str, ...],
              eager_decoder: nn.Module | None = None) -> tuple[Any, dict[str, Any]]:
    """Compiled OpenVINO model of ``part`` (``"encoder"``/``"decoder"``) for ``precision``.

    Exports into ``root`` when no sound export exists; an export that then fails to read or compile
    is discarded and rebuilt once.

    Args:
        precisions: every precision to check at export time (the requested one among them).
        eager_decoder: the decoder to export (default ``model.mask_decoder``).

    Returns:
        ``(compiled model, facts)``: facts holds the folder and the export check for ``precision``.

    Raises:
        BackendUnavailable: the export cannot be made, or its check against eager fails.
    """
    eager_decoder = eager_decoder if eager_decoder is not None else model.mask_decoder
    fingerprint = encoder_fingerprint(model) if part == "encoder" else decoder_fingerprint(model, eager_decoder)
    key = ExportKey(part=part, fingerprint=fingerprint, backend="openvino", runtime_version=runtime_version())
    build = _build(part, model, precisions, eager_decoder)
    for attempt in (1, 2):
        folder = export_folder(root, key, build, lineage=model.spec.name)
        try:
            compiled = _compile(folder, precision)
            break
        except RuntimeError as exc:  # openvino reports unreadable IR as RuntimeError
            if attempt == 2:
                raise BackendUnavailable(f"{part} export {folder} does not compile: {exc}") from exc
            logger.warning("export %s does not compile (%s): rebuilding it", folder, exc)
            from samri.model.export_cache import discard

            discard(folder)
    check = read_manifest(folder).get("checks", {}).get(precision)
    if check is None:
        raise BackendUnavailable(f"{part} export {folder} was not checked for {precision}")
    low = {k: check[k] for k, floor in MIN_CHECK[precision].items() if k in check and check[k] < floor}
    if low:
        raise BackendUnavailable(f"{part} {precision} disagrees with eager PyTorch on the check input {low} "
                                 f"(needs {MIN_CHECK[precision]})")
    return compiled, {"folder": str(folder), "check": check}


def export_is_sound(root: Path, key: ExportKey) -> bool:
    """True when ``key``'s export folder under ``root`` may be served (tests, diagnostics)."""
    return check_export(Path(root) / key.folder_name(), key) is None


class _OpenVinoPart(nn.Module):
    """Shared parts of the wrappers: one infer request per thread, eager fallback on errors."""

    def __init__(self, compiled, eager: nn.Module, *, part: str, precision: str) -> None:
        super().__init__()
        self.eager = eager
        self.compiled = compiled
        self.part = part
        self.precision = precision
        self.failed: str | None = None
        self._local = threading.local()

    def _infer(self, inputs: list[np.ndarray], compiled=None) -> list[np.ndarray]:
        """Run ``compiled`` (default: the main graph) on this thread's infer request for it."""
        compiled = compiled if compiled is not None else self.compiled
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        result = request.infer(inputs, share_inputs=True)  # outputs are copies (share_outputs=False)
        return [result[out] for out in compiled.outputs]

    def _fail(self, exc: Exception) -> None:
        if self.failed is None:
            logger.error("openvino %s failed (%s): answering with eager PyTorch from now on", self.part, exc)
        self.failed = str(exc)

    def extra_repr(self) -> str:
        return f"part={self.part}, precision={self.precision}, failed={self.failed is not None}"


class OpenVinoEncoder(_OpenVinoPart):
    """Drop-in for ``model.image_encoder``: ``(B, 3, S, S)`` float -> ``(B, C, h, w)`` float32 (CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed is None and x.device.type == "cpu":
            try:
                arr = np.ascontiguousarray(x.detach().float().numpy())
                return torch.from_numpy(np.concatenate([self._infer([arr[i:i + 1]])[0] for i in range(len(arr))]))
            except RuntimeError as exc:
                self._fail(exc)
        return self.eager(x)


class OpenVinoMaskDecoder(_OpenVinoPart):
    """Drop-in for SAM's ``MaskDecoder`` call (same keywords, same outputs; see its ``forward``).

    Args:
        image_pe: the positional encoding built into the export (``prompt_encoder.get_dense_pe()``);
            a call with another one is answered by the eager decoder.
        box_variant: `compile_box_variant` of the same export (one prompt of 2 sparse tokens, no mask
            prompt), or None.

    Returns:
        ``(masks (B, M, s, s), iou (B, M))`` with ``M = 3`` when ``multimask_output`` else 1.
    """

    def __init__(self, compiled, eager: nn.Module, *, part: str, precision: str, image_pe: torch.Tensor,
                 box_variant=None) -> None:
        super().__init__(compiled, eager, part=part, precision=precision)
        self.box_variant = box_variant
        self.register_buffer("image_pe", image_pe.detach().clone(), persistent=False)
        self._last_pe: tuple[torch.Tensor, bool] | None = None  # (last image_pe seen, equal to ours)

    def _pe_matches(self, image_pe: torch.Tensor) -> bool:
        """True when ``image_pe`` is the built-in one (compared once per tensor object: callers reuse one)."""
        last = self._last_pe
        if last is None or last[0] is not image_pe:
            same = image_pe.shape == self.image_pe.shape and torch.equal(image_pe.detach().cpu(), self.image_pe)
            self._last_pe = last = (image_pe, same)
        return last[1]

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = (image_embeddings, sparse_prompt_embeddings, dense_prompt_embeddings)
        usable = (self.failed is None and image_embeddings.shape[0] == 1 and sparse_prompt_embeddings.shape[1] > 0
                  and all(t.device.type == "cpu" for t in tensors) and self._pe_matches(image_pe))
        if usable:
            dense = dense_prompt_embeddings
            if dense.dim() == 4 and dense.stride(2) == 0 and dense.stride(3) == 0:
                dense = dense[:, :, :1, :1]  # no mask prompt: one vector per prompt, broadcast in the graph
            box_shaped = (self.box_variant is not None and tuple(sparse_prompt_embeddings.shape[:2]) == (1, 2)
                          and tuple(dense.shape[2:]) == (1, 1))
            try:
                masks, iou = self._infer([np.ascontiguousarray(t.detach().float().numpy())
                                          for t in (image_embeddings, sparse_prompt_embeddings, dense)],
                                         self.box_variant if box_shaped else None)
            except RuntimeError as exc:
                self._fail(exc)
                usable = False
        if not usable:
            return self.eager(image_embeddings=image_embeddings, image_pe=image_pe,
                              sparse_prompt_embeddings=sparse_prompt_embeddings,
                              dense_prompt_embeddings=dense_prompt_embeddings, multimask_output=multimask_output)
        pick = slice(1, None) if multimask_output else slice(0, 1)
        return torch.from_numpy(masks[:, pick]), torch.from_numpy(iou[:, pick])
