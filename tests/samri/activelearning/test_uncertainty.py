"""samri.activelearning.uncertainty on the tiny random SAM: prompt grids, jitter, a study's uncertainty."""

from __future__ import annotations

import numpy as np

from samri.activelearning.config import ALConfig
from samri.activelearning.sampling import head_mask, sample_slices
from samri.activelearning.uncertainty import grid_boxes, jitter_boxes, study_uncertainty
from samri.inference.embeddings import EmbeddingCache
from samri.inference.segmenter import Segmenter


def test_grid_boxes_lie_on_the_head_and_jitter_stays_inside() -> None:
    head = np.zeros((40, 48), bool)
    head[10:30, 12:40] = True
    cfg = ALConfig().uncertainty
    boxes = grid_boxes(head, cfg)
    assert 1 <= len(boxes) <= cfg.max_prompts * len(cfg.box_fractions)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    assert head[np.round(centres[:, 0]).astype(int), np.round(centres[:, 1]).astype(int)].all()
    moved = jitter_boxes(boxes, 3, 0.2, head.shape, np.random.default_rng(0))
    assert moved.shape == (len(boxes), 3, 4)
    assert (moved[..., 0] <= moved[..., 2]).all() and moved.min() >= 0 and moved[..., 2].max() <= 39


def test_study_uncertainty_is_bounded_reproducible_and_uses_the_label(tiny_model, prepared_volume, gt_mask) -> None:
    seg = Segmenter(tiny_model, EmbeddingCache())
    cfg = ALConfig().uncertainty
    head = head_mask(prepared_volume.windowed)
    indices = sample_slices(head, 2, step=4, max_slices=3, min_foreground=0.05)
    first = study_uncertainty(seg, prepared_volume, indices, cfg, head=head)
    again = study_uncertainty(seg, prepared_volume, indices, cfg, head=head)
    assert 0.0 <= first.value <= 1.0 and first.value == again.value
    assert [s.index for s in first.slices] == indices
    assert all(s.prompts > 0 and 0 <= s.fill <= 1 for s in first.slices)
    top = first.top_slices(2)
    assert len(top) == 2 and top[0]["uncertainty"] >= top[1]["uncertainty"]
    labelled = study_uncertainty(seg, prepared_volume, indices, cfg, head=head, label=gt_mask.astype(np.int32))
    assert all(s.label_disagreement is not None and 0 <= s.label_disagreement <= 1 for s in labelled.slices)
