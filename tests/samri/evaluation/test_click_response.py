"""samri.evaluation.click_response: a decoder's raw answer to each corrective click against the served one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samri.evaluation.click_response import ResponseSummary, click_response, render_markdown, session_response
from samri.evaluation.protocol import EvalConfig
from samri.evaluation.variants import Case
from samri.geometry import SliceGeometry
from samri.inference.embeddings import EmbeddingCache
from samri.inference.segmenter import SliceResult
from samri.intensity import WindowSettings
from samri.volume import ImageVolume

SIDE = 32


def _truth() -> np.ndarray:
    gt = np.zeros((SIDE, SIDE), bool)
    gt[8:24, 8:24] = True
    return gt


class ServedHalf:
    """Served answers: the box's first answer is the truth plus a false-positive strip; after any
    click the exact truth."""

    def __init__(self) -> None:
        self.prompts = []

    def predict_slice(self, volume, axis, index, prompt) -> SliceResult:
        self.prompts.append(prompt)
        mask = _truth()
        if prompt.mask_logits is None:
            mask[8:24, 24:30] = True  # the strip: 96 extra pixels
        return SliceResult(mask=mask, low_res_logits=torch.full((1, 1, 4, 4), float(len(self.prompts))), iou=0.9)


class RawEraser:
    """The decoder alone: follows a negative click by erasing everything right of column 16."""

    def __init__(self) -> None:
        self.prompts = []

    def slice_geometry(self, volume, axis) -> SliceGeometry:
        return SliceGeometry(SIDE, SIDE, 64)

    def embedding(self, volume, axis, index):
        return torch.zeros(1)

    def decode(self, embedding, geom, prompt) -> SliceResult:
        self.prompts.append(prompt)
        mask = _truth()
        mask[:, 16:] = False
        return SliceResult(mask=mask, low_res_logits=torch.zeros(1, 1, 4, 4), iou=0.5)


def test_raw_and_served_answers_are_scored_per_click() -> None:
    served, raw = ServedHalf(), RawEraser()
    records = session_response(served, raw, volume=None, axis=2, index=0, truth=_truth(), first="box", max_clicks=4)
    # one correction: the served answer is then exact, so the session ends
    assert len(records) == 1
    r = records[0]
    assert r.label == 0 and r.index == 1  # the strip is the only error: a negative click
    assert r.before == pytest.approx(2 * 256 / (256 + 352))
    assert r.served == 1.0
    assert r.raw == pytest.approx(2 * 128 / (128 + 256))  # the raw answer kept only the left half
    assert r.raw_object_removed == 128 and r.raw_extra_removed == 96
    assert r.raw_follows
    # both decodes got the same prompt: the box, the click, and the served previous logits
    assert raw.prompts[0] is served.prompts[1]
    assert torch.equal(raw.prompts[0].mask_logits, torch.full((1, 1, 4, 4), 1.0))


def test_summary_by_sign_and_markdown() -> None:
    served, raw = ServedHalf(), RawEraser()
    summary = ResponseSummary(session_response(served, raw, None, 2, 0, _truth(), first="box", max_clicks=3))
    by_sign = summary.by_sign()
    assert set(by_sign) == {"negative"}
    neg = by_sign["negative"]
    assert neg["n"] == 1 and neg["raw"]["worse"] == 1 and neg["served"]["better"] == 1
    assert neg["raw"]["dice_change"] < 0 < neg["served"]["dice_change"]
    assert neg["first_correction"]["n"] == 1
    assert neg["raw_pixels"]["object_removed"] == 128.0
    text = render_markdown({"box": {"sessions": 1, **by_sign}})
    assert "| box | negative | 1 |" in text and "100%" in text


def test_click_response_runs_the_real_segmenter(tiny_model, prepared_volume, gt_mask) -> None:
    label = gt_mask.astype(np.uint8)
    case = Case(name="synthetic", image=ImageVolume(np.asarray(prepared_volume.windowed, dtype=np.float32)),
                label=label, structures={"ellipsoid": 1})
    config = EvalConfig(mode="2d", axis=2, max_pairs=1, protocol="clicks", first=("box", "point"),
                        max_clicks=3).validate()
    result = click_response(tiny_model, EmbeddingCache(), [case], config, WindowSettings())
    assert set(result) == {"box", "point"}
    for entry in result.values():
        assert entry["sessions"] == 1
        counted = sum(entry[s]["n"] for s in ("positive", "negative") if s in entry)
        assert 1 <= counted <= 2  # a random-weight model is never exact; at most max_clicks - 1 corrections


def test_cli_writes_json_and_markdown(tiny_registry, tmp_path) -> None:
    import json

    import nibabel as nib

    from samri.evaluation.click_response import main
    from tests.helpers import write_tiny_studies

    studies = write_tiny_studies(tmp_path / "studies", ids=("tiny_a",))
    image = studies / "tiny_a.nii.gz"
    img = nib.load(str(image))
    label = (np.asarray(img.dataobj) > 250).astype(np.uint8)  # the bright ellipsoid
    nib.save(nib.Nifti1Image(label, img.affine), str(tmp_path / "label.nii.gz"))
    out = tmp_path / "response.json"
    assert main(["--image", str(image), "--label", str(tmp_path / "label.nii.gz"), "--labels", "1",
                 "--max-pairs", "1", "--max-clicks", "3", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["model"] == "tiny" and written["labels"] == ["1"] and written["decoder"] is None
    assert set(written["results"]) == {"box", "point"}
    assert out.with_suffix(".md").read_text().startswith("| first | click |")
