"""Where a first box's 3D Dice is lost (samri.evaluation.propagation_gap), with a fake segmenter."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from samri.errors import SamriInputError
from samri.evaluation.metrics import dice
from samri.evaluation.propagation_gap import markdown, measure_run, session_gap
from samri.geometry import box_mask, put_slice, take_slice

AXIS = 2


def drifting_tube() -> np.ndarray:
    """``(24, 24, 12)`` bool: a 4 x 4 square on slices 3-8 that moves one pixel per slice."""
    truth = np.zeros((24, 24, 12), bool)
    for k in range(3, 9):
        truth[4 + k:8 + k, 6:10, k] = True
    return truth


class BoxFillingSegmenter:
    """Answers a box with the truth inside it (a perfect decoder) and propagates as a leaky front: the
    seed's box filled on every slice within ``bounds`` (the whole axis without them)."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth
        self.calls: list[dict] = []

    def predict_slice(self, volume, axis, index, prompt):
        plane = take_slice(self.truth, axis, index)
        return SimpleNamespace(mask=plane & box_mask(prompt.box, plane.shape))

    def propagate(self, volume, axis, seeds, *, bounds=None, roi_box=None, budget=None, memo=None):
        self.calls.append({"seeds": dict(seeds), "bounds": bounds, "roi_box": roi_box, "budget": budget})
        (index, prompt), = seeds.items()
        mask = np.zeros_like(self.truth)
        lo, hi = bounds if bounds is not None else (0, self.truth.shape[axis] - 1)
        for k in range(lo, hi + 1):
            put_slice(mask, axis, k, box_mask(prompt.box, take_slice(mask, axis, k).shape))
        return SimpleNamespace(mask=mask, slices={}, stops=[], partial=None, memo=None, kept=set())


def test_session_gap_separates_propagation_from_each_slices_answer() -> None:
    truth = drifting_tube()
    seg = BoxFillingSegmenter(truth)
    gap = session_gap(seg, SimpleNamespace(shape=truth.shape), truth, axis=AXIS, index=5, max_slices=96)
    assert gap["true_boxes"] == 1.0 and gap["seed_slice"] == 1.0  # a perfect decoder given every slice's box
    assert gap["served"] < gap["extent"] < gap["true_boxes"]  # the leak past the ends, then the drift
    served, extent, roi = seg.calls
    # Slicer's 3D ROI around the tube: its middle slice, the ROI's in-plane box, its slice range as bounds
    assert list(roi["seeds"]) == [5] and roi["bounds"] == (3, 8) and roi["budget"].max_slices == 96
    np.testing.assert_array_equal(roi["seeds"][5].box, [7, 6, 15, 9])
    np.testing.assert_array_equal(roi["roi_box"], [7, 6, 15, 9])
    assert gap["slicer_roi"] == pytest.approx(2 * 96 / (9 * 4 * 6 + 96))  # the in-plane box filled on 6 slices
    assert served["bounds"] is None and extent["bounds"] == (3, 8)
    for call in (served, extent):
        np.testing.assert_array_equal(call["roi_box"], [9, 6, 12, 9])  # the user's box bounds every slice's
        assert list(call["seeds"]) == [5] and call["budget"].max_slices == 96
    # the extent-bounded leak: the seed's box on slices 3-8, against the drifting square
    expected = np.zeros_like(truth)
    expected[9:13, 6:10, 3:9] = True
    assert gap["extent"] == pytest.approx(dice(expected, truth))


def test_session_gap_refuses_a_slice_off_the_structure() -> None:
    truth = drifting_tube()
    with pytest.raises(SamriInputError, match="slice"):
        session_gap(BoxFillingSegmenter(truth), SimpleNamespace(shape=truth.shape), truth, axis=AXIS, index=0)


def write_run(folder: Path, truth: np.ndarray) -> tuple[Path, Path, Path]:
    """A 3D clicks run (models ``m`` and ``samri_lite``, first box and point) on one image whose label map
    holds ``truth`` as value 7 (a JHU-like name) and 9 (an area): ``(run, image, label)``."""
    labels = np.zeros(truth.shape, np.int16)
    labels[truth] = 7
    labels[16:20, 16:20, 4:7] = 9
    image, label = folder / "subject.nii.gz", folder / "labels" / "subject.nii.gz"  # matched by file name
    label.parent.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(truth.shape, np.float32) * 100, np.eye(4)), str(image))
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(label))
    run = folder / "run3d"
    run.mkdir()
    rows = [{"model": model, "image": "subject", "structure": name, "label_value": value, "mode": "3d", "axis": AXIS,
             "slice": index, "first": first, "dice_curve": [0.25, 0.5], "seconds_curve": [0.1, 0.1]}
            for model in ("m", "samri_lite") for name, value, index in (("jhu_tube", 7, 5), ("ho_area", 9, 5))
            for first in ("box", "point")]
    (run / "sessions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, image, label


def test_measure_run_replays_the_box_sessions(tmp_path: Path) -> None:
    truth = drifting_tube()
    run, image, label = write_run(tmp_path, truth)
    labels = np.asarray(nib.load(str(label)).dataobj)

    class Segmenter(BoxFillingSegmenter):
        def predict_slice(self, volume, axis, index, prompt):
            assert volume.windowed.shape == truth.shape  # the image, windowed as served
            self.truth = labels == self.value
            return super().predict_slice(volume, axis, index, prompt)

        def propagate(self, volume, axis, seeds, **kw):
            r, c = ((seeds[5].box[:2] + seeds[5].box[2:]) // 2).astype(int)  # the box's centre is the structure
            self.value = int(labels[r, c, 5])
            self.truth = labels == self.value
            return super().propagate(volume, axis, seeds, **kw)

    report = measure_run(run, [image], [label], segmenter=Segmenter(truth), window=None)
    assert report["model"] == "samri_lite" and len(report["sessions"]) == 2  # box sessions of one model
    summary = report["summary"]
    assert summary["n"] == 2 and summary["run_dice_1"] == 0.25 and summary["true_boxes"] == 1.0
    assert set(summary["by_atlas"]) == {"ho", "jhu"}
    assert summary["by_atlas"]["ho"]["extent"] == 1.0  # a box that does not move: bounded, it is exact
    table = markdown(report)
    assert "| all | 2 | 0.250 |" in table and "| jhu | 1 |" in table and "Slicer 3D ROI" in table
    assert summary["by_atlas"]["ho"]["slicer_roi"] == 1.0  # a box-shaped structure: its 3D box is exact
    with pytest.raises(SamriInputError, match="model"):
        measure_run(run, [image], [label], segmenter=Segmenter(truth), model="other", window=None)
    with pytest.raises(SamriInputError, match="image"):
        measure_run(run, [tmp_path / "other.nii.gz"], [label], segmenter=Segmenter(truth), window=None)
    with pytest.raises(SamriInputError, match="label"):
        measure_run(run, [image], [tmp_path / "other.nii.gz"], segmenter=Segmenter(truth), window=None)
