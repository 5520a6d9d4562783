"""``samri bench``: speed and memory figures measured in one run on this machine.

Figures (all wall-clock, on the sample MRI; ratios are taken within the run):
encoder seconds per slice, the first (uncached) click, cached clicks (box, box+point, points-only),
3D propagation per slice with cached embeddings, peak resident memory, and optionally the HTTP
round trip through a live MONAI Label server, alone or with several clients at once (``--clients``).
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: (study id, label name) tried in order for the benchmark structure
BENCH_STRUCTURES = (("colin27_t1", "Putamen_L"), ("mni152_t1", "white_matter"))


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(arr, 50)), 2), "p95": round(float(np.percentile(arr, 95)), 2),
            "n": int(arr.size)}


def timed_ms(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def bench_structure(studies: Path) -> tuple[str, Path, np.ndarray, str]:
    """(study id, image path, ``(X, Y, Z)`` bool ground truth, label name) for the benchmark."""
    import nibabel as nib

    from samri.labels import LABEL_NAMES_FILE, load_label_names
    from samri.sample_data import write_sample_studies

    if not (studies / LABEL_NAMES_FILE).is_file():
        write_sample_studies(studies)
    names = load_label_names(studies)
    for study, label in BENCH_STRUCTURES:
        image = studies / f"{study}.nii.gz"
        if image.is_file() and label in names.get(study, {}):
            gt = np.asarray(nib.load(str(studies / "labels" / "final" / f"{study}.nii.gz")).dataobj)
            return study, image, gt == names[study][label], label
    raise FileNotFoundError(f"no benchmark structure found in {studies}")


def training_step_figures(model, volume, gt: np.ndarray, axis: int, batch: int = 4,
                          repeats: int = 3) -> dict[str, Any]:
    """A stage-2 (decoder-only, cached embeddings) step vs a full-model step on the same batch.

    Both use the same slices, box prompts, DiceFocal loss and AdamW; the full step also runs the
    image encoder forward and backward, as end-to-end fine-tuning would.
    """
    import copy

    from monai.losses import DiceFocalLoss

    from samri.geometry import SliceGeometry, in_plane_axes, take_slice
    from samri.inference.embeddings import encode_slices
    from samri.inference.prompts import SlicePrompt
    from samri.inference.segmenter import mask_box
    from samri.intensity import slice_to_model_input
    from samri.train.stage2 import decoder_forward, encode_prompts, low_res_target

    ks = np.flatnonzero(gt.any(axis=(0, 1)))
    picks = [int(k) for k in np.linspace(ks[0], ks[-1], batch).round()]
    rows, cols = in_plane_axes(axis)
    geoms = [SliceGeometry(volume.shape[rows], volume.shape[cols], model.input_size)] * len(picks)
    masks = [take_slice(gt, axis, k) for k in picks]
    prompts = [SlicePrompt(box=mask_box(m)) for m in masks]
    device = model.device
    targets = torch.stack([low_res_target(g, m, model.low_res_size) for g, m in zip(geoms, masks)]).to(device)
    loss_fn = DiceFocalLoss(sigmoid=True, lambda_dice=1.0, lambda_focal=10.0, gamma=2.0)
    cached = encode_slices(model, volume, axis, picks).to(device)
    images = torch.stack([slice_to_model_input(take_slice(volume.windowed, axis, k),
                                               model.preprocessing) for k in picks]).to(device)

    def make_step(full: bool):
        net = copy.deepcopy(model)  # the caller's model stays untouched
        for p in net.parameters():
            p.requires_grad_(full)
        for p in net.mask_decoder.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.1)
        pe = net.prompt_encoder.get_dense_pe().detach()

        def step():
            emb = net.image_encoder(images) if full else cached
            sparse, dense = encode_prompts(net, geoms, prompts)
            logits, _ = decoder_forward(net, net.mask_decoder, emb, sparse, dense, pe)
            loss = loss_fn(logits, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":  # kernels run asynchronously: time the step, not its launch
                torch.cuda.synchronize(device)
        return step

    decoder_ms = timed_ms(make_step(False), repeats + 1)[1:]
    full_ms = timed_ms(make_step(True), repeats + 1)[1:]
    return {"batch": batch, "decoder_step_ms": percentiles(decoder_ms), "full_step_ms": percentiles(full_ms),
            "full_over_decoder": round(float(np.median(full_ms) / np.median(decoder_ms)), 1)}


def run_benchmarks(*, model_name: str | None = None, checkpoint: str | None = None, decoder: str | None = None,
                   studies: str | Path = "data/studies", repeats: int = 30, http: bool = False,
                   train: bool = True, clients: int = 0) -> dict[str, Any]:
    """Measure everything; returns a JSON-friendly report.

    ``clients`` > 0 (with ``http``): also `samri.bench.clients.multi_client_benchmark` on the same server,
    ``repeats`` clicks per client (``report["http_clients"]``).
    """
    from samri.annotator import interior_point
    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache, encode_slices
    from samri.inference.prompts import SlicePrompt
    from samri.inference.segmenter import Segmenter, mask_box
    from samri.model.builders import load_model
    from samri.volume import load_image, prepare_volume

    studies = Path(studies)
    study, image_path, gt, label = bench_structure(studies)
    registry = load_registry()
    start = time.perf_counter()
    model = load_model(registry.spec(model_name), checkpoint=checkpoint, decoder=decoder)
    load_s = time.perf_counter() - start
    image = load_image(image_path)
    volume = prepare_volume(image, registry.window)
    axis = 2
    ks = np.flatnonzero(gt.any(axis=(0, 1)))
    mid = int(ks[len(ks) // 2])
    plane = gt[:, :, mid]
    box, point = mask_box(plane), interior_point(plane)

    encoder_ms = [timed_ms(lambda i=i: encode_slices(model, volume, axis, [i]), 1)[0] for i in ks[:5]]

    first_ms = []
    for i in ks[-5:]:
        fresh = Segmenter(model, EmbeddingCache())  # empty cache: encoder + decoder
        first_ms += timed_ms(lambda i=i: fresh.predict_slice(volume, axis, int(i), SlicePrompt(box=box)), 1)  # noqa: B023 (called at once)

    segmenter = Segmenter(model, EmbeddingCache())
    segmenter.predict_slice(volume, axis, mid, SlicePrompt(box=box))
    clicks = {
        "box": SlicePrompt(box=box),
        "box_point": SlicePrompt(box=box, points=[point], labels=[1]),
        "points_only": SlicePrompt(points=[point], labels=[1]),
    }
    cached = {name: percentiles(timed_ms(lambda p=p: segmenter.predict_slice(volume, axis, mid, p), repeats))
              for name, p in clicks.items()}
    refine_prev = segmenter.predict_slice(volume, axis, mid, clicks["box"])
    refine = SlicePrompt(box=box, points=[point], labels=[1], mask_logits=refine_prev.low_res_logits)
    cached["refinement"] = percentiles(timed_ms(lambda: segmenter.predict_slice(volume, axis, mid, refine), repeats))

    seeds = {mid: SlicePrompt(box=box)}
    warm = segmenter.propagate(volume, axis, seeds)  # fills the cache for the slices it reaches
    prop_ms = timed_ms(lambda: segmenter.propagate(volume, axis, seeds), 3)
    n_slices = len(warm.slices)
    gt_dice = float(2 * (warm.mask & gt).sum() / max(warm.mask.sum() + gt.sum(), 1))

    first_p50 = percentiles(first_ms)["p50"]
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "device": str(model.device)},
        "model": {"name": model.spec.name, "input_size": model.input_size, "decoder": model.decoder_info or None,
                  "load_s": round(load_s, 2)},
        "data": {"study": study, "label": label, "shape": list(volume.shape), "axis": axis, "slice": mid},
        "encoder_s_per_slice": {k: (round(v / 1000.0, 3) if k != "n" else v)
                                for k, v in percentiles(encoder_ms).items()},
        "first_click_ms": percentiles(first_ms),
        "cached_click_ms": cached,
        "uncached_over_cached_box_click": round(first_p50 / cached["box"]["p50"], 1),
        "propagation_3d": {"slices": n_slices, "ms_per_slice_cached": round(float(np.median(prop_ms)) / n_slices, 2),
                           "dice_3d_vs_ground_truth": round(gt_dice, 3)},
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_serving": peak_rss_mb(),  # before the training-step comparison, which needs far more
        "targets": {"cached_click_p50_ms": 50, "uncached_over_cached": 15, "propagation_ms_per_slice": 80},
    }
    if train:
        report["training_step"] = training_step_figures(model, volume, gt, axis)
        report["peak_rss_mb"] = peak_rss_mb()
    if http:
        report["http"], clients_report = _http_figures(studies, study, image_path, mid, box, point, repeats, clients)
        if clients_report is not None:
            report["http_clients"] = clients_report
        report["peak_rss_mb"] = peak_rss_mb()
    return report


#: the study whose AAL structures the ``--clients`` run clicks on.
CLIENTS_STUDY = "colin27_t1"


def _http_figures(studies: Path, study: str, image_path: Path, mid: int, box: np.ndarray, point: np.ndarray,
                  repeats: int, clients: int = 0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Round trips of samri_2d clicks through a real server (see lib/samri/testing/server.py).

    The server runs on a temporary copy of ``studies`` (it writes its datastore index there).
    Returns (one client's figures, the ``clients`` run's report or None).
    """
    import shutil
    import tempfile

    from samri.bench.clients import load_truth, multi_client_benchmark
    from samri.testing.server import http_click_benchmark, running_server

    params = {"roi": [int(box[0]), int(box[2]), int(box[1]), int(box[3]), mid, mid],
              "foreground": [[int(point[0]), int(point[1]), mid]], "slice": mid}
    clients_report = None
    with tempfile.TemporaryDirectory(prefix="samri_bench_studies_") as scratch:
        copy = Path(scratch) / "studies"
        shutil.copytree(studies, copy)
        with running_server(copy) as base_url:
            single = http_click_benchmark(base_url, study, params, repeats)
            if clients and not (copy / "labels" / "final" / f"{CLIENTS_STUDY}.nii.gz").is_file():
                clients_report = {"skipped": f"needs {CLIENTS_STUDY} with AAL labels (`samri sample-data`)"}
            elif clients:
                truth, names = load_truth(copy, CLIENTS_STUDY)
                clients_report = multi_client_benchmark(base_url, CLIENTS_STUDY, truth, names, clients=clients,
                                                        clicks=repeats)
    return single, clients_report


def clients_markdown(c: dict[str, Any]) -> list[str]:
    """The ``--clients`` section of docs/BENCHMARKS.md (lines), from ``report["http_clients"]``."""
    if "skipped" in c:
        return ["", "## Several clients at once", "", f"Skipped: {c['skipped']}."]
    t, w, info = c["targets"], c["with_3d"], c["info_during_3d"]
    ok = c["correct"]
    lines = ["", f"## {c['clients']} clients at once, one more running a 3D request", "",
             f"`samri bench --http --clients {c['clients']} --repeats {c['clicks_per_client']}`: "
             f"{c['clicks_per_client']} timed clicks per client and phase. Each client clicks (`samri_2d`, closed "
             f"loop, think time {c['think_s']} s) on its own AAL structure of `{c['image']}`, alternating between "
             f"{len(next(iter(c['slices'].values())))} slices encoded in a warm-up; "
             f"client-3d sends `samri_3d` over {c['request_3d']['roi_slices']} uncached slices of "
             f"{c['structures']['client-3d']} ({c['request_3d']['seconds']} s, while the clicks ran; "
             f"{c['request_3d']['filled_slices']} slices filled"
             + (", cut short by the server ({reason} after {slices_done} slices, {seconds} s)".format(
                 **{"reason": "?", "slices_done": "?", "seconds": "?", **c["request_3d"]["partial"]})
                if c["request_3d"].get("partial") else "")
             + "). "
             f"Latency is send to last byte; phases: one client alone, all clients, all clients during the 3D request. "
             f"1-minute load average {c['load_average_1m']['start']} at the start, {c['load_average_1m']['end']} "
             f"at the end, on this machine's shared CPUs.", "",
             "| client (structure) | alone p50 / p95 ms | all clients p50 / p95 ms | during 3D p50 / p95 ms |",
             "|---|---|---|---|"]
    solo = c["solo"]["latency_by_client"]
    for name, stats in c["concurrent"]["latency_by_client"].items():
        alone = f"{solo[name]['p50_ms']} / {solo[name]['p95_ms']}" if name in solo else ""
        during = w["latency_by_client"].get(name, {})
        lines.append(f"| {name} ({c['structures'][name]}) | {alone} | {stats.get('p50_ms')} / {stats.get('p95_ms')} "
                     f"| {during.get('p50_ms')} / {during.get('p95_ms')} (n {during.get('n', 0)}) |")
    lines += ["", "| figure | value | target |", "|---|---|---|",
              f"| cached clicks during the 3D request, p95 ms (all clients) | {w['all'].get('p95_ms')} | "
              f"<= {t['cached_click_p95_ms_during_3d']:.0f} |",
              f"| `/info/` during the 3D request, p50 / p95 ms (n {info.get('n', 0)}) | "
              f"{info.get('p50_ms')} / {info.get('p95_ms')} | p95 <= {t['info_p95_ms_during_3d']:.0f} |",
              f"| cached clicks/s: one client alone | {c['solo']['clicks_per_s']} | |",
              f"| cached clicks/s: {c['clients']} clients | {c['concurrent']['clicks_per_s']} "
              f"(x{c['throughput_ratio']}) | >= x{t['throughput_ratio_min']:g} |",
              f"| cached clicks/s: {c['clients']} clients during the 3D request | {w['clicks_per_s']} "
              f"(x{c['throughput_ratio_with_3d']}) | |",
              "", f"Answers checked: {ok['answers']}, wrong: {ok['n_failures']} (each 2D mask only on its slice, "
              f"non-empty, Dice >= {ok['dice_floor']} against its own structure and < 0.2 against the others'; "
              f"the 3D mask inside its ROI, Dice >= {ok['dice_floor_3d']}). Lowest Dice per client: "
              + ", ".join(f"{k} {v}" for k, v in ok["min_dice_by_client"].items()) + "."]
    return lines + [f"- {f}" for f in ok["failures"]]


#: Where the training figures that are not timings live (they take an hour, not a bench run).
TRAINING_REPORT_LINE = ("Fine-tuning wall time on 3 annotated studies and the shipped decoder's Dice on held-out "
                        "structures and contrasts: [DECODER.md](DECODER.md) (`make default-decoder`, `make heldout`).")


def write_markdown(report: dict[str, Any], path: str | Path) -> Path:
    """Render docs/BENCHMARKS.md from a report (regenerate with the command it names)."""
    c = report["cached_click_ms"]
    lines = [
        "# SAMRI benchmarks",
        "",
        "Generated by `make bench` (`samri bench --json docs/bench.json --markdown docs/BENCHMARKS.md --http`).",
        f"Machine: {report['machine']['platform']}, {report['machine']['torch_threads']} torch threads, "
        f"device {report['machine']['device']}, torch {report['machine']['torch']}, "
        f"1-minute load average at the end {report['machine'].get('load_average_1m_at_end', 'n/a')} "
        f"on {report['machine'].get('cpus', '?')} CPUs (other work on the machine slows every figure).",
        f"Model: `{report['model']['name']}` ({report['model']['input_size']} px input), PyTorch eager in this "
        "table and the training table (the served backend beside it: \"Inference backends\" below). Data: "
        f"`{report['data']['study']}` {report['data']['shape']}, structure {report['data']['label']}, "
        f"axis {report['data']['axis']} slice {report['data']['slice']}.",
        "",
        "| figure | p50 | p95 | target |",
        "|---|---|---|---|",
        f"| encoder, s per slice | {report['encoder_s_per_slice']['p50']} | {report['encoder_s_per_slice']['p95']} | |",
        f"| first (uncached) click, ms | {report['first_click_ms']['p50']} | {report['first_click_ms']['p95']} | |",
        f"| cached click, box, ms | {c['box']['p50']} | {c['box']['p95']} | <= 50 |",
        f"| cached click, box + point, ms | {c['box_point']['p50']} | {c['box_point']['p95']} | |",
        f"| cached click, points only, ms | {c['points_only']['p50']} | {c['points_only']['p95']} | |",
        f"| cached refinement click, ms | {c['refinement']['p50']} | {c['refinement']['p95']} | |",
        f"| 3D propagation, ms per cached slice | {report['propagation_3d']['ms_per_slice_cached']} | | <= 80 |",
        "",
        f"Uncached / cached box click: **{report['uncached_over_cached_box_click']}x** (target >= 15x). "
        f"3D propagation from one box reached {report['propagation_3d']['slices']} slices "
        f"(3D Dice vs ground truth {report['propagation_3d']['dice_3d_vs_ground_truth']}). "
        f"Peak RSS {report.get('peak_rss_mb_serving', report['peak_rss_mb'])} MB for the serving figures, "
        f"{report['peak_rss_mb']} MB at the end (the full-model training step and the HTTP run included). "
        f"Model load {report['model']['load_s']} s.",
    ]
    if "training_step" in report:
        t = report["training_step"]
        lines += ["", f"## Training step (batch of {t['batch']} slices, box prompts, DiceFocal + AdamW)", "",
                  "| step | p50 ms | p95 ms |", "|---|---|---|",
                  f"| stage 2: mask decoder on cached embeddings | {t['decoder_step_ms']['p50']} "
                  f"| {t['decoder_step_ms']['p95']} |",
                  f"| full model (encoder forward + backward too) | {t['full_step_ms']['p50']} "
                  f"| {t['full_step_ms']['p95']} |",
                  "",
                  f"A decoder step is **{t['full_over_decoder']}x** cheaper than a full-model step (target >= 15x).",
                  "", TRAINING_REPORT_LINE]
    if "http" in report:
        h = report["http"]
        served = h.get("backend") or {}
        lines += ["", "## HTTP round trip (samri_2d through `monailabel start_server`)", "",
                  f"Served by {served.get('backend', '?')} {served.get('precision', '')} (the server's default "
                  "conf; no environment variable set).", "",
                  "| figure | p50 | p95 | target |", "|---|---|---|---|",
                  f"| first click, ms | {h['first_click_ms']} | | |",
                  f"| cached click, ms | {h['cached_click_ms']['p50']} | {h['cached_click_ms']['p95']} | <= 150 |"]
        if "ohif_click_ms" in h:
            o, checked = h["ohif_click_ms"], h["ohif_refined"]
            lines += [f"| cached click as OHIF sends it, ms | {o['p50']} | {o['p95']} | <= 150 |", "",
                      "The cached click is Slicer's (`client_id`, a box and a point, `reset_state`). As OHIF sends it: "
                      f"points only, no `client_id`, each request every click so far and one more on the same slice "
                      f"({h['ohif']['n']} timed), so the server finds the answer to the request before in its click "
                      f"history and refines it; {checked['refined']} of {checked['checked']} checks (one more click "
                      "after each series, `output=all`) reported a refined slice."]
    if "http_clients" in report:
        lines += clients_markdown(report["http_clients"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = other_sections(path.read_text().splitlines() if path.is_file() else [], lines)
    from samri.io import write_text

    return write_text(path, "\n".join(lines + kept).rstrip("\n") + "\n")


def other_sections(old: list[str], new: list[str]) -> list[str]:
    """The ``## `` sections of ``old`` whose titles ``new`` does not have, in order, each after a blank line.

    Other commands write their own sections into the same file (`samri.bench.backends.update_section`:
    ``make bench-vit-b``) and some are written by hand (the int8 probe); a full ``make bench`` keeps them.
    A section of a kind this writer owns but did not write this time (e.g. "Several clients" without
    ``--clients``) is dropped: its figures would no longer match the run above it.
    """
    owned = ("## Training step", "## HTTP round trip", "## Several clients", "clients at once, one more running")
    titles = {line for line in new if line.startswith("## ")}
    sections: list[list[str]] = []
    for line in old:
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    out: list[str] = []
    for section in sections:
        title = section[0]
        if title in titles or any(mark in title for mark in owned):
            continue
        while section and section[-1] == "":
            section.pop()
        out += [""] + section
    return out
