"""Active learning in the app: scoring methods and strategies in-process, then over HTTP on a real server.

Everything runs on the tiny random registry (`conftest.tiny_registry`) over small synthetic studies,
so a scoring job takes seconds; what the real model ranks is tested in
tests/samri/activelearning/test_scorer.py (slow tests).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from fastapi import HTTPException

from samri.testing.server import copy_app, start_server
from tests.apps.helpers import APP_DIR, in_process_apps
from tests.helpers import TINY_REGISTRY, write_tiny_studies

IDS = ("tiny_a", "tiny_b", "tiny_c", "tiny_d")
LABELLED = "tiny_a"


def _write_final(studies: Path, image_id: str) -> None:
    img = nib.load(str(studies / f"{image_id}.nii.gz"))
    label = (np.asarray(img.dataobj) > 250).astype(np.uint8)
    (studies / "labels" / "final").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label, img.affine), str(studies / "labels" / "final" / f"{image_id}.nii.gz"))


def _studies(folder: Path) -> Path:
    studies = write_tiny_studies(folder, IDS)
    vol = np.asarray(nib.load(str(studies / "tiny_d.nii.gz")).dataobj)
    affine = nib.load(str(studies / "tiny_d.nii.gz")).affine
    noisy = vol + np.random.default_rng(5).normal(0, 200, vol.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(noisy.astype(np.float32), affine), str(studies / "tiny_d.nii.gz"))
    _write_final(studies, LABELLED)
    return studies


@pytest.fixture()
def make_app(tmp_path: Path, tiny_registry: Path, monkeypatch: pytest.MonkeyPatch):
    """``MyApp`` from a copy of apps/samri over four tiny studies, one of them labelled."""
    with in_process_apps(tmp_path, _studies(tmp_path / "studies"), monkeypatch) as make:
        yield make


def _records(app, method: str) -> dict[str, dict]:
    from samri.activelearning.scores import scores_of

    ds = app.datastore()
    return {i: scores_of(ds.get_image_info(i)).get(method) for i in ds.list_images()}


def _publish_other_decoder(app) -> None:
    """Make a decoder with other weights live in the app's store (what a trainer run does)."""
    import copy

    from samri.io import write_json
    from samri.model.checkpoints import save_decoder_checkpoint

    model = app.runtime.segmenter().model
    decoder = copy.deepcopy(model.mask_decoder)
    decoder.load_state_dict({k: v + 0.05 if v.is_floating_point() else v for k, v in decoder.state_dict().items()})
    root = app.runtime.settings.decoder_store
    save_decoder_checkpoint(root / "versions" / "v0001.pt", mask_decoder=decoder, base_model=model.spec.base_name,
                            preprocessing=model.preprocessing.to_dict(), metadata={"note": "test"})
    write_json(root / "live.json", {"version": "v0001", "file": "versions/v0001.pt"})


def test_scores_are_stored_and_recomputed_only_when_the_model_changes(make_app) -> None:
    app = make_app()
    info = app.info()
    assert {"samri_uncertainty", "samri_novelty", "samri_combined", "random", "first"} <= set(info["strategies"])
    assert {"samri_uncertainty", "samri_novelty"} <= set(info["scoring"])

    first = app.scoring({"method": "samri_uncertainty"})
    assert sorted(first["computed"]) == ["tiny_b", "tiny_c", "tiny_d"] and first["labelled"] == [LABELLED]
    records = _records(app, "uncertainty")
    assert records[LABELLED] is None  # labelled studies are not scored
    assert all(0 <= records[i]["value"] <= 1 and records[i]["details"]["top_slices"] for i in first["computed"])
    assert {records[i]["decoder_version"] for i in first["computed"]} == {"base"}

    again = app.scoring({"method": "samri_uncertainty"})
    assert again["computed"] == [] and sorted(again["current"]) == sorted(first["computed"])
    assert _records(app, "uncertainty") == records  # untouched, timestamps included

    _publish_other_decoder(app)
    after = app.scoring({"method": "samri_uncertainty"})
    assert sorted(after["computed"]) == sorted(first["computed"]) and after["version"] != first["version"]
    assert {r["decoder_version"] for r in _records(app, "uncertainty").values() if r} == {"v0001"}

    nov = app.scoring({"method": "samri_novelty"})
    assert sorted(nov["computed"]) == ["tiny_b", "tiny_c", "tiny_d"]
    recs = _records(app, "novelty")
    assert all(recs[i]["details"]["nearest"] == LABELLED for i in nov["computed"])
    assert app.scoring({"method": "samri_novelty"})["computed"] == []  # the decoder does not matter to novelty


def test_corrupt_study_is_unusable_and_never_handed_out(make_app) -> None:
    app = make_app()
    studies = Path(app.studies)
    (studies / "tiny_c.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    result = app.scoring({"method": "samri_uncertainty"})
    assert "tiny_c" in result["unusable"] and "cannot be read" in result["unusable"]["tiny_c"]
    assert sorted(result["computed"]) == ["tiny_b", "tiny_d"]
    app.scoring({"method": "samri_novelty"})
    picks = {app.next_sample({"strategy": s, "client_id": f"c{n}"})["id"]
             for n, s in enumerate(["samri_uncertainty", "samri_novelty", "samri_combined"])}
    assert "tiny_c" not in picks and picks <= {"tiny_b", "tiny_d"}


def test_strategies_rank_reserve_and_report_an_empty_pool(make_app) -> None:
    app = make_app()
    app.scoring({"method": "samri_uncertainty"})
    app.scoring({"method": "samri_novelty"})
    values = {k: v["value"] for k, v in _records(app, "uncertainty").items() if v}
    best = max(sorted(values), key=values.get)
    got = app.next_sample({"strategy": "samri_uncertainty", "client_id": "alice"})
    assert got["id"] == best and got["score"] == pytest.approx(values[best], abs=1e-6) and got["top_slices"]
    other = app.next_sample({"strategy": "samri_uncertainty", "client_id": "bob"})
    assert other["id"] != best  # alice holds the best one
    assert app.next_sample({"strategy": "samri_uncertainty", "client_id": "alice"})["id"] == best
    for image_id in IDS:
        _write_final(Path(app.studies), image_id)
    app.datastore().refresh()
    with pytest.raises(HTTPException) as err:
        app.next_sample({"strategy": "samri_combined"})
    assert err.value.status_code == 404 and "nothing left to annotate" in err.value.detail


# --- over HTTP ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def al_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("al_server")
    configs = root / "configs"
    configs.mkdir()
    (configs / "models.yaml").write_text(TINY_REGISTRY)
    studies = _studies(root / "studies")
    app = copy_app(APP_DIR, root / "app")
    process = start_server(app_dir=app, studies=studies, log_path=root / "server.log",
                           conf={"precompute": "false", "cache_dir": str(root / "cache")},
                           env={"SAMRI_CONFIG_DIR": str(configs)})
    try:
        yield process, studies
    finally:
        process.stop()


def _wait_for_startup_scoring(url: str, timeout_s: float = 300.0) -> list[dict]:
    """The scoring jobs MONAI Label starts with the server (subprocesses), once both are finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        resp = requests.get(f"{url}/scoring/", params={"all": "true"}, timeout=30)
        tasks = resp.json() if resp.status_code == 200 else []
        done = {t.get("request", {}).get("method") for t in tasks if t.get("status") in ("DONE", "ERROR")}
        if {"samri_uncertainty", "samri_novelty"} <= done:
            return tasks
        time.sleep(1.0)
    raise AssertionError(f"startup scoring jobs did not finish in {timeout_s} s")


@pytest.mark.slow  # a live server and its startup scoring jobs
def test_activelearning_endpoints_over_http(al_server) -> None:
    server, studies = al_server
    url = server.base_url
    tasks = _wait_for_startup_scoring(url)
    assert all(t["status"] == "DONE" for t in tasks), [t.get("details", "")[-2000:] for t in tasks]
    unlabelled = {"tiny_b", "tiny_c", "tiny_d"}
    for strategy in ("random", "first", "samri_uncertainty", "samri_novelty", "samri_combined"):
        resp = requests.post(f"{url}/activelearning/{strategy}", json={"client_id": f"solo-{strategy}"}, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["id"] in unlabelled
    info = requests.get(f"{url}/datastore/image/info", params={"image": "tiny_b"}, timeout=30).json()
    assert info["samri_scores"]["uncertainty"]["usable"] and "novelty" in info["samri_scores"]

    answers: dict[str, dict] = {}

    def ask(client: str) -> None:
        r = requests.post(f"{url}/activelearning/samri_uncertainty", json={"client_id": client}, timeout=60)
        answers[client] = {"status": r.status_code, **r.json()}

    threads = [threading.Thread(target=ask, args=(c,)) for c in ("annotator1", "annotator2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a["status"] == 200 for a in answers.values()), answers
    ids = [a["id"] for a in answers.values()]
    assert len(set(ids)) == 2 and set(ids) <= unlabelled

    for image_id in sorted(unlabelled):
        path = studies / "labels" / "final" / "upload.nii.gz"
        _write_final(studies, image_id)
        label = studies / "labels" / "final" / f"{image_id}.nii.gz"
        path.write_bytes(label.read_bytes())
        label.unlink()
        with open(path, "rb") as f:
            resp = requests.put(f"{url}/datastore/label", params={"image": image_id, "tag": "final"},
                                data={"params": json.dumps({"label_info": [{"name": "object", "idx": 1}]})},
                                files={"label": ("label.nii.gz", f)}, timeout=60)
        path.unlink()
        assert resp.status_code == 200, resp.text
    resp = requests.post(f"{url}/activelearning/samri_novelty", json={}, timeout=60)
    assert resp.status_code == 404 and "nothing left to annotate" in resp.json()["detail"]
