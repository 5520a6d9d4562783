"""Training prompt simulation: every mode, the propagated box, correction clicks (slice pixels (r, c))."""

from __future__ import annotations

import numpy as np
import pytest

from samri.errors import SamriInputError
from samri.inference.segmenter import PropagationSettings, mask_box
from samri.train.prompt_sim import SIM_MODES, SimSettings, correction_click, pick_mode, simulate_prompt


def _disc(center=(20, 24), radius=6, shape=(48, 64)) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius ** 2


@pytest.mark.parametrize("mode", SIM_MODES)
def test_every_mode_gives_a_prompt_on_the_object(mode):
    mask = _disc()
    rng = np.random.default_rng(0)
    prompt = simulate_prompt(mask, mode, SimSettings(box_jitter=0.0), rng, neighbour=_disc((21, 25)))
    if prompt.points is not None and len(prompt.points):
        pos = prompt.points[np.asarray(prompt.labels) == 1]
        assert len(pos) == 1 and mask[int(pos[0][0]), int(pos[0][1])]
        assert all(not mask[int(r), int(c)] for r, c in prompt.points[np.asarray(prompt.labels) == 0])
    if mode in ("box", "box_point"):
        np.testing.assert_array_equal(prompt.box, mask_box(mask))


def test_propagated_box_is_the_neighbour_box_with_the_propagation_margin():
    mask, near = _disc((20, 24), 6), _disc((23, 28), 5)
    prompt = simulate_prompt(mask, "propagated_box", SimSettings(), np.random.default_rng(0), neighbour=near)
    np.testing.assert_array_equal(prompt.box, mask_box(near, PropagationSettings().box_margin))
    assert prompt.points is None or len(prompt.points) == 0
    # no neighbour (volume edge) or an empty one (object ended): a box of the slice's own object
    for missing in (None, np.zeros_like(mask)):
        prompt = simulate_prompt(mask, "propagated_box", SimSettings(box_jitter=0.0), np.random.default_rng(0),
                                 neighbour=missing)
        np.testing.assert_array_equal(prompt.box, mask_box(mask))


def test_box_jitter_is_bounded():
    mask = _disc()
    settings = SimSettings(box_jitter=0.04)
    tight = mask_box(mask)
    for seed in range(20):
        box = simulate_prompt(mask, "box", settings, np.random.default_rng(seed)).box
        assert np.abs(box - tight).max() <= 0.04 * 64 + 1e-9


def test_mode_weights_are_validated_and_followed():
    with pytest.raises(SamriInputError, match="prompts.mode_weights"):
        SimSettings(mode_weights={"scribble": 1.0})
    with pytest.raises(SamriInputError, match="mode"):
        simulate_prompt(_disc(), "scribble", SimSettings(), np.random.default_rng(0))
    settings = SimSettings(mode_weights={"propagated_box": 3.0, "point": 1.0})
    rng = np.random.default_rng(0)
    picks = [pick_mode(settings, rng) for _ in range(400)]
    assert set(picks) == {"propagated_box", "point"} and 0.65 < picks.count("propagated_box") / 400 < 0.85


def test_correction_click_lands_in_the_larger_error():
    truth = _disc(radius=8)
    missed = _disc(radius=4)  # under-segmentation: click inside the missed part, positive
    point, label = correction_click(missed, truth, np.random.default_rng(0))
    assert label == 1 and truth[int(point[0]), int(point[1])] and not missed[int(point[0]), int(point[1])]
    leaked = _disc(radius=14)  # over-segmentation: negative click outside the truth
    point, label = correction_click(leaked, truth, np.random.default_rng(0))
    assert label == 0 and not truth[int(point[0]), int(point[1])]
    assert correction_click(truth, truth, np.random.default_rng(0)) is None
