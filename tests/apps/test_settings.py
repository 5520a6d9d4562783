"""The app's ``--conf`` settings and label names (`lib.configs.settings`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.samri.lib.configs.settings import DEFAULT_LABEL, AppSettings, load_labels, parse_bool
from samri.errors import SamriInputError


def test_settings_defaults(tmp_path: Path) -> None:
    s = AppSettings.from_conf({}, app_dir=tmp_path / "app", studies=str(tmp_path))
    assert s.model == "samri_lite" and s.precompute is True and s.decoder is None
    assert s.cache_dir == tmp_path / "app" / "model" / "embedding_cache"
    assert s.labels == (DEFAULT_LABEL,)
    assert (s.backend, s.precision) == ("auto", "auto")  # the registry's (configs/models.yaml)
    assert s.backend_cache_dir == tmp_path / "app" / "model" / "backend_cache"
    fast = AppSettings.from_conf({"backend": "OpenVINO", "precision": "bf16", "backend_cache_dir": str(tmp_path / "x")},
                                 app_dir=tmp_path, studies=str(tmp_path))
    assert (fast.backend, fast.precision, fast.backend_cache_dir) == ("openvino", "bf16", tmp_path / "x")
    assert fast.summary()["backend"] == "openvino"


def test_settings_parse_keys(tmp_path: Path) -> None:
    decoder = tmp_path / "not_yet.pt"
    s = AppSettings.from_conf({"precompute": "False", "cache_dir": "none", "decoder": str(decoder),
                               "cache_memory_mb": "64"}, app_dir=tmp_path, studies=str(tmp_path))
    assert s.precompute is False and s.cache_dir is None and s.decoder == decoder
    assert s.cache_memory_bytes == 64 << 20


@pytest.mark.parametrize("conf, field", [
    ({"model": "nope"}, "model"),
    ({"checkpoint": "/no/such/file.pth"}, "checkpoint"),
    ({"model": "sam_vit_b"}, "checkpoint"),
    ({"precompute": "maybe"}, "precompute"),
    ({"cache_memory_mb": "lots"}, "cache_memory_mb"),
    ({"labels": "/no/such/labels.json"}, "labels"),
    ({"backend": "tensorrt"}, "backend"),
    ({"precision": "int3"}, "precision"),
    ({"backend": "torch", "precision": "bf16"}, "precision"),
    ({"backend": "openvino", "device": "cuda"}, "backend"),
])
def test_settings_errors_name_the_key(tmp_path: Path, conf: dict, field: str) -> None:
    with pytest.raises(SamriInputError) as info:
        AppSettings.from_conf(conf, app_dir=tmp_path, studies=str(tmp_path))
    assert info.value.field == field


def test_labels_from_studies_and_files(tmp_path: Path) -> None:
    (tmp_path / "label_names.json").write_text(json.dumps({"b": {"wm": 3, "gm": 2}, "a": {"gm": 2, "csf": 1}}))
    assert load_labels(None, str(tmp_path)) == ("gm", "wm", "csf")
    listed = tmp_path / "list.yaml"
    listed.write_text("[liver, spleen, background, liver]\n")
    assert load_labels(str(listed), "") == ("liver", "spleen")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"spleen": 2, "liver": 1}))
    assert load_labels(str(mapping), "") == ("liver", "spleen")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"liver": "one"}))
    with pytest.raises(SamriInputError, match="liver"):
        load_labels(str(bad), "")
    assert load_labels(None, "http://dicomweb.example/") == (DEFAULT_LABEL,)


def test_parse_bool() -> None:
    assert parse_bool("Yes", "x") is True and parse_bool(False, "x") is False
    with pytest.raises(SamriInputError):
        parse_bool(1, "x")
