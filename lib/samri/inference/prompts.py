"""Prompts: the one prompt type, and its conversion from MONAI Label client requests.

Request schema (what 3D Slicer and OHIF send, see DESIGN.md), all in volume voxel indices:

* ``foreground`` / ``background``: lists of ``[i, j, k]``;
* ``roi``: ``[i0, i1, j0, j1, k0, k1]`` (min/max may come swapped), a 3D box;
* ``slice``: index along the slicing axis (2D models; trusted only inside the ROI's range).

`SlicePrompt` holds the prompt of one slice in slice pixels ``(r, c)``; `SlicePrompt.to_model`
maps it to SAM's model-input frame through `samri.geometry.SliceGeometry`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from samri.errors import SamriInputError
from samri.geometry import SliceGeometry, check_axis, in_plane_axes, split_point


@dataclass
class SlicePrompt:
    """Prompt on one slice; coordinates are slice pixels ``(r, c)``.

    Attributes:
        points: ``(N, 2)`` float ``(r, c)``.
        labels: ``(N,)`` int, 1 = foreground (positive), 0 = background (negative).
        box: ``(4,)`` ``(r0, c0, r1, c1)`` inclusive pixel extremes, or None.
        mask_logits: previous decoder logits ``(1, 1, s, s)`` in the decoder's low-res frame
            (refinement), or None.
        structure: the name of the structure being segmented (the request's ``label``), or None; a
            box of a named structure may use finished studies' shapes (`samri.inference.shape_prior`).
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    box: np.ndarray | None = None
    mask_logits: torch.Tensor | None = None
    structure: str | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.points) != len(self.labels):
            raise SamriInputError("labels", self.labels.tolist(), f"need one label per point ({len(self.points)})")
        if self.box is not None:
            self.box = normalize_box(self.box)

    @property
    def is_empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    def check_inside(self, shape: tuple[int, int]) -> None:
        """Raise if a point or the box lies outside a ``(H, W)`` slice."""
        h, w = shape
        for n, (r, c) in enumerate(self.points):
            if not (0 <= r <= h - 1 and 0 <= c <= w - 1):
                raise SamriInputError(f"points[{n}]", [float(r), float(c)], f"outside the {h}x{w} slice")
        if self.box is not None:
            r0, c0, r1, c1 = self.box
            if r1 < 0 or c1 < 0 or r0 > h - 1 or c0 > w - 1:
                raise SamriInputError("box", self.box.tolist(), f"outside the {h}x{w} slice")

    def to_model(self, geom: SliceGeometry, device: torch.device | str = "cpu") -> dict[str, Any]:
        """Keyword arguments for SAM's ``PromptEncoder`` in the model-input frame (batch of 1).

        Returns:
            ``{"points": (coords (1, N, 2), labels (1, N)) or None, "boxes": (1, 4) or None,
            "masks": (1, 1, s, s) or None}``.
        """
        points = None
        if len(self.points):
            xy = torch.as_tensor(geom.points_to_input(self.points), dtype=torch.float32, device=device)[None]
            points = (xy, torch.as_tensor(self.labels, dtype=torch.int64, device=device)[None])
        boxes = None
        if self.box is not None:
            boxes = torch.as_tensor(geom.box_to_input(self.box), dtype=torch.float32, device=device)[None]
        masks = None if self.mask_logits is None else self.mask_logits.to(device=device, dtype=torch.float32)
        return {"points": points, "boxes": boxes, "masks": masks}


def normalize_box(box: Any, field_name: str = "box") -> np.ndarray:
    """``(r0, c0, r1, c1)`` with min/max ordered; raises on a wrong length or non-finite values."""
    arr = np.asarray(box, dtype=np.float64).reshape(-1)
    if arr.size != 4 or not np.all(np.isfinite(arr)):
        raise SamriInputError(field_name, np.asarray(box).tolist(), "needs 4 finite numbers (r0, c0, r1, c1)")
    r0, r1 = sorted((arr[0], arr[2]))
    c0, c1 = sorted((arr[1], arr[3]))
    return np.array([r0, c0, r1, c1])


# --- client requests ----------------------------------------------------------------------------
@dataclass
class VolumeRequest:
    """A validated client request in volume voxel indices.

    Attributes:
        foreground: ``(N, 3)`` int ``[i, j, k]``.
        background: ``(M, 3)`` int.
        roi: ``(2, 3)`` int ``[[i0, j0, k0], [i1, j1, k1]]`` inclusive, clipped to the volume, or None.
        slice: requested slice index along ``axis`` or None.
        axis: slicing axis (2 = k for Slicer and OHIF).
        shape: the volume's ``(X, Y, Z)``.
        label: the structure's name (Slicer's segment name), or None.
    """

    foreground: np.ndarray
    background: np.ndarray
    roi: np.ndarray | None
    slice: int | None
    axis: int
    shape: tuple[int, int, int]
    label: str | None = None

    @property
    def points(self) -> np.ndarray:
        return np.concatenate([self.foreground, self.background]).reshape(-1, 3)

    @property
    def point_labels(self) -> np.ndarray:
        return np.concatenate([np.ones(len(self.foreground), int), np.zeros(len(self.background), int)])

    def roi_range(self) -> tuple[int, int] | None:
        """Inclusive slice range of the ROI along ``axis``."""
        return None if self.roi is None else (int(self.roi[0, self.axis]), int(self.roi[1, self.axis]))

    def select_slice(self) -> int:
        """The slice a 2D request is about: ``slice`` if credible, else the last point's, else the ROI's middle.

        Slicer sends ``slice`` from a view offset that is not always an index: with an ROI it is
        trusted only inside the ROI's range; with points it must hold at least one point.
        """
        point_slices = self.points[:, self.axis] if len(self.points) else np.zeros(0, int)
        roi_range = self.roi_range()
        if self.slice is not None:
            inside_roi = roi_range is None or roi_range[0] <= self.slice <= roi_range[1]
            on_points = len(point_slices) == 0 or self.slice in set(point_slices.tolist())
            if inside_roi and on_points:
                return int(self.slice)
        if len(point_slices):
            return int(point_slices[-1])
        if roi_range is not None:
            return (roi_range[0] + roi_range[1]) // 2
        raise SamriInputError("foreground", [], "empty prompt: give foreground points or an roi box")

    def slice_prompt(self, index: int) -> SlicePrompt:
        """The prompt of slice ``index``: its points, plus the ROI's in-plane box if it spans it."""
        rows, cols = in_plane_axes(self.axis)
        on_slice = self.points[:, self.axis] == index if len(self.points) else np.zeros(0, bool)
        _, rc = split_point(self.points[on_slice], self.axis)
        box = None
        roi_range = self.roi_range()
        if self.roi is not None and roi_range[0] <= index <= roi_range[1]:
            box = np.array([self.roi[0, rows], self.roi[0, cols], self.roi[1, rows], self.roi[1, cols]])
        return SlicePrompt(points=rc, labels=self.point_labels[on_slice], box=box, structure=self.label)

    def prompted_slices(self) -> list[int]:
        """Slices that carry a prompt for 3D propagation: every slice with a foreground point; a flat
        ROI's slice (a 2D box stays a seed when clicks are added on other slices); a 3D ROI's middle
        slice when there is no foreground point (with points it bounds them and boxes their slices)."""
        slices = set(self.foreground[:, self.axis].tolist()) if len(self.foreground) else set()
        if self.roi is not None:
            lo, hi = self.roi_range()
            if lo == hi or not slices:
                slices.add((lo + hi) // 2)
        if not slices:
            raise SamriInputError("foreground", self.foreground.tolist(),
                                  "empty prompt: give at least one foreground point or an roi box")
        return sorted(int(k) for k in slices)

    def background_slices(self) -> list[int]:
        """Slices holding a background (negative) point."""
        return sorted({int(k) for k in self.background[:, self.axis].tolist()}) if len(self.background) else []


#: magnitude beyond which no voxel index is plausible; checked on the Python value before any
#: conversion to float or int64 (a JSON integer can have thousands of digits).
MAX_INDEX = 2**31


def _as_int(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SamriInputError(field_name, value, "must be a number")
    if isinstance(value, numbers.Integral):
        index = int(value)
    else:
        number = float(value)
        if not math.isfinite(number) or abs(number - round(number)) > 1e-3:
            raise SamriInputError(field_name, value, "must be an integer voxel index")
        index = int(round(number))
    if abs(index) > MAX_INDEX:
        raise SamriInputError(field_name, value, "is not a voxel index of any volume")
    return index


def _parse_points(params: Mapping[str, Any], key: str, shape: tuple[int, int, int]) -> np.ndarray:
    raw = params.get(key)
    if raw is None:
        return np.zeros((0, 3), dtype=np.int64)
    if not isinstance(raw, (list, tuple)):
        raise SamriInputError(key, raw, "must be a list of [i, j, k] voxel indices")
    out = []
    for n, point in enumerate(raw):
        name = f"{key}[{n}]"
        if not isinstance(point, (list, tuple)) or len(point) != 3:
            raise SamriInputError(name, point, "must be [i, j, k]")
        ijk = [_as_int(v, name) for v in point]
        if not all(0 <= v < s for v, s in zip(ijk, shape)):
            raise SamriInputError(name, point, f"outside the volume of shape {list(shape)}")
        out.append(ijk)
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def _parse_roi(raw: Any, shape: tuple[int, int, int]) -> np.ndarray | None:
    if raw is None or (isinstance(raw, (list, tuple)) and len(raw) == 0):
        return None
    if not isinstance(raw, (list, tuple)) or len(raw) != 6:
        raise SamriInputError("roi", raw, "must be [i0, i1, j0, j1, k0, k1]")
    vals = [_as_int(v, "roi") for v in raw]
    lo = np.array([min(vals[0], vals[1]), min(vals[2], vals[3]), min(vals[4], vals[5])])
    hi = np.array([max(vals[0], vals[1]), max(vals[2], vals[3]), max(vals[4], vals[5])])
    upper = np.array(shape) - 1
    if np.any(hi < 0) or np.any(lo > upper):
        raise SamriInputError("roi", raw, f"does not intersect the volume of shape {list(shape)}")
    return np.stack([np.clip(lo, 0, upper), np.clip(hi, 0, upper)])


def parse_request(params: Mapping[str, Any], shape: tuple[int, int, int], axis: int = 2) -> VolumeRequest:
    """Validate a client request against a volume ``shape``.

    Raises:
        SamriInputError: naming the field (``foreground[1]``, ``roi``, ``slice``...) and its value.
    """
    if not isinstance(params, Mapping):
        raise SamriInputError("params", params, "must be a JSON object")
    axis = check_axis(axis)
    shape = tuple(int(s) for s in shape)
    fg = _parse_points(params, "foreground", shape)
    bg = _parse_points(params, "background", shape)
    roi = _parse_roi(params.get("roi"), shape)
    slice_index = params.get("slice")
    if slice_index is not None:
        slice_index = _as_int(slice_index, "slice")
        if not 0 <= slice_index < shape[axis]:
            raise SamriInputError("slice", slice_index, f"out of range 0..{shape[axis] - 1} along axis {axis}")
    if len(fg) == 0 and roi is None:
        raise SamriInputError("foreground", params.get("foreground", []),
                              "empty prompt: give at least one foreground point or an roi box")
    label = params.get("label")
    if label is not None and not isinstance(label, str):
        raise SamriInputError("label", label, "must be the structure's name (a string)")
    return VolumeRequest(foreground=fg, background=bg, roi=roi, slice=slice_index, axis=axis, shape=shape,
                         label=label or None)
