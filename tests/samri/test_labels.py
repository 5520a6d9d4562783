"""samri.labels: label_names.json read/write/validate, and MONAI Label label_info parsing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from samri.errors import SamriInputError
from samri.labels import (
    LABEL_NAMES_FILE,
    check_label_info,
    check_label_names,
    label_info_entries,
    label_names_from_info,
    label_value,
    load_label_names,
    write_label_names,
)


# --- label_names.json ---------------------------------------------------------------------------
def test_load_label_names_absent(tmp_path: Path) -> None:
    assert load_label_names(tmp_path) == {}


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    names = {"b_study": {"white_matter": 3, "csf": 1}, "a_study": {"x": 2.0}}
    path = write_label_names(tmp_path, names)
    assert path == tmp_path / LABEL_NAMES_FILE
    assert list(json.loads(path.read_text())) == ["a_study", "b_study"]  # studies sorted
    assert path.read_text().endswith("}\n")
    loaded = load_label_names(tmp_path)
    assert loaded == {"a_study": {"x": 2}, "b_study": {"white_matter": 3, "csf": 1}}
    assert list(loaded["b_study"]) == ["white_matter", "csf"]  # names keep their order
    assert [p.name for p in tmp_path.iterdir()] == [LABEL_NAMES_FILE]  # no temp file left


@pytest.mark.parametrize("content, field", [
    ("{", LABEL_NAMES_FILE),
    ("[1, 2]", LABEL_NAMES_FILE),
    ('{"s1": [1]}', "label_names.json['s1']"),
    ('{"s1": {"a": "one"}}', "label_names.json['s1']['a']"),
    ('{"s1": {"a": -1}}', "label_names.json['s1']['a']"),
    ('{"s1": {"a": 1.5}}', "label_names.json['s1']['a']"),
    ('{"s1": {"": 1}}', "label_names.json['s1']['']"),
])
def test_malformed_file_names_the_entry(tmp_path: Path, content: str, field: str) -> None:
    (tmp_path / LABEL_NAMES_FILE).write_text(content)
    with pytest.raises(SamriInputError) as err:
        load_label_names(tmp_path)
    assert err.value.field == field
    assert load_label_names(tmp_path, strict=False) == {}  # lenient callers: logged, ignored


def test_lenient_reader_ignores_urls_and_missing_folders(tmp_path: Path) -> None:
    assert load_label_names("http://orthanc:8042/dicom-web", strict=False) == {}
    assert load_label_names("", strict=False) == {}
    assert load_label_names(tmp_path / "nope", strict=False) == {}
    write_label_names(tmp_path, {"s": {"a": 1}})
    assert load_label_names(str(tmp_path), strict=False) == {"s": {"a": 1}}


def test_write_validates(tmp_path: Path) -> None:
    with pytest.raises(SamriInputError, match=r"label_names\.json\['s'\]\['a'\]"):
        write_label_names(tmp_path, {"s": {"a": True}})
    assert not (tmp_path / LABEL_NAMES_FILE).exists()


def test_label_value_and_names() -> None:
    assert label_value(3.0, "v") == 3
    for bad in (True, -1, 1.5, float("nan"), "1", None):
        with pytest.raises(SamriInputError, match="non-negative integer"):
            label_value(bad, "v")
    assert check_label_names({"a": 1, "background": 0}) == {"a": 1, "background": 0}
    with pytest.raises(SamriInputError, match="label_names"):
        check_label_names(["a"])


# --- label_info -----------------------------------------------------------------------------------
def test_label_names_from_slicer_label_info() -> None:
    info = {"label_info": [{"name": "background", "idx": 0}, {"name": "slab", "idx": 1, "color": [1, 0, 0]},
                           {"name": "blob", "idx": 2}], "ts": 1, "name": "s0.nii.gz"}
    assert label_names_from_info(info) == {"slab": 1, "blob": 2}
    assert label_names_from_info({"label_names": {"a": 3}}) == {"a": 3}
    assert label_names_from_info({"label_info": [{"name": "a", "value": 4}]}) == {"a": 4}
    assert label_names_from_info({"name": "s0.nii.gz", "ts": 3}) is None
    assert label_names_from_info(None) is None
    for bad, field in (({"label_info": [{"name": "a", "idx": 1}, {"name": "b", "idx": 1}]}, "label_info[1].idx"),
                       ({"label_info": [{"name": "a", "idx": "x"}]}, "label_info[0].idx"),
                       ({"label_info": [{"name": "", "idx": 1}]}, "label_info[0].name"),
                       ({"label_info": "a"}, "label_info")):
        with pytest.raises(SamriInputError) as info_err:
            label_names_from_info(bad)
        assert info_err.value.field == field


def test_check_label_info_of_an_upload() -> None:
    info = {"label_info": [{"name": "background", "idx": 0}, {"name": "blob", "idx": 1}, {"name": "x", "value": 2}]}
    assert check_label_info(info) == ({0, 1, 2}, {"blob": 1, "x": 2})
    assert check_label_info({"label_info": []}) == (set(), {})
    assert check_label_info({"user": "a"}) is None and check_label_info(None) is None
    for bad, field in (({"label_info": ({"name": "a", "idx": 1},)}, "label_info"),  # a list is required
                       ({"label_info": [{"idx": 1}]}, "label_info[0].name"),
                       ({"label_info": [3]}, "label_info[0]"),
                       ({"label_info": [{"name": "a", "idx": True}]}, "label_info[0].idx"),
                       ({"label_info": [{"name": "a", "idx": 1}, {"name": "a", "idx": 2}]}, "label_info[1].name")):
        with pytest.raises(SamriInputError) as err:
            check_label_info(bad)
        assert err.value.field == field


def test_label_info_entries_round_trip() -> None:
    names = {"blob": 1, "slab": 2}
    entries = label_info_entries(names)
    assert entries == [{"name": "blob", "idx": 1}, {"name": "slab", "idx": 2}]
    assert label_names_from_info({"label_info": entries}) == names


def test_import_is_light() -> None:
    code = "import samri.labels, sys; print(sorted(m for m in ('numpy', 'torch', 'nibabel') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_datastore_label_names_read_the_stored_label_info(tmp_path: Path) -> None:
    """A local MONAI Label datastore's ``label_info`` names the values, as the app's trainer reads them;
    `find_studies` (offline ``samri train``) falls back to them when ``label_names.json`` has none."""
    import nibabel as nib
    import numpy as np

    from samri.labels import datastore_label_names
    from samri.train.stage1 import find_studies

    assert datastore_label_names(tmp_path) == {}
    objects = {"a": {"labels": {"final": {"info": {"label_info": [{"name": "liver", "idx": 1},
                                                                   {"name": "background", "idx": 0}]}}}},
               "b": {"labels": {"final": {"info": {"label_info": "oops"}}}},
               "c": {"labels": {"original": {"info": {"label_info": [{"name": "x", "idx": 2}]}}}}}
    (tmp_path / "datastore_v2.json").write_text(json.dumps({"objects": objects}))
    assert datastore_label_names(tmp_path) == {"a": {"liver": 1}}
    assert datastore_label_names(tmp_path, tag="original") == {"c": {"x": 2}}
    for image_id in ("a", "b"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / f"{image_id}.nii.gz")
        (tmp_path / "labels" / "final").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)),
                 tmp_path / "labels" / "final" / f"{image_id}.nii.gz")
    assert {s.study_id: s.label_names for s in find_studies(tmp_path)} == {"a": {"liver": 1}, "b": {}}
    (tmp_path / "label_names.json").write_text(json.dumps({"a": {"organ": 1}}))  # label_names.json wins
    assert find_studies(tmp_path)[0].label_names == {"organ": 1}
    (tmp_path / "datastore_v2.json").write_text("not json")
    assert datastore_label_names(tmp_path) == {}
