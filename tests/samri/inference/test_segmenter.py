"""samri.inference.segmenter: 2D prediction with the tiny model, and the box search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samri.annotator import interior_point
from samri.errors import SamriInputError
from samri.inference.embeddings import EmbeddingCache
from samri.inference.prompts import SlicePrompt
from samri.inference.propagation import mask_box
from samri.inference.segmenter import (
    PropagationSettings,
    Segmenter,
    SliceResult,
    VolumeResult,
)
from tests.helpers import VOLUME_SHAPE


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
    # the box holds the whole slice, so nothing is clipped to it (`clip_to_box`) and the mask is exactly
    # the thresholded logits
    prompt = SlicePrompt(points=[[rows // 2, cols // 2]], labels=[1], box=[0, 0, rows - 1, cols - 1])
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



def test_single_or_box_lets_the_single_answer_compete_with_boxed_candidates(fresh_tiny_model, prepared_volume,
                                                                           monkeypatch):
    from samri.inference import segmenter as predict

    fresh_tiny_model.point_prompts = "single_or_box"
    seg = Segmenter(fresh_tiny_model, EmbeddingCache())
    geom = seg.slice_geometry(prepared_volume, 2)
    n = len(predict.BOX_SEARCH_HALF_SIZES)
    top = np.zeros((40, 48), bool)
    top[:20] = True
    low_res = geom.slice_to_low_res(torch.as_tensor(np.where(top, 10.0, -10.0), dtype=torch.float32)[None, None], 32)
    calls = []

    def fake(self, embedding, prompt_embeddings, multimask):
        sparse = prompt_embeddings[0]
        calls.append((sparse.shape[0], sparse.shape[1], multimask))
        batch = sparse.shape[0]
        iou = torch.full((batch, 1), single_iou if batch == 1 else 0.5)
        return low_res.expand(batch, 1, -1, -1).clone(), iou

    monkeypatch.setattr(Segmenter, "_run_decoder", fake)
    single_iou = 0.9
    res = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[10, 10]], labels=[1]))
    # one single-mask decode of the point, then every box sent with the point (1 point + 2 box corners)
    assert calls == [(1, 2, False), (n, 3, False)]
    assert res.iou == pytest.approx(0.9) and res.mask[10, 10]
    single_iou = 0.3  # now a boxed candidate predicts the higher IoU
    assert seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[10, 10]], labels=[1])).iou == \
        pytest.approx(0.5)
    # a refinement (previous logits) or a box in the prompt decodes once, as "single" does
    calls.clear()
    seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[10, 10]], labels=[1], box=[0, 0, 30, 30]))
    seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[10, 10], [30, 30]], labels=[1, 0],
                                                          mask_logits=res.low_res_logits))
    assert [c[0] for c in calls] == [1, 1]

def test_a_lone_point_3d_seed_is_decoded_as_point_prompts_3d_says(fresh_tiny_model, prepared_volume, monkeypatch):
    from samri.inference import segmenter as predict

    fresh_tiny_model.point_prompts, fresh_tiny_model.point_prompts_3d = "single", "single_or_box"
    seg = Segmenter(fresh_tiny_model, EmbeddingCache())
    geom = seg.slice_geometry(prepared_volume, 2)
    top = np.zeros((40, 48), bool)
    top[:20] = True
    low_res = geom.slice_to_low_res(torch.as_tensor(np.where(top, 10.0, -10.0), dtype=torch.float32)[None, None], 32)
    calls = []

    def fake(self, embedding, prompt_embeddings, multimask):
        batch = prompt_embeddings[0].shape[0]
        calls.append((batch, prompt_embeddings[0].shape[1]))
        return low_res.expand(batch, 1, -1, -1).clone(), torch.full((batch, 1), 0.9)

    monkeypatch.setattr(Segmenter, "_run_decoder", fake)
    point = SlicePrompt(points=[[10, 10]], labels=[1])
    seg.predict_slice(prepared_volume, 2, 15, point)
    assert calls == [(1, 2)]  # 2D: the single-mask answer only
    calls.clear()
    seg.propagate(prepared_volume, 2, {15: point})
    n = len(predict.BOX_SEARCH_HALF_SIZES)
    assert calls[:2] == [(1, 2), (n, 3)]  # 3D seed: the single answer against the boxes sent with the point
    assert all(c[0] == 1 for c in calls[2:])  # propagated slices: one box prompt each
    fresh_tiny_model.point_prompts_3d = None  # unset: as in 2D
    calls.clear()
    seg.propagate(prepared_volume, 2, {15: point})
    assert calls[0] == (1, 2) and all(c[0] == 1 for c in calls)


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


# --- the user's box bounds the answer on its slice ----------------------------------------------
def _whole_slice_decoder(monkeypatch, size: int = 32):
    """Every decode answers the whole slice (a leak past any box), with logits that say so."""

    def decode(self, embedding, geom, prompt, **_):
        whole = np.ones((geom.height, geom.width), bool)
        return SliceResult(mask=whole, low_res_logits=torch.full((1, 1, size, size), 5.0), iou=0.9)

    monkeypatch.setattr(Segmenter, "decode", decode)


def test_a_box_answer_keeps_no_pixel_outside_the_box(monkeypatch, tiny_model, prepared_volume):
    _whole_slice_decoder(monkeypatch)
    box = [10, 12, 25, 30]
    segmenter = Segmenter(tiny_model, EmbeddingCache())
    res = segmenter.predict_slice(prepared_volume, 2, 15, SlicePrompt(box=box))
    expected = np.zeros(res.mask.shape, bool)
    expected[10:26, 12:31] = True
    np.testing.assert_array_equal(res.mask, expected)
    # the logits fed back with the next click say the same outside the box
    geom = segmenter.slice_geometry(prepared_volume, 2)
    fed_back = geom.logits_to_slice(res.low_res_logits)[0, 0].numpy() > 0
    assert not (fed_back & ~_dilated(expected)).any() and fed_back[12:24, 14:29].all()
    # off: the decoder's answer as it is
    off = Segmenter(tiny_model, EmbeddingCache(), box_clip=False).predict_slice(prepared_volume, 2, 15,
                                                                                 SlicePrompt(box=box))
    assert off.mask.all()


def _dilated(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=2)


def test_a_positive_click_outside_the_box_lifts_the_clip(monkeypatch, tiny_model, prepared_volume):
    _whole_slice_decoder(monkeypatch)
    seg = Segmenter(tiny_model, EmbeddingCache(), click_fill=None)
    box = [10, 12, 25, 30]
    outside = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(box=box, points=[[35, 5]], labels=[1]))
    assert outside.mask.all()
    negative = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(box=box, points=[[35, 5]], labels=[0]))
    assert negative.mask.sum() == 16 * 19  # a negative click outside says nothing about the box


def test_answer_on_an_embedding_is_the_served_answer_without_a_volume(monkeypatch, tiny_model, prepared_volume):
    """`Segmenter.answer` (the trainer's validation path) clips as `predict_slice` does; click fill needs the image."""
    _whole_slice_decoder(monkeypatch)
    seg = Segmenter(tiny_model, EmbeddingCache())
    geom = seg.slice_geometry(prepared_volume, 2)
    embedding = seg.embedding(prepared_volume, 2, 15)
    box = [10, 12, 25, 30]
    served = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(box=box))
    np.testing.assert_array_equal(seg.answer(embedding, geom, SlicePrompt(box=box)).mask, served.mask)
    # a negative click the whole-slice decoder ignores: the served answer fills around it, `answer`
    # without the image cannot
    again = SlicePrompt(box=box, points=[[18, 20]], labels=[0], mask_logits=served.low_res_logits)
    filled = seg.predict_slice(prepared_volume, 2, 15, again)
    assert not filled.mask[18, 20]
    assert seg.answer(embedding, geom, again).mask[18, 20]
    image = prepared_volume.windowed[:, :, 15]
    np.testing.assert_array_equal(seg.answer(embedding, geom, again, image=image).mask, filled.mask)


def test_a_lone_first_point_is_answered_above_its_threshold(fresh_tiny_model, prepared_volume, monkeypatch):
    """``lone_point_threshold``: a lone first point's single-mask answer is the logits above it, and the logits
    fed back are shifted so they say the same; a box, previous logits or another point mode are untouched."""
    geom = Segmenter(fresh_tiny_model, EmbeddingCache()).slice_geometry(prepared_volume, 2)
    ramp = torch.linspace(-4.0, 4.0, 32)[None, None, None, :].expand(1, 1, 32, 32).clone()  # logits grow along c

    def fake(self, embedding, prompt_embeddings, multimask):
        batch, masks = prompt_embeddings[0].shape[0], 3 if multimask else 1
        return ramp.expand(batch, masks, -1, -1).clone(), torch.full((batch, masks), 0.5)

    monkeypatch.setattr(Segmenter, "_run_decoder", fake)
    fresh_tiny_model.point_prompts = "single"
    point = SlicePrompt(points=[[20, 40]], labels=[1])
    plain = Segmenter(fresh_tiny_model, EmbeddingCache()).predict_slice(prepared_volume, 2, 15, point)
    fresh_tiny_model.lone_point_threshold = 2.0
    seg = Segmenter(fresh_tiny_model, EmbeddingCache())
    assert seg.lone_point_threshold == 2.0
    res = seg.predict_slice(prepared_volume, 2, 15, point)
    torch.testing.assert_close(res.low_res_logits, plain.low_res_logits - 2.0)
    np.testing.assert_array_equal(res.mask, geom.logits_to_slice(ramp)[0, 0].numpy() > 2.0)
    assert 0 < res.area < plain.area
    # untouched: a box with the point, a refinement (previous logits), and a decoder serving points otherwise
    boxed = SlicePrompt(points=[[20, 40]], labels=[1], box=[0, 0, 39, 47])
    torch.testing.assert_close(seg.predict_slice(prepared_volume, 2, 15, boxed).low_res_logits, ramp)
    refine = SlicePrompt(points=[[20, 40], [20, 5]], labels=[1, 0], mask_logits=plain.low_res_logits)
    torch.testing.assert_close(seg.decode(seg.embedding(prepared_volume, 2, 15), geom, refine).low_res_logits, ramp)
    fresh_tiny_model.point_prompts = "native"
    torch.testing.assert_close(Segmenter(fresh_tiny_model, EmbeddingCache()).predict_slice(
        prepared_volume, 2, 15, point).low_res_logits, ramp)
