"""Segmentation metrics in millimetres (MONAI) and size buckets for SAMRI-style evaluation.

All metrics come from ``monai.metrics`` and take the physical voxel spacing, so distances are in mm:

* Dice: `monai.metrics.compute_dice` (the function behind ``DiceMetric``);
* HD95: `monai.metrics.compute_hausdorff_distance` with ``percentile=95`` (symmetric);
* NSD: `monai.metrics.compute_surface_dice` with a tolerance in mm.

Masks are ``(H, W)`` slice pixels (2D, spacing = the slice's in-plane spacing, rows then columns)
or ``(X, Y, Z)`` voxels (3D). An empty prediction scores Dice 0 and NSD 0; its HD95 is undefined
(MONAI returns inf), recorded as NaN and counted in ``n_empty_pred`` of the aggregates.

Size buckets:

* ``samri`` -- SAMRI's protocol: tertiles of the object's area fraction (object pixels / slice
  pixels, or voxels / volume voxels in 3D) over all evaluated pairs of one run;
* ``fixed`` -- fixed area-fraction thresholds (`FIXED_THRESHOLDS_2D`, `FIXED_THRESHOLDS_3D`), the
  same for every run, so numbers from different runs and data sets can be compared.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

BUCKETS = ("small", "medium", "large")
#: fixed 2D buckets: object area / slice area < 1 % small, < 5 % medium, else large
FIXED_THRESHOLDS_2D = (0.01, 0.05)
#: fixed 3D buckets: object volume / image volume < 0.1 % small, < 1 % medium, else large
FIXED_THRESHOLDS_3D = (0.001, 0.01)
#: default tolerance of the normalised surface Dice, mm
DEFAULT_NSD_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class PairMetrics:
    """Metrics of one prediction against its ground truth.

    Attributes:
        dice: Dice coefficient in [0, 1].
        hd95_mm: symmetric 95th-percentile Hausdorff distance in mm (NaN if the prediction is empty).
        nsd: normalised surface Dice at the tolerance, in [0, 1].
        pred_empty: the prediction has no foreground voxel.
    """

    dice: float
    hd95_mm: float
    nsd: float
    pred_empty: bool


def _onehot(mask: np.ndarray) -> torch.Tensor:
    """``(spatial...)`` bool -> ``(1, 1, spatial...)`` float (single foreground channel)."""
    return torch.as_tensor(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """MONAI's Dice of two same-shape bool masks (2D or 3D); 1.0 when both are empty."""
    from monai.metrics import compute_dice

    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if not gt.any() and not pred.any():
        return 1.0
    return float(compute_dice(_onehot(pred), _onehot(gt), include_background=True)[0, 0])


def segmentation_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
                         nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> PairMetrics:
    """Dice, HD95 (mm) and NSD of a binary prediction against a non-empty ground truth.

    Args:
        pred: ``(H, W)`` or ``(X, Y, Z)`` bool prediction.
        gt: ground truth of the same shape (must not be empty).
        spacing: physical size of a pixel/voxel along each array axis, mm (length = ``gt.ndim``).
        nsd_tolerance_mm: boundary tolerance of the normalised surface Dice, mm.
    """
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if len(spacing) != gt.ndim:
        raise ValueError(f"spacing {tuple(spacing)} needs one value per axis of {gt.shape}")
    if not gt.any():
        raise ValueError("ground truth is empty: metrics are undefined")
    spacing = [float(s) for s in spacing]
    y_pred, y = _onehot(pred), _onehot(gt)
    score = dice(pred, gt)
    if not pred.any():
        return PairMetrics(dice=0.0, hd95_mm=float("nan"), nsd=0.0, pred_empty=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = float(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95,
                                              spacing=spacing)[0, 0])
        nsd = float(compute_surface_dice(y_pred, y, class_thresholds=[float(nsd_tolerance_mm)],
                                         include_background=True, spacing=spacing)[0, 0])
    return PairMetrics(dice=score, hd95_mm=hd if np.isfinite(hd) else float("nan"), nsd=nsd, pred_empty=False)


# --- size buckets -------------------------------------------------------------------------------
def tertile_cutoffs(fractions: Iterable[float]) -> tuple[float, float]:
    """SAMRI's bucket edges: the 1/3 and 2/3 quantiles of the objects' area fractions."""
    arr = np.asarray(list(fractions), dtype=np.float64)
    if arr.size == 0:
        return (0.0, 0.0)
    lo, hi = np.quantile(arr, [1.0 / 3.0, 2.0 / 3.0])
    return float(lo), float(hi)


def bucket_of(fraction: float, cutoffs: Sequence[float]) -> str:
    """``small`` below ``cutoffs[0]``, ``medium`` below ``cutoffs[1]``, else ``large``."""
    if fraction < cutoffs[0]:
        return "small"
    if fraction < cutoffs[1]:
        return "medium"
    return "large"


def fixed_cutoffs(mode: str) -> tuple[float, float]:
    """Fixed bucket edges for ``"2d"`` (area fraction of the slice) or ``"3d"`` (of the volume)."""
    return FIXED_THRESHOLDS_3D if mode == "3d" else FIXED_THRESHOLDS_2D


# --- aggregation --------------------------------------------------------------------------------
def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def aggregate(rows: Sequence[Mapping]) -> dict:
    """Summary statistics of pair rows (each with ``dice``, ``hd95_mm``, ``nsd``, ``pred_empty``).

    Returns:
        ``{n, mean_dice, median_dice, std_dice, hd95_mm, median_hd95_mm, nsd, n_empty_pred}``; HD95
        figures are over pairs with a non-empty prediction; values are None when undefined.
    """
    dice = _finite(r["dice"] for r in rows)
    hd = _finite(r["hd95_mm"] for r in rows)
    nsd = _finite(r["nsd"] for r in rows)

    def stat(fn, arr):
        return round(float(fn(arr)), 4) if arr.size else None

    return {"n": len(rows), "mean_dice": stat(np.mean, dice), "median_dice": stat(np.median, dice),
            "std_dice": stat(np.std, dice), "hd95_mm": stat(np.mean, hd), "median_hd95_mm": stat(np.median, hd),
            "nsd": stat(np.mean, nsd),
            "n_empty_pred": int(sum(str(r["pred_empty"]).lower() in ("1", "true") for r in rows))}


def aggregate_with_buckets(rows: Sequence[Mapping]) -> dict:
    """`aggregate` plus ``buckets`` (SAMRI tertiles) and ``buckets_fixed`` (fixed thresholds)."""
    out = aggregate(rows)
    for key, column in (("buckets", "bucket_samri"), ("buckets_fixed", "bucket_fixed")):
        out[key] = {b: aggregate([r for r in rows if r[column] == b]) for b in BUCKETS}
    return out
