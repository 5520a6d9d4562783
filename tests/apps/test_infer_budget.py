"""The ``samri_3d`` budget and the served decoder version in the infer answer (in-process, tiny model).

The tiny studies are ``(40, 36, 8)``: a 3-slice budget is smaller than what propagation would do.
"""

from __future__ import annotations

from pathlib import Path

import nrrd
import pytest

from tests.apps.helpers import in_process_apps
from tests.helpers import write_tiny_studies

IMAGE = "tiny_a"
POINT = [20, 18, 4]


@pytest.fixture()
def make_app(tmp_path: Path, tiny_registry: Path, monkeypatch: pytest.MonkeyPatch):
    with in_process_apps(tmp_path, write_tiny_studies(tmp_path / "studies"), monkeypatch) as make:
        yield make


def infer(app, model: str, **params):
    request = {"model": model, "image": IMAGE, "foreground": [POINT], "result_extension": ".nrrd", **params}
    result = app.infer(request)
    mask, _ = nrrd.read(result["file"])
    Path(result["file"]).unlink()
    return result["params"], mask


def test_every_answer_names_its_decoder_version(make_app) -> None:
    app = make_app()
    for model in ("samri_2d", "samri_3d"):
        meta, _ = infer(app, model)
        assert meta["samri"]["decoder_version"] == "base"  # nothing published: the model's own decoder
    assert app.runtime.status()["model"]["decoder_version"] == "base"


def test_slice_budget_from_conf_marks_the_answer_partial(make_app) -> None:
    # the tiny model's random weights: tests/conftest.py starts every test from one torch RNG state
    app = make_app(max_slices_3d="3", max_seconds_3d="600")
    assert app.runtime.settings.max_slices_3d == 3 and app.runtime.settings.max_seconds_3d == 600.0
    # a 3D request predicting at most 3 slices, whatever the random decoder does
    from samri.inference.segmenter import PropagationSettings

    segmenter = app.runtime.segmenter()
    segmenter.propagation = PropagationSettings(min_area=0, min_iou=-1.0, min_relative_iou=0.0, max_growth=1e9,
                                                max_seed_growth=0.0, max_reach=0.0, max_reach_points=0.0,
                                                min_overlap=0.0)
    meta, mask = infer(app, "samri_3d", roi=[0, 39, 0, 35, 0, 7])
    assert meta["samri"]["slices"] == [3, 4, 5]  # the clicked slice and one each way
    assert meta["samri"]["partial"]["reason"] == "max_slices" and meta["samri"]["partial"]["slices_done"] == 3
    assert mask.shape == (40, 36, 8) and not mask[:, :, [0, 1, 2, 6, 7]].any()
    too_many = [[20, 18, k] for k in range(4)]
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as err:
        infer(app, "samri_3d", foreground=too_many)
    assert err.value.status_code == 422 and "foreground=" in err.value.detail and "3 slices" in err.value.detail
    meta, _ = infer(app, "samri_2d")
    assert meta["samri"]["partial"] is None  # 2D has no budget


def test_should_stop_in_the_request_cancels(make_app) -> None:
    from apps.samri.lib.infers.samri_infer import SHOULD_STOP_KEY

    app = make_app()
    meta, mask = infer(app, "samri_3d", **{SHOULD_STOP_KEY: lambda: True})
    assert meta["samri"]["partial"]["reason"] == "cancelled" and meta["samri"]["slices"] == []
    assert not mask.any()


@pytest.mark.parametrize("conf, field", [({"max_slices_3d": "0"}, "max_slices_3d"),
                                         ({"max_slices_3d": "2.5"}, "max_slices_3d"),
                                         ({"max_seconds_3d": "-1"}, "max_seconds_3d"),
                                         ({"max_seconds_3d": "nan"}, "max_seconds_3d"),
                                         ({"max_seconds_3d": "soon"}, "max_seconds_3d")])
def test_bad_budget_conf_names_the_key(tiny_registry: Path, tmp_path: Path, conf: dict, field: str) -> None:
    from apps.samri.lib.configs.settings import AppSettings
    from samri.errors import SamriInputError

    with pytest.raises(SamriInputError) as err:
        AppSettings.from_conf(conf, app_dir=tmp_path, studies=str(tmp_path))
    assert err.value.field == field
    defaults = AppSettings.from_conf({}, app_dir=tmp_path, studies=str(tmp_path))
    assert (defaults.max_slices_3d, defaults.max_seconds_3d) == (96, 40.0)
