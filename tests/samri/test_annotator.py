"""samri.annotator: prompt kinds, deterministic vs random draws, corrective clicks in 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest

from samri.annotator import (
    PROMPT_KINDS,
    SimSettings,
    corrective_click,
    interior_point,
    jitter_box,
    pick_mode,
    simulate_prompt,
    slice_session,
    training_prompt,
)
from samri.errors import SamriInputError
from samri.evaluation.protocol import pair_rng
from samri.inference.propagation import PropagationSettings, mask_box


def _disc(center=(20, 24), radius=6, shape=(48, 64)) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius ** 2


@pytest.mark.parametrize("mode", PROMPT_KINDS)
def test_every_kind_gives_a_prompt_on_the_object(mode):
    mask = _disc()
    prompt = training_prompt(mask, mode, SimSettings(box_jitter=0.0), np.random.default_rng(0),
                             neighbour=_disc((21, 25)))
    if len(prompt.points):
        pos = prompt.points[prompt.labels == 1]
        assert len(pos) == 1 and mask[int(pos[0][0]), int(pos[0][1])]
        assert all(not mask[int(r), int(c)] for r, c in prompt.points[prompt.labels == 0])
    if mode in ("box", "box+point"):
        np.testing.assert_array_equal(prompt.box, mask_box(mask))


def test_deterministic_prompts_are_the_tight_box_and_the_deepest_point():
    gt = _disc()
    np.testing.assert_array_equal(simulate_prompt(gt, "box").box, mask_box(gt))
    point = simulate_prompt(gt, "point")
    assert point.box is None and point.labels.tolist() == [1]
    np.testing.assert_array_equal(point.points[0], [20, 24])  # the disc's centre
    both = simulate_prompt(gt, "box+point", jitter=0.1, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(both.points[0], [20, 24])  # jittered box, still the deepest point
    assert not np.array_equal(both.box, mask_box(gt))


def test_interior_point_deepest_random_and_3d():
    mask = np.zeros((10, 12), bool)
    assert interior_point(mask) is None
    mask[2:5, 3:9] = True
    r, c = interior_point(mask)
    assert mask[int(r), int(c)] and r == 3
    edge = np.zeros((5, 5), bool)
    edge[0, :] = True  # touching the border: the border counts as outside, still inside
    assert edge[tuple(interior_point(edge).astype(int))]
    draws = {tuple(interior_point(_disc(radius=10), np.random.default_rng(s), 0.5)) for s in range(20)}
    assert len(draws) > 5 and all(_disc(radius=5)[int(r), int(c)] for r, c in draws)  # deep: within half
    ball = np.zeros((9, 9, 30), bool)
    ball[2:7, 2:7, 3:25] = True
    assert interior_point(ball).tolist() == [4, 4, 5]  # first of the deepest (C order), mm-free
    # anisotropic voxels: 3 mm slices make the slab's depth along k count 3x
    assert interior_point(ball, spacing=(1.0, 1.0, 3.0)).tolist()[:2] == [4, 4]


@pytest.mark.parametrize("kind", ["propagated_box", "propagated_chain"])
def test_propagated_box_is_the_neighbour_box_with_the_propagation_margin(kind):
    """Both propagated kinds start from the neighbour's true box (the trainer chains ``propagated_chain``)."""
    mask, near = _disc((20, 24), 6), _disc((23, 28), 5)
    prompt = simulate_prompt(mask, kind, neighbour=near)
    np.testing.assert_array_equal(prompt.box, mask_box(near, PropagationSettings().box_margin))
    assert len(prompt.points) == 0 and prompt.mask_logits is None
    for missing in (None, np.zeros_like(mask)):  # volume edge or object ended: the slice's own box
        np.testing.assert_array_equal(simulate_prompt(mask, kind, neighbour=missing).box, mask_box(mask))


def test_jitter_is_bounded_seeded_and_per_pair():
    gt = _disc()
    tight = mask_box(gt)
    boxes = [simulate_prompt(gt, "box", jitter=0.04, rng=pair_rng(0, "syn", "big", k, "box")).box for k in range(20)]
    assert all(np.abs(b - tight).max() <= 0.04 * max(gt.shape) + 1e-9 for b in boxes)
    assert len({tuple(b) for b in boxes}) == 20
    again = simulate_prompt(gt, "box", jitter=0.04, rng=pair_rng(0, "syn", "big", 0, "box")).box
    np.testing.assert_array_equal(again, boxes[0])
    clipped = jitter_box(np.array([0.0, 0.0, 3.0, 3.0]), (10, 10), 0.5, np.random.default_rng(0))
    assert clipped.min() >= 0 and clipped[2] <= 9 and clipped[0] <= clipped[2]
    np.testing.assert_array_equal(jitter_box(tight, gt.shape, 0.3, None), tight)  # no generator: no jitter


def test_settings_are_validated_and_followed():
    with pytest.raises(SamriInputError, match="prompts.mode_weights"):
        SimSettings(mode_weights={"scribble": 1.0})
    with pytest.raises(SamriInputError, match="prompts.mode_weights"):
        SimSettings(mode_weights={"box_point": 1.0})  # the old spelling of box+point
    with pytest.raises(SamriInputError, match="correction_rounds"):
        SimSettings(correction_rounds=0)
    with pytest.raises(SamriInputError, match="mode"):
        simulate_prompt(_disc(), "scribble")
    with pytest.raises(SamriInputError, match="mask"):
        simulate_prompt(np.zeros((5, 5), bool), "box")
    settings = SimSettings(mode_weights={"propagated_box": 3.0, "point": 1.0})
    rng = np.random.default_rng(0)
    picks = [pick_mode(settings, rng) for _ in range(400)]
    assert set(picks) == {"propagated_box", "point"} and 0.65 < picks.count("propagated_box") / 400 < 0.85


# --- corrective clicks --------------------------------------------------------------------------
def test_first_click_on_a_half_covered_square_is_positive_in_the_missed_half():
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    pred = truth.copy()
    pred[:, 20:] = False  # left half found, right half missed
    point, label = corrective_click(pred, truth)
    assert label == 1 and truth[int(point[0]), int(point[1])] and point[1] >= 20
    assert point.tolist() == [14.0, 24.0] or 14 <= point[0] <= 25  # deepest of the 20x10 missed strip


def test_a_false_positive_blob_gets_a_negative_click_inside_it():
    truth = _disc(radius=8)
    pred = truth | _disc(center=(20, 50), radius=6)  # a blob beside the object
    point, label = corrective_click(pred, truth)
    assert label == 0 and not truth[int(point[0]), int(point[1])]
    np.testing.assert_array_equal(point, [20, 50])


def test_the_largest_connected_region_wins_not_the_total_error():
    truth = np.zeros((40, 60), bool)
    truth[5:35, 5:25] = True
    pred = truth.copy()
    pred[5:15, 5:25] = False  # one missed region of 200 px
    for c in range(30, 60, 6):  # five false-positive specks of 9 px each (45 px total)
        pred[20:23, c:c + 3] = True
    point, label = corrective_click(pred, truth)
    assert label == 1 and point[0] < 15
    assert corrective_click(truth, truth) is None


def test_corrective_click_in_3d_lands_on_the_slice_with_the_largest_error():
    truth = np.zeros((20, 20, 30), bool)
    truth[5:15, 5:15, 5:25] = True
    pred = truth.copy()
    pred[:, :, 18:25] = False  # the top 7 slices missed
    point, label = corrective_click(pred, truth, spacing=(1.0, 1.0, 1.0))
    assert label == 1 and 18 <= point[2] <= 24 and truth[tuple(point.astype(int))]


def test_random_corrective_clicks_stay_in_the_region():
    truth = _disc(radius=8)
    missed = _disc(radius=4)
    for seed in range(10):
        point, label = corrective_click(missed, truth, np.random.default_rng(seed))
        assert label == 1 and truth[int(point[0]), int(point[1])] and not missed[int(point[0]), int(point[1])]
    with pytest.raises(SamriInputError, match="prediction"):
        corrective_click(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_slice_session_of_a_perfect_decoder_needs_one_interaction():
    truth = _disc()
    curve = slice_session(lambda prompt: (truth.copy(), "logits"), truth, first="box", max_clicks=5)
    assert curve == [1.0] * 5


def test_slice_session_feeds_the_logits_back_and_accumulates_clicks():
    """Each interaction carries the box, every click so far and the previous decode's logits."""
    truth = _disc(radius=8)
    prompts = []

    def stuck(prompt):  # never improves: half the disc, whatever the prompt
        prompts.append(prompt)
        return truth & (np.arange(64)[None, :] < 24), f"logits{len(prompts)}"

    curve = slice_session(stuck, truth, first="box", max_clicks=4)
    assert len(curve) == 4 and len(set(curve)) == 1 and curve[0] < 0.85
    assert prompts[0].mask_logits is None and len(prompts[0].points) == 0
    for k, prompt in enumerate(prompts[1:], start=1):
        assert prompt.mask_logits == f"logits{k}"
        assert np.array_equal(prompt.box, prompts[0].box)
        assert len(prompt.points) == k and prompt.labels.tolist() == [1] * k  # the missed half: positive
        assert all(truth[int(r), int(c)] and c >= 24 for r, c in prompt.points)


def test_slice_session_point_first_starts_at_the_deepest_point():
    truth = _disc()
    seen = []
    slice_session(lambda p: (seen.append(p) or truth.copy(), None), truth, first="point", max_clicks=3)
    assert len(seen) == 1 and seen[0].box is None and seen[0].points.tolist() == [[20.0, 24.0]]
    with pytest.raises(SamriInputError):
        slice_session(lambda p: (truth, None), truth, first="box+point", max_clicks=3)
