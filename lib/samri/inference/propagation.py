"""3D propagation: follow a structure from its prompted slices up and down the slicing axis.

Frames: masks are ``(H, W)`` bool slice pixels of the slicing axis; boxes are ``(r0, c0, r1, c1)``
inclusive slice pixels; slice indices run along ``axis`` of the volume's voxel grid.

Every seed slice starts two fronts (towards higher and lower indices). Fronts advance in turn, one
slice each, so a budget that runs out leaves a result centred on the seeds instead of one side
done and the other not started. A front prompts its next slice with the box of its previous mask
(plus a margin) and stops where `PropagationSettings` says the object ended.

Stop rules and what they were set on. The IoU rule (``min_relative_iou``) was calibrated on Colin27
deep grey structures (docs/DECODER.md) and compares box-prompted slices with a box-prompted score
of the seed slice (`Propagator._reference_iou`). The geometric rules (``max_seed_growth``,
``max_reach``) are anatomical bounds read from the ground-truth axial sections of
`CALIBRATION_STRUCTURES` (no model output involved), seeds taken anywhere in a structure's central
half: the largest cross-section is at most 4.1 x a central one (hippocampus; thalamus 1.7), and
the far end of a structure lies within 2.0 seed diameters of a central slice for all but the
hippocampus (2.5 from its thinnest central slices, median 1.3; thalamus 0.8, caudate 1.95).
``max_reach`` is set below the hippocampus on purpose: a result cut short is extended with a
second click farther along, while a run-away one has to be erased slice by slice. Seeds without a
box (points only, as OHIF sends) have their own IoU and reach rules (``min_relative_iou_points``,
``max_reach_points``), chosen on the recipe's validation structures and the validation cohort for the
shipped decoder (docs/DECODER.md, "Stage 4" and "The point-seed reach for stage 5").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from samri.errors import SamriInputError
from samri.geometry import in_plane_axes, take_slice
from samri.inference.prompts import SlicePrompt
from samri.inference.refine import clipped_to_box
from samri.inference.reuse import PropagationMemo, full_plan, plan_run, prompt_signature

if TYPE_CHECKING:  # only for hints: samri.inference.segmenter imports this module
    from samri.inference.segmenter import Segmenter, SliceResult

logger = logging.getLogger(__name__)

#: why a front stopped (``PropagationRun.stops``) or why a run is partial (``PropagationRun.partial``)
FRONT_STOPS = ("bound", "met", "reach", "min_area", "iou", "growth", "seed_growth", "overlap", "roi")
PARTIAL_REASONS = ("max_slices", "max_seconds", "cancelled")


@dataclass(frozen=True)
class PropagationSettings:
    """When 3D propagation stops and how it prompts the next slice.

    Attributes:
        min_area: stop when a slice's mask has fewer pixels (object ended).
        min_iou: stop when the decoder's predicted IoU falls below this (absolute floor).
        min_relative_iou: stop when the predicted IoU falls below this fraction of the seed
            slice's (0 turns it off). Relative, because a fine-tuned IoU head is calibrated to the
            real IoU of its training structures (about 0.3-0.6 on atlas structures), so no absolute
            threshold suits every decoder; calibrated on Colin27 deep grey structures (docs/DECODER.md).
        min_relative_iou_points: the same rule for a seed prompted by points alone (no box); 0 uses
            ``min_relative_iou``. Chosen with ``max_reach_points`` on the validation structures for the
            stage-4 decoder (docs/DECODER.md, "Stage 4").
        max_growth: stop when the area grows by more than this factor from one slice to the next
            (sudden leak into neighbours).
        max_seed_growth: stop when the area exceeds this multiple of the seed slice's mask (0 turns
            it off). Catches the slow leak that `max_growth` cannot: the next box is the previous
            mask's box plus a margin, so a mask that creeps outward a little on every slice fills
            the head without ever doubling between two slices. Anatomy allows 4.1 (module notes).
        max_reach: stop this many seed diameters (equivalent-circle diameter of the seed mask, in
            mm, converted to slices with the volume's spacing) from the seed slice (0 turns it
            off): a bound that holds whatever the IoU head says (module notes).
        max_reach_points: the same bound for a seed prompted by points alone (no box), whose mask is
            a guess at the section's size; 0 uses ``max_reach``. Chosen on the validation structures
            (docs/DECODER.md, "The 3D stop rule re-tuned", "Stage 4" and "The point-seed reach for stage 5").
            A point's answer spills past a thin structure's section, so its diameter overstates the
            structure's. 0.35 for the stage-5 decoder: 0.25 scored higher on validation but cut one
            click's thalamus short (the suite's guard).
        min_overlap: stop when the new mask covers less than this fraction of the smaller of it and
            the previous mask (jumped to another object).
        box_margin: pixels added around the previous mask's box.
        chain_logits: also give each propagated slice the previous slice's low-res logits as SAM's
            mask prompt (next to its box), so the shape carries over from slice to slice.
        clip_to_box: keep no pixel of a propagated slice's answer outside the box it was prompted
            with (the previous mask's box plus ``box_margin``).
        reuse_unchanged: with the memo of the client's previous run, predict again only the slices a
            changed seed can reach (`samri.inference.reuse`); False: every request predicts every slice.
    """

    min_area: int = 10
    min_iou: float = 0.2
    min_relative_iou: float = 0.85
    min_relative_iou_points: float = 0.75
    max_growth: float = 2.0
    max_seed_growth: float = 4.5
    max_reach: float = 2.0
    max_reach_points: float = 0.35
    min_overlap: float = 0.2
    box_margin: int = 2
    chain_logits: bool = False
    clip_to_box: bool = True
    reuse_unchanged: bool = True


#: Colin27 AAL structures (both hemispheres) whose ground-truth axial sections set
#: `PropagationSettings.max_seed_growth` and ``max_reach``
CALIBRATION_STRUCTURES = tuple(f"{name}_{side}" for name in ("Caudate", "Putamen", "Pallidum", "Thalamus",
                                                             "Hippocampus", "Amygdala") for side in "LR")


@dataclass(frozen=True)
class PropagationBudget:
    """What one 3D request may spend.

    Attributes:
        max_slices: most slices predicted, seeds included; None = no limit.
        max_seconds: wall-clock seconds after which propagation stops between two slices and
            returns what it has (a slice started is finished: one encode past the limit at most;
            the prompted slices are always predicted); None = no limit.
        should_stop: polled between slices; True ends propagation (e.g. the client went away).
        clock: monotonic seconds (injectable for tests).
    """

    max_slices: int | None = None
    max_seconds: float | None = None
    should_stop: Callable[[], bool] | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.max_slices is not None and self.max_slices < 1:
            raise SamriInputError("max_slices", self.max_slices, "must be at least 1")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise SamriInputError("max_seconds", self.max_seconds, "must be positive")

    def check_seeds(self, n_seeds: int, field_name: str = "seeds") -> None:
        """Raise before any work when the prompted slices alone exceed ``max_slices``."""
        if self.max_slices is not None and n_seeds > self.max_slices:
            raise SamriInputError(field_name, f"{n_seeds} prompted slices",
                                  f"more than the {self.max_slices} slices a 3D request may predict")


class _Meter:
    """Counts one run's slices and time against a `PropagationBudget`."""

    def __init__(self, budget: PropagationBudget) -> None:
        self.budget = budget
        self.start = budget.clock()
        self.done = 0

    def elapsed(self) -> float:
        return self.budget.clock() - self.start

    def exhausted(self, *, seed: bool = False) -> str | None:
        """The `PARTIAL_REASONS` entry that forbids another slice now, or None.

        Seeds (the slices the user prompted, already within ``max_slices``) only stop on
        cancellation: an answer without the clicked slice would be of no use.
        """
        b = self.budget
        if b.should_stop is not None and b.should_stop():
            return "cancelled"
        if seed:
            return None
        if b.max_slices is not None and self.done >= b.max_slices:
            return "max_slices"
        if b.max_seconds is not None and self.elapsed() >= b.max_seconds:
            return "max_seconds"
        return None


def mask_box(mask: np.ndarray, margin: int = 0) -> np.ndarray | None:
    """Tight ``(r0, c0, r1, c1)`` box of a ``(H, W)`` mask, grown by ``margin``; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return np.array([max(rows[0] - margin, 0), max(cols[0] - margin, 0),
                     min(rows[-1] + margin, h - 1), min(cols[-1] + margin, w - 1)], dtype=np.float64)


def stop_reason(rules: PropagationSettings, prev: "SliceResult", res: "SliceResult", *, iou_floor: float,
                seed_area: int) -> str | None:
    """Why the front must not keep ``res`` (a `FRONT_STOPS` entry), or None to keep it.

    Args:
        prev: the front's previous slice result; ``res``: the next slice's, both ``(H, W)`` masks.
        iou_floor: the lowest predicted IoU kept (absolute floor or relative to the seed).
        seed_area: pixels of the front's seed mask (for ``max_seed_growth``).
    """
    area = res.area
    if area < rules.min_area:
        return "min_area"
    if res.iou < iou_floor:
        return "iou"
    if area > rules.max_growth * max(prev.area, 1):
        return "growth"
    if rules.max_seed_growth > 0 and area > rules.max_seed_growth * max(seed_area, rules.min_area):
        return "seed_growth"
    overlap = np.logical_and(res.mask, prev.mask).sum() / max(min(area, prev.area), 1)
    return "overlap" if overlap < rules.min_overlap else None


@dataclass
class _Front:
    """One direction of propagation from one seed."""

    seed: int
    step: int  # +1 or -1 along the axis
    prev: "SliceResult"  # the last slice kept
    next: int  # the slice to predict next
    iou_floor: float
    seed_area: int
    reach: int | None  # most slices from the seed (`PropagationSettings.max_reach`)


@dataclass
class PropagationRun:
    """What a propagation produced.

    Attributes:
        slices: ``{slice index: SliceResult}`` along the axis, seeds included.
        stops: one entry per front: ``{"seed": k, "step": +1/-1, "at": first slice not kept,
            "reason": one of FRONT_STOPS}``; fronts cut by the budget are not listed.
        partial: None when every front ended on its own, else ``{"reason": one of
            PARTIAL_REASONS, "slices_done": n, "seconds": s}``.
        memo: what the next request of the same client may reuse (None for a partial run).
        kept: slices taken from the previous run's memo instead of predicted (ascending).
    """

    slices: dict[int, Any] = field(default_factory=dict)
    stops: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None
    memo: PropagationMemo | None = None
    kept: list[int] = field(default_factory=list)


class Propagator:
    """Runs one propagation over a `samri.inference.segmenter.Segmenter` (its decode, embedding and settings).

    Args:
        segmenter: provides ``predict_slice``, ``embedding``, ``decode``, ``slice_geometry`` and
            ``propagation`` (the `PropagationSettings`).
        volume: a `samri.volume.PreparedVolume`; ``axis``: the slicing axis.
        bounds: inclusive slice range to stay within.
        roi_box: ``(r0, c0, r1, c1)`` in-plane limit for propagated boxes, or None.
        budget: slice, time and cancellation limits.
        structure: the structure's name (the request's ``label``): seeds and propagated slices take the model's
            shape prior of it (`Segmenter.with_shape_prior`), as 2D answers do; None: no prior.
    """

    def __init__(self, segmenter: "Segmenter", volume, axis: int, *, bounds: tuple[int, int],
                 roi_box: np.ndarray | None, budget: PropagationBudget, structure: str | None = None) -> None:
        self.segmenter = segmenter
        self.volume = volume
        self.axis = axis
        self.bounds = bounds
        self.roi_box = roi_box
        self.budget = budget
        self.rules: PropagationSettings = segmenter.propagation
        self.geom = segmenter.slice_geometry(volume, axis)
        self.structure = structure
        spacing = getattr(volume, "spacing", None)
        rows, cols = in_plane_axes(axis)
        self.spacing_mm = None if spacing is None else (float(spacing[rows]), float(spacing[cols]))

    def run(self, seeds: dict[int, SlicePrompt], *, memo: PropagationMemo | None = None,
            context: Any = None) -> PropagationRun:
        """Predict the seed slices, then advance every front in turn until all stopped or the budget ends.

        Args:
            memo: the previous run of this client (`samri.inference.reuse`): only what changed seeds
                reach is predicted again when ``context`` equals the memo's.
            context: identity of the run besides its seeds (`Segmenter.propagate`); None: no memo kept.
        """
        self.budget.check_seeds(len(seeds))
        meter = _Meter(self.budget)
        out = PropagationRun()
        signatures = {int(k): prompt_signature(p) for k, p in seeds.items()}
        plan = (plan_run(memo, signatures, context) if self.rules.reuse_unchanged and context is not None
                else full_plan(signatures))
        out.slices.update(plan.kept)
        out.stops += plan.stops
        out.kept = sorted(plan.kept)
        ref_iou = dict(plan.ref_iou)
        for index in plan.decode:
            if self._cut(meter, out, seed=True):
                return out
            out.slices[index] = self._predict_seed(index, seeds[index])
            meter.done += 1
        for index in plan.decode:
            ref_iou[index] = self._reference_iou(index, seeds[index], out.slices[index])
        fronts = [self._front(seed, step, out.slices[seed], ref_iou[seed], seeds[seed]) for seed, step in plan.fronts]
        while fronts:
            alive = []
            for front in fronts:
                reason = self._stop_before(front, seeds, out)
                if reason is None:
                    if self._cut(meter, out):
                        return out
                    reason = self._advance(front, out)
                    meter.done += 1
                if reason is None:
                    alive.append(front)
                else:
                    out.stops.append({"seed": front.seed, "step": front.step, "at": front.next, "reason": reason})
            fronts = alive
        if context is not None:
            out.memo = PropagationMemo(context=context, seeds=signatures, ref_iou=ref_iou, slices=dict(out.slices),
                                       stops=[dict(s) for s in out.stops])
        return out

    def _predict_seed(self, index: int, prompt: SlicePrompt) -> "SliceResult":
        """A prompted slice; a lone-points seed is decoded as the model's ``point_prompts_3d`` says."""
        seg = self.segmenter
        mode = seg.point_prompts_3d
        named = self.structure is not None
        if mode == seg.point_prompts:
            return seg.predict_slice(self.volume, self.axis, index, prompt, shape_prior=named)
        return seg.predict_slice(self.volume, self.axis, index, prompt, point_prompts=mode, shape_prior=named)

    def _reference_iou(self, index: int, prompt: SlicePrompt, res: "SliceResult") -> float:
        """The predicted IoU that ``min_relative_iou`` is relative to, for a box prompt on the seed slice.

        The IoU head scores each prompt type on its own scale: on Colin27's Thalamus_L a point
        seed (box search) predicts 0.14 where the box-prompted slices around it predict 0.7, so a
        floor relative to the point's IoU never stops. Propagated slices are box-prompted, so a
        seed prompted otherwise (points, mask) is scored once more with the box its mask gives the
        next slice (one extra decode on an embedding already computed).
        """
        pure_box = prompt.box is not None and len(prompt.points) == 0 and prompt.mask_logits is None
        box = None if pure_box or res.area < self.rules.min_area else self._next_box(res)
        if box is None:
            return res.iou
        seg = self.segmenter
        return seg.decode(seg.embedding(self.volume, self.axis, index), self.geom, SlicePrompt(box=box)).iou

    def _front(self, seed: int, step: int, res: "SliceResult", ref_iou: float, prompt: SlicePrompt) -> _Front:
        rules = self.rules
        points_only = prompt.box is None
        relative = rules.min_relative_iou_points if points_only and rules.min_relative_iou_points > 0 \
            else rules.min_relative_iou
        floor = rules.min_iou
        if relative > 0:
            floor = max(floor, relative * ref_iou)
        reach = rules.max_reach_points if points_only and rules.max_reach_points > 0 else rules.max_reach
        return _Front(seed=seed, step=step, prev=res, next=seed + step, iou_floor=floor, seed_area=res.area,
                      reach=self._reach(res.area, reach))

    def _reach(self, seed_area: int, diameters: float) -> int | None:
        """Most slices a front may go from its seed: ``diameters`` seed diameters, in mm (None: no bound)."""
        if diameters <= 0:
            return None
        spacing = getattr(self.volume, "spacing", (1.0, 1.0, 1.0))
        rows, cols = in_plane_axes(self.axis)
        diameter_mm = 2.0 * np.sqrt(max(seed_area, 1) * spacing[rows] * spacing[cols] / np.pi)
        return int(diameters * diameter_mm / max(spacing[self.axis], 1e-6))

    def _cut(self, meter: _Meter, out: PropagationRun, *, seed: bool = False) -> bool:
        """Mark ``out`` partial and return True when the budget forbids another slice."""
        reason = meter.exhausted(seed=seed)
        if reason is None:
            return False
        out.partial = {"reason": reason, "slices_done": meter.done, "seconds": round(meter.elapsed(), 3)}
        logger.warning("3D propagation stopped early (%s) after %d slices in %.1f s", reason, meter.done,
                       meter.elapsed())
        return True

    def _stop_before(self, front: _Front, seeds: dict[int, SlicePrompt], out: PropagationRun) -> str | None:
        """Reasons to stop that need no decoding: out of bounds, met another front, empty mask."""
        index = front.next
        if not self.bounds[0] <= index <= self.bounds[1]:
            return "bound"
        if index in seeds or index in out.slices:
            return "met"
        if front.reach is not None and abs(index - front.seed) > front.reach:
            return "reach"
        if front.prev.area < self.rules.min_area:
            return "min_area"
        return None

    def _advance(self, front: _Front, out: PropagationRun) -> str | None:
        """Decode the front's next slice; keep it and move on, or return why the front stops."""
        box = self._next_box(front.prev)
        if box is None:
            return "roi"
        index = front.next
        seg = self.segmenter
        prompt = SlicePrompt(box=box, mask_logits=front.prev.low_res_logits if self.rules.chain_logits else None)
        res = seg.decode(seg.embedding(self.volume, self.axis, index), self.geom, prompt)
        if self.structure is not None and self.spacing_mm is not None:  # the shapes, on the box it propagates with
            windowed = getattr(self.volume, "windowed", None)
            res = seg.with_shape_prior(self.geom, replace(prompt, structure=self.structure), res, self.axis,
                                       self.spacing_mm, image=None if windowed is None else take_slice(
                                           windowed, self.axis, index))
        if self.rules.clip_to_box:
            res = clipped_to_box(self.geom, res, box)
        reason = stop_reason(self.rules, front.prev, res, iou_floor=front.iou_floor, seed_area=front.seed_area)
        if reason is None:
            out.slices[index] = res
            front.prev = res
            front.next = index + front.step
        return reason

    def _next_box(self, prev: "SliceResult") -> np.ndarray | None:
        """The previous mask's box plus the margin, clipped to ``roi_box``; None if nothing is left."""
        box = mask_box(prev.mask, self.rules.box_margin)
        if box is not None and self.roi_box is not None:
            r = self.roi_box
            box = np.array([max(box[0], r[0]), max(box[1], r[1]), min(box[2], r[2]), min(box[3], r[3])])
            if box[0] > box[2] or box[1] > box[3]:
                return None
        return box
