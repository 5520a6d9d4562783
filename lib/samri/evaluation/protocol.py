"""SAMRI's evaluation protocol, in millimetres and in 3D, for several models on identical pairs.

2D mode (SAMRI): every (slice, structure) pair along ``axis`` whose ground truth has at least
``min_size`` pixels is prompted from the ground truth -- ``box`` (tight box, optionally jittered
by up to ``jitter`` x the slice's longest side per edge), ``point`` (one positive point at the
maximum of the distance transform) or ``box+point`` -- and scored with MONAI's Dice, HD95 and NSD
using the slice's in-plane spacing. 3D mode prompts one slice per structure (the middle slice of
its extent along ``axis``, or the nearest one reaching ``min_size``), propagates with
`samri.inference.segmenter.Segmenter.propagate` (no bounds: the model decides where the object ends) and
scores the volume with the full voxel spacing.

Prompts depend only on (image, structure, slice, prompt type, seed), so every model and every
contrast-shift variant of an image sees exactly the same prompts. Outputs in ``out_dir``: see
`samri.evaluation.report` (``pairs.csv`` appended row by row, ``summary.json`` written atomically at the
end, ``report.md`` + PNG figures).
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from samri.annotator import simulate_prompt
from samri.errors import SamriInputError
from samri.evaluation.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    bucket_of,
    fixed_cutoffs,
    segmentation_metrics,
    tertile_cutoffs,
)
from samri.evaluation.variants import (  # noqa: F401
    Case,
    check_cases,
    image_id,
    label_names_for,
    load_case,
    parse_variant,
    select_structures,
    variant_cases,
)
from samri.geometry import check_axis, in_plane_axes, take_slice
from samri.inference.prompts import SlicePrompt
from samri.intensity import WindowSettings
from samri.volume import prepare_volume

logger = logging.getLogger(__name__)

PROMPTS = ("box", "point", "box+point")
MODES = ("2d", "3d")
#: ``single``: one prompt per pair (Dice, HD95, NSD); ``clicks``: the interactive protocol (`samri.evaluation.clicks`)
PROTOCOLS = ("single", "clicks")
FIRST_INTERACTIONS = ("box", "point")
#: clicks protocol: what the server keeps between a client's requests (`samri.evaluation.clicks.SERVER_STATES`)
CLIENTS = ("slicer", "ohif", "ohif_no_history")


@dataclass(frozen=True)
class EvalConfig:
    """What one evaluation run does (everything that changes its numbers).

    Attributes:
        prompts: subset of `PROMPTS`, in report order.
        mode: ``"2d"`` (every slice/structure pair) or ``"3d"`` (one prompted slice, propagation).
        axis: slicing axis of the voxel grid (2 = axial for RAS-aligned files).
        min_size: smallest ground-truth area (pixels) of an evaluated slice (SAMRI: 30).
        jitter: max shift of each box edge as a fraction of the slice's longest side (SAMRI ~0.04).
        seed: seed of the jitter and of the contrast-shift variants.
        slice_step: 2D: only slices with ``index % slice_step == 0`` (bounds the encoder's work).
        max_pairs: 2D: at most this many slices per structure and image, evenly spaced (1: the middle
            one); None = all.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        labels: structure names (or values) to keep; None = every structure in the label.
        variants: contrast-shift variants (`samri.evaluation.variants`), evaluated besides each original image.
        protocol: one of `PROTOCOLS`.
        first: clicks protocol: first interactions, subset of `FIRST_INTERACTIONS`.
        max_clicks: clicks protocol: interactions per session, the first included.
        human_seconds_per_click: clicks protocol: annotator time per interaction.
        client: clicks protocol: one of `CLIENTS`. ``"slicer"`` sends a ``client_id``, so each click is
            served with its previous logits; ``"ohif"`` sends points only and no ``client_id`` (the
            server's click history finds the logits); ``"ohif_no_history"``: the same, served with none.
    """

    prompts: tuple[str, ...] = PROMPTS
    mode: str = "2d"
    axis: int = 2
    min_size: int = 30
    jitter: float = 0.0
    seed: int = 0
    slice_step: int = 1
    max_pairs: int | None = None
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    labels: tuple[str, ...] | None = None
    variants: tuple[str, ...] = ()
    protocol: str = "single"
    first: tuple[str, ...] = FIRST_INTERACTIONS
    max_clicks: int = 20
    human_seconds_per_click: float = 2.0
    client: str = "slicer"

    def validate(self) -> "EvalConfig":
        if not self.prompts:
            raise SamriInputError("prompts", list(self.prompts), f"give at least one of {list(PROMPTS)}")
        for p in self.prompts:
            if p not in PROMPTS:
                raise SamriInputError("prompts", p, f"unknown prompt type; use {list(PROMPTS)}")
        if self.mode not in MODES:
            raise SamriInputError("mode", self.mode, f"must be one of {list(MODES)}")
        if self.protocol not in PROTOCOLS:
            raise SamriInputError("protocol", self.protocol, f"must be one of {list(PROTOCOLS)}")
        if not self.first or any(f not in FIRST_INTERACTIONS for f in self.first):
            raise SamriInputError("first", ",".join(self.first), f"use a comma list of {list(FIRST_INTERACTIONS)}")
        if self.client not in CLIENTS:
            raise SamriInputError("client", self.client, f"must be one of {list(CLIENTS)}")
        if self.client != "slicer" and "box" in self.first:
            raise SamriInputError("first", ",".join(self.first), "OHIF sends points only: use --first point")
        if not 1 <= self.max_clicks <= 100:
            raise SamriInputError("max-clicks", self.max_clicks, "must be 1..100")
        if not self.human_seconds_per_click >= 0:
            raise SamriInputError("human-seconds", self.human_seconds_per_click, "must be >= 0")
        check_axis(self.axis)
        checks = (("min-size", self.min_size, self.min_size >= 1), ("jitter", self.jitter, 0.0 <= self.jitter <= 0.5),
                  ("slice-step", self.slice_step, self.slice_step >= 1),
                  ("max-pairs", self.max_pairs, self.max_pairs is None or self.max_pairs >= 1),
                  ("nsd-tolerance", self.nsd_tolerance_mm, self.nsd_tolerance_mm >= 0))
        for name, value, ok in checks:
            if not ok:
                raise SamriInputError(name, value, "out of range (see `samri evaluate --help`)")
        for v in self.variants:
            parse_variant(v)
        return self


@dataclass(frozen=True)
class Pair:
    """One evaluated (image, structure, slice): the slice itself in 2D, the prompted slice in 3D.

    ``size_px`` is the object's pixel (2D) or voxel (3D) count, ``fraction`` its share of the slice
    or volume, ``bucket_samri``/``bucket_fixed`` its size buckets (`samri.evaluation.metrics`).
    """

    image: str
    structure: str
    value: int
    slice: int
    size_px: int
    fraction: float
    bucket_samri: str = ""
    bucket_fixed: str = ""


class Runner(Protocol):
    """What evaluation needs from a model (`SegmenterRunner`, or a fake in tests)."""

    def prefetch(self, volume, axis: int, indices: Sequence[int]) -> None: ...

    def predict_slice(self, volume, axis: int, index: int, prompt: SlicePrompt) -> np.ndarray: ...

    def propagate(self, volume, axis: int, seeds: dict[int, SlicePrompt]) -> np.ndarray: ...


class SegmenterRunner:
    """`Runner` over a `samri.inference.segmenter.Segmenter`: batch-encodes needed slices once with a progress bar."""

    def __init__(self, segmenter, *, batch_size: int = 4, progress: bool = True, budget_3d=None) -> None:
        self.segmenter = segmenter
        self.budget_3d = budget_3d  # a PropagationBudget, as the server's max_slices_3d
        self.batch_size = batch_size
        self.progress = progress
        self.encode_seconds = 0.0

    def prefetch(self, volume, axis: int, indices: Sequence[int]) -> None:
        from samri.inference.embeddings import get_embeddings

        start = time.perf_counter()
        get_embeddings(self.segmenter.model, volume, self.segmenter.cache, axis, sorted(set(indices)),
                       batch_size=self.batch_size, progress=self.progress)
        self.encode_seconds += time.perf_counter() - start

    def predict_slice(self, volume, axis: int, index: int, prompt: SlicePrompt) -> np.ndarray:
        return self.segmenter.predict_slice(volume, axis, index, prompt).mask

    def propagate(self, volume, axis: int, seeds: dict[int, SlicePrompt]) -> np.ndarray:
        return self.segmenter.propagate(volume, axis, seeds).mask

    def request(self, volume, params, *, mode: str, axis: int, previous_logits, previous_run=None):
        """One client request through the server's path (`samri.inference.request.run_request`)."""
        from samri.inference.request import run_request

        return run_request(self.segmenter, volume, params, mode=mode, axis=axis, previous_logits=previous_logits,
                           budget=self.budget_3d if mode == "3d" else None, previous_run=previous_run)


# --- pairs and prompts --------------------------------------------------------------------------
def _areas(mask: np.ndarray, axis: int) -> np.ndarray:
    return mask.sum(axis=tuple(a for a in range(3) if a != axis))


def enumerate_pairs(cases: Sequence[Case], config: EvalConfig) -> list[Pair]:
    """All pairs of the original cases, with SAMRI tertile and fixed buckets assigned."""
    axis, pairs = config.axis, []
    for case in cases:
        plane = int(np.prod(case.label.shape)) // case.label.shape[axis]
        for name, value in case.structures.items():
            gt = case.label == value
            areas = _areas(gt, axis)
            ok = np.flatnonzero(areas >= config.min_size)
            if config.mode == "3d":
                if ok.size:
                    lo, hi = np.flatnonzero(areas)[[0, -1]]
                    k = int(ok[np.argmin(np.abs(ok - (lo + hi) / 2.0))])
                    pairs.append(Pair(case.name, name, value, k, int(gt.sum()), float(gt.mean())))
                continue
            ok = ok[ok % config.slice_step == 0]
            if config.max_pairs == 1 and ok.size > 1:
                ok = ok[[ok.size // 2]]  # one slice: the middle of the structure's extent, not its edge
            elif config.max_pairs and ok.size > config.max_pairs:
                ok = ok[np.unique(np.round(np.linspace(0, ok.size - 1, config.max_pairs)).astype(int))]
            pairs += [Pair(case.name, name, value, int(k), int(areas[k]), float(areas[k]) / plane) for k in ok]
    cut = tertile_cutoffs(p.fraction for p in pairs)
    fixed = fixed_cutoffs(config.mode)
    return [Pair(**{**asdict(p), "bucket_samri": bucket_of(p.fraction, cut), "bucket_fixed": bucket_of(p.fraction,
                                                                                                       fixed)})
            for p in pairs]


def pair_rng(seed: int, image: str, structure: str, index: int, prompt: str) -> np.random.Generator:
    """RNG of one pair's prompt: the same for every model and variant."""
    return np.random.default_rng([seed, zlib.crc32(f"{image}|{structure}|{index}|{prompt}".encode())])


# --- the run ------------------------------------------------------------------------------------
@dataclass
class EvalContext:
    """State shared by the per-model loops: config, output store, showcase of best/worst cases."""

    config: EvalConfig
    store: object  # samri.evaluation.report.PairStore
    showcase: object  # samri.evaluation.report.Showcase
    timing: dict = field(default_factory=dict)


def _row(model: str, case: Case, pair: Pair, prompt: str, config: EvalConfig, spacing, pred, metrics,
         seconds: float) -> dict:
    return {"model": model, "image": case.name, "variant": case.variant, "structure": pair.structure,
            "label_value": pair.value, "mode": config.mode, "axis": config.axis, "slice": pair.slice,
            "prompt": prompt, "gt_px": pair.size_px, "gt_size_mm": round(pair.size_px * float(np.prod(spacing)), 2),
            "fraction": round(pair.fraction, 6), "bucket_samri": pair.bucket_samri, "bucket_fixed": pair.bucket_fixed,
            "pred_px": int(pred.sum()), "dice": round(metrics.dice, 5), "hd95_mm": round(metrics.hd95_mm, 4),
            "nsd": round(metrics.nsd, 5), "pred_empty": metrics.pred_empty, "seconds": round(seconds, 4)}


def evaluate_case(model: str, runner: Runner, case: Case, pairs: Sequence[Pair], ctx: EvalContext,
                  window: WindowSettings, progress: bool = True) -> int:
    """Run ``runner`` on every not-yet-done (pair, prompt) of ``case``; returns the number of rows written."""
    from tqdm.auto import tqdm

    config, axis = ctx.config, ctx.config.axis
    todo = [(p, kind) for p in pairs for kind in config.prompts
            if not ctx.store.done(model, case.name, case.variant, p.structure, p.slice, kind)]
    if not todo:
        return 0
    volume = prepare_volume(case.image, window)
    spacing = case.image.spacing
    rows, cols = in_plane_axes(axis)
    spacing_2d = (spacing[rows], spacing[cols])
    if config.mode == "3d":
        needed = set()
        for p in {p for p, _ in todo}:
            ks = np.flatnonzero(_areas(case.label == p.value, axis))
            needed |= set(range(max(ks[0] - 2, 0), min(ks[-1] + 3, volume.shape[axis])))
    else:
        needed = {p.slice for p, _ in todo}
    runner.prefetch(volume, axis, sorted(needed))
    desc = f"{model} {case.name}{'~' + case.variant if case.variant else ''}"
    written = 0
    for pair, kind in tqdm(sorted(todo, key=lambda t: (t[0].slice, t[0].structure)), desc=desc, unit="pair",
                           disable=not progress):
        gt2d = take_slice(case.label, axis, pair.slice) == pair.value
        prompt = simulate_prompt(gt2d, kind, jitter=config.jitter,
                                 rng=pair_rng(config.seed, case.name, pair.structure, pair.slice, kind))
        start = time.perf_counter()
        if config.mode == "3d":
            pred3d = np.asarray(runner.propagate(volume, axis, {pair.slice: prompt}), dtype=bool)
            seconds = time.perf_counter() - start
            gt3d = case.label == pair.value
            metrics = segmentation_metrics(pred3d, gt3d, spacing, config.nsd_tolerance_mm)
            pred = take_slice(pred3d, axis, pair.slice)
            row = _row(model, case, pair, kind, config, spacing, pred3d, metrics, seconds)
        else:
            pred = np.asarray(runner.predict_slice(volume, axis, pair.slice, prompt), dtype=bool)
            seconds = time.perf_counter() - start
            metrics = segmentation_metrics(pred, gt2d, spacing_2d, config.nsd_tolerance_mm)
            row = _row(model, case, pair, kind, config, spacing_2d, pred, metrics, seconds)
        ctx.store.append(row)
        # offer() calls the lambda at once (never stored), so the loop variables are the current ones
        ctx.showcase.offer(row, lambda: (take_slice(volume.windowed, axis, pair.slice), gt2d, pred, prompt,  # noqa: B023
                                         spacing_2d))
        written += 1
    return written


def plan(cases: Sequence[Case], config: EvalConfig) -> list[Pair]:
    """Check the config and cases and list the pairs; raises on bad input before any model work."""
    config.validate()
    check_cases(cases, config.labels)
    pairs = enumerate_pairs(cases, config)
    if not pairs:
        raise SamriInputError("min-size", config.min_size, "no structure reaches this many pixels on any slice")
    return pairs


def evaluate(cases: Sequence[Case], runners: Mapping[str, Runner], config: EvalConfig, out_dir: str | Path, *,
             window: WindowSettings = WindowSettings(), resume: bool = False, progress: bool = True,
             meta: Mapping | None = None) -> dict:
    """Evaluate every runner on the same pairs of ``cases`` (plus their variants); write the outputs.

    Args:
        cases: original (non-variant) cases; variants from ``config.variants`` are added here.
        runners: display name -> `Runner`; evaluated side by side on identical pairs and prompts.
        config: the protocol (`EvalConfig`).
        out_dir: output folder (created); see `samri.evaluation.report` for the files.
        window: the registry's intensity window.
        resume: keep the rows of an interrupted run with the same config and skip them.
        meta: extra facts for ``summary.json`` (models, command, machine).

    Returns:
        The summary written to ``out_dir/summary.json``.
    """
    from samri.evaluation import report

    if not runners:
        raise SamriInputError("model", [], "give at least one --model")
    pairs = plan(cases, config)
    by_image: dict[str, list[Pair]] = {}
    for p in pairs:
        by_image.setdefault(p.image, []).append(p)
    start = time.perf_counter()
    store = report.PairStore(out_dir, run_config=asdict(config), resume=resume)
    showcase = report.Showcase()
    ctx = EvalContext(config=config, store=store, showcase=showcase)
    all_cases = [c for case in cases for c in [case, *variant_cases(case, config.variants, config.seed)]]
    try:
        for model, runner in runners.items():
            t0 = time.perf_counter()
            for case in all_cases:
                evaluate_case(model, runner, case, by_image.get(case.name, []), ctx, window, progress)
            ctx.timing[model] = {"seconds": round(time.perf_counter() - t0, 1),
                                 "encode_seconds": round(getattr(runner, "encode_seconds", 0.0), 1)}
    finally:
        store.close()
    info = run_info(all_cases, pairs, config, ctx.timing, start, meta)
    return report.finish(out_dir, store.rows(), config, info, showcase)


def run_info(all_cases: Sequence[Case], pairs: Sequence[Pair], config: EvalConfig, timing: Mapping,
             start: float, meta: Mapping | None) -> dict:
    """The summary's facts about a run: images, timing (``start`` = its perf_counter), bucket cutoffs, ``meta``."""
    return {"images": [{"name": c.name, "variant": c.variant, "path": str(c.image.path or ""),
                        "shape": list(c.label.shape), "spacing_mm": [round(s, 4) for s in c.image.spacing],
                        "structures": len(c.structures)} for c in all_cases],
            "timing": {**timing, "total_seconds": round(time.perf_counter() - start, 1)},
            "bucket_cutoffs": {"samri": list(tertile_cutoffs(p.fraction for p in pairs)),
                               "fixed": list(fixed_cutoffs(config.mode))}, **(meta or {})}
