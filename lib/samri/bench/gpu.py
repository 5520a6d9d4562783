"""``samri bench --device cuda``: the PyTorch CUDA path's figures on a GPU.

On CUDA the model is served by PyTorch (`samri.model.backends.resolve_backend`: ``auto`` keeps
PyTorch there), so this measures that path, as served: encoder seconds per slice through
`samri.inference.embeddings.encode_slices` (preprocessing and the copy back to host included),
encoder throughput at several batch sizes (fp32 as served, and bf16 autocast as a probe of what
the card could give), cached and uncached clicks through `samri.inference.segmenter.Segmenter`,
3D propagation and the whole axial stack from an empty cache, the stage-2 (decoder-only) and full
fine-tuning step, agreement with the CPU eager model on the bench slice, and, with ``vit_b``, the
SAM ViT-B image encoder (random weights: speed does not depend on them).

Timings synchronize the device before the clock stops (CUDA kernels run asynchronously).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

SECTION_TITLE = "## PyTorch CUDA on a GPU"
#: batch sizes of the encoder throughput figures
ENCODER_BATCHES = (1, 8, 32)
#: slices per encoder call when the whole stack is encoded on the GPU (the precompute worker's batch on a GPU)
STACK_BATCH = 16


def check_cuda(device: str):
    """The ``torch.device`` for ``device``; a clear error when torch sees no such CUDA device."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SamriInputError("device", device, "a torch device such as cuda or cuda:0") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SamriInputError("device", device, "torch sees no CUDA device on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise SamriInputError("device", device, f"torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


def synced_ms(fn: Callable[[], Any], device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock milliseconds of ``fn`` per call, the device synchronized before each clock read."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def encoder_throughput(encoder, input_size: int, device, batches: Sequence[int], repeats: int) -> dict[str, Any]:
    """Slices per second of ``encoder`` on ``(B, 3, input_size, input_size)`` inputs already on the device.

    Returns ``{"fp32": {B: {"ms_per_batch", "slices_per_s"}}, "bf16_autocast": {...}}``; fp32 is what
    serving runs, bf16 autocast a probe (not served).
    """
    import torch

    out: dict[str, Any] = {}
    for name, dtype in (("fp32", None), ("bf16_autocast", torch.bfloat16)):
        rows = {}
        for b in batches:
            x = torch.randn(int(b), 3, input_size, input_size, device=device)

            def run(x=x, dtype=dtype):
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                            enabled=dtype is not None):
                    encoder(x)
            ms = float(np.median(synced_ms(run, device, repeats, warmup=2)))
            rows[str(b)] = {"ms_per_batch": round(ms, 2), "slices_per_s": round(1000.0 * b / ms, 1)}
        out[name] = rows
    return out


def cuda_figures(*, device: str = "cuda", model_name: str | None = None, checkpoint: str | None = None,
                 decoder: str | None = None, studies: str | Path = "data/studies", repeats: int = 30,
                 batches: Sequence[int] = ENCODER_BATCHES, vit_b: bool = True, stack: bool = True,
                 train: bool = True) -> dict[str, Any]:
    """Measure the PyTorch path on ``device``; returns a JSON-friendly report (`cuda_markdown` renders it).

    Args:
        device: ``cuda``, ``cuda:1``... (``cpu`` runs the same code: the tests use it).
        repeats: timed calls per click kind and per throughput batch.
        batches: encoder throughput batch sizes.
        vit_b: also SAM ViT-B's image encoder with random weights (1024 px).
        stack: also the whole axial stack from an empty cache and 3D propagation into uncached slices.
        train: also the stage-2 and full fine-tuning steps (`samri.bench.inprocess.training_step_figures`).
    """
    import torch

    from samri.annotator import interior_point
    from samri.bench.backends import _dice, uncached_propagation, whole_stack
    from samri.bench.inprocess import bench_structure, percentiles, training_step_figures
    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache, encode_slices
    from samri.inference.prompts import SlicePrompt
    from samri.inference.segmenter import Segmenter, mask_box
    from samri.model.backends import apply_backend
    from samri.model.builders import load_model
    from samri.model.openvino_runtime import agreement
    from samri.volume import load_image, prepare_volume

    dev = check_cuda(device)
    study, image_path, gt, label = bench_structure(Path(studies))
    registry = load_registry()
    spec = registry.spec(model_name)
    volume = prepare_volume(load_image(image_path), registry.window)
    axis = 2
    ks = np.flatnonzero(gt.any(axis=(0, 1)))
    mid = int(ks[len(ks) // 2])
    box, point = mask_box(gt[:, :, mid]), interior_point(gt[:, :, mid])

    start = time.perf_counter()
    cpu_model = load_model(spec, checkpoint=checkpoint, decoder=decoder)
    model = apply_backend(copy.deepcopy(cpu_model).to(dev), "auto", "auto")  # what `auto` serves there
    load_s = time.perf_counter() - start

    encode_ms = synced_ms(lambda: encode_slices(model, volume, axis, [mid]), dev, min(repeats, 10), warmup=2)
    throughput = encoder_throughput(model.image_encoder, model.input_size, dev, batches, max(3, repeats // 3))

    first_ms = []
    for i in ks[-5:]:
        fresh = Segmenter(model, EmbeddingCache())
        first_ms += synced_ms(lambda s=fresh, i=i: s.predict_slice(volume, axis, int(i), SlicePrompt(box=box)),
                              dev, 1, warmup=0)
    segmenter = Segmenter(model, EmbeddingCache())
    clicks = {"box": SlicePrompt(box=box), "box_point": SlicePrompt(box=box, points=[point], labels=[1]),
              "points_only": SlicePrompt(points=[point], labels=[1])}
    answers = {k: segmenter.predict_slice(volume, axis, mid, p) for k, p in clicks.items()}
    clicks["refinement"] = SlicePrompt(box=box, points=[point], labels=[1],
                                       mask_logits=answers["box"].low_res_logits)
    cached = {k: percentiles(synced_ms(lambda p=p: segmenter.predict_slice(volume, axis, mid, p), dev, repeats))
              for k, p in clicks.items()}
    seeds = {mid: SlicePrompt(box=box)}
    warm = segmenter.propagate(volume, axis, seeds)
    prop_ms = float(np.median(synced_ms(lambda: segmenter.propagate(volume, axis, seeds), dev, 3, warmup=0)))

    cpu_seg = Segmenter(cpu_model, EmbeddingCache())
    agree = agreement(encode_slices(cpu_model, volume, axis, [mid]), encode_slices(model, volume, axis, [mid]))
    vs_cpu = {"embedding_cosine": agree["cosine"], "embedding_max_abs": round(agree["max_abs"], 5),
              "mask_dice": {k: _dice(cpu_seg.predict_slice(volume, axis, mid, clicks[k]).mask, answers[k].mask)
                            for k in ("box", "box_point", "points_only")}}

    report: dict[str, Any] = {
        "machine": _machine(dev),
        "model": {"name": spec.name, "input_size": model.input_size, "decoder": model.decoder_info or None,
                  "serves": dict(model.backend_info), "load_s": round(load_s, 2)},
        "data": {"study": study, "label": label, "shape": list(volume.shape), "axis": axis, "slice": mid},
        "encoder_ms_per_slice": percentiles(encode_ms),
        "encoder_throughput": throughput,
        "first_click_ms": percentiles(first_ms),
        "cached_click_ms": cached,
        "uncached_over_cached_box_click": round(percentiles(first_ms)["p50"] / cached["box"]["p50"], 1),
        "propagation_3d": {"slices": len(warm.slices), "ms_per_slice_cached": round(prop_ms / len(warm.slices), 2)},
        "vs_cpu_eager": vs_cpu,
    }
    if stack:
        uncached = uncached_propagation(model, volume, axis, mid, box)
        report["propagation_3d"]["uncached_s_per_slice"] = uncached["s_per_slice"]
        report["whole_stack"] = {str(b): whole_stack(model, volume, axis, b) for b in (1, STACK_BATCH)}
    if train:
        report["training_step"] = {str(b): training_step_figures(model, volume, gt, axis, batch=b, repeats=5)
                                   for b in (8, 32)}
    if vit_b:
        report["sam_vit_b"] = _vit_b_figures(registry, dev, repeats)
    if dev.type == "cuda":
        report["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return report


def _vit_b_figures(registry, dev, repeats: int) -> dict[str, Any]:
    """SAM ViT-B's image encoder (random weights, 1024 px): ms per slice and throughput."""
    from samri.model.builders import load_model

    spec = dataclasses.replace(registry.spec("sam_vit_b"), checkpoint=None, random_init=True, decoder=None)
    model = load_model(spec, device=dev)
    return {"input_size": model.input_size,
            "encoder_throughput": encoder_throughput(model.image_encoder, model.input_size, dev, (1, 8),
                                                     max(3, repeats // 5))}


def _machine(dev) -> dict[str, Any]:
    import platform

    import torch

    out = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
           "device": str(dev), "torch_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        out.update({"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                    "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
                    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32})
    return out


def cuda_markdown(r: dict[str, Any], command: str = "") -> list[str]:
    """The docs/BENCHMARKS.md section (lines) for a `cuda_figures` report."""
    m, c = r["machine"], r["cached_click_ms"]
    lines = ["", SECTION_TITLE, "",
             f"`{command or 'samri bench --device cuda'}` on {m.get('gpu', m['device'])} "
             f"({m.get('gpu_memory_gb', '?')} GB, {m.get('multiprocessors', '?')} SMs), torch {m['torch']}, "
             f"CUDA {m.get('cuda', '?')}, host {m['cpus']} CPUs. Model `{r['model']['name']}` "
             f"({r['model']['input_size']} px), served by {r['model']['serves']['backend']}/"
             f"{r['model']['serves']['precision']} (`auto` keeps PyTorch on CUDA); `{r['data']['study']}` "
             f"{r['data']['label']} axis {r['data']['axis']} slice {r['data']['slice']}. Every time is "
             "wall-clock with the device synchronized.", "",
             "| figure | p50 | p95 |", "|---|---|---|",
             f"| encoder, one slice (preprocessing and copy back included), ms | {r['encoder_ms_per_slice']['p50']} "
             f"| {r['encoder_ms_per_slice']['p95']} |",
             f"| first (uncached) box click, ms | {r['first_click_ms']['p50']} | {r['first_click_ms']['p95']} |"]
    for kind, text in (("box", "box"), ("box_point", "box + point"), ("points_only", "points only"),
                       ("refinement", "refinement (previous logits)")):
        lines.append(f"| cached click, {text}, ms | {c[kind]['p50']} | {c[kind]['p95']} |")
    p = r["propagation_3d"]
    lines.append(f"| 3D propagation, ms per cached slice ({p['slices']} slices) | {p['ms_per_slice_cached']} | |")
    if "uncached_s_per_slice" in p:
        uncached_ms = round(1000 * p["uncached_s_per_slice"], 1)
        lines.append(f"| 3D propagation into uncached slices, ms per slice | {uncached_ms} | |")
    for batch, w in r.get("whole_stack", {}).items():
        lines.append(f"| whole axial stack ({w['slices']} slices, batch {batch}) from an empty cache, s | {w['s']} | |")
    lines += ["", f"Uncached / cached box click: {r['uncached_over_cached_box_click']}x. Against the CPU eager model "
              f"on the bench slice: embedding cosine {r['vs_cpu_eager']['embedding_cosine']}, max abs "
              f"{r['vs_cpu_eager']['embedding_max_abs']}, mask Dice "
              + ", ".join(f"{k} {v}" for k, v in r["vs_cpu_eager"]["mask_dice"].items()) + "."]
    rows = [(r["model"]["name"], r["encoder_throughput"])]
    if "sam_vit_b" in r:
        rows.append(("sam_vit_b (random weights, 1024 px)", r["sam_vit_b"]["encoder_throughput"]))
    batches = sorted({int(b) for _, table in rows for b in table["fp32"]})
    lines += ["", "| image encoder | precision | " + " | ".join(f"batch {b}: slices/s (ms per batch)" for b in batches)
              + " |", "|---|---|" + "---|" * len(batches)]
    for name, table in rows:
        for precision, label in (("fp32", "fp32 (served)"), ("bf16_autocast", "bf16 autocast (probe)")):
            cells = [(lambda v: f"{v['slices_per_s']} ({v['ms_per_batch']})" if v else "not measured")(
                table[precision].get(str(b))) for b in batches]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    if "training_step" in r:
        lines += ["", "| training step (DiceFocal, AdamW) | decoder only (cached embeddings), ms p50 | "
                  "full model (encoder forward and backward), ms p50 | full / decoder |", "|---|---|---|---|"]
        for batch, t in r["training_step"].items():
            lines.append(f"| batch {batch} | {t['decoder_step_ms']['p50']} | {t['full_step_ms']['p50']} | "
                         f"{t['full_over_decoder']} |")
    if "peak_gpu_memory_mb" in r:
        lines += ["", f"Peak GPU memory allocated by torch over the whole run (the largest batches included): "
                  f"{r['peak_gpu_memory_mb']} MB."]
    return lines
