"""Oracles of the clicks protocol (`samri.evaluation.oracle`) on synthetic slices."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.annotator import corrective_click, slice_session
from samri.errors import SamriInputError
from samri.evaluation.metrics import dice
from samri.evaluation.oracle import (
    SliceOracle,
    best_intensity_band,
    inscribed_disk,
    markdown,
    oracle_session,
    replay_run,
)
from samri.inference.prompts import SlicePrompt


def two_areas() -> np.ndarray:
    """A 40x40 label slice: area 101 (left) touching area 102 (right) of one atlas, a tract (5) apart."""
    labels = np.zeros((40, 40), np.int32)
    labels[10:30, 5:20] = 101
    labels[10:30, 20:35] = 102
    labels[33:36, 5:35] = 5
    return labels


def test_inscribed_disk_is_the_largest_disk_inside() -> None:
    square = np.zeros((21, 21), bool)
    square[5:16, 5:16] = True  # 11 x 11, centre (10, 10): 6 pixels to the nearest outside one
    disk = inscribed_disk(square, (10, 10))
    assert disk[10, 10] and disk[10, 5] and disk[10, 15] and not disk[5, 5]
    assert not (disk & ~square).any()
    assert not inscribed_disk(square, (0, 0)).any()  # a point outside the region flips nothing


def test_box_oracle_takes_the_tissue_in_the_box() -> None:
    labels = two_areas()
    truth, family = labels == 101, labels >= 100
    oracle = SliceOracle(truth=truth, family=family, click_rule="region")
    box = np.array([10, 5, 29, 19], float)
    mask, _ = oracle(SlicePrompt(box=box))
    np.testing.assert_array_equal(mask, truth)  # the box holds only this area's tissue
    wide, _ = oracle(SlicePrompt(box=np.array([10, 5, 35, 25], float)))
    assert wide[10:30, 20:26].all() and not wide[33:36].any()  # the touching area is taken, the tract is not


@pytest.mark.parametrize("rule", ["region", "local"])
def test_a_click_fixes_its_whole_region_or_its_disk(rule: str) -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[5:35, 5:12] = 101  # a narrow area beside a wide one of the same tissue
    labels[5:35, 12:35] = 102
    truth = labels == 101
    oracle = SliceOracle(truth=truth, family=labels >= 100, click_rule=rule)
    assert slice_session(oracle, truth, first="box", max_clicks=3)[0] == 1.0  # the tight box: this area only
    mask, _ = oracle(SlicePrompt(box=np.array([5, 5, 34, 34], float)))  # a box over both
    curve = []
    for _ in range(8):
        curve.append(dice(mask, truth))
        click = corrective_click(mask, truth)
        if click is None:
            break
        assert click[1] == 0  # the false positive is the whole error
        mask = oracle.click(mask, click[0])
    assert curve[0] < 0.5
    if rule == "region":
        assert curve[:2] == [curve[0], 1.0]  # one negative click removes the neighbour
    else:
        assert 1.0 not in curve[:3] and all(b > a for a, b in zip(curve, curve[1:]))  # a disk at a time


def test_point_oracle_starts_with_the_inscribed_disk() -> None:
    labels = two_areas()
    curve_local = oracle_session(labels, 101, first="point", click_rule="local", max_clicks=8)
    curve_region = oracle_session(labels, 101, first="point", click_rule="region", max_clicks=8)
    assert curve_local[0] == curve_region[0] < 0.9
    # the disk spans the area's width, so the missed rest falls apart into a few regions: one click each
    assert all(r > loc for r, loc in zip(curve_region[1:4], curve_local[1:4])) and curve_region[3] == 1.0
    assert all(b >= a - 1e-9 for a, b in zip(curve_local, curve_local[1:]))  # a local fix never hurts
    assert curve_local[-1] > curve_local[0]


def test_unknown_click_rule_is_refused() -> None:
    with pytest.raises(SamriInputError, match="click_rule"):
        SliceOracle(truth=np.ones((2, 2), bool), family=np.ones((2, 2), bool), click_rule="magic")


def write_run(folder: Path, labels: np.ndarray, affine: np.ndarray, *, mode: str, index: int,
              curve: list[float]) -> tuple[Path, Path]:
    """A clicks run of model ``m`` on areas 101 and 102 (first box and point, slice ``index`` of axis 2) and
    its label map: ``(run folder, label path)``."""
    label_path = folder / "subject.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), str(label_path))
    run = folder / f"run{mode}"
    run.mkdir()
    rows = [{"model": "m", "image": "subject", "structure": f"ho_area_{v}", "label_value": v, "mode": mode, "axis": 2,
             "slice": index, "first": first, "dice_curve": curve, "seconds_curve": [0.1] * len(curve)}
            for v in (101, 102) for first in ("box", "point")]
    (run / "sessions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, label_path


def test_replay_run_scores_the_run_sessions(tmp_path: Path) -> None:
    volume = np.zeros((40, 40, 3), np.int16)
    volume[:, :, 1] = two_areas()
    run, label_path = write_run(tmp_path, volume, np.eye(4), mode="2d", index=1, curve=[0.5, 0.6, 0.7])
    report = replay_run(run, [label_path])
    assert report["sessions"] == 2 and report["max_clicks"] == 3
    assert set(report["results"]) == {"m", "oracle_local", "oracle_region"}
    assert report["results"]["m"]["clicks:box"]["dice_at"] == [0.5, 0.6, 0.7]
    region = report["results"]["oracle_region"]["clicks:box"]
    assert region["dice_at"][0] == 1.0 and region["by_atlas"]["ho"]["n"] == 2  # tight boxes: one area each
    assert "| box | oracle_region | 1.000 | 1.000 |" in markdown(report)
    with pytest.raises(SamriInputError, match="label"):
        replay_run(run, [tmp_path / "other.nii.gz"])


def test_best_intensity_band_takes_the_interval_that_fits_the_truth() -> None:
    intensity = np.zeros((20, 20))
    intensity[:, 5:10], intensity[:, 10:15], intensity[:, 15:] = 0.3, 0.6, 0.9
    region = np.ones((20, 20), bool)
    visible = np.zeros((20, 20), bool)
    visible[:, 5:10] = True  # the structure is exactly the 0.3 stripe: the band finds it
    assert dice(best_intensity_band(intensity, visible, region), visible) == 1.0
    two = np.zeros((20, 20), bool)
    two[:, 5:15] = True  # two stripes next to each other in intensity: one interval holds both
    assert dice(best_intensity_band(intensity, two, region), two) == 1.0
    half = np.zeros((20, 20), bool)
    half[:10, 10:15] = True  # half of a uniform stripe: no interval can split it, the best takes it whole
    band = best_intensity_band(intensity, half, region)
    assert band[:, 10:15].all() and band.sum() == 100 and dice(band, half) == pytest.approx(2 / 3)
    inside = np.zeros((20, 20), bool)
    inside[:, :12] = True
    assert not (best_intensity_band(intensity, two, inside) & ~inside).any()  # never outside the region
    assert not best_intensity_band(intensity, visible, ~region).any()  # no truth in the region: empty


def test_band_oracle_reads_the_image_inside_the_box() -> None:
    labels = two_areas()
    image = np.where(labels == 101, 0.4, 0.6)  # area 101 darker than its neighbour: visible
    first = SliceOracle(truth=labels == 101, family=labels > 100, click_rule="local", box_answer="band",
                        image=image).first(SlicePrompt(box=np.array([5, 2, 32, 30])))
    assert dice(first, labels == 101) == 1.0
    flat = np.full((40, 40), 0.5)  # no contrast between the areas: the band takes everything in the box
    assert SliceOracle(truth=labels == 101, family=labels > 100, click_rule="local", box_answer="band",
                       image=flat).first(SlicePrompt(box=np.array([5, 2, 32, 30]))).sum() == 28 * 29
    with pytest.raises(SamriInputError, match="image"):
        SliceOracle(truth=labels == 101, family=labels > 100, click_rule="local", box_answer="band")
    with pytest.raises(SamriInputError, match="box_answer"):
        SliceOracle(truth=labels == 101, family=labels > 100, click_rule="local", box_answer="otsu")


def test_replay_run_adds_the_band_oracle_with_the_images(tmp_path: Path) -> None:
    volume = np.zeros((40, 40, 3), np.int16)
    volume[:, :, 1] = two_areas()
    run, label_path = write_run(tmp_path, volume, np.eye(4), mode="2d", index=1, curve=[0.5, 0.6, 0.7])
    image_path = tmp_path / "images" / "subject.nii.gz"
    image_path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.where(volume > 0, 100.0 + volume, 0.0).astype(np.float32), np.eye(4)), image_path)
    report = replay_run(run, [label_path], image_paths=[image_path])
    assert set(report["results"]) == {"m", "oracle_local", "oracle_region", "oracle_band_local", "oracle_band_region"}
    band = report["results"]["oracle_band_local"]
    assert set(band) == {"clicks:box"}  # a point's oracle does not read the image
    assert band["clicks:box"]["n"] == 2 and band["clicks:box"]["dice_at"][0] == 1.0  # each area alone in its box
    with pytest.raises(SamriInputError, match="image"):
        replay_run(run, [label_path], image_paths=[tmp_path / "images" / "other.nii.gz"])


# --- 3D ------------------------------------------------------------------------------------------------
def slanted_areas() -> np.ndarray:
    """A ``(30, 30, 12)`` label map: area 101 slides across the slices (its box differs on each), area 102
    of the same atlas fills the rest of a slab beside it, tract 5 lies apart."""
    labels = np.zeros((30, 30, 12), np.int32)
    labels[5:25, 4:26, 2:10] = 102
    for k in range(2, 10):
        labels[8:18, 4 + k:12 + k, k] = 101
    labels[27:29, 2:28, 2:10] = 5
    return labels


def test_inscribed_ball_uses_the_voxel_size() -> None:
    from samri.evaluation.oracle import inscribed_disk

    slab = np.zeros((21, 21, 11), bool)
    slab[2:19, 2:19, 2:9] = True  # 17 x 17 x 7 voxels around (10, 10, 5)
    iso = inscribed_disk(slab, (10, 10, 5))
    thick = inscribed_disk(slab, (10, 10, 5), spacing=(1.0, 1.0, 3.0))  # 3 mm slices: 21 mm deep along k
    assert not (iso & ~slab).any() and not (thick & ~slab).any()
    assert iso[10, 10, 5] and iso[13, 10, 5] and not iso[16, 10, 5]  # 4 voxels to the nearest outside one
    assert thick[16, 10, 5] and not thick[10, 10, 8]  # radius 9 mm: 8 voxels in-plane, 2 slices along k
    assert not inscribed_disk(slab, (0, 0, 0)).any()


def test_volume_oracle_first_box_follows_each_slices_box() -> None:
    from samri.evaluation.oracle import VolumeOracle

    labels = slanted_areas()
    truth, family = labels == 101, labels >= 100
    oracle = VolumeOracle(truth=truth, family=family, click_rule="region", axis=2, spacing=(1.0, 1.0, 1.0))
    first = oracle.first_box()
    np.testing.assert_array_equal(first, truth)  # the area fills its own box on every slice
    other = VolumeOracle(truth=labels == 102, family=family, click_rule="region", axis=2, spacing=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(other.first_box(), family)  # 102's boxes hold 101 too: a tissue classifier takes it
    assert not other.first_box()[labels == 5].any()  # the tract is other tissue


@pytest.mark.parametrize("rule", ["region", "local"])
def test_3d_oracle_session_clicks(rule: str) -> None:
    from samri.evaluation.oracle import oracle_session_3d

    labels = slanted_areas()
    curve = oracle_session_3d(labels, 102, axis=2, index=5, first="box", click_rule=rule, max_clicks=6,
                              spacing=(1.0, 1.0, 1.0))
    assert len(curve) == 6 and curve[0] < 0.95  # the first box also takes area 101
    assert all(b >= a - 1e-9 for a, b in zip(curve, curve[1:]))  # a perfect edit never hurts
    if rule == "region":
        assert curve[1] == 1.0  # one negative click removes the whole of area 101 (one connected region)
    else:
        assert curve[1] < 1.0 and curve[-1] > curve[0]
    point = oracle_session_3d(labels, 101, axis=2, index=5, first="point", click_rule=rule, max_clicks=4,
                              spacing=(1.0, 1.0, 1.0))
    assert point[0] < 0.5 and point[-1] > point[0]  # a ball in a thin slanted area, then clicks add to it


def test_3d_oracle_on_the_cropped_box_equals_the_whole_volume() -> None:
    """Answers lie inside the structure's box, so the crop changes no Dice."""
    from samri.evaluation.clicks import session_3d
    from samri.evaluation.oracle import VolumeOracle, oracle_session_3d

    labels = np.pad(slanted_areas(), ((6, 3), (2, 7), (4, 1)))
    spacing = (1.0, 0.8, 2.0)
    for first in ("box", "point"):
        cropped = oracle_session_3d(labels, 102, axis=2, index=9, first=first, click_rule="local", max_clicks=4,
                                    spacing=spacing)
        oracle = VolumeOracle(truth=labels == 102, family=labels >= 100, click_rule="local", axis=2, spacing=spacing)
        whole = session_3d(oracle, None, 2, labels == 102, first=first, max_clicks=4, spacing=spacing, index=9)
        np.testing.assert_allclose(cropped, whole.dice)


def test_replay_run_scores_a_3d_run(tmp_path: Path) -> None:
    run, label_path = write_run(tmp_path, slanted_areas(), np.diag([1.0, 1.0, 2.0, 1.0]), mode="3d", index=5,
                                curve=[0.3, 0.4, 0.5])
    report = replay_run(run, [label_path])
    assert report["sessions"] == 2 and report["max_clicks"] == 3
    region = report["results"]["oracle_region"]["clicks:box"]
    assert region["n"] == 2 and region["dice_at"][0] < 1.0 and region["dice_at"][1] == 1.0
