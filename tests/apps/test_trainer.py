"""The ``samri`` trainer task: datastore studies, label_info remapping, gated publishing, rollback.

Unit tests build the app in-process over a 64-pixel model whose weights a test wrote (a real
checkpoint, so every process builds the same encoder) and synthetic studies with ``final``
labels; the last test drives a real server: click, ``POST /train/samri``, click again (the new
decoder serves without a restart), roll back, click again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from fastapi import HTTPException

from apps.samri.lib.trainers.options import defaults, parse_train_options
from apps.samri.lib.trainers.records import ProgressRecorder, RunRecord, pid_alive, progress_stats, remove_stale_runs
from apps.samri.lib.trainers.studies import collect_studies
from samri.bench.http import post_infer
from samri.errors import SamriInputError
from samri.testing.server import copy_app, start_server
from samri.train.config import TrainConfig
from tests.apps.helpers import APP_DIR, TRAINING, in_process_apps, write_tiny_config
from tests.helpers import write_study

#: above Linux's largest pid_max (2**22): no process has it.
DEAD_PID = 2 ** 22 + 12345
#: a blob voxel on a slice through its middle (the synthetic studies' ellipsoid, label 1 "blob").
POINT = [20, 24, 15]
def write_studies(folder: Path, n: int = 3) -> Path:
    for k in range(n):
        write_study(folder, f"s{k}", seed=k)
    return folder


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    return write_tiny_config(tmp_path_factory.mktemp("trainer_cfg") / "configs")


@pytest.fixture()
def make_app(tmp_path: Path, tiny_config: Path, monkeypatch: pytest.MonkeyPatch):
    """``make_app(**conf)``: ``MyApp`` from a copy of apps/samri over three synthetic studies."""
    from monailabel.config import settings

    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(tiny_config))
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTO_UPDATE_SCORING", False)
    with in_process_apps(tmp_path, write_studies(tmp_path / "studies"), monkeypatch) as make:
        yield make


def click(app) -> dict:
    """One samri_2d click on the blob; returns the result params' ``samri`` summary."""
    result = app.infer({"model": "samri_2d", "image": "s0", "foreground": [POINT], "result_extension": ".nrrd"})
    Path(result["file"]).unlink()
    return result["params"]["samri"]


def train(app, **options) -> dict:
    return app.train({"model": "samri", **options})


# --- pure helpers -------------------------------------------------------------------------------
def test_train_options_defaults_overrides_and_errors() -> None:
    cfg = TrainConfig.from_mapping({"epochs": 3, "optimizer": {"lr": 1e-4}, "gate": {"margin": 0.01},
                                    "include_labels": ["a", "b"]})
    assert defaults(cfg) == {"max_epochs": 3, "max_steps_per_epoch": 0, "max_slices": 0, "max_val_samples": 256,
                             "lr": 1e-4, "labels": "a,b", "gate_margin": 0.01, "rollback": ""}
    opts = parse_train_options({"model": "samri", "gpus": "all"}, cfg)
    assert (opts.epochs, opts.max_steps_per_epoch, opts.lr, opts.labels, opts.gate_margin, opts.rollback) == \
        (3, None, 1e-4, ("a", "b"), 0.01, None)
    # what Slicer sends back: its option fields, some as strings
    opts = parse_train_options({"max_epochs": "5", "max_steps_per_epoch": 7, "lr": "0.001", "labels": "x, y",
                                "gate_margin": 1, "rollback": ""}, cfg)
    assert (opts.epochs, opts.max_steps_per_epoch, opts.lr, opts.labels, opts.gate_margin) == \
        (5, 7, 1e-3, ("x", "y"), 1.0)
    applied = opts.apply(TrainConfig().replace(lr=9.0, min_pixels=3))
    assert (applied.settings.lr, applied.settings.epochs, applied.include_labels, applied.gate_margin,
            applied.min_pixels) == (1e-3, 5, ("x", "y"), 1.0, 3)
    sliced = TrainConfig().replace(max_slices=24)
    budget = parse_train_options({"max_slices": "16", "max_val_samples": 8}, sliced)
    assert (budget.max_slices, budget.max_val_samples) == (16, 8)
    assert budget.apply(TrainConfig()).settings.max_slices == 16 and parse_train_options({}, sliced).max_slices == 24
    assert parse_train_options({"max_slices": 0}, sliced).max_slices is None  # 0 = all
    assert parse_train_options({"rollback": "v0002"}, TrainConfig()).rollback == "v0002"
    for request, field in (({"max_epochs": 0}, "max_epochs"), ({"max_epochs": 1.5}, "max_epochs"),
                           ({"max_epochs": True}, "max_epochs"), ({"lr": -1}, "lr"), ({"lr": "fast"}, "lr"),
                           ({"gate_margin": -0.1}, "gate_margin"), ({"labels": [1]}, "labels[0]"),
                           ({"max_steps_per_epoch": -1}, "max_steps_per_epoch"), ({"rollback": "v1"}, "rollback"),
                           ({"max_slices": -2}, "max_slices"), ({"max_val_samples": 0}, "max_val_samples")):
        with pytest.raises(SamriInputError) as err:
            parse_train_options(request, cfg)
        assert err.value.field == field


def test_stale_run_folders_are_removed(tmp_path: Path) -> None:
    dead, alive = tmp_path / "run_dead", tmp_path / "run_alive"
    for folder, pid in ((dead, DEAD_PID), (alive, os.getpid())):
        folder.mkdir()
        (folder / "owner.pid").write_text(str(pid))
    assert remove_stale_runs(tmp_path) == [dead]
    assert alive.is_dir() and not dead.exists()


def test_progress_record_is_throttled_and_read_as_monai_label_stats(tmp_path: Path) -> None:
    now, record = [0.0], RunRecord(tmp_path / "last_run.json")
    recorder = ProgressRecorder(record, {"status": "running", "total_epochs": 2}, clock=lambda: now[0])
    recorder({"phase": "stage1", "studies_done": 0, "studies_total": 2, "slices_encoded": 0})
    assert recorder.writes == 1 and record.read()["phase"] == "stage1"  # a new phase is written at once
    for step in range(1, 4):  # steps within 2 s: only the first (new phase) is written
        now[0] += 0.5
        recorder({"phase": "stage2", "epoch": 1, "total_epochs": 2, "step": step, "total_steps": 4, "loss": 1.0})
    assert recorder.writes == 2 and record.read()["step"] == 1 and recorder.data["step"] == 3
    now[0] += 2.0
    recorder({"phase": "stage2", "epoch": 1, "total_epochs": 2, "step": 4, "total_steps": 4, "loss": 0.5})
    assert recorder.writes == 3 and record.read()["step"] == 4
    live, half = progress_stats(record.read()), progress_stats({**record.read(), "epoch": 2, "step": 1})
    assert live["epoch"] == 1.0 and live["phase"] == "stage2" and live["current_time"] == 3.5
    assert half["epoch"] == 1.25 and half["total_epochs"] == 2  # Slicer's bar: epoch / total_epochs
    recorder({"phase": "validation", "epoch": 1, "pairs_done": 3, "pairs_total": 9})
    assert progress_stats(record.read())["epoch"] == 0.99  # steps done, validating
    recorder({"phase": "validation", "epoch": 1, "val": {"dice": 0.6}, "best": {"dice": 0.6, "epoch": 1}})
    last = record.read()
    assert last["val"]["dice"] == 0.6 and last["val_history"][-1]["epoch"] == 1 and last["best"]["dice"] == 0.6
    assert progress_stats(last)["best_metric"] == 0.6 and progress_stats(last)["epoch"] == 1.0
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temp file


# --- datastore studies ----------------------------------------------------------------------------
def test_collect_studies_remaps_label_info_and_skips_bad_ones(make_app, tmp_path: Path) -> None:
    app = make_app()
    store = app.datastore()
    studies_dir = tmp_path / "studies"
    # s1 saved by Slicer with its own segment order: value 1 is "slab", value 2 is "blob"
    swapped = tmp_path / "swapped.nii.gz"
    shutil.copy(studies_dir / "labels" / "final" / "s1.nii.gz", swapped)
    store.save_label("s1", str(swapped), "final",
                     {"label_info": [{"name": "slab", "idx": 1}, {"name": "blob", "idx": 2}]})
    # s2's stored label_info is malformed
    store.update_label_info("s2", "final", {"label_info": [{"name": "blob", "idx": -3}]})
    before = tree_digest(studies_dir)
    studies, skipped = collect_studies(store, fallback_names=json.loads((studies_dir / "label_names.json").read_text()))
    assert tree_digest(studies_dir) == before  # read only
    by_id = {s.study_id: s for s in studies}
    assert sorted(by_id) == ["s0", "s1"]
    assert by_id["s0"].label_names == {"blob": 1, "slab": 2}  # no label_info: label_names.json
    assert by_id["s1"].label_names == {"slab": 1, "blob": 2}  # Slicer's order
    assert by_id["s1"].label.is_file() and by_id["s1"].image.is_file()
    assert set(skipped) == {"s2"} and "label_info[0].idx" in skipped["s2"]


# --- the task in-process ------------------------------------------------------------------------
def test_info_lists_the_trainer_and_the_live_decoder(make_app) -> None:
    info = make_app().info()
    assert info["trainers"]["samri"]["config"]["max_epochs"] == TRAINING["epochs"]
    assert info["train_stats"]["samri"]["live"] == "base"
    assert info["samri"]["decoders"]["live"] == "base"
    assert info["samri"]["model"] == {"loaded": False}  # /info/ loads nothing


def test_info_rereads_training_yaml_only_when_it_changes(make_app, tiny_config: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every infer request builds /info/: the trainer's defaults are parsed once per file version."""
    import yaml

    folder = tmp_path / "configs_copy"
    shutil.copytree(tiny_config, folder)
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(folder))
    app = make_app()
    trainer = app._trainers["samri"]
    calls = []

    def load() -> TrainConfig:
        calls.append(1)
        return TrainConfig.from_mapping(yaml.safe_load((folder / "training.yaml").read_text()))

    monkeypatch.setattr(sys.modules[type(trainer).__module__], "load_train_config", load)
    assert trainer.config()["max_epochs"] == TRAINING["epochs"]
    trainer.config()["max_epochs"] = -1  # a caller's change does not reach the cache
    assert trainer.config()["max_epochs"] == TRAINING["epochs"] and len(calls) == 1
    (folder / "training.yaml").write_text(yaml.safe_dump({**TRAINING, "epochs": TRAINING["epochs"] + 5}))
    assert trainer.config()["max_epochs"] == TRAINING["epochs"] + 5 and len(calls) == 2


@pytest.mark.slow  # three training runs in process
def test_train_publishes_serves_without_restart_and_rolls_back(make_app, tmp_path: Path) -> None:
    app = make_app()
    write_study(tmp_path / "studies", "mismatch", seed=5, label=np.zeros((10, 10, 10), np.uint8))
    app.datastore().refresh()
    first = click(app)
    studies_before = tree_digest(tmp_path / "studies")

    stats = train(app, max_epochs=2, gate_margin=1.0)
    assert stats["published"] is True and stats["version"] == "v0001" and stats["live"] == "v0001"
    assert stats["started_from"] == "base" and stats["best_epoch"] >= 1
    assert stats["val_dice"] >= stats["baseline_val_dice"] - 1.0
    assert sorted(stats["studies"]) == ["s0", "s1", "s2"]
    assert "does not match image shape" in stats["skipped"]["mismatch"]
    assert stats["epoch"] == 2 and stats["total_epochs"] == 2
    assert tree_digest(tmp_path / "studies") == studies_before  # the datastore is never written
    runs = tmp_path / "app" / "model" / "train_runs"
    assert not list(runs.glob("run_*"))  # the temp run folder is gone
    assert (tmp_path / "app" / "model" / "decoders" / "versions" / "v0001.pt").is_file()

    info = app.info()
    assert info["samri"]["decoders"]["live"] == "v0001"
    assert info["train_stats"]["samri"]["last_run"]["status"] == "done"
    train_stats = info["train_stats"]["samri"]
    assert train_stats["best_metric"] == pytest.approx(stats["val_dice"])  # what Slicer's accuracy bar shows
    assert train_stats["is_training"] is False and train_stats["total_epochs"] == 2 and train_stats["total_time"] > 0
    assert [v["version"] for v in train_stats["versions"]] == ["v0001"]
    second = click(app)  # the same process serves the new decoder on its next request
    model = app.info()["samri"]["model"]
    assert model["decoder_version"] == "v0001" and model["loads"] == 2
    assert second["predicted_iou"] != first["predicted_iou"]

    back = app.train({"model": "samri", "rollback": "base"})
    assert back["live"] == "base" and back["entry"] is None
    assert click(app)["predicted_iou"] == first["predicted_iou"]
    assert app.info()["samri"]["model"]["decoder_version"] == "base"
    assert app.train({"model": "samri", "rollback": "v0001"})["live"] == "v0001"
    assert click(app)["predicted_iou"] == second["predicted_iou"]

    # a run that cannot beat the live decoder is refused by the gate; live stays v0001
    refused = train(app, max_epochs=1, lr=1e-12, gate_margin=0.0)
    assert refused["published"] is False and refused["version"] is None and refused["reason"]
    assert refused["started_from"] == "v0001" and refused["live"] == "v0001"
    assert app.info()["train_stats"]["samri"]["last_run"]["published"] is False

    within = train(app, max_epochs=1, lr=1e-12, gate_margin=0.05)  # the same run, within the margin of live
    assert within["published"] is True and within["version"] == "v0002" and within["best_epoch"] == 1
    assert within["reason"].startswith(("within margin", "improved")), within["reason"]

    # a pinned server keeps its version whatever goes live
    pinned = make_app(decoder_version="base")
    assert click(pinned)["predicted_iou"] == first["predicted_iou"]
    assert pinned.info()["samri"]["model"]["decoder_source"]["source"] == "pinned"


def test_stats_show_the_running_run_and_its_budget(make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    """What /info/ (and 3D Slicer's training panel) shows at every record write of a real run."""
    app = make_app()
    trainer = app._trainers["samri"]
    module, seen = sys.modules[type(trainer).__module__], []

    class Spy(module.ProgressRecorder):
        def flush(self) -> None:
            super().flush()
            seen.append(trainer.stats())

    monkeypatch.setattr(module, "ProgressRecorder", Spy)
    stats = train(app, max_epochs=2, gate_margin=1.0)
    running = [s for s in seen if s["is_training"]]
    assert {"stage1", "validation", "stage2"} <= {s["phase"] for s in running}
    steps = [s for s in running if s["phase"] == "stage2"]
    assert all(0 < s["epoch"] <= 2 and s["total_epochs"] == 2 and s["total_steps"] == TRAINING["max_steps_per_epoch"]
               and s["loss"] > 0 and "total_time" not in s and "best_metric" in s for s in steps)
    assert any(s["epoch"] != int(s["epoch"]) for s in steps)  # progress within an epoch
    assert any(s["phase"] == "stage1" and s["stage1"]["studies_total"] == 3 for s in running)
    budget, final = stats["budget"], app.info()["train_stats"]["samri"]
    assert budget["steps"] == 2 * TRAINING["max_steps_per_epoch"] and budget["val_pairs"] <= TRAINING["max_val_samples"]
    assert budget["slices_used"] > 0 and set(stats["seconds"]) == {"stage1", "stage2", "validation", "total"}
    assert final["is_training"] is False and final["budget"] == budget and final["seconds"] == stats["seconds"]
    assert final["epoch"] == 2 and final["total_time"] > 0


def test_killed_run_leaves_the_live_decoder(make_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    assert train(app, gate_margin=1.0)["version"] == "v0001"
    store = tmp_path / "app" / "model" / "decoders"
    before = tree_digest(store)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during stage 2")

    monkeypatch.setattr("samri.train.run.run_training", killed)
    with pytest.raises(KeyboardInterrupt):
        train(app, gate_margin=1.0)
    assert tree_digest(store) == before
    assert not list((tmp_path / "app" / "model" / "train_runs").glob("run_*"))
    last = app.info()["train_stats"]["samri"]["last_run"]
    assert last["status"] == "error" and "killed" in last["error"]
    # SIGKILL (MONAI Label's DELETE /train/) leaves a "running" record of a dead process
    trainer = app._trainers["samri"]
    trainer.record.write({"status": "running", "pid": DEAD_PID, "total_epochs": 3})
    stats = trainer.stats()
    assert stats["last_run"]["status"] == "killed" and stats["is_training"] is False and stats["live"] == "v0001"


def test_bad_requests_are_422(make_app, tmp_path: Path) -> None:
    app = make_app()
    with pytest.raises(HTTPException) as err:
        train(app, max_epochs=0)
    assert err.value.status_code == 422 and "max_epochs" in err.value.detail
    with pytest.raises(HTTPException) as err:
        train(app, rollback="v0007")
    assert err.value.status_code == 422 and "v0007" in err.value.detail
    with pytest.raises(HTTPException) as err:
        train(app, labels="nosuch")
    assert err.value.status_code == 422 and "no usable annotated study" in err.value.detail
    shutil.rmtree(tmp_path / "studies" / "labels")
    with pytest.raises(HTTPException) as err:
        train(make_app(), max_epochs=1)
    assert err.value.status_code == 422 and "no annotated study" in err.value.detail


def test_decoder_version_conf_is_validated(make_app) -> None:
    with pytest.raises(SamriInputError) as err:
        make_app(decoder_version="latest")
    assert err.value.field == "decoder_version"


# --- a real server ------------------------------------------------------------------------------
def _wait_for_training(url: str, timeout_s: float = 150.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = requests.get(f"{url}/train/", timeout=10).json()
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            return task
        time.sleep(0.5)
    raise AssertionError(f"training did not finish in {timeout_s} s: {task}")


def _click(url: str) -> dict:
    resp = post_infer(url, "samri_2d", "s0", {"foreground": [POINT], "result_extension": ".nrrd",
                                              "result_dtype": "uint8"}, output="all")
    assert resp.status_code == 200, resp.text
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    for part in MultipartDecoder(resp.content, resp.headers["content-type"]).parts:
        if b'name="params"' in part.headers[b"Content-Disposition"]:
            return json.loads(part.content)["samri"]
    raise AssertionError("no params part in the response")


@pytest.mark.slow
def test_server_trains_publishes_and_rolls_back(tmp_path: Path, tiny_config: Path) -> None:
    studies = write_studies(tmp_path / "studies")
    app = copy_app(APP_DIR, tmp_path / "app")
    server = start_server(app_dir=app, studies=studies, log_path=tmp_path / "server.log",
                          env={"SAMRI_CONFIG_DIR": str(tiny_config)},
                          conf={"precompute": "false", "cache_dir": str(tmp_path / "cache")})
    url = server.base_url
    try:
        first = _click(url)
        info = requests.get(f"{url}/info/", timeout=10).json()
        assert info["samri"]["model"]["decoder_version"] == "base"
        assert info["trainers"]["samri"]["config"]["max_epochs"] == TRAINING["epochs"]

        resp = requests.post(f"{url}/train/samri", json={"max_epochs": 2, "gate_margin": 1.0}, timeout=30)
        assert resp.status_code == 200, resp.text
        task = _wait_for_training(url)
        assert task["status"] == "DONE", f"{task}\n{server.log_tail()}"
        info = requests.get(f"{url}/info/", timeout=10).json()
        last = info["train_stats"]["samri"]["last_run"]
        assert last["published"] is True and last["version"] == "v0001", last
        assert info["samri"]["decoders"]["live"] == "v0001"

        second = _click(url)  # no restart: the next request is served by v0001
        model = requests.get(f"{url}/info/", timeout=10).json()["samri"]["model"]
        assert model["decoder_version"] == "v0001" and model["loads"] == 2
        assert model["decoder"]["metrics"]["val"]["dice"] == pytest.approx(last["val_dice"])
        assert second["predicted_iou"] != first["predicted_iou"]

        resp = requests.post(f"{url}/train/samri", params={"run_sync": "true"}, json={"rollback": "base"}, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["live"] == "base"
        assert _click(url)["predicted_iou"] == first["predicted_iou"]
        info = requests.get(f"{url}/info/", timeout=10).json()
        assert info["samri"]["model"]["decoder_version"] == "base" and info["samri"]["decoders"]["live"] == "base"
        assert server.alive()
    finally:
        server.stop()


def test_pid_alive_counts_a_killed_unreaped_process_as_dead() -> None:
    """DELETE /train/ SIGKILLs the run; until MONAI Label reaps it, it is a zombie, not a live run."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while pid_alive(child.pid):  # killed but not waited for: a zombie
            assert time.monotonic() < deadline, "a killed, unreaped process still counts as alive"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)
    assert not pid_alive(None) and not pid_alive(True) and not pid_alive(-3)


def test_a_refused_run_still_serves_the_studies_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``shape_prior.weight`` > 0: a published decoder carries the studies' shapes, a run the gate refuses
    publishes them on the live decoder's weights, and a first box or lone click of a named structure is served with
    them."""
    import nrrd
    import yaml
    from monailabel.config import settings

    from samri.model.checkpoints import read_decoder_checkpoint

    folder = write_tiny_config(tmp_path / "configs")
    (folder / "training.yaml").write_text(yaml.safe_dump({**TRAINING, "shape_prior": {"weight": 1.0}}))
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(folder))
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTO_UPDATE_SCORING", False)
    with in_process_apps(tmp_path, write_studies(tmp_path / "studies"), monkeypatch) as make:
        app = make()
        first = train(app, max_epochs=1, gate_margin=1.0)
        assert first["published"] is True and first["version"] == "v0001"
        decoders = tmp_path / "app" / "model" / "decoders"
        v1 = read_decoder_checkpoint(decoders / "versions" / "v0001.pt")
        assert v1["metadata"]["shape_priors"]["structures"] >= 1 and v1["shape_priors"]["entries"]
        refused = train(app, max_epochs=1, lr=1e-12, gate_margin=0.0)  # no better than live: the gate refuses
        assert refused["published"] is True and refused["shape_priors_only"] is True, refused
        assert refused["version"] == "v0002" and refused["reason"].startswith("refused")
        v2 = read_decoder_checkpoint(decoders / "versions" / "v0002.pt")
        assert all(v2["mask_decoder"][k].equal(v1["mask_decoder"][k]) for k in v1["mask_decoder"])  # live weights
        assert v2["shape_priors"]["entries"] and app.info()["samri"]["decoders"]["live"] == "v0002"
        names = sorted(json.loads((tmp_path / "studies" / "label_names.json").read_text())["s0"])
        roi = {"roi": [2, 14, 2, 14, 5, 5], "result_extension": ".nrrd"}
        masks = []
        for extra in ({}, {"label": names[0]}):
            result = app.infer({"model": "samri_2d", "image": "s0", **roi, **extra})
            masks.append(nrrd.read(result["file"])[0])
            Path(result["file"]).unlink()
        assert not np.array_equal(masks[0], masks[1])  # the named first box took the shapes
        click = {"foreground": [[8, 8, 5]], "background": [], "slice": 5, "result_extension": ".nrrd"}
        masks = []
        for extra in ({}, {"label": names[0]}):
            result = app.infer({"model": "samri_2d", "image": "s0", **click, **extra})
            masks.append(nrrd.read(result["file"])[0])
            Path(result["file"]).unlink()
        assert not np.array_equal(masks[0], masks[1])
        # the named lone click stood for the box its slice's image matched among the finished sections, or the
        # typical-size box around it when none matches (the box clip holds): the sections carry their images
        from samri.config import load_registry
        from samri.inference.shape_prior import ShapePriors
        from samri.volume import load_image, prepare_volume

        image = load_image(tmp_path / "studies" / "s0.nii.gz", "image")
        spacing = image.spacing
        named = masks[1][:, :, 5].astype(bool)
        priors = ShapePriors.from_payload(v2["shape_priors"])
        assert priors.searches_by_image(names[0], 2)
        where = (names[0], 2, np.array([8.0, 8.0]), named.shape, (spacing[0], spacing[1]))
        box = priors.matched_point_box(*where, image=prepare_volume(image, load_registry().window).windowed[:, :, 5])
        box = priors.point_box(*where) if box is None else box  # no section looks like it: the typical size
        r0, c0, r1, c1 = np.round(box).astype(int)
        assert named.any() and not named[:r0].any() and not named[r1 + 1:].any()
        assert not named[:, :c0].any() and not named[:, c1 + 1:].any()
