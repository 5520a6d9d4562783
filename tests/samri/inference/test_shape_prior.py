"""Shape priors from finished studies (`samri.inference.shape_prior`) and their use on a first box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samri.errors import SamriInputError
from samri.evaluation.metrics import dice
from samri.geometry import SliceGeometry
from samri.inference.embeddings import EmbeddingCache
from samri.inference.prompts import SlicePrompt
from samri.inference.segmenter import Segmenter, SliceResult, mask_box
from samri.inference.shape_prior import (
    POINT_SEARCH_PERCENTILES,
    POINT_SEARCH_SHIFTS,
    PRIOR_CLIP,
    REFINE_SEARCH_SHIFTS,
    ShapePriors,
    ShapePriorSettings,
    _pixel_boxes,
    fuse_prior,
    prior_logits,
)


def triangle(h: int, w: int) -> np.ndarray:
    """``(h, w)`` bool: the lower-left triangle of its box (a shape no box is)."""
    rows, cols = np.mgrid[0:h, 0:w]
    return cols / max(w - 1, 1) <= rows / max(h - 1, 1)


def study(sizes: list[int], shape=(40, 40, 8), offset=(3, 5)) -> np.ndarray:
    """A label volume: structure 1 a triangle of side ``sizes[k]`` on slice k, structure 2 a square."""
    labels = np.zeros(shape, np.int16)
    for k, side in enumerate(sizes):
        r, c = offset
        labels[r:r + side, c:c + side, k][triangle(side, side)] = 1
        labels[30:36, 30:36, k] = 2
    return labels


def test_a_prior_reproduces_the_finished_shape_in_a_new_box() -> None:
    priors = ShapePriors.from_labels([(study([10, 12, 14]), {"tri": 1, "sq": 2}, (1.0, 1.0, 1.0))])
    assert priors.names == ["sq", "tri"] and len(priors) == 6
    box = np.array([5, 8, 24, 27])  # a 20 x 20 box elsewhere on a slice
    prior = priors.prior("tri", 2, box, (40, 40), (1.0, 1.0))
    assert prior.shape == (40, 40) and prior[~np.pad(np.ones((20, 20), bool), ((5, 15), (8, 12)))].max() == 0
    expected = np.zeros((40, 40), bool)
    expected[5:25, 8:28] = triangle(20, 20)
    assert dice(prior > 0.5, expected) > 0.9
    square = priors.prior("sq", 2, box, (40, 40), (1.0, 1.0))
    assert (square[5:25, 8:28] > 0.5).all()
    # no finished section of that name, none given, or another axis: no prior
    assert priors.prior("other", 2, box, (40, 40), (1.0, 1.0)) is None
    assert priors.prior(None, 2, box, (40, 40), (1.0, 1.0)) is None
    assert priors.prior("tri", 0, box, (40, 40), (1.0, 1.0)) is None


def test_the_nearest_sections_in_size_make_the_prior() -> None:
    """Small sections of a name are triangles, large ones full squares: a box's size picks its kind (in mm)."""
    labels = np.zeros((60, 60, 6), np.int16)
    for k in range(3):
        labels[2:8, 2:8, k][triangle(6, 6)] = 1
        labels[10:40, 10:40, k + 3] = 1
    priors = ShapePriors.from_labels([(labels, {"x": 1}, (1.0, 1.0, 1.0))],
                                     settings=ShapePriorSettings(neighbours=3))
    small = priors.prior("x", 2, np.array([0, 0, 5, 5]), (60, 60), (1.0, 1.0))
    assert dice(small[:6, :6] > 0.5, triangle(6, 6)) > 0.8
    large = priors.prior("x", 2, np.array([0, 0, 29, 29]), (60, 60), (1.0, 1.0))
    assert (large[:30, :30] > 0.5).all()
    # the same 6-pixel box on a slice of 5 mm pixels is 30 mm across: the large sections answer it
    coarse = priors.prior("x", 2, np.array([0, 0, 5, 5]), (60, 60), (5.0, 5.0))
    assert (coarse[:6, :6] > 0.5).all()


def test_sections_are_bounded_and_small_ones_dropped() -> None:
    labels = np.zeros((30, 30, 40), np.int16)
    labels[5:15, 5:15, :] = 1
    labels[20, 20, :] = 2  # one pixel per slice: under min_pixels
    priors = ShapePriors.from_labels([(labels, {"a": 1, "b": 2}, (1.0, 1.0, 1.0))],
                                     settings=ShapePriorSettings(max_sections=8))
    assert priors.names == ["a"] and len(priors) == 8
    assert ShapePriors.from_labels([(labels, {"a": 1}, (1.0, 1.0, 1.0))], axes=(0, 2)).names == ["a"]
    assert len(ShapePriors.from_labels([(labels, {"a": 1}, (1.0, 1.0, 1.0))], axes=(0, 2))) == 50


def test_payload_round_trip_and_malformed_payloads() -> None:
    priors = ShapePriors.from_labels([(study([10, 12]), {"tri": 1}, (0.5, 0.5, 0.5))],
                                     settings=ShapePriorSettings(weight=2.0, neighbours=4))
    payload = priors.to_payload()
    assert all(isinstance(e["shapes"], torch.Tensor) for e in payload["entries"])
    again = ShapePriors.from_payload(payload)
    assert again.settings == priors.settings and again.names == ["tri"]
    box = np.array([2, 2, 20, 20])
    np.testing.assert_array_equal(again.prior("tri", 2, box, (40, 40), (0.5, 0.5)),
                                  priors.prior("tri", 2, box, (40, 40), (0.5, 0.5)))
    bad = {**payload, "entries": [{**payload["entries"][0], "shapes": torch.zeros((2, 5, 5), dtype=torch.uint8)}]}
    with pytest.raises(SamriInputError, match="shape_priors"):
        ShapePriors.from_payload(bad)
    with pytest.raises(SamriInputError, match="shape_priors"):
        ShapePriors.from_payload({"entries": []})
    with pytest.raises(SamriInputError, match="shape_prior.weight"):
        ShapePriorSettings(weight=-1.0)
    with pytest.raises(SamriInputError, match="shape_prior.grid"):
        ShapePriorSettings(grid=0)


def box_mask_of(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``shape`` bool, True inside the inclusive pixel box ``(r0, c0, r1, c1)``."""
    out = np.zeros(shape, bool)
    out[box[0]:box[2] + 1, box[1]:box[3] + 1] = True
    return out


def two_looks(shape=(40, 40, 8)) -> tuple[np.ndarray, np.ndarray]:
    """A label volume and its windowed image: structure 1 is 16 x 16 on every slice, the lower-left triangle where
    the image darkens down the rows (slices 0-3), the upper-right one where it darkens along the columns (4-7)."""
    labels = np.zeros(shape, np.int16)
    image = np.zeros(shape, np.float32)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    for k in range(shape[2]):
        if k < shape[2] // 2:
            labels[3:19, 5:21, k][triangle(16, 16)] = 1
            image[:, :, k] = 1.0 - rows / shape[0]
        else:
            labels[3:19, 5:21, k][~triangle(16, 16) | np.eye(16, dtype=bool)] = 1
            image[:, :, k] = 1.0 - cols / shape[1]
    return labels, image


def test_the_image_inside_the_box_picks_among_sections_of_the_same_size() -> None:
    """Sections of one size but two shapes, each over its own image: a new box's image picks the shape (whatever
    its brightness and contrast); without the image, or from sections stored without theirs, all are averaged."""
    labels, image = two_looks()
    settings = ShapePriorSettings(neighbours=8, candidates=8, matched=2)
    priors = ShapePriors.from_labels([(labels, {"tri": 1}, (1.0, 1.0, 1.0), image)], settings=settings)
    assert priors.patches[("tri", 2)].shape == (8, 16, 16)
    box = np.array([10, 12, 25, 27])
    lower_left = np.zeros((40, 40), bool)
    lower_left[10:26, 12:28] = triangle(16, 16)
    rows, cols = np.mgrid[0:40, 0:40].astype(np.float32)
    down_rows, along_cols = 0.2 + 0.5 * (1 - rows / 40), 0.9 - 0.3 * cols / 40
    assert dice(priors.prior("tri", 2, box, (40, 40), (1.0, 1.0), image=down_rows) > 0.5, lower_left) > 0.9
    upper_right = priors.prior("tri", 2, box, (40, 40), (1.0, 1.0), image=along_cols) > 0.5
    assert dice(upper_right, ~lower_left & np.pad(np.ones((16, 16), bool), ((10, 14), (12, 12)))) > 0.85
    blind = priors.prior("tri", 2, box, (40, 40), (1.0, 1.0))
    assert np.abs(blind[10:26, 12:28] - 0.5).mean() < 0.15  # half of each shape
    plain = ShapePriors.from_labels([(labels, {"tri": 1}, (1.0, 1.0, 1.0))], settings=settings)
    assert not plain.patches
    np.testing.assert_array_equal(plain.prior("tri", 2, box, (40, 40), (1.0, 1.0), image=down_rows), blind)
    off = ShapePriors.from_labels([(labels, {"tri": 1}, (1.0, 1.0, 1.0), image)],
                                  settings=ShapePriorSettings(patch=0, neighbours=8))
    assert not off.patches
    # the payload keeps the patches; a payload written before them (none) chooses by size, as it was served
    again = ShapePriors.from_payload(priors.to_payload())
    np.testing.assert_array_equal(again.prior("tri", 2, box, (40, 40), (1.0, 1.0), image=down_rows),
                                  priors.prior("tri", 2, box, (40, 40), (1.0, 1.0), image=down_rows))
    old = priors.to_payload()
    old["settings"] = {k: old["settings"][k] for k in ("grid", "neighbours", "weight", "max_sections", "min_pixels")}
    for entry in old["entries"]:
        del entry["patches"]
    np.testing.assert_array_equal(ShapePriors.from_payload(old).prior("tri", 2, box, (40, 40), (1.0, 1.0),
                                                                      image=down_rows), blind)
    bad = priors.to_payload()
    bad["entries"][0]["patches"] = bad["entries"][0]["patches"][:3]
    with pytest.raises(SamriInputError, match="shape_priors"):
        ShapePriors.from_payload(bad)
    with pytest.raises(SamriInputError, match="image"):
        ShapePriors.from_labels([(labels, {"tri": 1}, (1.0, 1.0, 1.0), image[:, :, :4])])
    with pytest.raises(SamriInputError, match="shape_prior.matched"):
        ShapePriorSettings(matched=0)
    with pytest.raises(SamriInputError, match="shape_prior.min_correlation"):
        ShapePriorSettings(min_correlation=2.0)
    # an image that looks like no finished section (here their contrast inverted): chosen by size, as without one
    inverted = priors.prior("tri", 2, box, (40, 40), (1.0, 1.0), image=1.0 - down_rows)
    np.testing.assert_array_equal(inverted, blind)


def test_the_clicks_choose_among_sections_too() -> None:
    """On a refinement, sections that contradict the session's clicks count less: by size alone the clicks pick the
    shape outright; by the image a section's correlation is lowered by ``click_penalty`` x the fraction of clicks it
    contradicts; clicks outside the box, or a penalty of 0, choose nothing."""
    labels, image = two_looks()
    priors = ShapePriors.from_labels([(labels, {"tri": 1}, (1.0, 1.0, 1.0), image)],
                                     settings=ShapePriorSettings(neighbours=4, candidates=8, matched=2))
    box, shape, spacing = np.array([10, 12, 25, 27]), (40, 40), (1.0, 1.0)
    lower_left = np.zeros(shape, bool)
    lower_left[10:26, 12:28] = triangle(16, 16)
    upper_right = ~lower_left & box_mask_of(box, shape)
    inside_lower, inside_upper = np.array([23.0, 14.0]), np.array([12.0, 25.0])  # each inside one shape only
    clicks = np.stack([inside_lower, inside_upper])
    blind = priors.prior("tri", 2, box, shape, spacing)
    toward_lower = priors.prior("tri", 2, box, shape, spacing, points=clicks, labels=np.array([1, 0]))
    toward_upper = priors.prior("tri", 2, box, shape, spacing, points=clicks, labels=np.array([0, 1]))
    assert dice(blind > 0.5, lower_left) > 0.9  # the first four in size order (all sizes are equal)
    assert dice(toward_lower > 0.5, lower_left) > 0.9 and dice(toward_upper > 0.5, upper_right) > 0.85
    # the image says upper right (correlation about 1, the lower-left sections about 0): two contradicted clicks
    # lower it by 0.3, not enough; with a penalty of 2 the clicks win
    along_cols = np.broadcast_to(0.9 - 0.3 * np.arange(40, dtype=np.float32) / 40, shape)
    seen = priors.prior("tri", 2, box, shape, spacing, image=along_cols, points=clicks, labels=np.array([1, 0]))
    assert dice(seen > 0.5, upper_right) > 0.85
    strict = ShapePriors(priors.sections, ShapePriorSettings(neighbours=4, candidates=8, matched=2, click_penalty=2.0),
                         priors.patches)
    assert dice(strict.prior("tri", 2, box, shape, spacing, image=along_cols, points=clicks,
                             labels=np.array([1, 0])) > 0.5, lower_left) > 0.9
    outside = priors.prior("tri", 2, box, shape, spacing, points=np.array([[2.0, 2.0]]), labels=np.array([1]))
    np.testing.assert_array_equal(outside, blind)
    deaf = ShapePriors(priors.sections, ShapePriorSettings(neighbours=4, candidates=8, matched=2, click_penalty=0.0))
    np.testing.assert_array_equal(deaf.prior("tri", 2, box, shape, spacing, points=clicks, labels=np.array([1, 0])),
                                  blind)
    with pytest.raises(SamriInputError, match="shape_prior.click_penalty"):
        ShapePriorSettings(click_penalty=-1.0)
    # the payload keeps the penalty; a file written before it keeps its sections whatever the clicks
    assert ShapePriors.from_payload(strict.to_payload()).settings.click_penalty == 2.0
    old = priors.to_payload()
    del old["settings"]["click_penalty"]
    assert ShapePriors.from_payload(old).settings.click_penalty == 0.0


def test_a_refinement_hands_its_clicks_to_the_prior(monkeypatch, fresh_tiny_model) -> None:
    """`Segmenter.answer` on a refinement passes the session's clicks to the prior, so they choose the shape."""

    def decode(self, embedding, geom, prompt, **_):
        return SliceResult(mask=np.ones((geom.height, geom.width), bool), low_res_logits=torch.zeros(
            (1, 1, 64, 64)), iou=0.9)

    monkeypatch.setattr(Segmenter, "decode", decode)
    labels, image = two_looks()
    fresh_tiny_model.shape_priors = ShapePriors.from_labels(
        [(labels, {"tri": 1}, (1.0, 1.0, 1.0))], settings=ShapePriorSettings(neighbours=4, candidates=8))
    seg = Segmenter(fresh_tiny_model, EmbeddingCache(), click_fill=None)
    geom = SliceGeometry(40, 40, fresh_tiny_model.input_size)
    box = np.array([10, 12, 25, 27])
    lower_left = np.zeros((40, 40), bool)
    lower_left[10:26, 12:28] = triangle(16, 16)
    clicks = dict(points=np.array([[23.0, 14.0], [12.0, 25.0]]), mask_logits=torch.zeros((1, 1, 64, 64)))
    toward_lower = seg.answer(torch.zeros(1), geom, SlicePrompt(box=box, structure="tri", labels=np.array([1, 0]),
                                                                **clicks), prior_at=(2, (1.0, 1.0)))
    toward_upper = seg.answer(torch.zeros(1), geom, SlicePrompt(box=box, structure="tri", labels=np.array([0, 1]),
                                                                **clicks), prior_at=(2, (1.0, 1.0)))
    assert dice(toward_lower.mask, lower_left) > 0.85 and dice(toward_upper.mask, lower_left) < 0.3


def test_the_served_answer_chooses_the_shape_by_the_slice_it_is_on(monkeypatch, fresh_tiny_model) -> None:
    """`Segmenter.answer` hands the windowed slice to the prior: the same named box on two slices that look
    different gets the shape each look had in the finished study."""

    def decode(self, embedding, geom, prompt, **_):
        return SliceResult(mask=np.ones((geom.height, geom.width), bool), low_res_logits=torch.full(
            (1, 1, 64, 64), 0.25), iou=0.9)

    monkeypatch.setattr(Segmenter, "decode", decode)
    labels, image = two_looks()
    fresh_tiny_model.shape_priors = ShapePriors.from_labels(
        [(labels, {"tri": 1}, (1.0, 1.0, 1.0), image)], settings=ShapePriorSettings(candidates=8, matched=2))
    seg = Segmenter(fresh_tiny_model, EmbeddingCache(), click_fill=None)
    geom = SliceGeometry(40, 40, fresh_tiny_model.input_size)
    box = np.array([10, 12, 25, 27])
    lower_left = np.zeros((40, 40), bool)
    lower_left[10:26, 12:28] = triangle(16, 16)
    prompt = SlicePrompt(box=box, structure="tri")
    embedding = torch.zeros(1)
    first = seg.answer(embedding, geom, prompt, image=image[:, :, 0], prior_at=(2, (1.0, 1.0)))
    other = seg.answer(embedding, geom, prompt, image=image[:, :, 7], prior_at=(2, (1.0, 1.0)))
    assert dice(first.mask, lower_left) > 0.85 and dice(other.mask, lower_left) < 0.3


def test_a_lone_click_near_the_edge_finds_its_structure_by_the_image(monkeypatch, fresh_tiny_model) -> None:
    """With the sections' images, a lone click near a structure's corner is answered as the box whose image matches
    the finished sections' (the structure's own box), with their prior; without the image, or with one that looks
    like no finished section, the typical-size box centred on the click (unnamed, no prior)."""
    seen = []

    def decode(self, embedding, geom, prompt, **_):
        seen.append((prompt.box.copy(), prompt.structure))
        return SliceResult(mask=np.ones((geom.height, geom.width), bool), low_res_logits=torch.full(
            (1, 1, 64, 64), 0.25), iou=0.9)

    def scene(r0: int, c0: int, shape=(40, 40)) -> tuple[np.ndarray, np.ndarray]:
        """A 16 x 16 structure at (r0, c0): its image brightens down its rows, 0 around it."""
        structure, image = np.zeros(shape, bool), np.zeros(shape, np.float32)
        structure[r0:r0 + 16, c0:c0 + 16] = True
        image[r0:r0 + 16, c0:c0 + 16] = 0.5 + 0.4 * np.arange(16)[:, None] / 15
        return structure, image

    monkeypatch.setattr(Segmenter, "decode", decode)
    labels, images = zip(*(scene(r, c) for r, c in ((4, 6), (12, 3), (20, 20))))
    fresh_tiny_model.shape_priors = ShapePriors.from_labels(
        [(np.stack(labels, axis=2).astype(np.int16), {"sq": 1}, (1.0, 1.0, 1.0), np.stack(images, axis=2))])
    seg = Segmenter(fresh_tiny_model, EmbeddingCache(), click_fill=None, box_clip=True)
    geom = SliceGeometry(40, 40, fresh_tiny_model.input_size)
    truth, image = scene(10, 12)
    click = SlicePrompt(points=[[11, 13]], labels=[1], structure="sq")
    found = seg.answer(torch.zeros(1), geom, click, image=image, prior_at=(2, (1.0, 1.0)))
    box, structure = seen[-1]
    assert np.abs(box - [10, 12, 25, 27]).max() <= 1.0 and structure == "sq"
    assert dice(found.mask, truth) > 0.9
    typical = [11 - 7.5, 13 - 7.5, 11 + 7.5, 13 + 7.5]
    seg.answer(torch.zeros(1), geom, click, image=None, prior_at=(2, (1.0, 1.0)))
    assert seen[-1][0] == pytest.approx(typical) and seen[-1][1] is None
    # an image unlike every finished section's (contrast inverted): the typical-size box, unnamed, as without one
    seg.answer(torch.zeros(1), geom, click, image=1.0 - image, prior_at=(2, (1.0, 1.0)))
    assert seen[-1][0] == pytest.approx(typical) and seen[-1][1] is None


def squares_looking_alike(shape=(40, 40)) -> tuple[ShapePriors, np.ndarray, np.ndarray]:
    """Finished sections of a 16 x 16 structure ``sq`` at three places, each over an image that brightens down its
    rows (0 around it), and a new slice's truth and image: the same look at (10, 12)."""

    def scene(r0: int, c0: int) -> tuple[np.ndarray, np.ndarray]:
        structure, image = np.zeros(shape, bool), np.zeros(shape, np.float32)
        structure[r0:r0 + 16, c0:c0 + 16] = True
        image[r0:r0 + 16, c0:c0 + 16] = 0.5 + 0.4 * np.arange(16)[:, None] / 15
        return structure, image

    labels, images = zip(*(scene(r, c) for r, c in ((4, 6), (12, 3), (20, 20))))
    priors = ShapePriors.from_labels(
        [(np.stack(labels, axis=2).astype(np.int16), {"sq": 1}, (1.0, 1.0, 1.0), np.stack(images, axis=2))])
    return (priors, *scene(10, 12))


def test_a_lone_click_search_moves_its_boxes_by_one_patch_pixel() -> None:
    """The lone click's search steps its boxes by 1/16 of their side (a pixel of a 16-pixel patch): a click 3
    pixels off the centre of a 16 x 16 structure finds the structure's own box exactly, where steps of 1/8 (2 pixels,
    a refinement's) land a pixel off; the boxes come sizes outer, row shifts, then column shifts, cut at the slice."""
    priors, truth, image = squares_looking_alike()
    shape, spacing = (40, 40), (1.0, 1.0)
    click = np.array([14.5, 16.5])  # the structure's centre is (17.5, 19.5)
    found = priors.matched_point_box("sq", 2, click, shape, spacing, image)
    np.testing.assert_array_equal(found, [10, 12, 25, 27])
    fine = priors._box_matches(("sq", 2), found[None], shape, spacing, image)[0][0]
    coarse = priors._search_boxes(("sq", 2), click, shape, spacing, POINT_SEARCH_PERCENTILES, REFINE_SEARCH_SHIFTS)
    assert fine == pytest.approx(1.0) and priors._box_matches(("sq", 2), coarse, shape, spacing, image)[0].max() < 0.99
    boxes = priors._search_boxes(("sq", 2), (2.0, 30.0), shape, spacing, POINT_SEARCH_PERCENTILES,
                                  POINT_SEARCH_SHIFTS)
    steps = len(POINT_SEARCH_SHIFTS)
    assert boxes.shape == (len(POINT_SEARCH_PERCENTILES) * steps * steps, 4)
    np.testing.assert_allclose(boxes[steps * steps // 2], [0.0, 22.5, 9.5, 37.5])  # unmoved, cut at the top row
    np.testing.assert_allclose(boxes[1] - boxes[0], [0.0, 1.0, 0.0, 1.0])  # the next column shift: one pixel right
    pixels, valid = _pixel_boxes(np.array([[0.5, 1.5, 2.5, 3.5], [-5.0, 38.0, -1.0, 45.0], [3.4, 2.6, 50.0, 39.6]]),
                                 shape)
    np.testing.assert_array_equal(pixels[valid], [[0, 2, 2, 4], [3, 3, 39, 39]])  # halves to even, cut at the edges
    np.testing.assert_array_equal(valid, [True, False, True])


def test_a_refinement_of_a_click_session_searches_its_box_by_image_and_clicks(monkeypatch, fresh_tiny_model) -> None:
    """A session begun with a click whose answer spilled below the structure (tight box rows 10-33, a negative click
    at row 30): the refinement's prior goes on the box around the answer whose image matches the finished sections
    and that the clicks do not contradict (the structure's own box), not on the spilled tight box; without the
    image, without patches or without clicks the tight box stays; a session with a box keeps its box."""
    priors, truth, image = squares_looking_alike()
    shape, spacing = (40, 40), (1.0, 1.0)
    spilled = np.array([10.0, 12.0, 33.0, 27.0])
    points, labels = np.array([[17.0, 19.0], [30.0, 19.0]]), np.array([1, 0])
    found = priors.refined_box("sq", 2, spilled, shape, spacing, image, points, labels)
    assert np.abs(found - [10, 12, 25, 27]).max() <= 1.0
    plain = ShapePriors(priors.sections, priors.settings)  # stored without patches
    for kept in (plain.refined_box("sq", 2, spilled, shape, spacing, image, points, labels),
                 priors.refined_box("sq", 2, spilled, shape, spacing, image, np.zeros((0, 2)), np.zeros(0)),
                 priors.refined_box("other", 2, spilled, shape, spacing, image, points, labels),
                 priors.refined_box("sq", 2, spilled, shape, spacing, np.full(shape, 0.5, np.float32), points,
                                    labels)):  # a flat slice looks like no finished section
        np.testing.assert_array_equal(kept, spilled)
    # a positive click below the structure contradicts every section in a box that leaves it out (half the clicks):
    # the structure's box scores its correlation (1) less click_penalty x 0.5; the floor reads the correlation
    below = (np.array([[17.0, 19.0], [31.0, 19.0]]), np.array([1, 1]))
    own = [np.array([10.0, 12.0, 25.0, 27.0])]
    for penalty in (0.3, 2.0):
        scorer = ShapePriors(priors.sections, ShapePriorSettings(click_penalty=penalty), priors.patches)
        score, correlation = scorer._box_matches(("sq", 2), own, shape, spacing, image, below)
        assert score[0] == pytest.approx(1.0 - penalty * 0.5, abs=1e-5) and correlation[0] == pytest.approx(1.0)
        assert scorer._box_matches(("sq", 2), own, shape, spacing, image, (points, labels))[0][0] == pytest.approx(1.0)

    seen = []

    def decode(self, embedding, geom, prompt, **_):
        seen.append(prompt.box)
        mask = box_mask_of(spilled.astype(int), (geom.height, geom.width))
        return SliceResult(mask=mask, low_res_logits=torch.full((1, 1, 64, 64), 0.25), iou=0.9)

    monkeypatch.setattr(Segmenter, "decode", decode)
    fresh_tiny_model.shape_priors = priors
    seg = Segmenter(fresh_tiny_model, EmbeddingCache(), click_fill=None)
    geom = SliceGeometry(40, 40, fresh_tiny_model.input_size)
    refinement = SlicePrompt(points=points, labels=labels, structure="sq", mask_logits=torch.zeros((1, 1, 64, 64)))
    searched = seg.answer(torch.zeros(1), geom, refinement, image=image, prior_at=(2, spacing))
    blind = seg.answer(torch.zeros(1), geom, refinement, image=None, prior_at=(2, spacing))
    assert dice(searched.mask, truth) > 0.9 and dice(blind.mask, truth) < 0.85
    boxed = seg.answer(torch.zeros(1), geom, SlicePrompt(box=spilled, points=points, labels=labels, structure="sq",
                                                           mask_logits=torch.zeros((1, 1, 64, 64))),
                       image=image, prior_at=(2, spacing))
    assert dice(boxed.mask, box_mask_of(spilled.astype(int), shape)) > 0.9  # the annotator's box is the box


def test_image_patches_scale_as_torch_scales_a_crop() -> None:
    """The batched patches (a lone click's search) sample as bilinear `interpolate` does, boxes larger and smaller
    than the patch alike (at most one grey level apart, float rounding)."""
    import torch.nn.functional as F

    from samri.inference.shape_prior import image_patches

    rng = np.random.default_rng(0)
    image = rng.random((50, 60)).astype(np.float32)
    boxes = np.array([[0, 0, 49, 59], [3, 7, 9, 12], [10, 20, 10, 20], [5, 5, 44, 30], [40, 50, 49, 59]])
    patches = image_patches(image, boxes, 16)
    assert patches.shape == (5, 16, 16) and patches.dtype == np.uint8
    for patch, (r0, c0, r1, c1) in zip(patches, boxes):
        crop = torch.from_numpy(image[r0:r1 + 1, c0:c1 + 1].copy())[None, None]
        scaled = F.interpolate(crop, size=(16, 16), mode="bilinear", align_corners=False)[0, 0].numpy()
        expected = (scaled * 255).round()
        assert np.abs(patch.astype(int) - expected.astype(int)).max() <= 1


def test_prior_logits_and_their_low_res_frame_round_trip() -> None:
    box = np.array([4, 6, 27, 33])
    prior = np.zeros((40, 48), np.float32)
    prior[4:28, 6:34] = np.where(np.pad(triangle(24, 28), 0), 0.9, 0.1)
    logits = prior_logits(prior, box)
    assert logits.max() == pytest.approx(np.log(0.9 / 0.1)) and logits[0, 0] == pytest.approx(
        np.log(PRIOR_CLIP / (1 - PRIOR_CLIP)))
    geom = SliceGeometry(40, 48, 64)
    zero = torch.zeros((1, 1, 16, 16))
    fused = fuse_prior(geom, zero, prior, box, weight=1.0)
    assert fused.shape == zero.shape
    # slice frame -> decoder frame -> slice frame keeps the prior's mask (away from its edges)
    back = geom.logits_to_slice(fused)[0, 0].numpy() > 0
    assert dice(back, prior > 0.5) > 0.85
    assert torch.equal(fuse_prior(geom, zero, prior, box, weight=0.0), zero)


def test_a_first_box_of_a_named_structure_takes_the_prior(monkeypatch, fresh_tiny_model, prepared_volume) -> None:
    """The decoder answers the whole box with little confidence (logits 0.25): the prior decides, on the first
    answer and on a refinement; an unnamed box, a name without finished sections or no box are served as before."""

    def decode(self, embedding, geom, prompt, **_):
        return SliceResult(mask=np.ones((geom.height, geom.width), bool), low_res_logits=torch.full(
            (1, 1, 64, 64), 0.25), iou=0.9)

    monkeypatch.setattr(Segmenter, "decode", decode)
    spacing = prepared_volume.spacing
    labels = study([12, 16, 20], shape=prepared_volume.shape[:2] + (3,))
    fresh_tiny_model.shape_priors = ShapePriors.from_labels([(labels, {"tri": 1}, spacing)])
    seg = Segmenter(fresh_tiny_model, EmbeddingCache(), click_fill=None)
    box = np.array([10, 12, 25, 27])
    named = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(box=box, structure="tri"))
    expected = np.zeros(named.mask.shape, bool)
    expected[10:26, 12:28] = triangle(16, 16)
    assert dice(named.mask, expected) > 0.85 and not (named.mask & ~np.pad(np.ones((16, 16), bool), (
        (10, named.mask.shape[0] - 26), (12, named.mask.shape[1] - 28)))).any()
    # the logits fed back with the next click say the same
    geom = seg.slice_geometry(prepared_volume, 2)
    assert dice(geom.logits_to_slice(named.low_res_logits)[0, 0].numpy() > 0, named.mask) > 0.95
    for prompt in (SlicePrompt(box=box), SlicePrompt(box=box, structure="other")):  # unnamed, unknown name
        assert seg.predict_slice(prepared_volume, 2, 15, prompt).mask.sum() == 16 * 16
    assert seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[18, 14]], labels=[1])).mask.all()
    # a refinement of the box's session takes it too (the decoder answers 0.25 everywhere again)
    again = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(box=box, structure="tri",
                                                                  mask_logits=named.low_res_logits))
    assert dice(again.mask, expected) > 0.85
    # the trainer's validation path (`answer` without where the slice lies) does not use priors
    embedding = seg.embedding(prepared_volume, 2, 15)
    assert seg.answer(embedding, geom, SlicePrompt(box=box, structure="tri")).mask.sum() == 16 * 16


def test_a_lone_click_of_a_named_structure_stands_for_a_box_of_its_typical_size(monkeypatch, fresh_tiny_model,
                                                                                 prepared_volume) -> None:
    """A first click of a named structure with finished sections is answered as a box of the sections' 40th
    percentile size centred on it (the box clip keeps the answer inside); a refinement without a box takes the
    prior on the tight box of its answer; unnamed clicks, unknown names and negative-only clicks as before."""
    seen = []

    def decode(self, embedding, geom, prompt, **_):
        seen.append(None if prompt.box is None else prompt.box.copy())
        return SliceResult(mask=np.ones((geom.height, geom.width), bool), low_res_logits=torch.full(
            (1, 1, 64, 64), 0.25), iou=0.9)

    monkeypatch.setattr(Segmenter, "decode", decode)
    spacing = prepared_volume.spacing
    sides = [12, 16, 20]
    labels = study(sides, shape=prepared_volume.shape[:2] + (3,))
    fresh_tiny_model.shape_priors = ShapePriors.from_labels([(labels, {"tri": 1}, spacing)])
    seg = Segmenter(fresh_tiny_model, EmbeddingCache(), click_fill=None)
    first = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[20, 22]], labels=[1], structure="tri"))
    side_r = np.percentile(np.array(sides) * spacing[0], 40) / spacing[0]
    side_c = np.percentile(np.array(sides) * spacing[1], 40) / spacing[1]
    assert seen[-1] == pytest.approx([20 - (side_r - 1) / 2, 22 - (side_c - 1) / 2, 20 + (side_r - 1) / 2,
                                      22 + (side_c - 1) / 2])
    rows, cols = np.flatnonzero(first.mask.any(axis=1)), np.flatnonzero(first.mask.any(axis=0))
    assert abs(len(rows) - side_r) <= 1.5 and abs(len(cols) - side_c) <= 1.5  # clipped to that box
    # near the edge the box is cut at the slice
    edge = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[0, 0]], labels=[1], structure="tri"))
    assert edge.mask[0, 0] and seen[-1][:2].tolist() == [0.0, 0.0]
    # sections far smaller than the slice's voxels: at least the clicked pixel
    assert fresh_tiny_model.shape_priors.point_box("tri", 2, np.array([20.0, 22.0]), (40, 40), (100.0, 100.0)
                                                   ).tolist() == [20.0, 22.0, 20.0, 22.0]
    # a refinement without a box: the prior on the tight box of the answer (the whole slice here)
    refined = seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[20, 22], [30, 5]], labels=[1, 1],
                                                                    structure="tri", mask_logits=first.low_res_logits))
    assert seen[-1] is None
    h, w = refined.mask.shape
    assert dice(refined.mask, triangle(h, w)) > 0.85
    for prompt in (SlicePrompt(points=[[20, 22]], labels=[1]), SlicePrompt(points=[[20, 22]], labels=[1],
                                                                           structure="other"),
                   SlicePrompt(points=[[20, 22]], labels=[0], structure="tri")):
        assert seg.predict_slice(prepared_volume, 2, 15, prompt).mask.all() and seen[-1] is None
    # 3D seeds (`shape_prior=False`) are served as before
    assert seg.predict_slice(prepared_volume, 2, 15, SlicePrompt(points=[[20, 22]], labels=[1], structure="tri"),
                             shape_prior=False).mask.all()


def test_3d_seeds_and_propagated_slices_of_a_named_structure_take_the_prior(monkeypatch, fresh_tiny_model,
                                                                             prepared_volume) -> None:
    """A 3D request of a named structure: the seed box and every propagated slice (on the box it propagates
    with) take the prior, so each answer is the triangle the finished sections show, not the whole box;
    unnamed seeds propagate as before. The memo of one is not reused for the other."""

    def decode(self, embedding, geom, prompt, **_):
        return SliceResult(mask=np.ones((geom.height, geom.width), bool), low_res_logits=torch.full(
            (1, 1, 64, 64), 0.25), iou=0.9)

    monkeypatch.setattr(Segmenter, "decode", decode)
    labels = study([12, 16, 20], shape=prepared_volume.shape[:2] + (3,))
    fresh_tiny_model.shape_priors = ShapePriors.from_labels([(labels, {"tri": 1}, prepared_volume.spacing)])
    seg = Segmenter(fresh_tiny_model, EmbeddingCache(), click_fill=None)
    box = np.array([10, 12, 25, 27])
    unnamed = seg.propagate(prepared_volume, 2, {15: SlicePrompt(box=box)}, bounds=(14, 16))
    named = seg.propagate(prepared_volume, 2, {15: SlicePrompt(box=box, structure="tri")}, bounds=(14, 16),
                          memo=unnamed.memo)
    assert sorted(named.slices) == sorted(unnamed.slices) == [14, 15, 16] and not named.kept
    for index in (14, 15, 16):
        mask = named.slices[index].mask
        r0, c0, r1, c1 = (int(v) for v in mask_box(unnamed.slices[index].mask))
        assert mask.sum() < 0.7 * unnamed.slices[index].mask.sum()
        assert mask[r1 - 1, c0 + 1] and not mask[r0 + 1, c1 - 1]  # the lower-left triangle of its box
