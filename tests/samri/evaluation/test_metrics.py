"""Metrics in mm on masks with known answers, size buckets and aggregation (samri.evaluation.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from samri.evaluation.metrics import (
    FIXED_THRESHOLDS_2D,
    FIXED_THRESHOLDS_3D,
    aggregate,
    aggregate_with_buckets,
    bucket_of,
    fixed_cutoffs,
    segmentation_metrics,
    tertile_cutoffs,
)

SPACING = (2.0, 0.5, 1.0)  # anisotropic: mm per voxel along axes 0, 1, 2


def sheet(shape=(30, 40, 20), at=10) -> np.ndarray:
    """A one-voxel-thick sheet x == ``at`` away from the borders: every surface point's nearest
    point on a copy shifted along axis 0 is its own image, so all distances are the shift."""
    mask = np.zeros(shape, dtype=bool)
    mask[at, 5:35, 4:16] = True
    return mask


def box(shape=(30, 40, 20)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[8:20, 10:30, 5:15] = True
    return mask


@pytest.mark.parametrize("mask", [box(), box()[:, :, 10]], ids=["3d", "2d"])
def test_perfect_prediction_scores_dice_1_hd95_0_nsd_1(mask):
    m = segmentation_metrics(mask, mask, SPACING[: mask.ndim])
    assert m.dice == pytest.approx(1.0)
    assert m.hd95_mm == pytest.approx(0.0)
    assert m.nsd == pytest.approx(1.0)
    assert not m.pred_empty


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shift_along_coarse_axis_gives_k_times_its_spacing(k):
    gt = sheet()
    pred = np.roll(gt, k, axis=0)  # axis 0 has 2 mm voxels
    m = segmentation_metrics(pred, gt, SPACING)
    assert m.hd95_mm == pytest.approx(2.0 * k)
    assert m.dice == 0.0


def test_spacing_is_applied_per_axis():
    gt = np.zeros((30, 40, 20), dtype=bool)
    gt[5:25, 20, 4:16] = True  # sheet normal to axis 1 (0.5 mm voxels)
    pred = np.roll(gt, 4, axis=1)
    assert segmentation_metrics(pred, gt, SPACING).hd95_mm == pytest.approx(4 * 0.5)
    assert segmentation_metrics(pred, gt, (1.0, 1.0, 1.0)).hd95_mm == pytest.approx(4.0)


def test_2d_shift_uses_in_plane_spacing():
    gt = sheet()[:, :, 10]
    pred = np.roll(gt, 3, axis=0)
    assert segmentation_metrics(pred, gt, (2.0, 0.5)).hd95_mm == pytest.approx(6.0)


def test_solid_box_shift_bounded_by_shift_distance():
    gt = box()
    pred = np.roll(gt, 2, axis=0)
    m = segmentation_metrics(pred, gt, SPACING)
    assert 0.0 < m.hd95_mm <= 4.0 + 1e-6
    assert m.dice == pytest.approx(2 * 10 / 24)  # 12 voxels deep, 10 overlap


def test_nsd_tolerance_in_mm():
    gt = sheet()
    pred = np.roll(gt, 1, axis=0)  # every boundary point is exactly 2 mm away
    assert segmentation_metrics(pred, gt, SPACING, nsd_tolerance_mm=2.0).nsd == pytest.approx(1.0)
    assert segmentation_metrics(pred, gt, SPACING, nsd_tolerance_mm=1.9).nsd == pytest.approx(0.0)
    # same shift with 1 mm voxels is within a 1 mm tolerance
    assert segmentation_metrics(pred, gt, (1.0, 1.0, 1.0), nsd_tolerance_mm=1.0).nsd == pytest.approx(1.0)


def test_nsd_partial_overlap_between_0_and_1():
    gt = box()
    pred = gt.copy()
    pred[8:20, 10:20, 5:15] = False
    pred[8:20, 10:14, 5:15] = True
    m = segmentation_metrics(pred, gt, (1.0, 1.0, 1.0), nsd_tolerance_mm=1.0)
    assert 0.0 < m.nsd < 1.0


def test_empty_prediction():
    gt = box()
    m = segmentation_metrics(np.zeros_like(gt), gt, SPACING)
    assert m.dice == 0.0 and m.nsd == 0.0 and m.pred_empty and math.isnan(m.hd95_mm)


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        segmentation_metrics(box(), np.zeros((30, 40, 20), bool), SPACING)
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(box()[:, :, 0], box(), SPACING)
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(box(), box(), (1.0, 1.0))


def test_tertiles_split_in_thirds():
    fractions = np.linspace(0.001, 0.3, 99)
    cut = tertile_cutoffs(fractions)
    buckets = [bucket_of(f, cut) for f in fractions]
    assert buckets.count("small") == 33 and buckets.count("medium") == 33 and buckets.count("large") == 33
    assert buckets[0] == "small" and buckets[-1] == "large"
    assert tertile_cutoffs([]) == (0.0, 0.0)


def test_fixed_thresholds():
    assert fixed_cutoffs("2d") == FIXED_THRESHOLDS_2D == (0.01, 0.05)
    assert fixed_cutoffs("3d") == FIXED_THRESHOLDS_3D
    assert [bucket_of(f, FIXED_THRESHOLDS_2D) for f in (0.005, 0.01, 0.049, 0.05, 0.5)] == \
        ["small", "medium", "medium", "large", "large"]


def test_aggregate_skips_undefined_hd95_and_counts_empty():
    rows = [{"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0, "pred_empty": False, "bucket_samri": "small",
             "bucket_fixed": "large"},
            {"dice": 0.5, "hd95_mm": 4.0, "nsd": 0.5, "pred_empty": False, "bucket_samri": "large",
             "bucket_fixed": "large"},
            {"dice": 0.0, "hd95_mm": float("nan"), "nsd": 0.0, "pred_empty": True, "bucket_samri": "large",
             "bucket_fixed": "large"}]
    s = aggregate_with_buckets(rows)
    assert s["n"] == 3 and s["mean_dice"] == 0.5 and s["median_dice"] == 0.5
    assert s["hd95_mm"] == 2.0 and s["n_empty_pred"] == 1
    assert s["buckets"]["small"]["n"] == 1 and s["buckets"]["medium"]["n"] == 0
    assert s["buckets"]["medium"]["mean_dice"] is None
    assert s["buckets_fixed"]["large"]["n"] == 3
    assert aggregate([])["n"] == 0
