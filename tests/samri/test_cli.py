"""LiteMedSAM on real MRI through the library and the ``samri`` CLI (slow: real weights)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.cli import main
from samri.config import load_registry
from samri.inference.embeddings import EmbeddingCache
from samri.inference.prompts import SlicePrompt
from samri.inference.segmenter import Segmenter, mask_box
from samri.labels import load_label_names, side_less
from samri.model.builders import load_model
from samri.sample_data import available_sources, write_sample_studies
from samri.volume import load_image, prepare_volume

pytestmark = pytest.mark.slow


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    write_sample_studies(out)
    return out


@pytest.fixture(scope="module")
def structure(studies):
    """(image path, ground truth (X, Y, Z) bool) of a deep grey-matter structure, else MNI152 WM."""
    names = load_label_names(studies)
    if "colin27" in available_sources():
        study, label = "colin27_t1", "Putamen_L"
    else:
        study, label = "mni152_t1", "white_matter"
    gt = np.asarray(nib.load(str(studies / "labels" / "final" / f"{study}.nii.gz")).dataobj) == names[study][label]
    return studies / f"{study}.nii.gz", gt


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(load_model(load_registry().spec("litemedsam")), EmbeddingCache())


def test_box_on_axial_slice_of_real_structure(structure, segmenter):
    path, gt = structure
    volume = prepare_volume(load_image(path))
    ks = np.flatnonzero(gt.any(axis=(0, 1)))
    k = int(ks[len(ks) // 2])
    result = segmenter.predict_slice(volume, 2, k, SlicePrompt(box=mask_box(gt[:, :, k])))
    assert result.mask.shape == gt[:, :, k].shape
    assert dice(result.mask, gt[:, :, k]) >= 0.6
    # the second click on the same slice is served from the cache
    encoded = segmenter.cache.stats["encoded"]
    segmenter.predict_slice(volume, 2, k, SlicePrompt(box=mask_box(gt[:, :, k])))
    assert segmenter.cache.stats["encoded"] == encoded


def test_3d_propagation_covers_both_sides(structure, segmenter):
    path, gt = structure
    volume = prepare_volume(load_image(path))
    ks = np.flatnonzero(gt.any(axis=(0, 1)))
    k = int(ks[len(ks) // 2])
    result = segmenter.propagate(volume, 2, {k: SlicePrompt(box=mask_box(gt[:, :, k]))}, bounds=(k - 5, k + 5))
    assert min(result.slices) <= k - 3 and max(result.slices) >= k + 3
    assert result.mask.shape == gt.shape
    for i in (k - 3, k + 3):  # propagated slices overlap the real structure
        assert dice(result.mask[:, :, i], gt[:, :, i]) > 0.3


def test_cli_segment_writes_label_on_image_grid(structure, tmp_path, monkeypatch, capsys):
    path, gt = structure
    monkeypatch.setenv("SAMRI_CACHE_DIR", str(tmp_path / "cache"))
    ks = np.flatnonzero(gt.any(axis=(0, 1)))
    k = int(ks[len(ks) // 2])
    r0, c0, r1, c1 = (int(v) for v in mask_box(gt[:, :, k]))
    params = tmp_path / "request.json"
    params.write_text(json.dumps({"roi": [r1, r0, c0, c1, k, k]}))  # swapped corners as Slicer may send
    out = tmp_path / "out.nii.gz"
    assert main(["segment", str(path), "--params", str(params), "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["slices"] == [k]
    img, lab = nib.load(str(path)), nib.load(str(out))
    assert lab.shape == img.shape and np.allclose(lab.affine, img.affine)
    mask = np.asarray(lab.dataobj) > 0
    assert mask[:, :, k].any() and not np.delete(mask, k, axis=2).any()
    assert dice(mask[:, :, k], gt[:, :, k]) >= 0.6
    assert list(tmp_path.glob("*.tmp")) == [] and list((tmp_path / "cache").rglob("*.npy"))


@pytest.mark.parametrize("params, field", [
    ({"foreground": [[1000, 1, 1]]}, "foreground[0]"),
    ({}, "foreground"),
    ({"roi": [1, 2, 3]}, "roi"),
    ({"foreground": [[10, 10, 10]], "slice": 100000}, "slice"),
    ({"foreground": [["a", 1, 1]]}, "foreground[0]"),
])
def test_cli_bad_request_exits_2_naming_field(structure, tmp_path, capsys, params, field):
    path, _ = structure
    out = tmp_path / "out.nii.gz"
    assert main(["segment", str(path), "--params", json.dumps(params), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{field}=" in err
    assert not out.exists()


def test_cli_bad_images_and_checkpoints(tmp_path, capsys):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(flat))
    const = tmp_path / "const.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 3.0, np.float32), np.eye(4)), str(const))
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)), str(nan))
    req = json.dumps({"foreground": [[1, 1, 1]]})
    for image, needle in ((flat, "3D volume"), (const, "constant intensity"), (nan, "no finite"),
                          (tmp_path / "missing.nii.gz", "file not found")):
        assert main(["segment", str(image), "--params", req, "-o", str(tmp_path / "o.nii.gz")]) == 2
        err = capsys.readouterr().err
        assert "image=" in err and needle in err
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.eye(4)), str(good))
    assert main(["segment", str(good), "--params", req, "--model", "sam_vit_b", "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert "checkpoint=" in capsys.readouterr().err
    assert main(["segment", str(good), "--params", req, "--model", "litemedsam", "--checkpoint",
                 str(tmp_path / "nope.pth"), "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert "nope.pth" in capsys.readouterr().err
    assert main(["segment", str(good), "--params", req, "--model", "nosuch", "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert "model='nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_cli_sample_data_and_models(tmp_path, capsys):
    assert main(["sample-data", str(tmp_path / "s"), "--sources", "mni152"]) == 0
    assert (tmp_path / "s" / "mni152_t1.nii.gz").is_file()
    assert main(["sample-data", str(tmp_path / "s"), "--sources", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "litemedsam" in listing and "samri_vit_b" in listing


def test_cli_precompute_fills_cache(tmp_path, capsys):
    rng = np.random.default_rng(1)
    image = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((20, 24, 3)).astype(np.float32), np.eye(4)), str(image))
    assert main(["precompute", str(image), "--axis", "2", "--cache-dir", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 3


def _makefile_eval_labels() -> list[str]:
    """The test split's structures, as `make evaluate` names them (the Makefile's EVAL_LABELS)."""
    makefile = Path(__file__).resolve().parents[2] / "Makefile"
    line = next(row for row in makefile.read_text().splitlines() if row.startswith("EVAL_LABELS ?= "))
    return line.split("?=", 1)[1].strip().split(",")


def test_shipped_samri_lite_decoder_loads_on_litemedsam():
    model = load_model(load_registry().spec("samri_lite"))
    assert model.decoder_info["path"].endswith("samri_lite_decoder.pt")
    assert model.spec.base_name == "litemedsam" and model.point_prompts == "single"
    # stage 5 of the recipe: stage 4 again with finer white-matter parcels and tract-like tubes, from stage
    # 4's decoder, chosen by the clicks score on the AAL validation structures and the validation cohort's
    assert model.decoder_info["recipe_config"] == "configs/training_default_decoder_tracts.yaml"
    assert model.decoder_info["init_decoder"]["file"] == "stage4_decoder.pt"
    assert model.decoder_info["metrics"]["val"]["score"] > model.decoder_info["metrics"]["baseline_val"]["score"]
    data = model.decoder_info["training_data"]
    # trained on the two recipe sources only (and parcels and tubes of Colin27's own tissue); validated on
    # AAL structures held out of training and on the validation cohort, never on the test split's structures
    assert set(data["train_studies"]) <= {"colin27_t1", "colin27_t1~bias0.3", "colin27_t1~pseudo_structures",
                                          "colin27_t1~pseudo_fine", "colin27_t1~pseudo_tubes", "mni152_t1"}
    assert data["val_studies"] == ["cohort_s00_t1~validation", "cohort_s01_t2like~validation",
                                   "colin27_t1~heldout_structures"]
    test_structures = {side_less(n) for n in _makefile_eval_labels()}
    assert model.decoder_info["validation"]["cohort_structures"]
    assert not {side_less(n) for n in model.decoder_info["validation"]["cohort_structures"]} & test_structures
    plain = load_model(load_registry().spec("litemedsam"))
    assert model.cache_key() == plain.cache_key()  # same encoder: embeddings are shared


def test_default_decoder_passes_the_validation_cohort_to_the_recipe(monkeypatch, tmp_path):
    import samri.train.recipe as recipe

    seen = {}
    monkeypatch.setattr(recipe, "train_default_decoder", lambda **kwargs: seen.update(kwargs) or {"best": {}})
    assert main(["default-decoder", "--out", str(tmp_path / "d.pt"), "--work-dir", str(tmp_path),
                 "--validation-cohort", "data/val-split", "--validation-labels", "jhu_a_l,ho_b_r"]) == 0
    assert str(seen["validation_cohort"]) == "data/val-split"
    assert seen["validation_labels"] == ["jhu_a_l", "ho_b_r"]
