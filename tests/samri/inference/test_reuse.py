"""samri.inference.reuse: a 3D corrective click re-predicts only the slices its seed can reach.

The request tests run on the fake decoder of `fakes` (the ground-truth ellipsoid inside the prompt
box, centre slice ``CENTER_K`` = 15, object on slices 9-21), which counts every decoded slice.
"""

from __future__ import annotations

import numpy as np
import pytest

from samri.inference.embeddings import EmbeddingCache
from samri.inference.prompts import SlicePrompt
from samri.inference.request import run_request
from samri.inference.reuse import PropagationMemo, full_plan, plan_run, prompt_signature
from samri.inference.segmenter import PropagationBudget, PropagationSettings, Segmenter

from .fakes import CENTER_K

FIRST = {"foreground": [[20, 24, CENTER_K]]}
SECOND = {"foreground": [[20, 24, CENTER_K], [20, 24, CENTER_K + 3]]}


def _sig(*points: tuple[float, float]) -> tuple:
    return prompt_signature(SlicePrompt(points=np.array(points, dtype=float), labels=np.ones(len(points), int)))


def _memo(seeds: dict[int, tuple], slices: range, context: str = "ctx") -> PropagationMemo:
    stops = [{"seed": k, "step": s, "at": 0, "reason": "min_area"} for k in seeds for s in (1, -1)]
    return PropagationMemo(context=context, seeds=dict(seeds), ref_iou={k: 0.5 for k in seeds},
                           slices={i: f"result {i}" for i in slices}, stops=stops)


def test_signature_ignores_the_mask_prompt_and_sees_points_box_and_labels():
    base = SlicePrompt(points=np.array([[3.0, 4.0]]), labels=np.array([1]), box=np.array([1, 2, 8, 9]))
    same = SlicePrompt(points=np.array([[3, 4]]), labels=np.array([1]), box=np.array([1.0, 2, 8, 9]),
                       mask_logits=np.zeros((1, 1, 4, 4)))
    assert prompt_signature(base) == prompt_signature(same)
    assert prompt_signature(base) != prompt_signature(SlicePrompt(points=np.array([[3.0, 4.0]]), labels=np.array([0]),
                                                                  box=np.array([1, 2, 8, 9])))
    assert prompt_signature(base) != prompt_signature(SlicePrompt(points=np.array([[3.0, 4.0]]), labels=np.array([1])))


def test_plan_without_a_usable_memo_is_the_full_run():
    seeds = {10: _sig((1, 1)), 20: _sig((2, 2))}
    full = full_plan(seeds)
    assert full.decode == [10, 20] and full.fronts == [(10, 1), (10, -1), (20, 1), (20, -1)] and full.kept == {}
    assert plan_run(None, seeds, "ctx") == full
    assert plan_run(_memo({10: seeds[10]}, range(5, 16)), seeds, "other context") == full
    assert plan_run(_memo({10: seeds[10], 30: _sig((3, 3))}, range(5, 35)), seeds, "ctx") == full  # a seed dropped


def test_plan_for_a_new_seed_above_reopens_only_what_lies_above_the_old_seed():
    old = {10: _sig((1, 1))}
    plan = plan_run(_memo(old, range(4, 19)), {**old, 14: _sig((5, 5))}, "ctx")
    assert sorted(plan.kept) == list(range(4, 11))  # the old seed and everything below it
    assert plan.decode == [14]
    assert plan.fronts == [(10, 1), (14, 1), (14, -1)]
    assert plan.ref_iou == {10: 0.5}
    assert [(s["seed"], s["step"]) for s in plan.stops] == [(10, -1)]


def test_plan_for_a_changed_middle_seed_reopens_the_span_between_its_neighbours():
    seeds = {5: _sig((1, 1)), 12: _sig((2, 2)), 20: _sig((3, 3))}
    memo = _memo(seeds, range(0, 26))
    plan = plan_run(memo, {**seeds, 12: _sig((2, 2), (4, 4))}, "ctx")
    assert sorted(plan.kept) == [*range(0, 6), *range(20, 26)]
    assert plan.decode == [12]
    assert plan.fronts == [(5, 1), (12, 1), (12, -1), (20, -1)]
    assert sorted((s["seed"], s["step"]) for s in plan.stops) == [(5, -1), (20, 1)]
    unchanged = plan_run(memo, dict(seeds), "ctx")
    assert sorted(unchanged.kept) == list(range(0, 26)) and unchanged.decode == [] and unchanged.fronts == []


def test_a_click_on_a_new_slice_predicts_only_the_slices_above_the_old_seed(fake, segmenter, prepared_volume):
    first = run_request(segmenter, prepared_volume, FIRST, mode="3d")
    assert first.memo is not None and first.kept == []
    fake.decoded.clear()
    second = run_request(segmenter, prepared_volume, SECOND, mode="3d", previous_run=first.memo)
    below = [k for k in first.slices if k <= CENTER_K]
    assert second.kept == sorted(below) and second.summary()["reused_slices"] == len(below)
    assert min(fake.decoded) == CENTER_K + 1, "nothing at or below the unchanged seed is predicted again"
    fake.decoded.clear()
    full = run_request(segmenter, prepared_volume, SECOND, mode="3d")
    assert min(fake.decoded) < CENTER_K and full.kept == []
    np.testing.assert_array_equal(second.mask, full.mask)  # the same answer as predicting everything
    assert sorted(second.slices) == sorted(full.slices)
    assert sorted(map(str, second.stops)) == sorted(map(str, full.stops))


def test_an_unchanged_request_predicts_nothing(fake, segmenter, prepared_volume):
    first = run_request(segmenter, prepared_volume, FIRST, mode="3d")
    fake.decoded.clear()
    again = run_request(segmenter, prepared_volume, FIRST, mode="3d", previous_run=first.memo)
    assert sum(fake.decoded.values()) == 0 and again.kept == sorted(first.slices)
    np.testing.assert_array_equal(again.mask, first.mask)


@pytest.mark.parametrize("change", ["roi", "segmenter", "settings off"])
def test_a_memo_of_another_context_is_not_reused(fake, tiny_model, segmenter, prepared_volume, change):
    first = run_request(segmenter, prepared_volume, FIRST, mode="3d")
    params, other = dict(FIRST), segmenter
    if change == "roi":
        params["roi"] = [5, 35, 5, 43, 0, 29]
    elif change == "segmenter":
        other = Segmenter(tiny_model, EmbeddingCache())
    else:
        other = Segmenter(tiny_model, EmbeddingCache(), propagation=PropagationSettings(reuse_unchanged=False))
    fake.decoded.clear()
    result = run_request(other, prepared_volume, params, mode="3d", previous_run=first.memo)
    assert result.kept == [] and fake.decoded[CENTER_K] >= 1


def test_a_run_cut_by_the_budget_leaves_no_memo(fake, segmenter, prepared_volume):
    cut = run_request(segmenter, prepared_volume, FIRST, mode="3d", budget=PropagationBudget(max_slices=3))
    assert cut.partial is not None and cut.memo is None
    done = run_request(segmenter, prepared_volume, FIRST, mode="3d", previous_run=cut.memo)
    assert done.partial is None and done.memo is not None and done.kept == []
