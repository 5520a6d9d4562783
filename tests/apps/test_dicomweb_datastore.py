"""The app over DICOMweb: a real Orthanc and a real ``monailabel start_server --studies <Orthanc>``.

Checks the series listing (MR only), image geometry through the server, saving a final label as
DICOM SEG and reading it back for the trainer voxel-exactly, the bad-input answers (422/404/503,
nothing stored), and that no Python process of the server tried a non-loopback connection.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from samri.dicomweb.orthanc import orthanc_unavailable_reason, running_orthanc
from samri.testing.server import copy_app, start_server

REASON = orthanc_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"needs Orthanc: {REASON}")

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "apps" / "samri"


class Env:
    """What the module's server knows: Orthanc, the app server, the uploaded series."""


def _crop(studies: Path):
    for name in ("colin27_t1", "mni152_t1"):
        if (studies / f"{name}.nii.gz").is_file():
            img = nib.load(str(studies / f"{name}.nii.gz"))
            lab = nib.load(str(studies / "labels" / "final" / f"{name}.nii.gz"))
            k0 = 60
            affine = img.affine.copy()
            affine[:3, 3] = affine[:3, :3] @ [0, 0, k0] + affine[:3, 3]
            return np.asarray(img.dataobj)[:, :, k0:k0 + 32], np.asarray(lab.dataobj)[:, :, k0:k0 + 32], affine
    raise FileNotFoundError(f"no sample study in {studies}")


@pytest.fixture(scope="module")
def env(tmp_path_factory, sample_studies_dir):
    from samri.dicomweb.convert import volume_to_dicom_series
    from samri.dicomweb.upload import store_datasets, upload_series
    from samri.testing.netaudit import audit_env

    root = tmp_path_factory.mktemp("dicomweb_app")
    e = Env()
    e.root = root
    e.image, e.label, e.affine = _crop(sample_studies_dir)
    with running_orthanc(root / "orthanc") as orthanc:
        e.orthanc = orthanc
        e.uid = upload_series(volume_to_dicom_series(e.image, e.affine, uid_seed="app-mr",
                                                     series_description="crop"), orthanc.dicomweb_root)
        ct = volume_to_dicom_series(np.zeros((16, 16, 4), np.int16), np.eye(4), uid_seed="app-ct")
        for ds in ct:
            ds.Modality = "CT"
        store_datasets(ct, orthanc.dicomweb_root, series_uid=ct[0].SeriesInstanceUID)
        e.ct_uid = str(ct[0].SeriesInstanceUID)
        single = volume_to_dicom_series(np.ones((16, 16, 2), np.int16), np.eye(4), uid_seed="app-single")[:1]
        store_datasets(single, orthanc.dicomweb_root, series_uid=single[0].SeriesInstanceUID)
        e.single_uid = str(single[0].SeriesInstanceUID)
        e.net_log = root / "net.log"
        app = copy_app(APP_DIR, root / "app")
        e.server = start_server(app_dir=app, studies=orthanc.dicomweb_root, log_path=root / "server.log",
                                conf={"precompute": "false", "cache_dir": str(root / "embeddings"),
                                      "dicomweb_cache": str(root / "cache")},
                                env=audit_env(e.net_log))
        try:
            yield e
        finally:
            e.server.stop()


def _seg_uids(e) -> list[str]:
    from samri.dicomweb.upload import search_series

    return [s["0020000E"]["Value"][0] for s in search_series(e.orthanc.dicomweb_root, Modality="SEG")]


def _datastore(e, cache: str):
    import sys

    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.datastore.dicomweb import SamriDicomWebDatastore
    finally:
        sys.path.remove(str(APP_DIR))
    return SamriDicomWebDatastore(e.orthanc.dicomweb_root, cache_path=e.root / cache)


def test_server_lists_models_and_mr_series_only(env):
    info = requests.get(env.server.base_url + "/info/", timeout=30).json()
    assert {"samri_2d", "samri_3d"} <= set(info["models"])
    store = _datastore(env, "cache_list")
    assert set(store.list_images()) == {env.uid, env.single_uid}  # the CT series is filtered out


def test_image_through_the_server_has_the_source_geometry(env):
    resp = requests.get(env.server.base_url + "/datastore/image", params={"image": env.uid}, timeout=120)
    assert resp.status_code == 200, resp.text
    img = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(resp.content))
    assert np.abs(img.affine - env.affine).max() < 1e-3
    assert np.array_equal(np.asarray(img.dataobj), env.image)


@pytest.mark.parametrize("which, status, text", [("single_uid", 422, "single image"), ("ct_uid", 422, "Modality"),
                                                 (None, 404, "no such series")])
def test_bad_series_get_a_clear_4xx(env, which, status, text):
    image = getattr(env, which) if which else "1.2.3.4.5"
    resp = requests.get(env.server.base_url + "/datastore/image", params={"image": image}, timeout=60)
    assert resp.status_code == status and text in resp.json()["detail"]
    assert text in env.server.log_tail(20000)


@pytest.mark.slow
def test_click_on_the_dicomweb_series(env):
    fg = [[int(v) for v in np.argwhere(env.label > 0)[len(np.argwhere(env.label > 0)) // 2]]]
    params = {"foreground": fg, "background": [], "result_extension": ".nrrd", "result_dtype": "uint8"}
    resp = requests.post(env.server.base_url + "/infer/samri_2d", params={"image": env.uid, "output": "image"},
                         data={"params": json.dumps(params)}, timeout=300)
    assert resp.status_code == 200, resp.text[:500]
    import nrrd

    header = nrrd.read_header(io.BytesIO(resp.content))
    assert list(header["sizes"]) == list(env.image.shape)


def _put_label(env, label: np.ndarray, names: dict[int, str], affine=None):
    buf = io.BytesIO(nib.Nifti1Image(label, env.affine if affine is None else affine).to_bytes())
    gz = __import__("gzip").compress(buf.getvalue())
    params = {"label_info": [{"name": n, "idx": v} for v, n in names.items()]}
    return requests.put(env.server.base_url + "/datastore/label", params={"image": env.uid, "tag": "final"},
                        files={"label": ("label.nii.gz", gz)}, data={"params": json.dumps(params)}, timeout=300)


def test_final_label_is_stored_as_seg_and_read_back_for_training(env):
    values = [int(v) for v in np.unique(env.label) if v][:4]
    label = np.where(np.isin(env.label, values), env.label, 0).astype(np.uint8)
    names = {v: f"region {v}" for v in values}
    before = _seg_uids(env)
    resp = _put_label(env, label, names)
    assert resp.status_code == 200, resp.text
    new = sorted(set(_seg_uids(env)) - set(before))
    assert len(new) == 1
    # a fresh datastore (another cache) reads the SEG from Orthanc as the trainer does
    import sys

    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.trainers.studies import collect_studies
    finally:
        sys.path.remove(str(APP_DIR))
    store = _datastore(env, "cache_train")
    studies, skipped = collect_studies(store)
    assert skipped == {} and [s.study_id for s in studies] == [env.uid]
    study = studies[0]
    image, back = nib.load(str(study.image)), nib.load(str(study.label))
    assert np.abs(back.affine - image.affine).max() < 1e-6 and back.shape == image.shape
    stored = np.asarray(back.dataobj)
    assert set(study.label_names) == set(names.values())
    for value, name in names.items():
        assert np.array_equal(stored == study.label_names[name], label == value), name
    seg = store.segs.latest_by_image()[env.uid]
    assert seg.seg_uid == new[0]


def test_bad_label_is_refused_and_nothing_is_stored(env):
    before = _seg_uids(env)
    wrong_shape = np.ones(env.image.shape[:2] + (5,), np.uint8)
    resp = _put_label(env, wrong_shape, {1: "x"})
    assert resp.status_code == 422 and "not on the image grid" in resp.json()["detail"]
    shifted = env.affine.copy()
    shifted[0, 3] += 2.0
    resp = _put_label(env, (env.label > 0).astype(np.uint8), {1: "x"}, affine=shifted)
    assert resp.status_code == 422 and "affine" in resp.json()["detail"]
    assert _seg_uids(env) == before


def test_seg_of_an_unknown_series_is_ignored_with_a_log_line(env):
    from samri.dicomweb.convert import volume_to_dicom_series
    from samri.dicomweb.seg import label_to_seg
    from samri.dicomweb.upload import store_datasets

    ghost = volume_to_dicom_series(np.ones((8, 8, 3), np.int16), np.eye(4), uid_seed="ghost")  # never uploaded
    seg, _ = label_to_seg(np.ones((8, 8, 3), np.uint8), ghost, names={1: "ghost"})
    store_datasets([seg], env.orthanc.dicomweb_root, series_uid=seg.SeriesInstanceUID)
    expected = f"references series {ghost[0].SeriesInstanceUID}"
    # the server re-lists SEGs only after its index's time-to-live (segindex.SEG_TTL_S, 5 s): an
    # earlier test's listing may still be fresh, so ask again until the listing includes the ghost
    deadline = time.monotonic() + 30.0
    while True:
        resp = requests.post(env.server.base_url + "/activelearning/random", json={}, timeout=120)
        assert resp.status_code in (200, 422, 500)  # which sample it picks does not matter here
        if expected in env.server.log_tail(200000) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    store = _datastore(env, "cache_ghost")
    assert ghost[0].SeriesInstanceUID not in store.get_labeled_images()
    assert expected in env.server.log_tail(200000)


def test_orthanc_unreachable_is_503_naming_the_server(env):
    from fastapi import HTTPException

    env.orthanc.stop()
    resp = requests.get(env.server.base_url + "/datastore/image", params={"image": "1.2.3.4.6"}, timeout=60)
    assert resp.status_code == 503 and env.orthanc.dicomweb_root in resp.json()["detail"]
    with pytest.raises(HTTPException) as err:
        _datastore(env, "cache_down").list_images()
    assert err.value.status_code == 503


def test_no_outbound_connection_was_attempted(env):
    from samri.testing.netaudit import loopback_connects, outbound_attempts

    assert loopback_connects(env.net_log) > 0, "the audit hook was not active in the server"
    assert outbound_attempts(env.net_log) == []
    assert "dcmqi" not in env.server.log_tail(10 ** 7)
