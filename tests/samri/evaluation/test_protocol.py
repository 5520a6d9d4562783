"""The evaluation protocol (samri.evaluation.protocol) on synthetic volumes with known answers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.errors import SamriInputError
from samri.evaluation.protocol import (
    EvalConfig,
    SegmenterRunner,
    enumerate_pairs,
    evaluate,
    load_case,
)
from samri.inference.embeddings import EmbeddingCache
from samri.inference.segmenter import Segmenter
from tests.helpers import (
    CASE_AFFINE,
    OracleRunner,
    assert_tables_well_formed,
    ellipsoid_mask,
    synthetic_array,
    synthetic_case,
    synthetic_label,
)

AFFINE = CASE_AFFINE  # anisotropic voxels: 2 x 0.5 x 1 mm


def read_pairs(out: Path) -> list[dict]:
    with open(out / "pairs.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_perfect_predictor_scores_dice_1_hd95_0_and_writes_outputs(tmp_path):
    case = synthetic_case()
    config = EvalConfig(prompts=("box", "point", "box+point"))
    summary = evaluate([case], {"oracle": OracleRunner(case.label)}, config, tmp_path, progress=False)
    n_pairs = len(enumerate_pairs([case], config))
    for prompt in config.prompts:
        s = summary["results"]["oracle"][prompt]
        assert s["n"] == n_pairs and s["mean_dice"] == 1.0 and s["median_dice"] == 1.0
        assert s["hd95_mm"] == 0.0 and s["nsd"] == 1.0
        assert set(s["buckets"]) == {"small", "medium", "large"} == set(s["buckets_fixed"])
        assert sum(b["n"] for b in s["buckets"].values()) == n_pairs
        assert set(s["by_structure"]) == {"big", "small", "sheet"}
        assert s["by_image"]["syn"]["n"] == n_pairs
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["results"]["oracle"]["box"]["mean_dice"] == 1.0 and on_disk["complete"]
    assert len(read_pairs(tmp_path)) == n_pairs * 3
    report = (tmp_path / "report.md").read_text()
    assert "| oracle | box |" in report
    assert_tables_well_formed(report)
    for name in ["dice_boxplot.png", "overlays_oracle.png"]:
        assert f"]({name})" in report
        assert 0 < (tmp_path / name).stat().st_size < 300_000
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "complete"


def test_shifted_prediction_scores_expected_hd95_in_mm(tmp_path):
    case = synthetic_case()
    case.structures = {"sheet": 3}  # one voxel thick along axis 0 (2 mm voxels)
    runner = OracleRunner(case.label, shift=(2, 0))  # 2 slice rows = 2 voxels along axis 0
    summary = evaluate([case], {"shifted": runner}, EvalConfig(prompts=("box",), axis=2), tmp_path, progress=False)
    s = summary["results"]["shifted"]["box"]
    assert s["n"] == 10 and s["mean_dice"] == 0.0
    assert s["hd95_mm"] == pytest.approx(4.0) and s["nsd"] == 0.0
    # slicing along axis 1 puts axis 0 (2 mm) on the rows: the sheet is a 10-pixel line there
    runner = OracleRunner(case.label, shift=(3, 0))
    config = EvalConfig(prompts=("box",), axis=1, min_size=5)
    summary = evaluate([case], {"shifted": runner}, config, tmp_path, progress=False)
    assert summary["results"]["shifted"]["box"]["n"] == 36
    assert summary["results"]["shifted"]["box"]["hd95_mm"] == pytest.approx(6.0)


def test_3d_mode_prompts_middle_slice_and_scores_the_volume(tmp_path):
    case = synthetic_case()
    runner = OracleRunner(case.label)
    summary = evaluate([case], {"oracle": runner}, EvalConfig(mode="3d", prompts=("box",)), tmp_path, progress=False)
    s = summary["results"]["oracle"]["box"]
    assert s["n"] == 3 and s["mean_dice"] == 1.0 and s["hd95_mm"] == 0.0
    rows = {r["structure"]: r for r in read_pairs(tmp_path)}
    assert int(rows["big"]["slice"]) == 15 and rows["big"]["mode"] == "3d"
    assert int(rows["big"]["gt_px"]) == int(ellipsoid_mask().sum())
    assert float(rows["big"]["gt_size_mm"]) == pytest.approx(ellipsoid_mask().sum() * 1.0)  # 2*0.5*1 mm3
    assert set(range(6, 25)) <= set(runner.prefetched)  # extent of the big ellipsoid, +-2


def test_models_side_by_side_see_identical_pairs_and_prompts(tmp_path):
    case = synthetic_case()
    a, b = OracleRunner(case.label), OracleRunner(case.label, shift=(1, 0))
    config = EvalConfig(jitter=0.04, seed=3, variants=("noise",))
    summary = evaluate([case], {"a": a, "b": b}, config, tmp_path, progress=False)
    assert a.prompts == b.prompts and len(a.prompts) == 2 * 3 * summary["n_pairs"]  # original + variant
    assert summary["results"]["a"]["box+point"]["mean_dice"] == 1.0 > summary["results"]["b"]["box+point"]["mean_dice"]
    assert summary["variants"]["noise"]["a"]["box"]["n"] == summary["results"]["a"]["box"]["n"]
    assert (tmp_path / "variants.png").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "| a | box+point | 1.000" in report and "noise" in report
    assert_tables_well_formed(report)


def test_enumerate_pairs_min_size_step_max_and_buckets():
    case = synthetic_case()
    pairs = enumerate_pairs([case], EvalConfig())
    assert all(p.size_px >= 30 for p in pairs)
    counts = {b: sum(p.bucket_samri == b for p in pairs) for b in ("small", "medium", "large")}
    assert max(counts.values()) - min(counts.values()) <= 2
    assert all(p.bucket_fixed in ("small", "medium", "large") for p in pairs)
    assert all(p.slice % 4 == 0 for p in enumerate_pairs([case], EvalConfig(slice_step=4)))
    capped = enumerate_pairs([case], EvalConfig(max_pairs=2))
    assert max(sum(p.structure == s for p in capped) for s in ("big", "small", "sheet")) == 2
    full = {s: [p.slice for p in pairs if p.structure == s] for s in ("big", "small", "sheet")}
    for p in enumerate_pairs([case], EvalConfig(max_pairs=1)):  # one slice: the middle of the extent
        assert p.slice == full[p.structure][len(full[p.structure]) // 2]
    assert not enumerate_pairs([case], EvalConfig(min_size=10_000))


def test_interrupted_run_leaves_no_summary_and_resumes(tmp_path):
    case = synthetic_case()
    config = EvalConfig(prompts=("box", "point"))
    (tmp_path / "summary.json").write_text('{"stale": true}')
    with pytest.raises(KeyboardInterrupt):
        evaluate([case], {"oracle": OracleRunner(case.label, fail_after=5)}, config, tmp_path, progress=False)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "report.md").exists()
    assert len(read_pairs(tmp_path)) == 5
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    with open(tmp_path / "pairs.csv", "a") as f:
        f.write("oracle,syn,,big,1,2d")  # a line cut short by the interruption
    with pytest.raises(SamriInputError) as err:
        evaluate([case], {"oracle": OracleRunner(case.label)}, EvalConfig(), tmp_path, resume=True, progress=False)
    assert err.value.field == "resume"
    runner = OracleRunner(case.label)
    summary = evaluate([case], {"oracle": runner}, config, tmp_path, resume=True, progress=False)
    total = 2 * summary["n_pairs"]
    assert len(runner.prompts) == total - 5
    assert len(read_pairs(tmp_path)) == total and summary["results"]["oracle"]["box"]["mean_dice"] == 1.0


def test_tiny_sam_end_to_end(tiny_model, tmp_path):
    case = synthetic_case()
    runner = SegmenterRunner(Segmenter(tiny_model, EmbeddingCache()), progress=False)
    config = EvalConfig(prompts=("box", "point"), slice_step=6, mode="2d")
    summary = evaluate([case], {"tiny": runner}, config, tmp_path, progress=False)
    s = summary["results"]["tiny"]["box"]
    assert s["n"] == summary["n_pairs"] > 0 and 0.0 <= s["mean_dice"] <= 1.0
    rows = read_pairs(tmp_path)
    assert {r["prompt"] for r in rows} == {"box", "point"}


def _write(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_load_case_checks_grids_and_names(tmp_path):
    image = _write(tmp_path / "img.nii.gz", synthetic_array(), AFFINE)
    label = _write(tmp_path / "lab.nii.gz", synthetic_label().astype(np.uint8), AFFINE)
    (tmp_path / "label_names.json").write_text(json.dumps({"img": {"big": 1, "small": 2, "sheet": 3}}))
    case = load_case(image, label)
    assert case.name == "img" and case.structures == {"big": 1, "small": 2, "sheet": 3}
    assert case.image.spacing == (2.0, 0.5, 1.0)
    assert load_case(image, label, wanted=["small", "3"]).structures == {"small": 2, "sheet": 3}
    assert load_case(image, label, names={}).structures == {"label_1": 1, "label_2": 2, "label_3": 3}
    cases = {
        "shape": _write(tmp_path / "s.nii.gz", synthetic_label()[:-1].astype(np.uint8), AFFINE),
        "affine": _write(tmp_path / "a.nii.gz", synthetic_label().astype(np.uint8), np.diag([1.0, 0.5, 1.0, 1.0])),
        "empty": _write(tmp_path / "e.nii.gz", np.zeros(synthetic_label().shape, np.uint8), AFFINE),
    }
    for what, path in cases.items():
        with pytest.raises(SamriInputError) as err:
            load_case(image, path)
        assert err.value.field.startswith("label"), what


def test_datastore_names_apply_only_to_the_image_own_label(tmp_path):
    """An atlas on a datastore image (Brodmann areas on Colin27) must not take the datastore's AAL names."""
    (tmp_path / "labels" / "final").mkdir(parents=True)
    (tmp_path / "atlas").mkdir()
    image = _write(tmp_path / "img.nii.gz", synthetic_array(), AFFINE)
    own = _write(tmp_path / "labels" / "final" / "img.nii.gz", synthetic_label().astype(np.uint8), AFFINE)
    atlas = _write(tmp_path / "atlas" / "areas.nii.gz", synthetic_label().astype(np.uint8), AFFINE)
    (tmp_path / "label_names.json").write_text(json.dumps({"img": {"big": 1, "small": 2, "sheet": 3}}))
    assert load_case(image, own).structures == {"big": 1, "small": 2, "sheet": 3}
    assert load_case(image, atlas).structures == {"label_1": 1, "label_2": 2, "label_3": 3}
    (tmp_path / "atlas" / "label_names.json").write_text(json.dumps({"img": {"area_a": 1, "area_b": 2}}))
    assert load_case(image, atlas).structures == {"area_a": 1, "area_b": 2, "label_3": 3}


@pytest.mark.parametrize("kwargs, field", [
    ({"prompts": ()}, "prompts"), ({"prompts": ("box", "scribble")}, "prompts"), ({"mode": "4d"}, "mode"),
    ({"axis": 3}, "axis"), ({"jitter": 0.9}, "jitter"), ({"slice_step": 0}, "slice-step"),
    ({"max_pairs": 0}, "max-pairs"), ({"variants": ("blur",)}, "variant")])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(SamriInputError) as err:
        EvalConfig(**kwargs).validate()
    assert err.value.field == field


def test_evaluate_refuses_no_models_and_unknown_structures(tmp_path):
    case = synthetic_case()
    with pytest.raises(SamriInputError) as err:
        evaluate([case], {}, EvalConfig(), tmp_path / "a", progress=False)
    assert err.value.field == "model"
    with pytest.raises(SamriInputError) as err:
        evaluate([case], {"o": OracleRunner(case.label)}, EvalConfig(labels=("big", "nope")), tmp_path / "b",
                 progress=False)
    assert err.value.field == "labels"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
