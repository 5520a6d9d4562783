"""`apps/samri/lib/server/params.py`: every malformed /infer field is a 4xx naming the field."""

from __future__ import annotations

import json

import pytest
from fastapi import HTTPException

from apps.samri.lib.server.params import (
    MAX_JSON_DEPTH,
    MAX_PARAMS_BYTES,
    MAX_POINTS,
    check_id,
    check_model,
    check_output,
    parse_params,
    reject_final_save,
)


def status_and_detail(fn, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(HTTPException) as info:
        fn(*args, **kwargs)
    return info.value.status_code, str(info.value.detail)


@pytest.mark.parametrize("text", ["{", "abc", "{} x", "1", "\"s\"", "null", "true", "[1, 2]", "[[\"a\", 1]]",
                                  "1" * 5000, "[" * 50_000 + "]" * 50_000])
def test_params_that_are_not_an_object_are_422(text: str) -> None:
    status, detail = status_and_detail(parse_params, text, model="samri_2d")
    assert status == 422 and detail.startswith("params="), detail


def test_params_object_is_returned() -> None:
    params = {"foreground": [[1, 2, 3]], "label": "Thalamus_L", "model": "samri_2d"}
    assert parse_params(json.dumps(params), model="samri_2d") == params
    assert parse_params("", model="samri_2d") == {} and parse_params(None, model="samri_2d") == {}


def test_deep_nesting_is_422_without_recursion() -> None:
    nested: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        nested = [nested]
    status, detail = status_and_detail(parse_params, json.dumps({"foreground": nested}), model="m")
    assert status == 422 and "nested" in detail


@pytest.mark.parametrize("key", ["image", "file", "session", "device", "_samri_datastore_image"])
def test_server_owned_keys_cannot_be_overridden(key: str) -> None:
    status, detail = status_and_detail(parse_params, json.dumps({key: "/etc/passwd"}), model="m")
    assert status == 422 and detail.startswith(f"params.{key}=")


def test_params_model_must_match_the_path() -> None:
    status, detail = status_and_detail(parse_params, json.dumps({"model": "other"}), model="samri_2d")
    assert status == 422 and "params.model='other'" in detail


def test_limits_are_413() -> None:
    assert status_and_detail(parse_params, " " * (MAX_PARAMS_BYTES + 1), model="m")[0] == 413
    points = json.dumps({"foreground": [[0, 0, 0]] * (MAX_POINTS + 1)})
    status, detail = status_and_detail(parse_params, points, model="m")
    assert status == 413 and detail.startswith("foreground=")


def test_unknown_model_is_404_listing_the_known() -> None:
    assert check_model("samri_2d", ["samri_2d", "samri_3d"]) == "samri_2d"
    for bad in ("SAMRI_2d", " samri_2d", "samri_2d ", ""):
        status, detail = status_and_detail(check_model, bad, ["samri_2d", "samri_3d"])
        assert status == 404 and "samri_3d" in detail


def test_output_values() -> None:
    assert check_output(None, dicomweb=False) is None and check_output("all", dicomweb=False) == "all"
    assert check_output("dicom_seg", dicomweb=True) == "dicom_seg"
    assert status_and_detail(check_output, "dicom_seg", dicomweb=False)[0] == 422
    assert status_and_detail(check_output, "png", dicomweb=False)[0] == 422


@pytest.mark.parametrize("value", ["../x", "/etc/passwd", "a/b", "a\\b", "..", ".hidden", "x\x00", "%2e%2e",
                                   "a" * 300, ""])
def test_ids_that_are_paths_are_422(value: str) -> None:
    status, detail = status_and_detail(check_id, "image", value)
    assert status == 422 and detail.startswith("image=")


def test_plain_ids_pass() -> None:
    for value in ("colin27_t1", "mni152_t1", "1.2.826.0.1.3680043.8.498.1", "study-01"):
        assert check_id("image", value) == value


def test_infer_never_saves_over_the_final_label() -> None:
    status, detail = status_and_detail(reject_final_save, {"save_label": True, "label_tag": "final"})
    assert status == 422 and detail.startswith("label_tag='final'")
    reject_final_save({"save_label": True, "label_tag": "original"})
    reject_final_save({"label_tag": "final"})
