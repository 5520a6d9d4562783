"""Unit tests of the app's adapters: conf settings, request options, client state, result files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from samri.bench.http import percentiles_ms, shift_slice
from apps.samri.lib.configs.settings import DEFAULT_LABEL, AppSettings, load_labels, parse_bool
from apps.samri.lib.infers.options import InferOptions, parse_options
from apps.samri.lib.infers.result import write_result
from apps.samri.lib.runtime.client_state import ClientStateStore
from samri.errors import SamriInputError


# --- settings -----------------------------------------------------------------------------------
def test_settings_defaults(tmp_path: Path) -> None:
    s = AppSettings.from_conf({}, app_dir=tmp_path / "app", studies=str(tmp_path))
    assert s.model == "samri_lite" and s.precompute is True and s.decoder is None
    assert s.cache_dir == tmp_path / "app" / "model" / "embedding_cache"
    assert s.labels == (DEFAULT_LABEL,)


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


# --- request options ----------------------------------------------------------------------------
def test_options_slicer_and_ohif() -> None:
    slicer = parse_options({"label": "Thalamus_L", "client_id": "abc", "reset_state": True,
                            "result_extension": ".nrrd", "result_dtype": "uint8"})
    assert slicer == InferOptions(label="Thalamus_L", client_id="abc", reset_state=True)
    ohif = parse_options({"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False})
    assert ohif.client_id is None and ohif.label == DEFAULT_LABEL and ohif.result_compress is False
    assert parse_options({"result_extension": "nii.gz", "client_id": 7}).result_extension == ".nii.gz"


@pytest.mark.parametrize("request_, field", [
    ({"label": 3}, "label"), ({"client_id": [1]}, "client_id"), ({"reset_state": "later"}, "reset_state"),
    ({"result_extension": ".png"}, "result_extension"), ({"result_dtype": "int64"}, "result_dtype"),
    ({"result_compress": "zip"}, "result_compress"),
])
def test_options_reject_wrong_types(request_: dict, field: str) -> None:
    with pytest.raises(SamriInputError) as info:
        parse_options(request_)
    assert info.value.field == field


# --- client state -------------------------------------------------------------------------------
def _logits(value: float) -> torch.Tensor:
    return torch.full((1, 1, 8, 8), float(value))


def test_state_refines_until_reset_label_or_content_change() -> None:
    store = ClientStateStore()
    key = ("samri_2d", "c1", "/img.nii.gz")
    assert store.previous(key, label="a", content_key="k1") == {}
    store.update(key, label="a", content_key="k1", logits={5: _logits(1.0)})
    store.update(key, label="a", content_key="k1", logits={6: _logits(2.0)})
    prev = store.previous(key, label="a", content_key="k1")
    assert sorted(prev) == [5, 6] and float(prev[6].mean()) == 2.0
    assert store.previous(key, label="b", content_key="k1") == {}  # new label: start over
    store.update(key, label="a", content_key="k1", logits={5: _logits(1.0)})
    assert store.previous(key, label="a", content_key="k2") == {}  # image rewritten
    store.update(key, label="a", content_key="k1", logits={5: _logits(1.0)})
    assert store.previous(key, label="a", content_key="k1", reset=True) == {}
    assert store.previous(None, label="a", content_key="k1") == {}
    store.update(None, label="a", content_key="k1", logits={5: _logits(1.0)})
    assert len(store) == 0 and store.nbytes == 0


def test_state_lru_bounds() -> None:
    store = ClientStateStore(max_entries=3, max_bytes=1 << 20)
    for n in range(5):
        store.update(("t", f"c{n}", "img"), label="a", content_key="k", logits={0: _logits(n)})
    assert len(store) == 3
    assert store.previous(("t", "c0", "img"), label="a", content_key="k") == {}
    assert store.previous(("t", "c4", "img"), label="a", content_key="k") != {}
    small = ClientStateStore(max_bytes=3 * 8 * 8 * 4)
    for n in range(5):
        small.update(("t", f"c{n}", "img"), label="a", content_key="k", logits={0: _logits(n)})
    assert len(small) == 3 and small.nbytes <= 3 * 8 * 8 * 4


# --- result files -------------------------------------------------------------------------------
def _oblique_affine() -> np.ndarray:
    """Voxel-to-RAS with a rotation, a flipped axis and anisotropic spacing."""
    a, b = np.deg2rad(30.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-0.9, 1.1, 2.4])
    affine[:3, 3] = [12.0, -40.0, 7.5]
    return affine


OBLIQUE = _oblique_affine()


@pytest.mark.parametrize("extension, compress", [(".nrrd", True), (".nrrd", False), (".nii.gz", True)])
def test_result_on_image_grid_as_itk_reads_it(tmp_path: Path, extension: str, compress: bool) -> None:
    import SimpleITK as sitk

    shape = (7, 6, 5)
    image = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), OBLIQUE), str(image))
    mask = np.zeros(shape, np.uint8)
    mask[1:3, 2:5, 4] = 1
    path = write_result(mask, OBLIQUE, extension=extension, compress=compress, directory=tmp_path)
    ref, out = sitk.ReadImage(str(image)), sitk.ReadImage(str(path))
    assert out.GetSize() == ref.GetSize() == shape
    np.testing.assert_allclose(out.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(out.GetDirection(), ref.GetDirection(), atol=1e-5)
    assert out.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out).transpose(2, 1, 0), mask)


# --- bench helpers ------------------------------------------------------------------------------
def test_bench_helpers() -> None:
    moved = shift_slice({"foreground": [[1, 2, 3]], "roi": [0, 1, 0, 1, 3, 3], "slice": 3}, 2)
    assert moved == {"foreground": [[1, 2, 5]], "roi": [0, 1, 0, 1, 5, 5], "slice": 5}
    stats = percentiles_ms([0.1, 0.2, 0.3, 0.4])
    assert stats["n"] == 4 and stats["p50_ms"] == 250.0 and stats["max_ms"] == 400.0


# --- volume cache and precompute gating ---------------------------------------------------------
def test_volume_store_caches_per_file_version(tmp_path: Path) -> None:
    import os

    from apps.samri.lib.runtime.volumes import VolumeStore
    from samri.intensity import WindowSettings

    store = VolumeStore(window=WindowSettings(), max_items=2)
    paths = []
    for n in range(3):
        path = tmp_path / f"v{n}.nii.gz"
        nib.save(nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5) + n, np.eye(4)), str(path))
        paths.append(path)
    first = store.get(paths[0])
    assert store.get(paths[0]) is first and store.stats == {"hits": 1, "loads": 1}
    nib.save(nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5) * 2, np.eye(4)), str(paths[0]))
    os.utime(paths[0], ns=(1, 1))  # a new version even within one mtime tick
    assert store.get(paths[0]).content_key != first.content_key
    store.get(paths[1])
    store.get(paths[2])
    assert len(store._items) == 2
    with pytest.raises(SamriInputError) as missing:
        store.get(tmp_path / "gone.nii.gz", "file")
    assert missing.value.field == "file"
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(SamriInputError, match="cannot be read"):
        store.get(tmp_path / "corrupt.nii.gz")


def test_activity_gates_background_work() -> None:
    import threading
    import time

    from apps.samri.lib.runtime.precompute import Activity

    activity, stop, done = Activity(), threading.Event(), threading.Event()
    with activity.active():
        worker = threading.Thread(target=lambda: (activity.wait_idle(0.05, stop), done.set()))
        worker.start()
        time.sleep(0.2)
        assert not done.is_set(), "waits while a request runs"
    worker.join(5)
    assert done.is_set() and activity.running == 0
