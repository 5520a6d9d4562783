"""samri.inference.refine: a corrective click changes the previous mask only around itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samri.errors import SamriInputError
from samri.geometry import SliceGeometry
from samri.inference.prompts import SlicePrompt
from samri.inference.refine import ClickFill, disagreeing_clicks, fill_clicks, local_merge, logits_for_mask
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


def test_nothing_to_merge_when_no_click_is_contradicted():
    prev = _disc((20, 20), 10)
    new = _disc((20, 20), 12)
    assert local_merge(GEOM, _logits(prev), _logits(new), np.array([[20.0, 20.0]]), np.array([1])) is None


def test_an_ignored_negative_click_licenses_only_removals():
    """The decoder left the negative click's pixel inside but grew elsewhere and shrank a part:
    the growth is not kept, the shrinking is (a negative click says "less"), the click stays for fill."""
    prev = _disc((20, 20), 10) | _disc((45, 45), 6)
    new = (_disc((20, 20), 10) | _disc((20, 40), 5)) & ~_disc((45, 45), 7) | _disc((20, 20), 3)
    mask, logits = local_merge(GEOM, _logits(prev), _logits(new), np.array([[20.0, 20.0]]), np.array([0]))
    assert mask[20, 20]  # ignored: still inside (click fill removes it later)
    assert not mask[_disc((20, 40), 5) & ~prev].any()  # the unrequested growth is rejected
    assert not mask[_disc((45, 45), 6)].any()  # the removal is kept
    np.testing.assert_array_equal((logits[0, 0].numpy() > 0), mask)


def test_an_ignored_positive_click_licenses_only_additions_and_mixed_keeps_the_previous():
    prev = _disc((20, 20), 10)
    new = (_disc((20, 20), 10) & ~_disc((20, 28), 3)) | _disc((20, 40), 4)
    mask, _ = local_merge(GEOM, _logits(prev), _logits(new), np.array([[55.0, 55.0]]), np.array([1]))
    assert mask[prev].all() and mask[_disc((20, 40), 4)].all() and not mask[55, 55]
    both = local_merge(GEOM, _logits(prev), _logits(new), np.array([[55.0, 55.0], [20.0, 20.0]]), np.array([1, 0]))
    np.testing.assert_array_equal(both[0], prev)
    ignored = local_merge(GEOM, _logits(prev), _logits(prev), np.array([[20.0, 20.0]]), np.array([0]))
    np.testing.assert_array_equal(ignored[0], prev)


def test_segmenter_checks_click_merge(tiny_model):
    with pytest.raises(SamriInputError) as err:
        Segmenter(tiny_model, cache=None, click_merge="smart")
    assert err.value.field == "click_merge"


def _two_tone() -> np.ndarray:
    """A slice whose left half is dark (0.2) and right half bright (0.8)."""
    image = np.full((64, 64), 0.2, dtype=np.float32)
    image[:, 32:] = 0.8
    return image


def test_a_positive_click_outside_the_mask_fills_similar_pixels_around_it_and_no_further():
    image = _two_tone()
    mask = _disc((32, 12), 6)  # dark side
    filled = fill_clicks(mask, image, np.array([[32.0, 27.0]]), np.array([1]))
    assert filled[32, 27] and mask[~filled].sum() == 0  # the click holds, nothing was erased
    added = filled & ~mask
    assert not added[:, 32:].any()  # the bright half is another intensity: not filled
    depth = 27 - 18  # the click's distance to the mask: 9 pixels
    rr, cc = np.nonzero(added)
    assert np.sqrt((rr - 32) ** 2 + (cc - 27) ** 2).max() <= ClickFill().radius_scale * depth + 1e-6


def test_a_negative_click_inside_the_mask_erases_around_it_only_inside_the_mask():
    image = np.full((64, 64), 0.5, dtype=np.float32)
    mask = _disc((32, 32), 20)
    erased = fill_clicks(mask, image, np.array([[32.0, 44.0]]), np.array([0]))
    assert not erased[32, 44] and not (erased & ~mask).any()
    assert erased[32, 20]  # far on the other side of the mask: kept
    assert erased.sum() < mask.sum()


def test_clicks_the_mask_agrees_with_change_nothing():
    mask = _disc((32, 32), 10)
    same = fill_clicks(mask, _two_tone(), np.array([[32.0, 32.0], [5.0, 5.0]]), np.array([1, 0]))
    assert same is mask
    assert fill_clicks(mask, _two_tone(), np.zeros((0, 2)), np.zeros(0)) is mask


def test_later_clicks_are_honoured_over_earlier_ones_and_an_empty_mask_still_grows():
    image = np.full((64, 64), 0.5, dtype=np.float32)
    empty = np.zeros((64, 64), dtype=bool)
    grown = fill_clicks(empty, image, np.array([[30.0, 30.0]]), np.array([1]))
    assert grown[30, 30] and grown.sum() > 1
    both = fill_clicks(empty, image, np.array([[30.0, 30.0], [30.0, 33.0]]), np.array([1, 0]))
    assert both[30, 30] and not both[30, 33]
    # the same pixel clicked both ways: the last click decides that pixel and nothing else changes
    same = fill_clicks(empty, image, np.array([[30.0, 30.0], [30.0, 30.0]]), np.array([0, 1]))
    assert same[30, 30] and same.sum() == 1


def test_logits_for_mask_carry_the_filled_and_erased_pixels_into_the_next_mask_prompt():
    before = _disc((20, 20), 8)
    after = (before | _disc((40, 40), 5)) & ~_disc((20, 20), 3)
    logits = logits_for_mask(GEOM, _logits(before), before, after)
    assert ((GEOM.logits_to_slice(logits)[0, 0].numpy() > 0) == after).all()


def test_segmenter_honours_every_click_of_a_refinement(segmenter, prepared_volume):
    box = np.array([8.0, 8.0, 24.0, 24.0])
    first = segmenter.predict_slice(prepared_volume, 2, 15, SlicePrompt(box=box))
    clicks = np.array([[2.0, 2.0], [16.0, 16.0]])
    for labels in (np.array([1, 0]), np.array([0, 1])):
        refine = SlicePrompt(points=clicks, labels=labels, box=box, mask_logits=first.low_res_logits)
        result = segmenter.predict_slice(prepared_volume, 2, 15, refine)
        assert [bool(result.mask[2, 2]), bool(result.mask[16, 16])] == [bool(v) for v in labels]
        again = SlicePrompt(points=clicks, labels=labels, box=box, mask_logits=result.low_res_logits)
        assert segmenter.predict_slice(prepared_volume, 2, 15, again).mask[16, 16] == bool(labels[1])


# --- clip_to_box ------------------------------------------------------------------------------------
def test_clip_to_box_removes_what_lies_outside_the_box():
    from samri.inference.refine import clip_to_box

    mask = np.zeros((20, 20), bool)
    mask[5:15, 3:18] = True  # runs past the box's columns 6..12
    clipped = clip_to_box(mask, np.array([4.0, 6.0, 16.0, 12.0]), np.zeros((0, 2)), np.zeros(0))
    expected = np.zeros_like(mask)
    expected[5:15, 6:13] = True
    np.testing.assert_array_equal(clipped, expected)
    # nothing outside, or no box: the same array back
    assert clip_to_box(expected, np.array([4.0, 6.0, 16.0, 12.0]), np.zeros((0, 2)), np.zeros(0)) is expected
    assert clip_to_box(mask, None, np.zeros((0, 2)), np.zeros(0)) is mask


def test_clip_to_box_is_lifted_by_a_positive_click_outside_it_only():
    from samri.inference.refine import clip_to_box

    mask = np.ones((20, 20), bool)
    box = np.array([4.0, 6.0, 16.0, 12.0])
    assert clip_to_box(mask, box, np.array([[10.0, 2.0]]), np.array([1])) is mask
    assert clip_to_box(mask, box, np.array([[10.0, 2.0]]), np.array([0])).sum() == 13 * 7
    assert clip_to_box(mask, box, np.array([[10.0, 8.0]]), np.array([1])).sum() == 13 * 7  # inside: still clipped


def test_box_bound_is_the_box_unless_a_positive_click_lies_outside():
    from samri.inference.refine import box_bound

    box = np.array([4.0, 6.0, 16.0, 12.0])
    inside = box_bound(box, (20, 20))
    assert inside.shape == (20, 20) and inside.sum() == 13 * 7 and inside[4, 6] and inside[16, 12]
    assert box_bound(None, (20, 20)) is None
    assert box_bound(box, (20, 20), np.array([[10.0, 2.0]]), np.array([1])) is None
    np.testing.assert_array_equal(box_bound(box, (20, 20), np.array([[10.0, 2.0]]), np.array([0])), inside)
