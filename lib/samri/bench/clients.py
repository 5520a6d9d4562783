"""Several annotators on one SAMRI server at once, as they feel it (``samri bench --http --clients N``).

`multi_client_benchmark` drives a running server with ``N`` threads, each a Slicer-like client
clicking (``samri_2d``) on its own structure of a labelled study, and one more client sending a
``samri_3d`` request whose slices are not cached yet (the long request). Phases, in this order:

1. warm-up (untimed figures apart): every client's first click on each of its slices, one after
   the other, so every later click hits a cached embedding;
2. ``solo``: one client clicks ``clicks`` times alone: the throughput baseline;
3. ``concurrent``: all ``N`` clients click ``clicks`` times each at once (closed loop: a client sends
   its next click when the previous answer came back, after ``think_s``);
4. ``with_3d``: the 3D request starts, then the ``N`` clients click while it runs (at least
   ``clicks`` each, at most ``max_clicks``), and ``/info/`` is polled every ``info_interval_s`` until
   the 3D answer is back.

Latency is timed from sending to the last byte of the answer; the answers are decoded and checked
only after each phase (decoding on the same cores would slow the server). Every answer is checked
against its own request: 2D masks lie on the requested slice only, are non-empty, reach Dice >=
``dice_floor`` against the client's structure on that slice and Dice < `OTHER_DICE_CEIL` against
every other client's structure; the 3D mask stays inside its ROI's k range with the same Dice tests
over those slices (asked with ``output=all``: when the server's budget cut it short, ``samri.partial``,
over the slices it filled, which must include the seed slice). Failures are listed in the report
(``correct``), never raised.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from samri.bench.http import percentiles_ms, post_infer

logger = logging.getLogger(__name__)

#: clients' structures (Colin27 AAL names) in order; client n clicks on the n-th.
CLIENT_STRUCTURES = ("Thalamus_L", "Putamen_R", "Caudate_L", "Hippocampus_R",
                     "Insula_L", "Lingual_L", "Cuneus_R", "Calcarine_L")
#: the 3D client's structure (next to the first client's, so a crossed answer would show).
STRUCTURE_3D = "Thalamus_R"
#: how long after the 3D request leaves the clients start clicking (it reaches the server first).
CLICKS_BEHIND_3D_S = 0.05
#: an answer whose Dice against another client's structure reaches this belongs to the wrong request.
OTHER_DICE_CEIL = 0.2
#: the issue's targets (issue 15, item 9).
TARGETS = {"info_p95_ms_during_3d": 1000.0, "cached_click_p95_ms_during_3d": 1000.0,
           "throughput_ratio_min": 1.0}
SLICER = {"result_extension": ".nrrd", "result_dtype": "uint8"}


@dataclass(frozen=True)
class Click:
    """One Slicer-style 2D request of a client: ``params`` for slice ``k`` of ``structure``."""

    structure: str
    k: int
    params: dict[str, Any]


def section_prompt(section: np.ndarray, k: int, label: str) -> dict[str, Any]:
    """Slicer request for a structure's ``(X, Y)`` cross-section on slice ``k``.

    ``roi`` is the in-plane box on slice k only, i given max-first (as Slicer sends on flipped
    axes); one foreground point at the section's deepest interior voxel; image voxel indices.
    """
    from scipy import ndimage

    ii, jj = np.nonzero(section)
    depth = ndimage.distance_transform_edt(np.pad(section, 1))[1:-1, 1:-1]
    pi, pj = np.unravel_index(int(np.argmax(depth)), section.shape)
    return {**SLICER, "label": label, "roi": [int(ii.max()), int(ii.min()), int(jj.min()), int(jj.max()), k, k],
            "foreground": [[int(pi), int(pj), k]], "background": [], "slice": k}


def structure_clicks(truth: np.ndarray, value: int, label: str, n_slices: int = 2) -> list[Click]:
    """Requests on the structure's largest axial section, then on slices 2, 4, ... away from it.

    Each further slice is the side (+/-) with the larger section; sections under half the largest
    are skipped.
    """
    structure = truth == value
    areas = structure.sum(axis=(0, 1))
    if not areas.any():
        raise ValueError(f"label={label!r}: no voxel with value {value} in the ground truth")
    k0 = int(np.argmax(areas))
    picks = [k0]
    for step in range(2, len(areas), 2):
        if len(picks) >= n_slices:
            break
        near = [k for k in (k0 + step, k0 - step) if 0 <= k < len(areas) and areas[k] >= areas[k0] / 2]
        picks += sorted(near, key=lambda z: -areas[z])[:n_slices - len(picks)]
    return [Click(label, k, section_prompt(structure[:, :, k], k, label)) for k in picks]


def decode_nrrd(content: bytes) -> np.ndarray:
    """The voxel array of an NRRD answer (image voxel order, as nibabel reads the image)."""
    import nrrd

    fh = io.BytesIO(content)
    header = nrrd.read_header(fh)
    return np.asarray(nrrd.read_data(header, fh))


def split_multipart(content: bytes, content_type: str) -> dict[str, bytes]:
    """``{part name: bytes}`` of an ``output=all`` answer (``multipart/form-data``: params and image)."""
    marker = next((p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")),
                  None)
    if marker is None:
        raise ValueError(f"content_type={content_type!r}: no multipart boundary")
    parts = {}
    for chunk in content.split(b"--" + marker.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode() if b'name="' in head else str(len(parts))
        parts[name] = body[:-2] if body.endswith(b"\r\n") else body
    return parts


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def check_answer(mask: np.ndarray, ks: Sequence[int], own: np.ndarray, others: Mapping[str, np.ndarray],
                 floor: float) -> tuple[float, str | None]:
    """(Dice vs ``own`` over slices ``ks``, why the answer is wrong or None).

    ``mask``, ``own`` and ``others`` are ``(X, Y, Z)``; the mask must be empty off ``ks``.
    """
    ks = list(ks)
    if mask.shape != own.shape:
        return 0.0, f"shape {mask.shape} != image {own.shape}"
    if np.delete(mask, ks, axis=2).any():
        return 0.0, f"voxels outside slices {ks[0]}..{ks[-1]}"
    part = mask[:, :, ks] > 0
    if not part.any():
        return 0.0, "empty mask"
    score = dice(part, own[:, :, ks])
    if score < floor:
        return score, f"Dice {score:.3f} < {floor}"
    for name, other in others.items():
        crossed = dice(part, other[:, :, ks])
        if crossed >= OTHER_DICE_CEIL:
            return score, f"Dice {crossed:.3f} against another client's {name}"
    return score, None


@dataclass
class Answer:
    client: str
    click: Click | None  # None: the 3D request
    start: float
    end: float
    status: int
    content: bytes  # the NRRD (for output=all, the image part)
    meta: dict[str, Any] | None = None  # the result params (output=all only)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def multi_client_benchmark(base_url: Any, image_id: str, truth: np.ndarray, label_values: Mapping[str, int], *,
                           clients: int = 4, clicks: int = 10, max_clicks: int | None = None, slices_3d: int = 7,
                           slices_per_client: int = 2, think_s: float = 0.0, info_interval_s: float = 0.2,
                           dice_floor: float = 0.5, dice_floor_3d: float = 0.4, timeout_s: float = 600.0,
                           structures: Sequence[str] = CLIENT_STRUCTURES,
                           structure_3d: str = STRUCTURE_3D) -> dict[str, Any]:
    """Run the phases of the module docstring; returns a JSON-friendly report.

    Args:
        base_url: ``http://host:port`` of a running server (or a `ServerProcess`).
        image_id: datastore id of the study ``truth`` labels.
        truth: ``(X, Y, Z)`` integer ground truth on the image's voxel grid.
        label_values: ``{structure name: value in truth}``.
        clients: clicking clients (each on its own structure, the first ``clients`` of ``structures``).
        clicks: timed clicks per client in the solo and concurrent phases (and at least that many
            during the 3D request).
        max_clicks: most clicks per client while the 3D request runs (default ``5 * clicks``).
        slices_3d: the 3D request's ROI k range (slices around ``structure_3d``'s largest section).
        slices_per_client: slices each client alternates between (all cached after warm-up).
        think_s: pause between a client's answer and its next click.
        info_interval_s: pause between ``/info/`` polls during the 3D request.
        dice_floor, dice_floor_3d: least Dice of a correct 2D / 3D answer against its own structure.
    """
    import requests

    base_url = str(getattr(base_url, "base_url", base_url)).rstrip("/")
    names = list(structures)[:clients]
    if clients < 1 or len(names) < clients:
        raise ValueError(f"clients={clients}: between 1 and {len(structures)} (one structure each)")
    missing = [n for n in [*names, structure_3d] if n not in label_values]
    if missing:
        raise ValueError(f"structures={missing}: not in the labels of {image_id}")
    max_clicks = max(clicks, max_clicks if max_clicks is not None else 5 * clicks)
    load_start = os.getloadavg()[0]
    plans = {f"client-{n}": structure_clicks(truth, label_values[s], s, slices_per_client) for n, s in enumerate(names)}
    masks = {s: truth == label_values[s] for s in [*names, structure_3d]}
    k3 = int(np.argmax(masks[structure_3d].sum(axis=(0, 1))))
    ks3 = list(range(max(k3 - slices_3d // 2, 0), min(k3 - slices_3d // 2 + slices_3d, truth.shape[2])))
    request_3d = dict(structure_clicks(truth, label_values[structure_3d], structure_3d, 1)[0].params)
    request_3d.pop("slice")
    request_3d["roi"] = request_3d["roi"][:4] + [ks3[-1], ks3[0]]  # max-first, as Slicer may send it
    sessions = {c: requests.Session() for c in [*plans, "client-3d", "info"]}
    answers: dict[str, list[Answer]] = {}

    def send(client: str, model: str, click: Click | None, params: dict[str, Any], output: str = "image") -> Answer:
        start = time.perf_counter()
        resp = post_infer(base_url, model, image_id, {**params, "client_id": client, "reset_state": True},
                          session=sessions[client], timeout_s=timeout_s, output=output)
        answer = Answer(client, click, start, time.perf_counter(), resp.status_code, resp.content)
        if output == "all" and resp.status_code == 200:
            parts = split_multipart(resp.content, resp.headers.get("content-type", ""))
            answer.content, answer.meta = parts.get("image", b""), json.loads(parts.get("params", b"{}"))
        return answer

    def clicker(client: str, n_min: int, n_max: int, until: threading.Event | None = None) -> list[Answer]:
        out = []
        while len(out) < n_max and (len(out) < n_min or (until is not None and not until.is_set())):
            click = plans[client][len(out) % len(plans[client])]
            out.append(send(client, "samri_2d", click, click.params))
            if think_s:
                time.sleep(think_s)
        return out

    def phase_figures(done: list[Answer], clients_in: Sequence[str]) -> dict[str, Any]:
        ok = [a for a in done if a.status == 200]
        wall = (max(a.end for a in done) - min(a.start for a in done)) if done else 0.0
        return {"latency_by_client": {c: percentiles_ms([a.seconds for a in ok if a.client == c]) for c in clients_in},
                "all": percentiles_ms([a.seconds for a in ok]),
                "clicks_per_s": round(len(ok) / wall, 2) if wall > 0 else 0.0, "wall_s": round(wall, 2)}

    # 1. warm-up: each client's slices encoded once (sequential; the network loads on the first)
    answers["warmup"] = [send(c, "samri_2d", click, click.params) for c, plan in plans.items() for click in plan]
    first = next(iter(plans))
    # 2. one client alone
    answers["solo"] = clicker(first, clicks, clicks)
    # 3. all clients at once
    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        jobs = [pool.submit(clicker, c, clicks, clicks) for c in plans]
        answers["concurrent"] = [a for f in jobs for a in f.result()]
    # 4. the 3D request with the clients clicking and /info/ polled
    done_3d = threading.Event()
    info_s: list[float] = []
    info_errors: list[str] = []

    sending_3d = threading.Event()

    def run_3d() -> Answer:
        try:
            sending_3d.set()
            return send("client-3d", "samri_3d", None, request_3d, output="all")
        finally:
            done_3d.set()

    def poll_info() -> None:
        while not done_3d.is_set():
            start = time.perf_counter()
            try:
                resp = sessions["info"].get(base_url + "/info/", timeout=timeout_s)
                if resp.status_code != 200:
                    info_errors.append(f"/info/ HTTP {resp.status_code}")
            except requests.RequestException as err:
                info_errors.append(f"/info/: {err}")
            info_s.append(time.perf_counter() - start)
            done_3d.wait(info_interval_s)

    with ThreadPoolExecutor(max_workers=len(plans) + 2) as pool:
        job_3d = pool.submit(run_3d)
        poller = pool.submit(poll_info)
        # the clicks start right behind the 3D request, so they meet it however fast it is (a fixed
        # 0.5 s head start let a quick 3D answer finish before the first click)
        sending_3d.wait(timeout_s)
        time.sleep(CLICKS_BEHIND_3D_S)
        jobs = [pool.submit(clicker, c, clicks, max_clicks, done_3d) for c in plans]
        answers["with_3d"] = [a for f in jobs for a in f.result()]
        answer_3d = job_3d.result()
        poller.result()
    inside = [a for a in answers["with_3d"] if a.end <= answer_3d.end]

    samri_3d = (answer_3d.meta or {}).get("samri") or {}
    partial_3d = samri_3d.get("partial")
    # correctness of every answer (decoded now, after the timing)
    failures, dice_by_client = [], {c: [] for c in [*plans, "client-3d"]}
    structure_of = {c: plan[0].structure for c, plan in plans.items()}
    structure_of["client-3d"] = structure_3d
    for phase, got in [*answers.items(), ("with_3d", [answer_3d])]:
        for a in got:
            own = structure_of[a.client]
            at = f"slice {a.click.k}" if a.click else f"slices {ks3[0]}..{ks3[-1]}"
            where = f"{phase} {a.client} ({own}, {at})"
            if a.status != 200:
                failures.append(f"{where}: HTTP {a.status}: {a.content[:200]!r}")
                continue
            others = {s: m for s, m in masks.items() if s != own}
            mask = decode_nrrd(a.content)
            ks = [a.click.k] if a.click else ks3
            if a.click is None and partial_3d and not np.delete(mask, ks3, axis=2).any():
                # a 3D answer cut by the server's budget: judged on the slices it did (the seed among them)
                ks = [k for k in ks3 if mask[:, :, k].any()] or ks3
                if k3 not in ks:
                    failures.append(f"{where}: partial answer without its seed slice {k3}")
            score, why = check_answer(mask, ks, masks[own], others, dice_floor if a.click else dice_floor_3d)
            dice_by_client[a.client].append(score)
            if why:
                failures.append(f"{where}: {why}")
    n_answers = sum(len(v) for v in answers.values()) + 1

    solo, concurrent, with_3d = (phase_figures(answers["solo"], [first]), phase_figures(answers["concurrent"], plans),
                                 phase_figures(inside, plans))
    mask_3d = decode_nrrd(answer_3d.content) if answer_3d.status == 200 else None
    report = {
        "clients": clients, "image": image_id, "clicks_per_client": clicks, "think_s": think_s,
        "structures": {c: structure_of[c] for c in [*plans, "client-3d"]},
        "slices": {c: [click.k for click in plan] for c, plan in plans.items()},
        "first_click": percentiles_ms([a.seconds for a in answers["warmup"] if a.status == 200]),
        "solo": solo, "concurrent": concurrent, "with_3d": with_3d,
        "clicks_during_3d": len(inside), "clicks_after_3d": len(answers["with_3d"]) - len(inside),
        "info_during_3d": {**percentiles_ms(info_s), "errors": info_errors[:5]},
        "request_3d": {"seconds": round(answer_3d.seconds, 2), "status": answer_3d.status, "roi_slices": len(ks3),
                       "filled_slices": int(mask_3d.any(axis=(0, 1)).sum()) if mask_3d is not None else 0,
                       "partial": partial_3d, "stops": samri_3d.get("stops")},
        "throughput_ratio": (round(concurrent["clicks_per_s"] / solo["clicks_per_s"], 2)
                             if solo["clicks_per_s"] else None),
        "throughput_ratio_with_3d": (round(with_3d["clicks_per_s"] / solo["clicks_per_s"], 2)
                                     if solo["clicks_per_s"] else None),
        "correct": {"answers": n_answers, "all_correct": not failures, "failures": failures[:20],
                    "n_failures": len(failures), "dice_floor": dice_floor, "dice_floor_3d": dice_floor_3d,
                    "min_dice_by_client": {c: round(min(v), 3) if v else None for c, v in dice_by_client.items()}},
        "load_average_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "targets": TARGETS,
    }
    logger.info("%d clients: with 3D click p95 %s ms, /info/ p95 %s ms, throughput x%s; %d/%d answers correct",
                clients, with_3d["all"].get("p95_ms"), report["info_during_3d"].get("p95_ms"),
                report["throughput_ratio"], n_answers - len(failures), n_answers)
    return report


def load_truth(studies: Any, image_id: str) -> tuple[np.ndarray, dict[str, int]]:
    """(``(X, Y, Z)`` ground truth, ``{name: value}``) of a study in a sample-studies folder."""
    from pathlib import Path

    import nibabel as nib

    from samri.labels import load_label_names

    studies = Path(studies)
    truth = np.asarray(nib.load(str(studies / "labels" / "final" / f"{image_id}.nii.gz")).dataobj)
    return truth, load_label_names(studies)[image_id]


__all__ = ["CLIENT_STRUCTURES", "STRUCTURE_3D", "TARGETS", "check_answer", "load_truth", "multi_client_benchmark",
           "section_prompt", "structure_clicks"]
