"""The app class in-process with a tiny random model: lazy loading, state, precompute, reload, errors.

``main.py`` is loaded the way MONAI Label loads it (``lib`` = the app's lib folder); the registry
is swapped for a 64-pixel random ViT (`conftest.tiny_registry`) so every step takes milliseconds.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import nrrd
import numpy as np
import pytest
from fastapi import HTTPException

from tests.apps.helpers import in_process_apps
from tests.helpers import write_tiny_studies

IMAGE = "tiny_a"
POINT = [20, 18, 4]


@pytest.fixture()
def make_app(tmp_path: Path, tiny_registry: Path, monkeypatch: pytest.MonkeyPatch):
    """Build ``MyApp`` from a copy of apps/samri over tiny studies; ``make_app(**conf)``."""
    with in_process_apps(tmp_path, write_tiny_studies(tmp_path / "studies"), monkeypatch) as make:
        yield make


def infer(app, model: str = "samri_2d", **params):
    request = {"model": model, "image": IMAGE, "foreground": [POINT], "result_extension": ".nrrd", **params}
    result = app.infer(request)
    mask, header = nrrd.read(result["file"])
    Path(result["file"]).unlink()
    return result["params"], mask


def test_construction_loads_nothing(make_app) -> None:
    before = {t.name for t in threading.enumerate()}
    app = make_app(precompute="true")
    info = app.info()
    assert info["models"]["samri_2d"]["type"] == "deepgrow"
    assert info["samri"]["model"] == {"loaded": False}
    assert app.runtime._holder is None and app.runtime.precomputer is None
    assert "samri-precompute" not in {t.name for t in threading.enumerate()} - before


def test_refinement_state_per_client_and_label(make_app) -> None:
    app = make_app()
    meta, mask = infer(app, client_id="a", label="blob")
    assert mask.shape == (40, 36, 8) and meta["label_names"] == {"blob": 1}
    assert meta["samri"]["slices"] == [4] and meta["samri"]["refined_slices"] == []
    meta, _ = infer(app, client_id="a", label="blob", background=[[5, 5, 4]])
    assert meta["samri"]["refined_slices"] == [4]
    assert infer(app, client_id="b", label="blob")[0]["samri"]["refined_slices"] == []
    assert infer(app, client_id="a", label="other")[0]["samri"]["refined_slices"] == []
    assert infer(app, client_id="a", label="other", reset_state=True)[0]["samri"]["refined_slices"] == []
    assert infer(app, label="blob")[0]["samri"]["refined_slices"] == []  # no client_id: stateless
    assert infer(app, label="blob")[0]["samri"]["refined_slices"] == []
    assert app.runtime.states.previous(("samri_3d", "a", None), label="blob", content_key="") == {}


def test_errors_become_http_4xx(make_app) -> None:
    app = make_app()
    with pytest.raises(HTTPException) as unknown:
        app.infer({"model": "samri_2d", "image": "nope", "foreground": [POINT]})
    assert unknown.value.status_code == 404 and "image='nope'" in unknown.value.detail
    with pytest.raises(HTTPException) as outside:
        infer(app, foreground=[[40, 0, 0]])
    assert outside.value.status_code == 422 and "foreground[0]=" in outside.value.detail
    assert infer(app)[1].shape == (40, 36, 8)  # still serving


def test_precompute_on_first_infer_and_next_sample(make_app) -> None:
    app = make_app(precompute="true")
    infer(app, client_id="a")
    runtime = app.runtime
    assert runtime.precomputer.wait(120)
    status = runtime.precomputer.status()
    assert status["done"] == 1 and status["failed"] == 0
    segmenter = runtime.segmenter()
    from samri.inference.embeddings import slice_keys

    volume = runtime.volume(str(Path(app.datastore().get_image_uri(IMAGE))))
    assert all(k in segmenter.cache for k in slice_keys(segmenter.model, volume, 2, range(8)))
    for _ in range(2):  # random strategy: both images served sooner or later
        app.next_sample({"strategy": "random"})
    assert runtime.precomputer.wait(120)
    assert runtime.precomputer.status()["done"] >= 1 and runtime.precomputer.status()["failed"] == 0
    assert runtime.precomputer.status()["scheduled"] <= 2  # each image version once


def test_precompute_off_starts_no_worker(make_app) -> None:
    app = make_app(precompute="false")
    infer(app)
    app.next_sample({"strategy": "random"})
    assert app.runtime.precomputer is None


def test_decoder_file_appearing_is_served(make_app, tmp_path: Path) -> None:
    import torch

    from samri.model.checkpoints import save_decoder_checkpoint

    decoder = tmp_path / "decoder.pt"
    app = make_app(decoder=str(decoder))
    _, base_mask = infer(app)
    holder = app.runtime._holder
    assert holder.loads == 1 and app.runtime.segmenter().model.decoder_info == {}
    model = app.runtime.segmenter().model
    trained = copy.deepcopy(model.mask_decoder)  # other weights, as the trainer would write them
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_decoder_checkpoint(decoder, mask_decoder=trained, base_model="tiny",
                            preprocessing=model.preprocessing.to_dict(), metadata={"note": "test"})
    infer(app)
    assert holder.loads == 2
    assert app.runtime.segmenter().model.decoder_info["path"] == str(decoder)
    encoded_before = app.runtime._cache.stats["encoded"]
    infer(app)
    assert app.runtime._cache.stats["encoded"] == encoded_before, "embeddings survive a decoder reload"
    decoder.write_bytes(b"broken")  # a bad file: keep serving the previous model
    assert infer(app)[1].shape == base_mask.shape
    assert holder.loads == 2


def test_requests_without_client_id_refine_the_clicks_they_extend(make_app) -> None:
    app = make_app()
    assert infer(app, label="blob")[0]["samri"]["refined_slices"] == []
    # OHIF sends every click so far and no client_id: the earlier answer to the first click is refined
    meta, _ = infer(app, label="blob", background=[[5, 5, 4]])
    assert meta["samri"]["refined_slices"] == [4]
    assert app.info()["samri"]["click_history"] == 2
    # clicks that do not contain an earlier request's, another label, or reset_state: start over
    assert infer(app, label="blob", foreground=[[20, 20, 4]])[0]["samri"]["refined_slices"] == []
    assert infer(app, label="other", background=[[5, 5, 4]])[0]["samri"]["refined_slices"] == []
    assert infer(app, label="blob", background=[[5, 5, 4]], reset_state=True)[0]["samri"]["refined_slices"] == []


def test_samri_3d_returns_volume(make_app) -> None:
    app = make_app()
    meta, mask = infer(app, model="samri_3d", roi=[30, 10, 10, 26, 6, 2], client_id="a")
    assert mask.shape == (40, 36, 8) and mask.dtype == np.uint8
    assert 4 in meta["samri"]["slices"]
    assert all(2 <= k <= 6 for k in meta["samri"]["slices"])
    assert meta["samri"]["refined_slices"] == []
    again, same = infer(app, model="samri_3d", roi=[30, 10, 10, 26, 6, 2], client_id="a")
    assert again["samri"]["reused_slices"] == len(meta["samri"]["slices"])  # nothing changed: nothing predicted
    assert again["samri"]["refined_slices"] == [] and np.array_equal(same, mask)
    third, _ = infer(app, model="samri_3d", roi=[30, 10, 10, 26, 6, 2], foreground=[[20, 20, 4]], client_id="a")
    assert third["samri"]["refined_slices"] == [4]  # a changed seed refines its slice's last logits
    other, _ = infer(app, model="samri_2d", client_id="a")
    assert other["samri"]["refined_slices"] == []  # 2D and 3D keep separate state
