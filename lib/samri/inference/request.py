"""One client request -> one label volume: the path shared by the CLI and the MONAI Label app."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch

from samri.errors import SamriInputError
from samri.geometry import in_plane_axes, put_slice
from samri.inference.prompts import VolumeRequest, parse_request
from samri.inference.reuse import PropagationMemo
from samri.inference.segmenter import PropagationBudget, Segmenter, SliceResult

logger = logging.getLogger(__name__)

MODES = ("2d", "3d")


@dataclass
class InteractiveResult:
    """What a request produced.

    Attributes:
        mask: ``(X, Y, Z)`` uint8 (1 = object) on the image grid.
        mode: ``"2d"`` or ``"3d"``.
        axis: slicing axis.
        slices: ``{slice index: SliceResult}`` that were predicted.
        request: the validated request.
        stops: 3D: where and why each propagation front stopped (`samri.inference.propagation.PropagationRun`).
        partial: 3D: None, or ``{"reason": "max_slices" | "max_seconds" | "cancelled",
            "slices_done": n, "seconds": s}`` when the budget ended propagation early.
        memo: 3D: what this client's next request may reuse (pass it back as ``previous_run``).
        kept: 3D: slices taken from ``previous_run`` instead of predicted (ascending).
    """

    mask: np.ndarray
    mode: str
    axis: int
    slices: dict[int, SliceResult] = field(default_factory=dict)
    request: VolumeRequest | None = None
    stops: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None
    memo: PropagationMemo | None = None
    kept: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly facts for logs and HTTP result params."""
        ious = {int(k): round(v.iou, 4) for k, v in sorted(self.slices.items())}
        out = {"mode": self.mode, "axis": self.axis, "slices": sorted(ious), "predicted_iou": ious,
               "voxels": int(np.count_nonzero(self.mask)), "partial": self.partial}
        if self.mode == "3d":
            out["stops"] = [dict(s) for s in self.stops]
            out["reused_slices"] = len(self.kept)
        return out


def run_request(segmenter: Segmenter, volume, params: Mapping[str, Any], *, mode: str = "2d", axis: int = 2,
                previous_logits: Mapping[int, torch.Tensor] | None = None, budget: PropagationBudget | None = None,
                should_stop: Callable[[], bool] | None = None,
                previous_run: PropagationMemo | None = None) -> InteractiveResult:
    """Validate ``params`` (Slicer/OHIF schema) and segment ``volume`` (a PreparedVolume).

    Args:
        mode: ``"2d"`` fills only the request's slice; ``"3d"`` propagates in both directions.
        previous_logits: ``{slice index: (1, 1, s, s)}`` low-res logits of this client's previous
            result on the same label; used as the mask prompt on those slices (refinement).
        budget: 3D only: most slices and seconds (`PropagationBudget`); propagation beyond it
            stops and the result is marked ``partial``. Prompted slices beyond ``max_slices``
            are rejected before any work.
        should_stop: 3D only: polled between slices; True ends propagation (partial, reason
            ``"cancelled"``), e.g. when the client disconnected. Overrides ``budget.should_stop``.
        previous_run: 3D only: ``InteractiveResult.memo`` of this client's previous request on the
            same label; slices that no changed prompt reaches are kept from it (`samri.inference.reuse`).
    """
    if mode not in MODES:
        raise SamriInputError("mode", mode, f"must be one of {list(MODES)}")
    request = parse_request(params, volume.shape, axis)
    previous_logits = previous_logits or {}
    out = np.zeros(volume.shape, dtype=np.uint8)
    if mode == "2d":
        index = request.select_slice()
        prompt = request.slice_prompt(index)
        prompt.mask_logits = previous_logits.get(index)
        if prompt.is_empty:
            raise SamriInputError("slice", index, "no point or roi box on this slice")
        res = segmenter.predict_slice(volume, axis, index, prompt)
        put_slice(out, axis, index, res.mask.astype(np.uint8))
        return InteractiveResult(mask=out, mode=mode, axis=axis, slices={index: res}, request=request)
    budget = budget or PropagationBudget()
    if should_stop is not None:
        budget = replace(budget, should_stop=should_stop)
    prompted = request.prompted_slices()
    # a negative click on a slice of this client's previous result refines that slice (mask prompt)
    prompted = sorted(set(prompted) | {k for k in request.background_slices() if k in previous_logits})
    budget.check_seeds(len(prompted), "foreground")
    seeds = {}
    for index in prompted:
        prompt = request.slice_prompt(index)
        prompt.mask_logits = previous_logits.get(index)
        seeds[index] = prompt
    roi_box = None
    if request.roi is not None:
        rows, cols = in_plane_axes(axis)
        roi_box = np.array([request.roi[0, rows], request.roi[0, cols], request.roi[1, rows], request.roi[1, cols]],
                           dtype=np.float64)
    bounds = request.roi_range()
    if bounds is not None and bounds[0] == bounds[1]:
        bounds = None  # a flat ROI is a 2D box on its slice, not a limit of the object's extent
    vres = segmenter.propagate(volume, axis, seeds, bounds=bounds, roi_box=roi_box, budget=budget,
                               memo=previous_run)
    return InteractiveResult(mask=vres.mask.astype(np.uint8), mode=mode, axis=axis, slices=vres.slices,
                             request=request, stops=vres.stops, partial=vres.partial, memo=vres.memo,
                             kept=vres.kept)
