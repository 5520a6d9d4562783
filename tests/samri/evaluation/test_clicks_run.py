"""samri.evaluation.clicks_run: whole click sessions over a case, the summary schema, resuming (oracle model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samri.geometry import take_slice
from samri.inference.request import run_request
from samri.inference.segmenter import SliceResult, VolumeResult


class OracleSessionRunner:
    """Answers each request with the structure under its first point or box centre (2D and 3D), via
    the real `run_request` on a segmenter that decodes from the labels."""

    def __init__(self, label: np.ndarray) -> None:
        self.label = label
        self.encode_seconds = 0.0
        seg = self

        class _Seg:
            def predict_slice(self, volume, axis, index, prompt):
                plane = take_slice(seg.label, axis, index)
                if len(prompt.points):
                    r, c = prompt.points[0]
                else:
                    r, c = (prompt.box[0] + prompt.box[2]) / 2, (prompt.box[1] + prompt.box[3]) / 2
                value = plane[int(round(r)), int(round(c))]
                return SliceResult(mask=(plane == value) & (value > 0), low_res_logits=torch.zeros(1, 1, 4, 4), iou=1)

            def propagate(self, volume, axis, seeds, **_):
                out = VolumeResult(mask=np.zeros(seg.label.shape, bool), axis=axis)
                k = min(seeds)
                res = self.predict_slice(volume, axis, k, seeds[k])
                value = np.unique(take_slice(seg.label, axis, k)[res.mask])
                out.mask = np.isin(seg.label, value[value > 0])
                return out

        self.segmenter = _Seg()

    def prefetch(self, volume, axis, indices) -> None:
        """Nothing to encode: the oracle reads the labels."""

    def request(self, volume, params, *, mode, axis, previous_logits, previous_run=None):
        return run_request(self.segmenter, volume, params, mode=mode, axis=axis, previous_logits=previous_logits,
                           previous_run=previous_run)


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_evaluate_clicks_writes_the_summary_schema_and_resumes(tmp_path, mode):
    from samri.evaluation.clicks_run import evaluate_clicks
    from samri.evaluation.protocol import EvalConfig
    from tests.helpers import synthetic_case

    case = synthetic_case()
    config = EvalConfig(mode=mode, protocol="clicks", first=("box", "point"), max_clicks=3, max_pairs=1)
    summary = evaluate_clicks([case], {"oracle": OracleSessionRunner(case.label)}, config, tmp_path, progress=False)
    stats = summary["results"]["oracle"]["clicks:box"]
    assert stats["dice_at"] == [1.0, 1.0, 1.0] and stats["noc"] == {"80": 1.0, "85": 1.0, "90": 1.0}
    assert stats["failure_rate"]["85"] == 0.0 and stats["seconds_to_85"]["human"] == 2.0
    assert set(stats["by_image"]) == {"syn"} and set(stats["buckets"]) == {"small", "medium", "large"}
    assert "clicks:point" in summary["results"]["oracle"]
    assert (tmp_path / "clicks_curves.png").is_file() and "NoC@85" in (tmp_path / "report.md").read_text()
    lines = (tmp_path / "sessions.jsonl").read_text().splitlines()
    again = evaluate_clicks([case], {"oracle": OracleSessionRunner(case.label)}, config, tmp_path, resume=True,
                            progress=False)
    assert (tmp_path / "sessions.jsonl").read_text().splitlines() == lines  # nothing redone
    assert again["results"]["oracle"]["clicks:box"]["dice_at"] == stats["dice_at"]
