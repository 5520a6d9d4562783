"""samri.inference.segmenter and samri.inference.request: 2D prediction with the tiny model, 3D propagation logic.

The propagation logic is tested deterministically with a fake decoder that "segments" the ground
truth ellipsoid section inside the prompt box (the tiny model has random weights).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import pytest
import torch

from samri.inference.embeddings import EmbeddingCache
from samri.errors import SamriInputError
from samri.geometry import take_slice
from samri.inference.request import InteractiveResult, run_request
from samri.inference.segmenter import PropagationBudget, PropagationSettings, Segmenter, SliceResult, VolumeResult, interior_point
from samri.inference.prompts import SlicePrompt
from samri.inference.propagation import mask_box, stop_reason

from .conftest import ELLIPSOID_CENTER, VOLUME_SHAPE, synthetic_array

CENTER_K = int(ELLIPSOID_CENTER[2])  # 15


@pytest.fixture()
def segmenter(tiny_model) -> Segmenter:
    return Segmenter(tiny_model, EmbeddingCache())


class FakeDecoder:
    """Stands in for `Segmenter.embedding` + `Segmenter.decode`: the object's section in the box.

    ``embedding`` returns the slice index as a tensor so that ``decode`` knows which slice it is
    on; ``decode`` returns the ground truth of that slice, restricted to the prompt's box when it
    has one, with a predicted IoU of 0.9 (or ``iou(slice index)``). Every decoded slice is counted.
    """

    def __init__(self, gt: np.ndarray, axis: int = 2, iou: float | Callable[[int], float] = 0.9):
        self.gt = gt
        self.axis = axis
        self.iou = iou
        self.decoded: Counter[int] = Counter()
        self.prompts: dict[int, list[SlicePrompt]] = {}

    def embedding(self, segmenter, volume, axis, index):
        assert axis == self.axis
        return torch.tensor([float(index)])

    def decode(self, segmenter, embedding, geom, prompt):
        index = int(embedding[0])
        if prompt.is_empty and prompt.mask_logits is None:
            raise SamriInputError("prompt", "empty", "give at least one point or a box")
        prompt.check_inside((geom.height, geom.width))
        self.decoded[index] += 1
        self.prompts.setdefault(index, []).append(prompt)
        section = take_slice(self.gt, self.axis, index).copy()
        assert section.shape == (geom.height, geom.width)
        if prompt.box is not None:
            r0, c0, r1, c1 = prompt.box
            inside = np.zeros_like(section)
            inside[int(np.ceil(r0)):int(np.floor(r1)) + 1, int(np.ceil(c0)):int(np.floor(c1)) + 1] = True
            section &= inside
        iou = self.iou(index) if callable(self.iou) else self.iou
        return SliceResult(mask=section, low_res_logits=torch.zeros(1, 1, 32, 32), iou=iou)


@pytest.fixture()
def fake(monkeypatch, gt_mask) -> FakeDecoder:
    fake = FakeDecoder(gt_mask)
    monkeypatch.setattr(Segmenter, "embedding", lambda self, v, a, i: fake.embedding(self, v, a, i))
    monkeypatch.setattr(Segmenter, "decode", lambda self, e, g, p: fake.decode(self, e, g, p))
    return fake


def object_slices(gt: np.ndarray, min_area: int, axis: int = 2) -> list[int]:
    """Slices whose section of the object has at least ``min_area`` pixels."""
    other = tuple(a for a in range(3) if a != axis)
    areas = gt.sum(axis=other)
    return [int(k) for k in np.flatnonzero(areas >= min_area)]


def box_around(gt: np.ndarray, index: int, margin: int = 1) -> SlicePrompt:
    return SlicePrompt(box=mask_box(take_slice(gt, 2, index), margin))


# --- helpers ------------------------------------------------------------------------------------
def test_mask_box_and_interior_point():
    mask = np.zeros((10, 12), bool)
    assert mask_box(mask) is None and interior_point(mask) is None
    mask[2:5, 3:9] = True
    assert mask_box(mask).tolist() == [2, 3, 4, 8]
    assert mask_box(mask, margin=3).tolist() == [0, 0, 7, 11]  # clipped to the slice
    r, c = interior_point(mask)
    assert mask[int(r), int(c)] and r == 3
    edge = np.zeros((5, 5), bool)
    edge[0, :] = True  # touching the border: still inside
    assert edge[tuple(interior_point(edge).astype(int))]


# --- 2D prediction with the tiny model ----------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_predict_slice_returns_mask_at_slice_resolution(segmenter, prepared_volume, axis):
    rows, cols = [s for a, s in enumerate(VOLUME_SHAPE) if a != axis]
    prompt = SlicePrompt(points=[[rows // 2, cols // 2]], labels=[1], box=[2, 3, rows - 5, cols - 4])
    res = segmenter.predict_slice(prepared_volume, axis, 10, prompt)
    assert isinstance(res, SliceResult)
    assert res.mask.shape == (rows, cols) and res.mask.dtype == bool
    assert isinstance(res.iou, float) and np.isfinite(res.iou)
    assert tuple(res.low_res_logits.shape) == (1, 1, 32, 32)
    assert res.area == int(res.mask.sum())
    # the mask is the thresholded logits mapped to the slice
    geom = segmenter.slice_geometry(prepared_volume, axis)
    np.testing.assert_array_equal(res.mask, geom.logits_to_slice(res.low_res_logits)[0, 0].numpy() > 0)


def test_predict_slice_uses_the_cache(segmenter, prepared_volume):
    prompt = SlicePrompt(box=[5, 5, 30, 30])
    first = segmenter.predict_slice(prepared_volume, 2, 12, prompt)
    second = segmenter.predict_slice(prepared_volume, 2, 12, prompt)
    assert segmenter.cache.stats["encoded"] == 1 and segmenter.cache.stats["memory_hits"] >= 1
    assert first.iou == pytest.approx(second.iou, abs=1e-2)


def test_single_point_picks_best_of_three(segmenter, prepared_volume, monkeypatch):
    seen = {}
    decoder = segmenter.model.mask_decoder
    original = decoder.forward

    def spy(*args, **kwargs):
        seen["multimask"] = kwargs["multimask_output"]
        low_res, iou = original(*args, **kwargs)
        seen["ious"] = iou.clone()
        return low_res, iou

    monkeypatch.setattr(decoder, "forward", spy)
    res = segmenter.predict_slice(prepared_volume, 2, 12, SlicePrompt(points=[[20, 24]], labels=[1]))
    assert seen["multimask"] is True and seen["ious"].shape == (1, 3)
    assert res.iou == pytest.approx(float(seen["ious"].max()), abs=1e-6)
    segmenter.predict_slice(prepared_volume, 2, 12, SlicePrompt(points=[[20, 24], [2, 2]], labels=[1, 0]))
    assert seen["multimask"] is False and seen["ious"].shape == (1, 1)


def test_refinement_with_mask_logits(segmenter, prepared_volume):
    first = segmenter.predict_slice(prepared_volume, 2, 15, SlicePrompt(box=[10, 12, 30, 36]))
    refined = segmenter.predict_slice(prepared_volume, 2, 15, SlicePrompt(
        points=[[20, 24], [11, 13]], labels=[1, 0], box=[10, 12, 30, 36], mask_logits=first.low_res_logits))
    assert refined.mask.shape == (40, 48) and np.isfinite(refined.iou)
    mask_only = segmenter.predict_slice(prepared_volume, 2, 15, SlicePrompt(mask_logits=first.low_res_logits))
    assert mask_only.mask.shape == (40, 48)
    # the mask prompt is used: a different previous mask changes the result
    other = segmenter.predict_slice(prepared_volume, 2, 15, SlicePrompt(mask_logits=-first.low_res_logits))
    assert not torch.equal(other.low_res_logits, mask_only.low_res_logits)


def test_empty_prompt_raises(segmenter, prepared_volume):
    with pytest.raises(SamriInputError, match=r"^prompt="):
        segmenter.predict_slice(prepared_volume, 2, 3, SlicePrompt())


@pytest.mark.parametrize("prompt,field", [(SlicePrompt(points=[[5, 5], [40, 5]], labels=[1, 1]), "points[1]"),
                                          (SlicePrompt(points=[[5, 48]], labels=[1]), "points[0]"),
                                          (SlicePrompt(box=[50, 50, 60, 60]), "box")])
def test_prompt_outside_raises(segmenter, prepared_volume, prompt, field):
    with pytest.raises(SamriInputError) as err:
        segmenter.predict_slice(prepared_volume, 2, 3, prompt)
    assert err.value.field == field and "40x48" in str(err.value)


def test_predict_slice_bad_slice_and_axis(segmenter, prepared_volume):
    with pytest.raises(SamriInputError, match=r"^slice="):
        segmenter.predict_slice(prepared_volume, 2, 30, SlicePrompt(box=[0, 0, 5, 5]))
    with pytest.raises(SamriInputError, match=r"^axis="):
        segmenter.predict_slice(prepared_volume, 5, 3, SlicePrompt(box=[0, 0, 5, 5]))


def test_propagate_with_tiny_model_runs(segmenter, prepared_volume):
    settings = PropagationSettings(min_area=1, min_iou=-10.0, min_relative_iou=0.0, max_growth=1e9, min_overlap=0.0)
    seg = Segmenter(segmenter.model, segmenter.cache, propagation=settings)
    res = seg.propagate(prepared_volume, 2, {15: SlicePrompt(box=[5, 5, 35, 43])}, bounds=(13, 17))
    assert isinstance(res, VolumeResult) and res.mask.shape == VOLUME_SHAPE and res.axis == 2
    assert 15 in res.slices and set(res.slices) <= set(range(13, 18))
    for k, s in res.slices.items():
        np.testing.assert_array_equal(res.mask[:, :, k], s.mask)
    outside = [k for k in range(30) if k not in res.slices]
    assert not res.mask[:, :, outside].any()


# --- 3D propagation logic (fake decoder) --------------------------------------------------------
def test_propagation_follows_the_object_both_ways_and_stops_where_it_ends(fake, gt_mask, prepared_volume,
                                                                        tiny_model):
    rules = PropagationSettings()
    seg = Segmenter(tiny_model, EmbeddingCache(), propagation=rules)
    res = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)})
    expected = object_slices(gt_mask, rules.min_area)
    assert min(expected) < CENTER_K < max(expected)
    assert sorted(res.slices) == expected
    # the volume holds exactly the object's sections on those slices, nothing elsewhere
    want = np.zeros_like(gt_mask)
    want[:, :, expected] = gt_mask[:, :, expected]
    np.testing.assert_array_equal(res.mask, want)
    # each slice decoded once, plus one look past each end
    assert all(fake.decoded[k] == 1 for k in expected)
    assert set(fake.decoded) - set(expected) <= {min(expected) - 1, max(expected) + 1}
    # propagated slices were prompted with the previous slice's box (plus margin), not the seed's
    k = CENTER_K + 3
    prev_box = mask_box(gt_mask[:, :, k - 1], rules.box_margin)
    np.testing.assert_array_equal(fake.prompts[k][0].box, prev_box)


def test_propagation_respects_bounds(fake, gt_mask, prepared_volume, tiny_model):
    seg = Segmenter(tiny_model, EmbeddingCache())
    res = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)}, bounds=(13, 17))
    assert sorted(res.slices) == [13, 14, 15, 16, 17]
    assert not res.mask[:, :, :13].any() and not res.mask[:, :, 18:].any()
    assert set(fake.decoded) == {13, 14, 15, 16, 17}


def test_propagation_meets_other_seeds(fake, gt_mask, prepared_volume, tiny_model):
    seg = Segmenter(tiny_model, EmbeddingCache())
    seeds = {12: box_around(gt_mask, 12), 18: box_around(gt_mask, 18)}
    res = seg.propagate(prepared_volume, 2, seeds)
    expected = object_slices(gt_mask, PropagationSettings().min_area)
    assert sorted(res.slices) == expected
    # between the seeds every slice is decoded once: the two fronts meet, nothing is redone
    assert all(fake.decoded[k] == 1 for k in range(12, 19)), fake.decoded
    # seeds keep their own prompts (not overwritten by propagation)
    assert fake.prompts[12][0] is seeds[12] and fake.prompts[18][0] is seeds[18]


def test_propagation_stops_below_the_absolute_iou_floor(fake, gt_mask, prepared_volume, tiny_model):
    fake.iou = 0.1
    seg = Segmenter(tiny_model, EmbeddingCache())
    res = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)})
    assert sorted(res.slices) == [CENTER_K]
    assert res.mask[:, :, CENTER_K].sum() == gt_mask[:, :, CENTER_K].sum()


def test_propagation_follows_a_decoder_with_low_but_steady_iou(fake, gt_mask, prepared_volume, tiny_model):
    """A fine-tuned IoU head predicting ~0.35 everywhere (calibrated to hard structures) still propagates."""
    fake.iou = 0.35
    rules = PropagationSettings()
    seg = Segmenter(tiny_model, EmbeddingCache(), propagation=rules)
    res = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)})
    assert sorted(res.slices) == object_slices(gt_mask, rules.min_area)


def test_propagation_stops_where_iou_drops_relative_to_the_seed(fake, gt_mask, prepared_volume, tiny_model):
    rules = PropagationSettings(min_relative_iou=0.85)
    fake.iou = lambda k: 0.6 if abs(k - CENTER_K) <= 2 else 0.6 * 0.8  # 0.8 x the seed's: below 0.85
    seg = Segmenter(tiny_model, EmbeddingCache(), propagation=rules)
    res = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)})
    assert sorted(res.slices) == list(range(CENTER_K - 2, CENTER_K + 3))
    seg_off = Segmenter(tiny_model, EmbeddingCache(), propagation=PropagationSettings(min_relative_iou=0.0))
    assert len(seg_off.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)}).slices) > 5


def test_propagation_stops_on_a_leak(monkeypatch, gt_mask, prepared_volume, tiny_model):
    """A mask that suddenly grows past max_growth (leak into neighbours) ends propagation."""
    leaky = gt_mask.copy()
    leaky[:, :, CENTER_K + 2] = True  # the whole slice lights up
    fake = FakeDecoder(leaky)
    monkeypatch.setattr(Segmenter, "embedding", lambda self, v, a, i: fake.embedding(self, v, a, i))

    def decode_without_box(self, e, g, p):
        return fake.decode(self, e, g, SlicePrompt(points=[[0, 0]], labels=[1]))

    monkeypatch.setattr(Segmenter, "decode", decode_without_box)
    seg = Segmenter(tiny_model, EmbeddingCache())
    res = seg.propagate(prepared_volume, 2, {CENTER_K: SlicePrompt(box=[0, 0, 5, 5])})
    assert CENTER_K + 1 in res.slices and CENTER_K + 2 not in res.slices
    assert min(res.slices) < CENTER_K  # the other direction is unaffected


def test_propagation_respects_roi_box(fake, gt_mask, prepared_volume, tiny_model):
    roi_box = np.array([20.0, 0.0, 39.0, 47.0])  # lower half of the rows only
    seg = Segmenter(tiny_model, EmbeddingCache())
    res = seg.propagate(prepared_volume, 2, {CENTER_K: SlicePrompt(box=roi_box)}, roi_box=roi_box)
    assert len(res.slices) > 1
    assert not res.mask[:20].any()
    for k, prompts in fake.prompts.items():
        if k != CENTER_K:
            assert prompts[0].box[0] >= 20.0


def test_propagation_from_an_empty_seed_stops(fake, gt_mask, prepared_volume, tiny_model):
    seg = Segmenter(tiny_model, EmbeddingCache())
    res = seg.propagate(prepared_volume, 2, {2: SlicePrompt(box=[0, 0, 3, 3])})  # no object there
    assert sorted(res.slices) == [2] and not res.mask.any()
    assert set(fake.decoded) == {2}


def test_propagation_needs_a_seed(segmenter, prepared_volume):
    with pytest.raises(SamriInputError, match=r"^seeds="):
        segmenter.propagate(prepared_volume, 2, {})


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


# --- box search for box-trained decoders (LiteMedSAM) -------------------------------------------
def test_box_search_with_the_tiny_model(fresh_tiny_model, prepared_volume, monkeypatch):
    from samri.inference import segmenter as predict

    fresh_tiny_model.point_prompts = "box_search"
    seg = Segmenter(fresh_tiny_model, EmbeddingCache())
    seen = {}
    original = Segmenter._run_decoder

    def spy(self, embedding, prompt_embeddings, multimask):
        seen["batch"] = prompt_embeddings[0].shape[0]
        seen["multimask"] = multimask
        return original(self, embedding, prompt_embeddings, multimask)

    monkeypatch.setattr(Segmenter, "_run_decoder", spy)
    res = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[20, 24], [5, 5]], labels=[1, 0]))
    assert seen == {"batch": len(predict.BOX_SEARCH_HALF_SIZES), "multimask": False}
    assert res.mask.shape == (40, 48) and tuple(res.low_res_logits.shape) == (1, 1, 32, 32)
    # a box in the prompt is used as is (no search)
    seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[20, 24]], labels=[1], box=[10, 10, 30, 30]))
    assert seen["batch"] == 1


def test_box_search_picks_the_mask_that_fits_the_points(fresh_tiny_model, prepared_volume, monkeypatch):
    from samri.inference import segmenter as predict

    fresh_tiny_model.point_prompts = "box_search"
    seg = Segmenter(fresh_tiny_model, EmbeddingCache())
    geom = seg.slice_geometry(prepared_volume, 2)
    n = len(predict.BOX_SEARCH_HALF_SIZES)
    everything = np.ones((40, 48), bool)
    top = np.zeros((40, 48), bool)
    top[:20] = True

    def low_res_of(mask):
        logits = torch.as_tensor(np.where(mask, 10.0, -10.0), dtype=torch.float32)[None, None]
        return geom.slice_to_low_res(logits, 32)

    slices = [low_res_of(~everything)] * n
    slices[2] = low_res_of(everything)
    slices[4] = low_res_of(top)
    iou = torch.full((n, 1), 0.5)
    iou[0] = 0.99  # best predicted IoU, but contains no positive point
    iou[2] = 0.8
    iou[4] = 0.6

    monkeypatch.setattr(Segmenter, "_run_decoder", lambda self, e, p, multimask: (torch.cat(slices), iou))
    res = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[10, 10]], labels=[1]))
    assert res.iou == pytest.approx(0.8)  # candidate 2: contains the point, higher IoU than #4
    assert res.mask[10, 10] and res.mask.mean() > 0.9
    res = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[10, 10], [30, 30]], labels=[1, 0]))
    assert res.iou == pytest.approx(0.6)  # candidate 4: the only one keeping the negative point out
    assert res.mask[10, 10] and not res.mask[30, 30] and (res.mask == top).mean() > 0.95


# --- budget, cancellation and the seed-growth rule ----------------------------------------------
class StepClock:
    """A clock that only moves when told: ``tick()`` adds one second."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 1.0


def test_slice_budget_keeps_a_window_centred_on_the_seed(fake, gt_mask, prepared_volume, tiny_model):
    seg = Segmenter(tiny_model, EmbeddingCache())
    res = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)},
                        budget=PropagationBudget(max_slices=5))
    assert sorted(res.slices) == list(range(CENTER_K - 2, CENTER_K + 3))  # fronts alternate up and down
    assert set(fake.decoded) == set(res.slices)  # nothing decoded beyond the budget
    assert res.partial["reason"] == "max_slices" and res.partial["slices_done"] == 5
    assert res.stops == []  # both fronts were cut, neither ended on its own


def test_a_budget_that_suffices_is_not_partial(fake, gt_mask, prepared_volume, tiny_model):
    seg = Segmenter(tiny_model, EmbeddingCache())
    res = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)},
                        budget=PropagationBudget(max_slices=100, max_seconds=1e6))
    assert res.partial is None
    assert sorted(res.slices) == object_slices(gt_mask, PropagationSettings().min_area)
    assert sorted(s["reason"] for s in res.stops) == ["min_area", "min_area"]


def test_time_budget_returns_what_was_computed(fake, gt_mask, prepared_volume, tiny_model, monkeypatch):
    clock = StepClock()
    decode = Segmenter.decode

    def slow_decode(self, e, g, p):  # every slice costs one second of the fake clock
        clock.tick()
        return decode(self, e, g, p)

    monkeypatch.setattr(Segmenter, "decode", slow_decode)
    seg = Segmenter(tiny_model, EmbeddingCache())
    res = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)},
                        budget=PropagationBudget(max_seconds=3.5, clock=clock))
    # seed at t=0, then slices started at t=1, 2, 3; at t=4 the budget is spent
    assert sorted(res.slices) == [CENTER_K - 1, CENTER_K, CENTER_K + 1, CENTER_K + 2]
    assert res.partial == {"reason": "max_seconds", "slices_done": 4, "seconds": 4.0}
    np.testing.assert_array_equal(res.mask[:, :, CENTER_K + 2], gt_mask[:, :, CENTER_K + 2])


def test_seeds_are_predicted_even_when_the_time_is_spent(fake, gt_mask, prepared_volume, tiny_model):
    clock = StepClock()
    clock.now = 100.0
    seg = Segmenter(tiny_model, EmbeddingCache())
    budget = PropagationBudget(max_seconds=1.0, clock=lambda: clock.now + len(fake.decoded) * 10)
    res = seg.propagate(prepared_volume, 2, {12: box_around(gt_mask, 12), 18: box_around(gt_mask, 18)},
                        budget=budget)
    assert sorted(res.slices) == [12, 18] and res.partial["reason"] == "max_seconds"


def test_should_stop_ends_propagation_between_slices(fake, gt_mask, prepared_volume, tiny_model):
    seg = Segmenter(tiny_model, EmbeddingCache())
    stop_after = 3
    res = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)},
                        should_stop=lambda: sum(fake.decoded.values()) >= stop_after)
    assert len(res.slices) == stop_after and sum(fake.decoded.values()) == stop_after
    assert res.partial["reason"] == "cancelled" and res.partial["slices_done"] == stop_after
    cancelled = seg.propagate(prepared_volume, 2, {CENTER_K: box_around(gt_mask, CENTER_K)}, should_stop=lambda: True)
    assert cancelled.slices == {} and not cancelled.mask.any() and cancelled.partial["slices_done"] == 0


def test_budget_rejects_more_seeds_than_slices_before_work(fake, gt_mask, prepared_volume, tiny_model):
    seg = Segmenter(tiny_model, EmbeddingCache())
    with pytest.raises(SamriInputError, match=r"^seeds="):
        seg.propagate(prepared_volume, 2, {12: box_around(gt_mask, 12), 18: box_around(gt_mask, 18)},
                      budget=PropagationBudget(max_slices=1))
    assert not fake.decoded
    with pytest.raises(SamriInputError, match=r"^max_slices="):
        PropagationBudget(max_slices=0)
    with pytest.raises(SamriInputError, match=r"^max_seconds="):
        PropagationBudget(max_seconds=0.0)


def disc_result(radius: float, shape=(64, 64), center=(32.0, 32.0)) -> SliceResult:
    """A slice result thresholded from synthetic logits: positive inside a disc of ``radius``."""
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    logits = radius - np.hypot(rows - center[0], cols - center[1])
    return SliceResult(mask=logits > 0, low_res_logits=torch.as_tensor(logits, dtype=torch.float32)[None, None],
                       iou=0.8)


def test_seed_growth_rule_on_synthetic_logits():
    """A cross-section growing 10% in radius per slice never doubles between two slices, but stops
    once it exceeds max_seed_growth x the seed's area; max_seed_growth=0 turns the rule off."""
    rules = PropagationSettings()
    seed = disc_result(6.0)
    radii = 6.0 * 1.1 ** np.arange(1, 12)
    prev, stopped_at = seed, None
    for n, radius in enumerate(radii, start=1):
        res = disc_result(radius)
        assert res.area < rules.max_growth * prev.area  # never a sudden leak
        reason = stop_reason(rules, prev, res, iou_floor=0.2, seed_area=seed.area)
        if reason is not None:
            stopped_at = n
            assert reason == "seed_growth"
            break
        prev = res
    assert stopped_at is not None
    assert disc_result(radii[stopped_at - 1]).area > rules.max_seed_growth * seed.area
    assert disc_result(radii[stopped_at - 2]).area <= rules.max_seed_growth * seed.area
    off = PropagationSettings(max_seed_growth=0.0)
    assert stop_reason(off, disc_result(radii[-2]), disc_result(radii[-1]), iou_floor=0.2, seed_area=seed.area) is None
    # a shrinking section is never a growth stop
    assert stop_reason(rules, seed, disc_result(5.0), iou_floor=0.2, seed_area=seed.area) is None


def test_a_mask_creeping_out_of_its_box_is_stopped(monkeypatch, prepared_volume, tiny_model):
    """The live failure: each slice's mask spills one pixel beyond the previous mask on every side
    (the prompt box is the previous mask's plus the margin), so from a small seed it creeps outward
    slice after slice, never doubling between two of them."""
    rules = PropagationSettings()

    def creeping_decode(self, e, g, p):
        mask = np.zeros((g.height, g.width), bool)
        if p.box is not None:
            r0, c0, r1, c1 = (int(v) for v in p.box)
            inset = rules.box_margin - 1
            mask[r0 + inset:r1 - inset + 1, c0 + inset:c1 - inset + 1] = True
        else:
            r, c = (int(v) for v in p.points[0])
            mask[r - 2:r + 3, c - 2:c + 3] = True
        return SliceResult(mask=mask, low_res_logits=torch.zeros(1, 1, 32, 32), iou=0.9)

    monkeypatch.setattr(Segmenter, "embedding", lambda self, v, a, i: torch.zeros(1))
    monkeypatch.setattr(Segmenter, "decode", creeping_decode)
    seed = {CENTER_K: SlicePrompt(points=[[20, 24]], labels=[1])}
    unbounded = Segmenter(tiny_model, EmbeddingCache(),
                          propagation=PropagationSettings(max_seed_growth=0.0, max_reach=0.0))
    assert len(unbounded.propagate(prepared_volume, 2, seed).slices) == VOLUME_SHAPE[2]  # fills the volume
    res = Segmenter(tiny_model, EmbeddingCache(), propagation=rules).propagate(prepared_volume, 2, seed)
    # slice n from the seed is a (5 + 2n)^2 square: kept while within max_seed_growth x 25 px
    kept = max(n for n in range(VOLUME_SHAPE[2]) if (5 + 2 * n) ** 2 <= rules.max_seed_growth * 25)
    assert 0 < kept < 10
    assert sorted(res.slices) == list(range(CENTER_K - kept, CENTER_K + kept + 1))
    assert {s["reason"] for s in res.stops} == {"seed_growth"}
    assert res.mask[:, :, CENTER_K].sum() == 25


@pytest.mark.parametrize("k_spacing", [1.0, 2.0])
def test_reach_bounds_a_front_by_the_seed_diameter(monkeypatch, tiny_model, k_spacing):
    """A thin tube through the whole volume (nothing else stops it) ends max_reach seed diameters
    (in mm, so fewer slices when slices are thicker) from the seed."""
    from dataclasses import replace

    from samri.volume import ImageVolume, prepare_volume

    rows, cols = np.meshgrid(np.arange(40), np.arange(48), indexing="ij")
    tube = np.repeat((np.hypot(rows - 20, cols - 24) <= 2.0)[:, :, None], 30, axis=2)
    fake = FakeDecoder(tube)
    monkeypatch.setattr(Segmenter, "embedding", lambda self, v, a, i: fake.embedding(self, v, a, i))
    monkeypatch.setattr(Segmenter, "decode", lambda self, e, g, p: fake.decode(self, e, g, p))
    volume = prepare_volume(ImageVolume(array=synthetic_array(), affine=np.diag([1.0, 1.0, k_spacing, 1.0])))
    rules = PropagationSettings()
    res = Segmenter(tiny_model, EmbeddingCache(), propagation=rules).propagate(
        volume, 2, {CENTER_K: SlicePrompt(box=mask_box(tube[:, :, CENTER_K]))})
    reach = int(rules.max_reach * 2 * np.sqrt(tube[:, :, 0].sum() / np.pi) / k_spacing)
    assert sorted(res.slices) == list(range(CENTER_K - reach, CENTER_K + reach + 1))
    assert {s["reason"] for s in res.stops} == {"reach"}
    off = Segmenter(tiny_model, EmbeddingCache(), propagation=replace(rules, max_reach=0.0))
    assert len(off.propagate(volume, 2, {CENTER_K: SlicePrompt(box=mask_box(tube[:, :, CENTER_K]))}).slices) == 30


# --- real MRI (slow: LiteMedSAM encoder + the shipped samri_lite decoder) -----------------------
@pytest.mark.slow
def test_point_only_3d_on_a_deep_structure_stays_near_its_extent(tmp_path):
    """One click, no box, on Colin27's left thalamus (axial k 70-91): the live failure filled
    k 0-160 (the point seed's predicted IoU, 0.14, made the relative IoU floor vanish)."""
    import nibabel as nib

    from samri.config import load_registry
    from samri.sample_data import available_sources, load_label_names, write_sample_studies
    from samri.model.builders import load_model
    from samri.volume import load_image, prepare_volume

    if "colin27" not in available_sources():
        pytest.skip("Colin27/AAL (Debian mricron-data) not installed; MNI152 has only tissue classes")
    write_sample_studies(tmp_path, sources=("colin27",))
    gt = (np.asarray(nib.load(str(tmp_path / "labels" / "final" / "colin27_t1.nii.gz")).dataobj)
          == load_label_names(tmp_path)["colin27_t1"]["Thalamus_L"])
    ks = np.flatnonzero(gt.any(axis=(0, 1)))
    k = int((ks[0] + ks[-1]) // 2)
    i, j = (int(v) for v in interior_point(gt[:, :, k]))
    volume = prepare_volume(load_image(tmp_path / "colin27_t1.nii.gz"))
    seg = Segmenter(load_model(load_registry().spec(load_registry().default_model)), EmbeddingCache())
    result = run_request(seg, volume, {"foreground": [[i, j, k]]}, mode="3d",
                         budget=PropagationBudget(max_slices=96))
    got = sorted(result.slices)
    assert abs(got[0] - ks[0]) <= 4 and abs(got[-1] - ks[-1]) <= 4, (got[0], got[-1], ks[0], ks[-1])
    mask = result.mask.astype(bool)
    assert 2 * (mask & gt).sum() / (mask.sum() + gt.sum()) > 0.5
