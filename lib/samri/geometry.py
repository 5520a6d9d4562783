"""Coordinate frames and the exact maps between them.

Frames used across serving, training and evaluation:

* **volume voxel indices** ``(i, j, k)``: integer indices into the 3D array as loaded (nibabel
  order, the IJK that 3D Slicer and OHIF send);
* **slice pixels** ``(r, c)``: a 2D slice taken along ``axis`` at ``index``; rows and columns are
  the two remaining volume axes in increasing order (axis 2 -> ``(r, c) = (i, j)``);
* **model input pixels** ``(x, y)``: SAM's frame after resize-longest-side to ``input_size`` and
  zero padding at the bottom/right; ``x`` is the column. SAM's prompt encoder adds 0.5 itself, so
  a value here is a pixel index (centre of a pixel), and a slice pixel centre ``r + 0.5`` in
  continuous coordinates maps to ``(r + 0.5) * scale - 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from samri.errors import SamriInputError

AXES = (0, 1, 2)


def check_axis(axis: int) -> int:
    """Return ``axis`` if it is 0, 1 or 2, else raise naming the field ``axis``."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or int(axis) not in AXES:
        raise SamriInputError("axis", axis, "must be 0, 1 or 2 (an axis of the voxel grid)")
    return int(axis)


def in_plane_axes(axis: int) -> tuple[int, int]:
    """The volume axes that become slice rows and columns for a slice along ``axis``."""
    axis = check_axis(axis)
    rows, cols = (a for a in AXES if a != axis)
    return rows, cols


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """2D slice ``(rows, cols)`` of a ``(X, Y, Z)`` volume along ``axis`` at ``index``."""
    axis = check_axis(axis)
    n = volume.shape[axis]
    if not 0 <= int(index) < n:
        raise SamriInputError("slice", index, f"out of range for axis {axis} with {n} slices (0..{n - 1})")
    sl = [slice(None)] * volume.ndim
    sl[axis] = int(index)
    return volume[tuple(sl)].copy()  # a copy, as np.take gave, but ~100x faster on the last axis


def put_slice(volume: np.ndarray, axis: int, index: int, plane: np.ndarray) -> None:
    """Write a ``(rows, cols)`` plane into ``volume`` in place (inverse of `take_slice`)."""
    axis = check_axis(axis)
    n = volume.shape[axis]
    if not 0 <= int(index) < n:
        raise SamriInputError("slice", index, f"out of range for axis {axis} with {n} slices (0..{n - 1})")
    sl = [slice(None)] * 3
    sl[axis] = int(index)
    volume[tuple(sl)] = plane


def box_mask(box, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool of the pixels inside an inclusive ``(r0, c0, r1, c1)`` box (slice pixels, rounded)."""
    r0, c0, r1, c1 = (int(round(float(v))) for v in box)
    out = np.zeros(shape, dtype=bool)
    out[max(r0, 0):r1 + 1, max(c0, 0):c1 + 1] = True
    return out


def slice_boxes(mask: np.ndarray, axis: int) -> dict[int, np.ndarray]:
    """``{slice index: (r0, c0, r1, c1)}``: the tight inclusive box (slice pixels, float64) of an ``(X, Y, Z)``
    bool ``mask`` on each slice along ``axis`` that it touches."""
    out = {}
    for k in np.flatnonzero(mask.sum(axis=tuple(a for a in range(3) if a != axis))):
        rows, cols = np.nonzero(take_slice(mask, axis, int(k)))
        out[int(k)] = np.array([rows.min(), cols.min(), rows.max(), cols.max()], dtype=np.float64)
    return out


def split_point(ijk: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Volume voxel points ``(N, 3)`` -> (slice indices ``(N,)``, slice pixels ``(N, 2)`` as ``(r, c)``)."""
    pts = np.asarray(ijk).reshape(-1, 3)
    rows, cols = in_plane_axes(axis)
    return pts[:, axis].copy(), pts[:, [rows, cols]].copy()


def join_point(index: np.ndarray, rc: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of `split_point`: slice indices ``(N,)`` and ``(r, c)`` ``(N, 2)`` -> ``(N, 3)``."""
    rc = np.asarray(rc).reshape(-1, 2)
    rows, cols = in_plane_axes(axis)
    out = np.zeros((rc.shape[0], 3), dtype=rc.dtype)
    out[:, axis] = np.asarray(index).reshape(-1)
    out[:, rows] = rc[:, 0]
    out[:, cols] = rc[:, 1]
    return out


@dataclass(frozen=True)
class SliceGeometry:
    """Resize-longest-side + pad between a ``(height, width)`` slice and a square model input.

    Attributes:
        height: slice rows (``H``).
        width: slice columns (``W``).
        input_size: side of the square model input (1024 for SAM, 256 for LiteMedSAM).
    """

    height: int
    width: int
    input_size: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise SamriInputError("slice shape", (self.height, self.width), "must be at least 1x1")

    @property
    def resized_shape(self) -> tuple[int, int]:
        """``(new_h, new_w)`` after resizing the longest side to ``input_size`` (SAM's rounding)."""
        scale = self.input_size / max(self.height, self.width)
        return max(1, int(self.height * scale + 0.5)), max(1, int(self.width * scale + 0.5))

    @property
    def row_scale(self) -> float:
        return self.resized_shape[0] / self.height

    @property
    def col_scale(self) -> float:
        return self.resized_shape[1] / self.width

    # points and boxes -------------------------------------------------------------------------
    def points_to_input(self, rc: np.ndarray) -> np.ndarray:
        """Slice pixels ``(N, 2)`` ``(r, c)`` -> model input ``(N, 2)`` ``(x, y)`` float."""
        rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
        x = (rc[:, 1] + 0.5) * self.col_scale - 0.5
        y = (rc[:, 0] + 0.5) * self.row_scale - 0.5
        return np.stack([x, y], axis=1)

    def points_to_low_res(self, rc: np.ndarray, size: int) -> np.ndarray:
        """Slice pixels ``(N, 2)`` ``(r, c)`` -> the nearest cell ``(N, 2)`` int ``(row, col)`` of a
        ``size x size`` decoder logit grid (the model-input frame scaled by ``size / input_size``)."""
        xy = (self.points_to_input(rc) + 0.5) * size / self.input_size - 0.5
        return np.clip(np.round(xy[:, ::-1]), 0, size - 1).astype(np.int64)

    def points_to_slice(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of `points_to_input`: ``(N, 2)`` ``(x, y)`` -> ``(N, 2)`` ``(r, c)`` float."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        r = (xy[:, 1] + 0.5) / self.row_scale - 0.5
        c = (xy[:, 0] + 0.5) / self.col_scale - 0.5
        return np.stack([r, c], axis=1)

    def box_to_input(self, box_rc: np.ndarray) -> np.ndarray:
        """Slice box ``(r0, c0, r1, c1)`` (inclusive pixel extremes) -> input ``(x0, y0, x1, y1)``."""
        b = np.asarray(box_rc, dtype=np.float64).reshape(4)
        corners = self.points_to_input(np.array([[b[0], b[1]], [b[2], b[3]]]))
        return corners.reshape(4)

    def box_to_slice(self, box_xy: np.ndarray) -> np.ndarray:
        """Inverse of `box_to_input`."""
        b = np.asarray(box_xy, dtype=np.float64).reshape(4)
        corners = self.points_to_slice(np.array([[b[0], b[1]], [b[2], b[3]]]))
        return corners.reshape(4)

    # images and masks -------------------------------------------------------------------------
    def image_to_input(self, image: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` float image -> ``(C, S, S)``: bilinear resize, zero pad bottom/right."""
        new_h, new_w = self.resized_shape
        resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear",
                                align_corners=False, antialias=True)[0]
        return self.pad(resized)

    def pad(self, resized: torch.Tensor) -> torch.Tensor:
        """Zero-pad a ``(C, new_h, new_w)`` tensor to ``(C, S, S)``."""
        new_h, new_w = resized.shape[-2:]
        return F.pad(resized, (0, self.input_size - new_w, 0, self.input_size - new_h))

    def mask_to_input(self, mask: np.ndarray) -> np.ndarray:
        """Binary slice mask ``(H, W)`` -> input-frame mask ``(S, S)`` (nearest, padded with 0)."""
        t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
        resized = F.interpolate(t, size=self.resized_shape, mode="nearest-exact")[0]
        return self.pad(resized)[0].numpy() > 0.5

    def mask_to_slice(self, mask: np.ndarray) -> np.ndarray:
        """Input-frame binary mask ``(S, S)`` -> slice mask ``(H, W)`` (crop padding, nearest)."""
        new_h, new_w = self.resized_shape
        t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[:new_h, :new_w][None, None]
        out = F.interpolate(t, size=(self.height, self.width), mode="nearest-exact")
        return out[0, 0].numpy() > 0.5

    def logits_to_slice(self, low_res: torch.Tensor) -> torch.Tensor:
        """Decoder logits ``(B, 1, s, s)`` (any square size) -> ``(B, 1, H, W)`` logits.

        Upsamples to the input frame, crops the padding, then resizes to the slice, as SAM's
        ``postprocess_masks`` does.
        """
        new_h, new_w = self.resized_shape
        up = low_res.float()
        if up.shape[-1] != self.input_size:
            up = F.interpolate(up, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        up = up[..., :new_h, :new_w]
        return F.interpolate(up, size=(self.height, self.width), mode="bilinear", align_corners=False)

    def slice_to_low_res(self, logits: torch.Tensor, low_res_size: int) -> torch.Tensor:
        """Slice-frame logits ``(B, 1, H, W)`` -> ``(B, 1, s, s)`` decoder mask-prompt frame.

        Approximate inverse of `logits_to_slice`, used to feed a stored mask back as a prompt.
        """
        new_h, new_w = self.resized_shape
        up = F.interpolate(logits.float(), size=(new_h, new_w), mode="bilinear", align_corners=False)
        padded = F.pad(up, (0, self.input_size - new_w, 0, self.input_size - new_h), value=-20.0)
        return F.interpolate(padded, size=(low_res_size, low_res_size), mode="bilinear", align_corners=False)
