"""MRI intensity handling shared by serving, training and evaluation.

Two steps, kept apart on purpose:

1. `window_volume` (ours, for every model): raw volume of any dtype -> float32 in ``[0, 1]`` with
   NaN/inf replaced, a per-volume percentile window computed on the foreground, no 8-bit wrap.
2. `slice_to_model_input` (per model variant, see `samri.model.builders.Preprocessing`): a windowed slice
   -> the ``(3, S, S)`` tensor the encoder was trained with (per-slice min-max for LiteMedSAM and
   the released SAMRI weights, 0-255 + SAM pixel mean/std for SAM and SAMRI).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from samri.errors import SamriInputError
from samri.geometry import SliceGeometry

logger = logging.getLogger(__name__)

#: bump when `window_volume` or `slice_to_model_input` changes output; part of cache keys.
PREPROCESSING_VERSION = 1


@dataclass(frozen=True)
class WindowSettings:
    """Per-volume percentile window.

    Attributes:
        lower_percentile: percentile of foreground intensities mapped to 0.
        upper_percentile: percentile of foreground intensities mapped to 1.
        foreground_only: compute percentiles on voxels above the volume minimum (MRI background
            is usually a large block at the minimum, which would drag the lower percentile).
    """

    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    foreground_only: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.lower_percentile < self.upper_percentile <= 100.0:
            raise SamriInputError("window percentiles", (self.lower_percentile, self.upper_percentile),
                                  "need 0 <= lower < upper <= 100")

    def key(self) -> str:
        return f"w{self.lower_percentile:g}-{self.upper_percentile:g}-{int(self.foreground_only)}"


def check_volume(volume: np.ndarray, field: str = "image") -> np.ndarray:
    """Return ``volume`` as an array if it is a 3D numeric volume, else raise naming ``field``.

    A 4D volume with a trailing singleton dimension (common in NIfTI) is squeezed to 3D.
    """
    arr = np.asarray(volume)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise SamriInputError(field, f"shape {arr.shape}", "a 3D volume (X, Y, Z) is needed")
    if min(arr.shape) < 1:
        raise SamriInputError(field, f"shape {arr.shape}", "volume has an empty dimension")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise SamriInputError(field, f"dtype {arr.dtype}", "a numeric volume is needed")
    return arr


def window_volume(volume: np.ndarray, settings: WindowSettings = WindowSettings(),
                  field: str = "image") -> np.ndarray:
    """Raw ``(X, Y, Z)`` volume -> float32 ``(X, Y, Z)`` in ``[0, 1]``.

    Non-finite voxels become 0 (the window's bottom). Integer data is converted to float before
    any arithmetic, so nothing wraps around.

    Raises:
        SamriInputError: not 3D, no finite voxel, or constant intensities.
    """
    arr = check_volume(volume, field).astype(np.float64, copy=False)  # float64: no overflow, no lost offsets
    finite = np.isfinite(arr)
    n_finite = int(finite.sum())
    if n_finite == 0:
        raise SamriInputError(field, "all voxels NaN/inf", "the image has no finite intensity")
    values = arr[finite]
    vmin = float(values.min())
    if settings.foreground_only:
        fg = values[values > vmin]
        if fg.size >= max(16, values.size // 1000):
            values = fg
    lo, hi = np.percentile(values, [settings.lower_percentile, settings.upper_percentile])
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        raise SamriInputError(field, f"constant intensity {lo:g}", "the image has no contrast to segment")
    if n_finite < arr.size:
        logger.warning("%s: %d non-finite voxels set to the window minimum", field, arr.size - n_finite)
    out = np.where(finite, arr, lo)
    out = (out - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Preprocessing:
    """How a model variant's encoder expects a slice (recorded in the registry and checkpoints).

    Attributes:
        input_size: square encoder input side (1024 SAM/SAMRI, 256 LiteMedSAM).
        slice_minmax: rescale each resized slice to its own min..max before scaling.
        value_scale: multiply ``[0, 1]`` values by this (255 for SAM-family pixel statistics).
        pixel_mean: per-channel mean subtracted after scaling (SAM: 123.675, 116.28, 103.53).
        pixel_std: per-channel std divided after scaling (SAM: 58.395, 57.12, 57.375).
    """

    input_size: int = 1024
    slice_minmax: bool = False
    value_scale: float = 255.0
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def key(self) -> str:
        """Stable short description, part of the embedding cache key."""
        mean = ",".join(f"{m:g}" for m in self.pixel_mean)
        std = ",".join(f"{s:g}" for s in self.pixel_std)
        return (f"v{PREPROCESSING_VERSION}-s{self.input_size}-mm{int(self.slice_minmax)}"
                f"-x{self.value_scale:g}-m{mean}-d{std}")

    def to_dict(self) -> dict:
        return {"input_size": self.input_size, "slice_minmax": self.slice_minmax,
                "value_scale": self.value_scale, "pixel_mean": list(self.pixel_mean),
                "pixel_std": list(self.pixel_std)}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        known = {"input_size", "slice_minmax", "value_scale", "pixel_mean", "pixel_std"}
        unknown = set(data) - known
        if unknown:
            raise SamriInputError("preprocessing", sorted(unknown), f"unknown keys; known: {sorted(known)}")
        kw = dict(data)
        for name in ("pixel_mean", "pixel_std"):
            if name in kw:
                kw[name] = tuple(float(v) for v in kw[name])
        return cls(**kw)


def slice_to_model_input(plane: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """Windowed slice ``(H, W)`` in ``[0, 1]`` -> encoder input ``(3, S, S)`` float32.

    The padded region holds the value a zero pixel would have after normalisation's mean shift
    is applied only to the image (SAM pads after normalising, with zeros).
    """
    plane = np.asarray(plane, dtype=np.float32)
    geom = SliceGeometry(plane.shape[0], plane.shape[1], prep.input_size)
    new_h, new_w = geom.resized_shape
    t = torch.as_tensor(plane)[None, None]
    resized = torch.nn.functional.interpolate(t, size=(new_h, new_w), mode="bilinear",
                                              align_corners=False, antialias=True)[0]
    if prep.slice_minmax:
        lo, hi = resized.min(), resized.max()
        resized = (resized - lo) / torch.clamp(hi - lo, min=1e-8)
    resized = resized.clamp(0.0, 1.0) * prep.value_scale
    rgb = resized.expand(3, -1, -1)
    mean = torch.tensor(prep.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(prep.pixel_std, dtype=torch.float32).view(3, 1, 1)
    return geom.pad((rgb - mean) / std)
