"""samri.inference.refine: a corrective click changes the previous mask only around itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samri.errors import SamriInputError
from samri.geometry import SliceGeometry
from samri.inference.refine import disagreeing_clicks, local_merge
from samri.inference.segmenter import Segmenter

GEOM = SliceGeometry(64, 64, 64)  # slice = input = low-res frame: logits map 1:1 onto pixels


def _disc(center, radius, shape=(64, 64)) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius ** 2


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.where(mask, 5.0, -5.0), dtype=torch.float32)[None, None]


def test_disagreeing_clicks_are_the_ones_the_previous_mask_gets_wrong():
    prev = _disc((20, 20), 8)
    points = np.array([[20, 20], [50, 50], [22, 22], [5, 60]], dtype=float)
    labels = np.array([1, 1, 0, 0])
    assert disagreeing_clicks(prev, points, labels).tolist() == [[50, 50], [22, 22]]


def test_a_negative_click_that_erases_everything_only_removes_the_leak_near_it():
    obj, leak = _disc((20, 20), 10), _disc((20, 40), 6)
    prev = obj | leak
    merged = local_merge(GEOM, _logits(prev), _logits(np.zeros_like(prev)), np.array([[20.0, 40.0]]), np.array([0]))
    assert merged is not None
    mask, logits = merged
    assert not mask[20, 40] and not (mask & leak & ~obj).any()  # the leak is gone
    assert mask[obj & ~_disc((20, 40), 12)].all()  # the object away from the click is kept
    assert ((logits[0, 0].numpy() > 0) == mask).all()


def test_a_positive_click_adds_the_new_region_at_the_click_but_not_elsewhere():
    prev = _disc((20, 20), 10)
    new = prev | _disc((45, 45), 5) | _disc((5, 60), 3)  # the click's region and an unrelated blob
    mask, _ = local_merge(GEOM, _logits(prev), _logits(new), np.array([[45.0, 45.0]]), np.array([1]))
    assert mask[_disc((45, 45), 5)].all() and not mask[_disc((5, 60), 3)].any()


def test_nothing_to_merge_when_no_click_is_contradicted_or_none_changed():
    prev = _disc((20, 20), 10)
    new = _disc((20, 20), 12)
    assert local_merge(GEOM, _logits(prev), _logits(new), np.array([[20.0, 20.0]]), np.array([1])) is None
    ignored = local_merge(GEOM, _logits(prev), _logits(prev), np.array([[20.0, 20.0]]), np.array([0]))
    assert ignored is None


def test_segmenter_checks_click_merge(tiny_model):
    with pytest.raises(SamriInputError) as err:
        Segmenter(tiny_model, cache=None, click_merge="smart")
    assert err.value.field == "click_merge"
