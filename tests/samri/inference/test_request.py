"""samri.inference.request.run_request: the 3D budget, cancellation and what the summary reports.

Propagation runs on the fake decoder of `fakes` (the ground-truth ellipsoid inside the prompt box;
fixtures `fake` and `segmenter` in this folder's conftest), so every slice count below is exact.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from samri.errors import SamriInputError
from samri.inference.embeddings import EmbeddingCache
from samri.inference.request import InteractiveResult, run_request
from samri.inference.segmenter import PropagationBudget, PropagationSettings, Segmenter
from tests.helpers import VOLUME_SHAPE

from .fakes import CENTER_K, object_slices

POINT_3D = {"foreground": [[20, 24, CENTER_K]]}


def test_3d_slice_budget_gives_a_partial_result_around_the_click(fake, segmenter, prepared_volume):
    result = run_request(segmenter, prepared_volume, POINT_3D, mode="3d", budget=PropagationBudget(max_slices=3))
    assert sorted(result.slices) == [CENTER_K - 1, CENTER_K, CENTER_K + 1]
    summary = result.summary()
    assert summary["partial"]["reason"] == "max_slices" and summary["partial"]["slices_done"] == 3
    assert summary["stops"] == []
    assert not np.delete(result.mask, sorted(result.slices), axis=2).any()
    json.dumps(summary)  # goes into the HTTP result params as is


def test_3d_without_budget_limits_completes(fake, gt_mask, tiny_model, prepared_volume):
    # the point seed's own reach off, so the fronts run to the object's ends, not to a stop rule
    segmenter = Segmenter(tiny_model, EmbeddingCache(), propagation=PropagationSettings(max_reach_points=0.0))
    result = run_request(segmenter, prepared_volume, POINT_3D, mode="3d",
                         budget=PropagationBudget(max_slices=100, max_seconds=600))
    summary = result.summary()
    assert summary["partial"] is None
    assert {s["reason"] for s in summary["stops"]} == {"min_area"}
    assert {s["step"] for s in summary["stops"]} == {1, -1}


def test_3d_should_stop_cancels_between_slices(fake, segmenter, prepared_volume):
    calls = []

    def should_stop() -> bool:
        calls.append(sum(fake.decoded.values()))
        return len(calls) > 2  # seed, then one propagated slice, then the client is gone

    result = run_request(segmenter, prepared_volume, POINT_3D, mode="3d", should_stop=should_stop,
                         budget=PropagationBudget(max_slices=50))
    assert len(result.slices) == 2 and result.partial["reason"] == "cancelled"
    assert result.partial["slices_done"] == 2


def test_more_prompted_slices_than_the_budget_is_rejected_before_work(fake, segmenter, prepared_volume):
    params = {"foreground": [[20, 24, 12], [20, 24, 15], [20, 24, 18]]}
    with pytest.raises(SamriInputError, match=r"^foreground=") as err:
        run_request(segmenter, prepared_volume, params, mode="3d", budget=PropagationBudget(max_slices=2))
    assert "2 slices" in str(err.value)
    assert not fake.decoded and segmenter.cache.stats["encoded"] == 0


def test_2d_ignores_the_3d_budget(fake, segmenter, prepared_volume):
    result = run_request(segmenter, prepared_volume, POINT_3D, mode="2d", budget=PropagationBudget(max_slices=1),
                         should_stop=lambda: True)
    assert sorted(result.slices) == [CENTER_K]
    summary = result.summary()
    assert summary["partial"] is None and "stops" not in summary


def test_a_point_seed_is_scored_against_a_box_on_its_own_slice(fake, monkeypatch, segmenter, prepared_volume):
    """The live failure's other half: the IoU head scored the point seed (box search) 0.14 and
    the box-prompted slices 0.7, so a floor relative to the point's IoU never stopped. Here the
    box-prompted IoU drops to 0.5 three slices away: propagation must stop there."""
    decode = fake.decode

    def decode_by_prompt(self, e, g, p):
        res = decode(self, e, g, p)
        k = int(e[0])
        res.iou = 0.14 if len(p.points) else (0.7 if abs(k - CENTER_K) < 3 else 0.5)
        return res

    monkeypatch.setattr(Segmenter, "decode", decode_by_prompt)
    result = run_request(segmenter, prepared_volume, POINT_3D, mode="3d")
    assert sorted(result.slices) == list(range(CENTER_K - 2, CENTER_K + 3))
    assert {s["reason"] for s in result.stops} == {"iou"}
    seed_prompts = fake.prompts[CENTER_K]
    assert len(seed_prompts) == 2  # the point itself, then the box its mask gives the next slice
    assert len(seed_prompts[0].points) == 1 and seed_prompts[1].box is not None and not len(seed_prompts[1].points)
    # a box seed is its own reference: one decode on its slice
    fake.prompts.clear()
    run_request(segmenter, prepared_volume, {"roi": [5, 35, 5, 43, CENTER_K, CENTER_K]}, mode="3d")
    assert len(fake.prompts[CENTER_K]) == 1


# --- run_request (the path shared by the CLI and the app) ---------------------------------------
def test_run_request_2d_fills_only_one_slice(fake, gt_mask, segmenter, prepared_volume):
    params = {"foreground": [[20, 24, 12]], "roi": [12, 28, 14, 34, 5, 25], "slice": 12}
    result = run_request(segmenter, prepared_volume, params, mode="2d")
    assert isinstance(result, InteractiveResult) and result.mode == "2d" and result.axis == 2
    assert result.mask.dtype == np.uint8 and result.mask.shape == VOLUME_SHAPE
    assert sorted(result.slices) == [12] and set(fake.decoded) == {12}
    want = gt_mask[:, :, 12] & np.pad(np.ones((17, 21), bool), ((12, 11), (14, 13)))
    np.testing.assert_array_equal(result.mask[:, :, 12], want.astype(np.uint8))
    assert result.mask[:, :, 12].any()
    assert not np.delete(result.mask, 12, axis=2).any()
    prompt = fake.prompts[12][0]
    assert prompt.points.tolist() == [[20, 24]] and prompt.box.tolist() == [12, 14, 28, 34]
    summary = result.summary()
    assert summary["mode"] == "2d" and summary["slices"] == [12] and summary["voxels"] == int(want.sum())


def test_run_request_2d_with_the_tiny_model(segmenter, prepared_volume):
    result = run_request(segmenter, prepared_volume, {"foreground": [[20, 24, 9]]}, mode="2d")
    assert sorted(result.slices) == [9]
    assert result.mask.shape == VOLUME_SHAPE and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask).tolist()) <= {0, 1}
    assert not np.delete(result.mask, 9, axis=2).any()
    np.testing.assert_array_equal(result.mask[:, :, 9], result.slices[9].mask.astype(np.uint8))


def test_run_request_2d_refinement_uses_previous_logits(fake, segmenter, prepared_volume):
    logits = torch.ones(1, 1, 32, 32)
    run_request(segmenter, prepared_volume, {"foreground": [[20, 24, 15]]}, mode="2d",
                previous_logits={15: logits, 3: -logits})
    assert fake.prompts[15][0].mask_logits is logits


def test_run_request_3d_propagates(fake, gt_mask, segmenter, prepared_volume):
    params = {"foreground": [[20, 24, CENTER_K]], "roi": [5, 35, 5, 43, 0, 29]}
    result = run_request(segmenter, prepared_volume, params, mode="3d")
    assert result.mode == "3d" and result.mask.dtype == np.uint8
    predicted = sorted(result.slices)
    assert min(predicted) < CENTER_K < max(predicted)
    assert predicted == object_slices(gt_mask, PropagationSettings().min_area)
    np.testing.assert_array_equal(result.mask.astype(bool), gt_mask & np.isin(np.arange(30), predicted)[None, None])


def test_run_request_3d_roi_bounds_propagation(fake, gt_mask, segmenter, prepared_volume):
    params = {"roi": [5, 35, 5, 43, 13, 17]}
    result = run_request(segmenter, prepared_volume, params, mode="3d")
    assert sorted(result.slices) == [13, 14, 15, 16, 17]
    assert not result.mask[:, :, :13].any() and not result.mask[:, :, 18:].any()


def test_run_request_3d_flat_roi_does_not_bound(fake, gt_mask, segmenter, prepared_volume):
    result = run_request(segmenter, prepared_volume, {"roi": [5, 35, 5, 43, CENTER_K, CENTER_K]}, mode="3d")
    assert len(result.slices) > 5


def test_run_request_other_axis(fake, gt_mask, segmenter, prepared_volume):
    fake.axis = 0
    result = run_request(segmenter, prepared_volume, {"foreground": [[20, 24, 15]]}, mode="2d", axis=0)
    assert sorted(result.slices) == [20]
    np.testing.assert_array_equal(result.mask[20].astype(bool), gt_mask[20])
    assert not np.delete(result.mask, 20, axis=0).any()


@pytest.mark.parametrize("mode", ["3D", "4d", "", None])
def test_run_request_mode_error(segmenter, prepared_volume, mode):
    with pytest.raises(SamriInputError, match=r"^mode=") as err:
        run_request(segmenter, prepared_volume, {"foreground": [[1, 2, 3]]}, mode=mode)
    assert "2d" in str(err.value) and "3d" in str(err.value)


@pytest.mark.parametrize("params,field", [({}, "foreground"), ({"foreground": [[1, 2, 30]]}, "foreground[0]"),
                                          ({"roi": [0, 1, 2]}, "roi"),
                                          ({"foreground": [[1, 2, 3]], "slice": 99}, "slice")])
@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_run_request_bad_params(segmenter, prepared_volume, params, field, mode):
    with pytest.raises(SamriInputError) as err:
        run_request(segmenter, prepared_volume, params, mode=mode)
    assert err.value.field == field
    assert segmenter.cache.stats["encoded"] == 0  # rejected before any encoding


def test_3d_negative_click_on_a_slice_of_the_previous_result_refines_that_slice(fake, segmenter, prepared_volume):
    """A negative click seeds its slice only where this client's previous logits give a mask to cut."""
    params = {**POINT_3D, "background": [[2, 2, CENTER_K + 2]]}
    plain = run_request(segmenter, prepared_volume, params, mode="3d", budget=PropagationBudget(max_slices=3))
    assert sorted(plain.slices) == [CENTER_K - 1, CENTER_K, CENTER_K + 1]  # no previous result: not a seed
    previous = {CENTER_K + 2: torch.zeros(1, 1, 4, 4)}
    refined = run_request(segmenter, prepared_volume, params, mode="3d", previous_logits=previous,
                          budget=PropagationBudget(max_slices=2))
    assert sorted(refined.slices) == [CENTER_K, CENTER_K + 2]  # both prompted slices, then the budget
