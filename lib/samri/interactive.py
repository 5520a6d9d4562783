"""One client request -> one label volume: the path shared by the CLI and the MONAI Label app."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from samri.errors import SamriInputError
from samri.geometry import in_plane_axes, put_slice
from samri.predict import Segmenter, SliceResult
from samri.prompts import VolumeRequest, parse_request

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
    """

    mask: np.ndarray
    mode: str
    axis: int
    slices: dict[int, SliceResult] = field(default_factory=dict)
    request: VolumeRequest | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-friendly facts for logs and HTTP result params."""
        ious = {int(k): round(v.iou, 4) for k, v in sorted(self.slices.items())}
        return {"mode": self.mode, "axis": self.axis, "slices": sorted(ious), "predicted_iou": ious,
                "voxels": int(self.mask.sum())}


def run_request(segmenter: Segmenter, volume, params: Mapping[str, Any], *, mode: str = "2d", axis: int = 2,
                previous_logits: Mapping[int, torch.Tensor] | None = None) -> InteractiveResult:
    """Validate ``params`` (Slicer/OHIF schema) and segment ``volume`` (a PreparedVolume).

    Args:
        mode: ``"2d"`` fills only the request's slice; ``"3d"`` propagates in both directions.
        previous_logits: ``{slice index: (1, 1, s, s)}`` low-res logits of this client's previous
            result on the same label; used as the mask prompt on those slices (refinement).
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
    seeds = {}
    for index in request.prompted_slices():
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
    vres = segmenter.propagate(volume, axis, seeds, bounds=bounds, roi_box=roi_box)
    return InteractiveResult(mask=vres.mask.astype(np.uint8), mode=mode, axis=axis, slices=vres.slices,
                             request=request)
