"""Which slices of a study are scored, and where the head is on them.

Frames: volumes are the windowed ``(X, Y, Z)`` arrays of `samri.volume.PreparedVolume` (values in
``[0, 1]``, background near 0); slices are ``(H, W)`` planes along ``axis``.

The head mask is robust to noise: the windowed volume is smoothed (Gaussian, sigma 2 voxels) and
thresholded at its Otsu level (never below `FOREGROUND_LEVEL`), so a noisy background does not
count as head and the sampled slices of a corrupted copy match the clean one's.
"""

from __future__ import annotations

import numpy as np

from samri.geometry import check_axis

#: lowest threshold of the head mask (windowed intensity)
FOREGROUND_LEVEL = 0.05


def head_mask(windowed: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """``(X, Y, Z)`` bool head mask of a windowed volume (smoothed, Otsu threshold)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(np.asarray(windowed, dtype=np.float32), sigma)
    try:
        level = float(threshold_otsu(smooth[::2, ::2, ::2]))
    except ValueError:  # constant volume
        level = FOREGROUND_LEVEL
    return smooth > max(level, FOREGROUND_LEVEL)


def sample_slices(head: np.ndarray, axis: int, *, step: int, max_slices: int, min_foreground: float) -> list[int]:
    """Slice indices to score along ``axis`` from a ``(X, Y, Z)`` head mask.

    Takes every ``step``-th slice among those whose head fraction is at least ``min_foreground``
    (falling back to the slices with any head, then the middle slice), centred in that range, then
    keeps at most ``max_slices`` of them evenly spread. Deterministic.
    """
    moved = np.moveaxis(np.asarray(head), check_axis(axis), 0)
    fractions = moved.reshape(moved.shape[0], -1).mean(axis=1)
    candidates = np.flatnonzero(fractions >= min_foreground)
    if candidates.size == 0:
        candidates = np.flatnonzero(fractions > 0)
    if candidates.size == 0:
        return [int(head.shape[axis] // 2)]
    step = max(1, int(step))
    count = (candidates.size - 1) // step + 1
    offset = (candidates.size - 1 - (count - 1) * step) // 2  # centre the comb in the head's range
    stepped = candidates[offset::step][:count]
    if stepped.size > max_slices:
        keep = np.round(np.linspace(0, stepped.size - 1, max_slices)).astype(int)
        stepped = stepped[np.unique(keep)]
    return [int(i) for i in stepped]
