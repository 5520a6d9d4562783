"""Per-slice uncertainty vs per-slice box Dice (samri.adaptation.slice_check) with the tiny model."""

from __future__ import annotations

import math

import numpy as np

from samri.activelearning.config import UncertaintySettings
from samri.adaptation.slice_check import slice_box_dice, spearman, uncertainty_vs_dice
from samri.inference.embeddings import EmbeddingCache
from samri.inference.segmenter import Segmenter


def test_spearman_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert math.isnan(spearman([1, 2], [1, 2]))


def test_slice_dice_and_rank_correlation(tiny_model, prepared_volume, gt_mask):
    segmenter = Segmenter(tiny_model, EmbeddingCache())
    label = gt_mask.astype(np.int32)
    occupied = [k for k in range(label.shape[2]) if label[:, :, k].sum() >= 30]
    empty = [k for k in range(label.shape[2]) if label[:, :, k].sum() == 0]
    assert slice_box_dice(segmenter, prepared_volume, label, empty[0]) is None
    dice = slice_box_dice(segmenter, prepared_volume, label, occupied[len(occupied) // 2])
    assert 0.0 <= dice <= 1.0
    result = uncertainty_vs_dice(segmenter, [(prepared_volume, label, occupied[::2] + empty[:1])],
                                 UncertaintySettings())
    assert result["slices"] == len(occupied[::2])  # the empty slice has no structure to score
    assert all(0 <= r["uncertainty"] <= 1 and 0 <= r["dice"] <= 1 for r in result["rows"])
    assert -1.0 <= result["rho"] <= 1.0 or math.isnan(result["rho"])
    assert set(result["component_rho"]) == {"1-iou", "1-stability", "1-agreement", "fill"}
    row = result["rows"][0]
    assert all(0 <= row[name] <= 1 for name in result["component_rho"])
