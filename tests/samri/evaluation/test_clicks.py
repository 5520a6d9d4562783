"""samri.evaluation.clicks: the interactive protocol through the real request path (fake models)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from samri.errors import SamriInputError
from samri.evaluation.clicks import (
    Click,
    aggregate_sessions,
    client_params,
    noc,
    session_2d,
    session_3d,
    session_figures,
)
from samri.evaluation.protocol import EvalConfig
from samri.geometry import take_slice
from samri.inference.request import run_request
from samri.inference.segmenter import SliceResult, VolumeResult

SHAPE = (40, 40, 12)
AXIS = 2
K = 6


def _truth() -> np.ndarray:
    gt = np.zeros(SHAPE, bool)
    gt[10:30, 10:30, 2:10] = True
    return gt


class FakeSegmenter:
    """A model whose answer depends on what the request carried.

    ``mode``: ``perfect`` (always the truth), ``stuck`` (always the left half), ``refines``
    (the left half, the truth once a previous mask comes back as the mask prompt).
    """

    def __init__(self, gt: np.ndarray, mode: str) -> None:
        self.gt, self.mode = gt, mode
        self.prompts: list = []
        self.seeds: list[dict] = []

    def _slice(self, index: int, prompt) -> SliceResult:
        self.prompts.append(prompt)
        gt = take_slice(self.gt, AXIS, index)
        half = gt.copy()
        half[:, 20:] = False
        exact = self.mode == "perfect" or (self.mode == "refines" and prompt.mask_logits is not None)
        mask = gt if exact else half
        return SliceResult(mask=mask.copy(), low_res_logits=torch.full((1, 1, 4, 4), float(len(self.prompts))),
                           iou=0.9)

    def predict_slice(self, volume, axis, index, prompt) -> SliceResult:
        return self._slice(index, prompt)

    def propagate(self, volume, axis, seeds, *, bounds=None, roi_box=None, budget=None, **_):
        self.seeds.append(dict(seeds))
        out = VolumeResult(mask=np.zeros(SHAPE, bool), axis=axis)
        lowest = min(seeds)
        for k in range(SHAPE[2]):
            if not take_slice(self.gt, axis, k).any():
                continue
            # a stand-in for propagation that stops early: slices above 7 are found only when seeded there
            if k <= 7 or max(seeds) > 7:
                res = self._slice(k, seeds.get(k, seeds[lowest]))
                out.slices[k] = res
                out.mask[:, :, k] = res.mask
        return out


class Runner:
    """The protocol's runner: the real `run_request` on the fake segmenter."""

    def __init__(self, segmenter) -> None:
        self.segmenter = segmenter
        self.previous_seen: list[dict] = []

    def request(self, volume, params, *, mode, axis, previous_logits, previous_run=None):
        self.previous_seen.append(dict(previous_logits))
        return run_request(self.segmenter, volume, params, mode=mode, axis=axis, previous_logits=previous_logits,
                           previous_run=previous_run)


VOLUME = SimpleNamespace(shape=SHAPE)


def test_client_params_are_voxel_indices_as_slicer_sends():
    params = client_params(AXIS, K, np.array([10.2, 11.7, 29.0, 30.4]), [Click((20, 25, K), 1), Click((3, 4, K), 0)])
    assert params == {"foreground": [[20, 25, K]], "background": [[3, 4, K]], "roi": [10, 29, 12, 30, K, K]}
    assert client_params(0, 3, None, [Click((3, 5, 6), 1)]) == {"foreground": [[3, 5, 6]], "background": []}
    assert client_params(0, 3, None, [], label="Putamen_L")["label"] == "Putamen_L"  # Slicer's segment name


def test_a_perfect_model_needs_one_click():
    gt = _truth()
    for first in ("box", "point"):
        s = session_2d(Runner(FakeSegmenter(gt, "perfect")), VOLUME, AXIS, K, take_slice(gt, AXIS, K), first=first,
                       max_clicks=5)
        assert s.dice == [1.0] * 5 and s.seconds[1:] == [0.0] * 4  # no request after an exact mask
        assert session_figures(s.dice, s.seconds)["noc"] == {"80": 1, "85": 1, "90": 1}


def test_a_model_that_never_improves_fails_every_target():
    gt = _truth()
    seg = FakeSegmenter(gt, "stuck")
    s = session_2d(Runner(seg), VOLUME, AXIS, K, take_slice(gt, AXIS, K), first="box", max_clicks=4)
    assert s.dice == pytest.approx([2 / 3] * 4)
    figures = session_figures(s.dice, s.seconds)
    assert figures["noc"]["85"] == 4 and figures["failed"] == {"80": True, "85": True, "90": True}
    summary = aggregate_sessions([{"dice_curve": s.dice, "seconds_curve": s.seconds}])
    assert summary["failure_rate"] == {"80": 1.0, "85": 1.0, "90": 1.0} and summary["noc"]["85"] == 4.0
    # the corrective clicks accumulate and go to the missed (right) half, positive, with the box kept
    last = seg.prompts[-1]
    assert last.box is not None and len(last.points) == 3 and last.labels.tolist() == [1, 1, 1]
    assert all(c >= 20 for _, c in last.points)


def test_the_previous_logits_are_fed_back_as_the_server_does():
    gt = _truth()
    runner = Runner(FakeSegmenter(gt, "refines"))
    s = session_2d(runner, VOLUME, AXIS, K, take_slice(gt, AXIS, K), first="point", max_clicks=3)
    assert s.dice[0] == pytest.approx(2 / 3) and s.dice[1] == 1.0  # only reachable with the mask prompt
    assert runner.previous_seen[0] == {} and K in runner.previous_seen[1]


def test_ohif_requests_get_the_logits_of_the_clicks_they_extend():
    gt = _truth()
    runner = Runner(FakeSegmenter(gt, "refines"))
    s = session_2d(runner, VOLUME, AXIS, K, take_slice(gt, AXIS, K), first="point", max_clicks=3, client="ohif")
    assert runner.previous_seen[0] == {} and K in runner.previous_seen[1]  # found from the clicks, no client_id
    assert s.dice[1] == 1.0  # as the Slicer client with state
    bare = Runner(FakeSegmenter(gt, "refines"))
    s = session_2d(bare, VOLUME, AXIS, K, take_slice(gt, AXIS, K), first="point", max_clicks=3,
                   client="ohif_no_history")
    assert bare.previous_seen == [{}, {}, {}] and s.dice[1] < 1.0  # every request as a first one
    bare3d = Runner(FakeSegmenter(gt, "refines"))
    session_3d(bare3d, VOLUME, AXIS, gt, first="point", max_clicks=2, spacing=(1.0, 1.0, 1.0),
               client="ohif_no_history")
    assert bare3d.previous_seen == [{}, {}]


def test_an_ohif_run_takes_points_only():
    assert EvalConfig(protocol="clicks", first=("point",), client="ohif").validate().client == "ohif"
    with pytest.raises(SamriInputError, match="first"):
        EvalConfig(protocol="clicks", first=("box", "point"), client="ohif").validate()
    with pytest.raises(SamriInputError, match="first"):
        EvalConfig(protocol="clicks", first=("box",), client="ohif_no_history").validate()
    with pytest.raises(SamriInputError, match="client"):
        EvalConfig(protocol="clicks", client="orthanc").validate()


def test_3d_corrective_clicks_go_to_the_slice_with_the_largest_error():
    gt = _truth()
    gt[10:30, 20:30, 2:8] = False  # the object is smaller below; the fake misses slices 8..9 entirely
    seg = FakeSegmenter(gt, "perfect")
    s = session_3d(Runner(seg), VOLUME, AXIS, gt, first="box", max_clicks=3, spacing=(1.0, 1.0, 1.0))
    assert s.slice == 8  # largest slice: the first prompt goes there
    # first request: the flat ROI on slice 8 seeds slice 8 -> found (max seed > 7)
    assert s.dice[0] == 1.0
    gt2 = _truth()
    seg2 = FakeSegmenter(gt2, "perfect")
    s2 = session_3d(Runner(seg2), VOLUME, AXIS, gt2, first="point", max_clicks=3, spacing=(1.0, 1.0, 1.0), index=4)
    assert s2.dice[0] < 1.0 and s2.dice[1] == 1.0
    clicked = s2.clicks[1]
    assert clicked.label == 1 and clicked.point[2] in (8, 9)  # the missed slab
    assert sorted(seg2.seeds[1]) == [4, clicked.point[2]]  # the request carries every click so far


def test_noc_counts_from_one():
    assert noc([0.5, 0.86, 0.95], 0.85) == 2 and noc([0.5], 0.85) is None and noc([0.9], 0.85) == 1
