"""Re-propagate only what a corrective click changes: the memo of a 3D run and the plan for the next.

A 3D corrective click adds or changes the prompt of one slice (a seed). Without a memo every request
re-predicts every slice from every seed, so each click costs the whole structure's decoding again
and may move slices far from the click. With the memo of the client's previous run, a request keeps
what no changed seed can reach:

- a seed whose prompt (box, points, labels) is unchanged keeps its previous result;
- each changed (or new) seed ``k`` re-opens the slices strictly between its neighbouring seeds
  (below the lowest seed / above the highest one when it has no neighbour on that side);
- those re-opened slices are predicted again by the fronts that border them: both fronts of ``k``
  and, facing it, the fronts of the unchanged neighbours; every other slice, front stop and
  reference IoU is kept from the memo.

The plan is the full run (nothing kept) whenever reuse could differ from it in more than those
slices: no memo, a memo of another context (segmenter, image content, axis, bounds, ROI,
propagation settings), a seed of the memo that the request dropped, or a memo of a run the budget
cut short (such runs are not memoised at all).

Frames: slice indices along the propagation axis; prompts in slice pixels (`SlicePrompt`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np

from samri.inference.prompts import SlicePrompt


def prompt_signature(prompt: SlicePrompt) -> tuple:
    """What identifies a seed's prompt across requests: box, points and labels (not the mask prompt,
    which each request refreshes from the previous result)."""
    box = None if prompt.box is None else tuple(float(v) for v in np.asarray(prompt.box, dtype=np.float64))
    points = tuple(tuple(float(v) for v in p) for p in np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2))
    labels = tuple(int(v) for v in np.asarray(prompt.labels).reshape(-1))
    return box, points, labels


@dataclass
class PropagationMemo:
    """What a finished (not partial) 3D run leaves for the next request of the same client.

    Attributes:
        context: identity of everything besides the seeds that shaped the run (`Segmenter.propagate`).
        seeds: ``{slice index: prompt_signature}`` of the run's seeds.
        ref_iou: ``{seed index: reference IoU}`` of its fronts (`Propagator._reference_iou`).
        slices: ``{slice index: SliceResult}`` it predicted.
        stops: its front stops (``{"seed", "step", "at", "reason"}``).
    """

    context: Hashable
    seeds: dict[int, tuple]
    ref_iou: dict[int, float]
    slices: dict[int, Any]
    stops: list[dict[str, Any]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Bytes of the kept masks (the logits are shared with the client's refinement state)."""
        return sum(int(getattr(r.mask, "nbytes", 0)) for r in self.slices.values())


@dataclass
class ReusePlan:
    """How to run a request's propagation.

    Attributes:
        kept: ``{slice index: SliceResult}`` taken from the memo as they are.
        ref_iou: reference IoU of kept seeds.
        stops: front stops taken from the memo.
        decode: seeds to predict (changed or new), ascending.
        fronts: ``(seed, step)`` fronts to run, in the order a full run would start them.
    """

    kept: dict[int, Any] = field(default_factory=dict)
    ref_iou: dict[int, float] = field(default_factory=dict)
    stops: list[dict[str, Any]] = field(default_factory=list)
    decode: list[int] = field(default_factory=list)
    fronts: list[tuple[int, int]] = field(default_factory=list)


def full_plan(seeds: dict[int, tuple]) -> ReusePlan:
    """Predict every seed and run both fronts of each (the run without a memo)."""
    order = sorted(seeds)
    return ReusePlan(decode=order, fronts=[(k, step) for k in order for step in (1, -1)])


def plan_run(memo: PropagationMemo | None, seeds: dict[int, tuple], context: Hashable) -> ReusePlan:
    """The plan for a run with ``seeds`` (``{slice index: prompt_signature}``), reusing ``memo`` where it may."""
    if (memo is None or memo.context != context or not set(memo.seeds) <= set(seeds)
            or not set(memo.seeds) <= set(memo.slices) or not set(memo.seeds) <= set(memo.ref_iou)):
        return full_plan(seeds)
    order = sorted(seeds)
    changed = [k for k in order if memo.seeds.get(k) != seeds[k]]
    open_spans = []  # (lo, hi): slices strictly between are predicted again; None = no limit
    for k in changed:
        at = order.index(k)
        open_spans.append((order[at - 1] if at > 0 else None, order[at + 1] if at + 1 < len(order) else None))

    def reopened(index: int) -> bool:
        return any((lo is None or index > lo) and (hi is None or index < hi) for lo, hi in open_spans)

    plan = ReusePlan(decode=changed)
    plan.kept = {i: r for i, r in memo.slices.items() if i not in changed and not reopened(i)}
    for k in order:
        if k in changed:
            plan.fronts += [(k, 1), (k, -1)]
            continue
        plan.ref_iou[k] = memo.ref_iou[k]
        plan.fronts += [(k, step) for step in (1, -1) if reopened(k + step)]  # facing a re-opened span
    rerun = set(plan.fronts)
    plan.stops = [dict(s) for s in memo.stops if (s["seed"], s["step"]) not in rerun]
    return plan
