"""``samri bench --backend torch --backend openvino:bf16 ...``: inference backends side by side.

Every backend serves the same model in one process, and each measurement goes round the backends
in turn (encoder slice by slice, click by click), so a change of load on a shared machine hits all
of them alike and the ratios to PyTorch eager stay comparable. Per backend (``report["backends"]``):
ready time (export or export-cache check, and compile, on a copy of the loaded model), encoder
seconds per slice, the first (uncached) click, cached clicks, and agreement with eager PyTorch on
the benchmark slice (embedding cosine and max abs, mask Dice of the box and box+point clicks).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

#: the reference every ratio and agreement figure is taken against
REFERENCE = "torch"
SECTION_TITLE = "## Inference backends (encoder and click, side by side)"
CONTENTION_TITLE = "## Inference backends with a second process busy on every core"
#: slices per encoder call in the whole-volume figure: the app's precompute worker encodes one slice
#: between two checks for waiting clicks (`Precomputer.batch_size` 1, apps/samri/lib/runtime/precompute.py)
PRECOMPUTE_BATCH = 1


def parse_backend(text: str) -> tuple[str, str, str]:
    """``"openvino:bf16"`` -> ``(name, backend, precision)``; ``"auto"`` -> ``("auto", "auto", "auto")``."""
    from samri.model.backends import BACKENDS, PRECISIONS, check_option

    backend, _, precision = str(text).strip().lower().partition(":")
    backend = check_option("backend", backend, BACKENDS)
    precision = check_option("backend precision", precision or "auto", PRECISIONS)
    return text.strip().lower(), backend, precision


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else round(2.0 * float((a & b).sum()) / total, 4)


def backend_figures(backends: list[str], *, model_name: str | None = None, checkpoint: str | None = None,
                    decoder: str | None = None, studies: str | Path = "data/studies", repeats: int = 30,
                    encoder_slices: int = 5, export_dir: str | os.PathLike | None = None,
                    random_weights: bool = False, volume_figures: bool = False) -> dict[str, Any]:
    """Measure each of ``backends`` (``torch``, ``openvino``, ``openvino:fp32``, ``auto``, ...) in turn.

    Args:
        backends: backend specs (`parse_backend`); ``torch`` is added first when missing (the reference).
        repeats: cached clicks per kind and backend.
        encoder_slices: slices encoded per backend.
        export_dir: the export cache (default `samri.model.export_cache.default_export_dir`).
        random_weights: build the model with random weights (speed only: e.g. SAM ViT-B, whose
            checkpoint cannot be downloaded here; agreement is then between backends on those weights).
        volume_figures: also 3D propagation from one box into uncached slices (every backend) and the
            whole axial stack encoded as the precompute worker does, from an empty cache (every backend
            but the reference: minutes in eager); `_volume_figures`.

    Returns:
        ``{"reference": "torch", "backends": {name: figures}, "load_average_1m": {"start", "end"}}``.
    """
    import torch

    from samri.annotator import interior_point
    from samri.bench.inprocess import bench_structure, percentiles, timed_ms
    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache, encode_slices
    from samri.inference.prompts import SlicePrompt
    from samri.inference.segmenter import Segmenter, mask_box
    from samri.model.backends import apply_backend
    from samri.model.builders import load_model
    from samri.model.openvino_runtime import agreement
    from samri.volume import load_image, prepare_volume

    specs = [parse_backend(b) for b in backends]
    if REFERENCE not in [name for name, _, _ in specs]:
        specs.insert(0, parse_backend(REFERENCE))
    if len({name for name, _, _ in specs}) != len(specs):
        raise SamriInputError("backend", backends, "each backend once")
    load_start = round(os.getloadavg()[0], 2)
    studies = Path(studies)
    study, image_path, gt, label = bench_structure(studies)
    registry = load_registry()
    spec = registry.spec(model_name)
    if random_weights:
        import dataclasses

        spec = dataclasses.replace(spec, checkpoint=None, random_init=True, decoder=None)
    volume = prepare_volume(load_image(image_path), registry.window)
    axis = 2
    ks = np.flatnonzero(gt.any(axis=(0, 1)))
    mid = int(ks[len(ks) // 2])
    plane = gt[:, :, mid]
    box, point = mask_box(plane), interior_point(plane)

    models, out = {}, {}
    base = load_model(spec, checkpoint=checkpoint, decoder=decoder)  # copied per backend: the same weights
    for name, backend, precision in specs:
        start = time.perf_counter()
        models[name] = apply_backend(copy.deepcopy(base), backend, precision, export_dir=export_dir)
        info = dict(models[name].backend_info)
        out[name] = {"requested": f"{backend}/{precision}", "serves": f"{info['backend']}/{info['precision']}",
                     "ready_s": round(time.perf_counter() - start, 2), "reason": info.get("reason")}
        logger.info("bench backend %s: %s", name, out[name])

    encoder_ms: dict[str, list[float]] = {n: [] for n in models}
    first_ms: dict[str, list[float]] = {n: [] for n in models}
    for i in list(ks[:encoder_slices]):
        for name, model in models.items():
            encoder_ms[name] += timed_ms(lambda m=model, i=i: encode_slices(m, volume, axis, [int(i)]), 1)
    for i in list(ks[-3:]):
        for name, model in models.items():
            fresh = Segmenter(model, EmbeddingCache())  # empty cache: encoder + decoder
            first_ms[name] += timed_ms(
                lambda s=fresh, i=i: s.predict_slice(volume, axis, int(i), SlicePrompt(box=box)), 1)

    segmenters = {n: Segmenter(m, EmbeddingCache()) for n, m in models.items()}
    clicks = {"box": SlicePrompt(box=box), "box_point": SlicePrompt(box=box, points=[point], labels=[1]),
              "points_only": SlicePrompt(points=[point], labels=[1])}
    results = {n: {k: s.predict_slice(volume, axis, mid, p) for k, p in clicks.items()} for n, s in segmenters.items()}
    clicks["refinement"] = None  # per backend: its own previous logits
    click_ms: dict[str, dict[str, list[float]]] = {n: {k: [] for k in clicks} for n in models}
    for _ in range(repeats):
        for kind in clicks:
            for name, seg in segmenters.items():
                prompt = clicks[kind] or SlicePrompt(box=box, points=[point], labels=[1],
                                                     mask_logits=results[name]["box"].low_res_logits)
                click_ms[name][kind] += timed_ms(lambda s=seg, p=prompt: s.predict_slice(volume, axis, mid, p), 1)

    if volume_figures:
        for name, model in models.items():
            out[name]["volume"] = _volume_figures(model, volume, axis, mid, box, precompute=name != REFERENCE)
    ref_emb = encode_slices(models[REFERENCE], volume, axis, [mid])
    ref_enc = float(np.median(encoder_ms[REFERENCE]))
    ref_click = float(np.median(click_ms[REFERENCE]["box"]))
    for name in models:
        emb = encode_slices(models[name], volume, axis, [mid])
        agree = agreement(ref_emb, emb)
        enc = percentiles(encoder_ms[name])
        out[name].update({
            "encoder_s_per_slice": {k: (round(v / 1000.0, 3) if k != "n" else v) for k, v in enc.items()},
            "first_click_ms": percentiles(first_ms[name]),
            "cached_click_ms": {k: percentiles(v) for k, v in click_ms[name].items()},
            "speedup_vs_torch": {"encoder": round(ref_enc / float(np.median(encoder_ms[name])), 2),
                                 "box_click": round(ref_click / float(np.median(click_ms[name]["box"])), 2)},
            "vs_torch": {"embedding_cosine": agree["cosine"], "embedding_max_abs": round(agree["max_abs"], 5),
                         "mask_dice": {k: _dice(results[REFERENCE][k].mask, results[name][k].mask)
                                       for k in ("box", "box_point", "points_only")}},
        })
    from samri.model.backends import cpu_flags, cpu_name, native_bf16

    return {"reference": REFERENCE, "model": spec.name + (" (random weights)" if random_weights else ""),
            "default_model": spec.name == registry.default_model, "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cpu": cpu_name(),
            "cpu_features": {"avx512f": "avx512f" in cpu_flags(), "native_bf16": native_bf16()},
            "data": {"study": study, "label": label, "axis": axis, "slice": mid},
            "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
            "backends": out}


def _volume_figures(model, volume, axis: int, seed: int, box: np.ndarray, *, precompute: bool) -> dict[str, Any]:
    """Whole-volume figures of one backend, each from an empty embedding cache: 3D propagation from
    ``box`` on slice ``seed`` (encoding every slice it reaches), and (``precompute``) every slice along
    ``axis`` encoded in batches of `PRECOMPUTE_BATCH`, as the app's precompute worker does."""
    figures: dict[str, Any] = {"propagation_uncached": uncached_propagation(model, volume, axis, seed, box)}
    if precompute:
        figures["precompute"] = {**whole_stack(model, volume, axis, PRECOMPUTE_BATCH), "batch": PRECOMPUTE_BATCH}
    return figures


def uncached_propagation(model, volume, axis: int, seed: int, box: np.ndarray) -> dict[str, Any]:
    """3D propagation from ``box`` on slice ``seed`` with an empty embedding cache: ``{"slices", "s",
    "s_per_slice"}`` (wall-clock; the result returns to the host, so a GPU has finished)."""
    from samri.inference.embeddings import EmbeddingCache
    from samri.inference.prompts import SlicePrompt
    from samri.inference.segmenter import Segmenter

    start = time.perf_counter()
    run = Segmenter(model, EmbeddingCache()).propagate(volume, axis, {int(seed): SlicePrompt(box=box)})
    seconds = time.perf_counter() - start
    per_slice = seconds / max(len(run.slices), 1)
    return {"slices": len(run.slices), "s": round(seconds, 2), "s_per_slice": round(per_slice, 4)}


def whole_stack(model, volume, axis: int, batch: int) -> dict[str, Any]:
    """Every slice along ``axis`` encoded from an empty cache, ``batch`` slices per call: ``{"slices", "s"}``."""
    from samri.inference.embeddings import EmbeddingCache, get_embeddings

    n = volume.shape[axis]
    start = time.perf_counter()
    get_embeddings(model, volume, EmbeddingCache(), axis, list(range(n)), batch_size=batch)
    return {"slices": n, "s": round(time.perf_counter() - start, 2)}


def section_title(report: dict[str, Any], *, contention: bool = False) -> str:
    """The report's docs/BENCHMARKS.md heading: the default model's two sections, or one per other model."""
    if report.get("default_model", True):
        return CONTENTION_TITLE if contention else SECTION_TITLE
    return f"## Inference backends: {report['model']}" + (" with a second process busy" if contention else "")


def backends_markdown(report: dict[str, Any], command: str = "", *, contention: bool = False) -> list[str]:
    """The docs/BENCHMARKS.md section (lines) for ``report["backends"]`` (`backend_figures`); ``contention``:
    the run made while `samri.bench.contention.busy_process` kept the cores busy."""
    r = report
    busy = (" While it ran, a second process (PyTorch matmuls on every core, default OpenMP settings: "
            "`samri.bench.contention`) kept the CPU busy." if contention else "")
    lines = ["", section_title(r, contention=contention), "",
             f"`{command or 'samri bench --backend torch --backend openvino:fp32 --backend openvino:bf16'}`: "
             f"model `{r['model']}`, `{r['data']['study']}` {r['data']['label']} axis {r['data']['axis']} slice "
             f"{r['data']['slice']}; all backends in one process, measured in turn.{busy} CPU: "
             f"{r.get('cpu', '?')} (AVX-512 {_yes(r, 'avx512f')}, native bf16 {_yes(r, 'native_bf16')}). "
             "1-minute load average "
             f"{r['load_average_1m']['start']} at the start, {r['load_average_1m']['end']} at the end on this "
             f"machine's {r.get('cpus', '?')} shared CPUs (other processes were running): read the ratios more "
             "than the absolute times.", "",
             "| backend (serves) | ready s | encoder s/slice p50 | x eager | first click ms | cached box click "
             "ms p50 / p95 | x eager | box+point / points-only / refinement ms p50 | embedding cosine, max abs "
             "vs eager | mask Dice vs eager (box, box+point, points) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, b in r["backends"].items():
        c, v = b["cached_click_ms"], b["vs_torch"]
        d = v["mask_dice"]
        lines.append(f"| {name} ({b['serves']}) | {b['ready_s']} | {b['encoder_s_per_slice']['p50']} | "
                     f"{b['speedup_vs_torch']['encoder']} | {b['first_click_ms']['p50']} | {c['box']['p50']} / "
                     f"{c['box']['p95']} | {b['speedup_vs_torch']['box_click']} | {c['box_point']['p50']} / "
                     f"{c['points_only']['p50']} / {c['refinement']['p50']} | {v['embedding_cosine']}, "
                     f"{v['embedding_max_abs']} | {d['box']}, {d['box_point']}, {d['points_only']} |")
    lines += _volume_lines(r)
    return lines + ["", "`x eager`: PyTorch eager's p50 over this backend's, same run. `ready s`: export (first use of "
                    "these weights) or export-cache check, and compile. The agreement columns are one "
                    "slice; the equivalence thresholds over several structures are in "
                    "tests/samri/model/test_backends.py (`REAL_LIMITS`, with the figures they come from)."]


def _volume_lines(report: dict[str, Any]) -> list[str]:
    """Markdown rows of the whole-volume figures (`_volume_figures`), when the run took them."""
    rows = [(name, b["volume"]) for name, b in report["backends"].items() if "volume" in b]
    if not rows:
        return []
    lines = ["", "| backend | 3D propagation from one box, uncached: s per slice (slices, s) | whole axial stack "
             "encoded from an empty cache: s (slices, batch) |", "|---|---|---|"]
    for name, v in rows:
        prop, pre = v["propagation_uncached"], v.get("precompute")
        pre_cell = f"{pre['s']} ({pre['slices']}, {pre['batch']})" if pre else "not measured (eager: minutes)"
        lines.append(f"| {name} | {prop['s_per_slice']} ({prop['slices']}, {prop['s']}) | {pre_cell} |")
    return lines


def _yes(report: dict[str, Any], feature: str) -> str:
    value = report.get("cpu_features", {}).get(feature)
    return "?" if value is None else ("yes" if value else "no")


def update_section(path: str | Path, lines: list[str], title: str = SECTION_TITLE) -> Path:
    """Replace the section starting with ``title`` in a markdown file (up to the next ``## ``), or append it."""
    from samri.io import write_text

    path = Path(path)
    old = path.read_text().splitlines() if path.is_file() else []
    body = list(lines)
    if title in old:
        start = old.index(title)
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        while start > 0 and old[start - 1] == "":
            start -= 1
        new = old[:start] + body + ([""] if end < len(old) else []) + old[end:]
    else:
        new = old + body
    return write_text(path, "\n".join(new).rstrip("\n") + "\n")
