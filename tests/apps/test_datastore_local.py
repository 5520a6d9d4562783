"""`SamriLocalDatastore`: nothing written or deleted outside the studies folder, no good label
replaced by a bad one, replaced labels kept and restorable, 404s (tar slip: test_datastore_sessions).

Studies are tiny synthetic NIfTI volumes written here; one test goes through MONAI Label's real
``/datastore`` and ``/session`` routers with FastAPI's ``TestClient`` (no server process).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi import HTTPException

from apps.samri.lib.datastore.labelcheck import GRID_TOLERANCE_VOXELS
from apps.samri.lib.datastore.local import SamriLocalDatastore
from apps.samri.lib.datastore.sessions import SamriSessions

from .test_datastore_sessions import member, tar

SHAPE = (12, 10, 6)
AFFINE = np.array([[-1.2, 0, 0, 30.0], [0, 1.1, 0, -20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
INFO = {"label_info": [{"name": "blob", "idx": 1}, {"name": "slab", "idx": 2}]}
BAD_NAMES = ["../outside/x", "../../outside/code/evil", "/abs/x", "a/b", "a\\b", "..", ".", "a%2Fb", "a%2fb",
             "%2e%2e", "a%5Cb", "x\x00y", ".hidden", "..%2F..%2Foutside", "a\nb", " x"]


def _nii(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _label(values=(1, 2)) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:5, 2:5, 1:3] = values[0]
    if len(values) > 1:
        lab[6:8, 6:8, 3] = values[1]
    return lab


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        digest.update(str(p.relative_to(folder)).encode())
        if p.is_symlink():
            digest.update(b"->" + str(p.readlink()).encode())
        elif p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


@pytest.fixture()
def env(tmp_path: Path):
    """``(store, studies, outside, upload folder)``: images s1 (with a final label) and s2."""
    from monailabel.config import settings

    studies, outside, uploads = tmp_path / "studies", tmp_path / "outside", tmp_path / "uploads"
    for folder in (studies / "labels" / "final", outside / "code", uploads):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in ("s1", "s2"):
        _nii(studies / f"{image_id}.nii.gz", rng.random(SHAPE, dtype=np.float32))
    _nii(studies / "labels" / "final" / "s1.nii.gz", _label())
    _nii(outside / "exists.nii.gz", _label())
    (outside / "code" / "keep.py").write_text("print('outside')\n")
    store = SamriLocalDatastore(str(studies), extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT)
    store.update_label_info("s1", "final", dict(INFO))
    return store, studies, outside, uploads


def _status(call) -> int:
    with pytest.raises(HTTPException) as err:
        call()
    return err.value.status_code


def _final(studies: Path) -> bytes:
    return (studies / "labels" / "final" / "s1.nii.gz").read_bytes()


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_every_traversal_form_is_refused_by_every_method(env, bad: str) -> None:
    store, studies, outside, uploads = env
    label, image = _nii(uploads / "l.nii.gz", _label()), _nii(uploads / "i.nii.gz", np.ones(SHAPE, np.float32))
    before_out, before_in = _tree_hash(outside), _tree_hash(studies)
    calls = {
        "save_label id": lambda: store.save_label(bad, str(label), "final", dict(INFO)),
        "save_label tag": lambda: store.save_label("s1", str(label), bad, dict(INFO)),
        "add_image": lambda: store.add_image(bad, str(image), {}),
        "remove_image": lambda: store.remove_image(bad),
        "remove_label id": lambda: store.remove_label(bad, "final"),
        "remove_label tag": lambda: store.remove_label("s1", bad),
        "get_image_uri": lambda: store.get_image_uri(bad),
        "get_image_info": lambda: store.get_image_info(bad),
        "update_image_info": lambda: store.update_image_info(bad, {"x": 1}),
        "get_label_uri": lambda: store.get_label_uri("s1", bad),
        "get_label_info": lambda: store.get_label_info("s1", bad),
        "update_label_info": lambda: store.update_label_info(bad, "final", {"x": 1}),
    }
    statuses = {name: _status(call) for name, call in calls.items()}
    assert statuses == {name: 422 for name in calls}
    assert _tree_hash(outside) == before_out and _tree_hash(studies) == before_in


def test_same_answer_whether_or_not_the_outside_file_exists(env) -> None:
    store = env[0]
    answers = []
    for name in ("../outside/exists", "../outside/missing"):
        with pytest.raises(HTTPException) as err:
            store.get_image_info(name)
        answers.append((err.value.status_code, err.value.detail.replace(name, "NAME")))
    assert answers[0] == answers[1]


def test_python_upload_and_symlinks_never_reach_outside(env) -> None:
    store, studies, outside, uploads = env
    evil = uploads / "evil.py"
    evil.write_text("import os\n")
    (studies / "labels" / "linked").symlink_to(outside, target_is_directory=True)
    (studies / "s3.nii.gz").symlink_to(outside / "exists.nii.gz")  # an admin's read-only link
    store.refresh()
    before = _tree_hash(outside)
    assert _status(lambda: store.add_image("evil", str(evil), {})) == 422
    assert _status(lambda: store.save_label("s1", str(_nii(uploads / "l.nii.gz", _label())), "linked", {})) == 422
    store.remove_image("s3")  # removes the link itself
    assert not (studies / "s3.nii.gz").is_symlink() and (outside / "exists.nii.gz").is_file()
    assert _tree_hash(outside) == before and not list(studies.glob("evil*"))


def _bad_labels(uploads: Path) -> dict[str, tuple[Path, dict]]:
    lab = _label()
    spacing, origin = AFFINE.copy(), AFFINE.copy()
    spacing[0, 0] *= 1.5
    origin[:3, 3] += 2.0
    detached = uploads / "detached.nrrd"
    detached.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 12 10 6\nencoding: raw\n"
                        "data file: /etc/passwd\n\n")
    text = uploads / "label.txt"
    text.write_text("1 2 3")
    corrupt = uploads / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    empty = uploads / "empty.nii.gz"
    empty.write_bytes(b"")
    truncated = uploads / "truncated.nii.gz"
    whole = gzip.compress(nib.Nifti1Image(lab, AFFINE).to_bytes())
    truncated.write_bytes(whole[: len(whole) * 2 // 3])
    frac = lab.astype(np.float32)
    frac[0, 0, 0] = 0.5
    nan = lab.astype(np.float32)
    nan[0, 0, 0] = np.nan
    neg = lab.astype(np.int16)
    neg[0, 0, 0] = -1
    good = _nii(uploads / "good.nii.gz", lab)
    return {
        "shape": (_nii(uploads / "shape.nii.gz", lab[:, :, :5]), INFO),
        "spacing": (_nii(uploads / "spacing.nii.gz", lab, spacing), INFO),
        "origin": (_nii(uploads / "origin.nii.gz", lab, origin), INFO),
        "4d": (_nii(uploads / "4d.nii.gz", np.stack([lab, lab], -1)), INFO),
        "corrupt": (corrupt, INFO), "empty": (empty, INFO), "truncated": (truncated, INFO),
        "fraction": (_nii(uploads / "frac.nii.gz", frac), INFO), "nan": (_nii(uploads / "nan.nii.gz", nan), INFO),
        "negative": (_nii(uploads / "neg.nii.gz", neg), INFO), "txt": (text, INFO), "detached": (detached, INFO),
        "info not list": (good, {"label_info": "blob"}), "info no name": (good, {"label_info": [{"idx": 1}]}),
        "info bad idx": (good, {"label_info": [{"name": "a", "idx": "x"}]}),
        "info negative": (good, {"label_info": [{"name": "a", "idx": -1}, {"name": "b", "idx": 2}]}),
        "info bool": (good, {"label_info": [{"name": "a", "idx": True}, {"name": "b", "idx": 2}]}),
        "info duplicate": (good, {"label_info": [{"name": "a", "idx": 1}, {"name": "b", "idx": 1},
                                                 {"name": "c", "idx": 2}]}),
        "info misses 2": (good, {"label_info": [{"name": "blob", "idx": 1}]}),
        "params not object": (good, ["x"]),
    }


def test_every_invalid_label_is_refused_and_the_final_label_stays(env) -> None:
    store, studies, _, uploads = env
    before, state = _final(studies), json.dumps(store.json(), sort_keys=True)
    for kind, (path, info) in _bad_labels(uploads).items():
        with pytest.raises(HTTPException) as err:
            store.save_label("s1", str(path), "final", info)
        assert err.value.status_code == 422, kind
        assert "=" in err.value.detail, (kind, err.value.detail)  # names the field and the value
        assert _final(studies) == before, kind
    assert json.dumps(store.json(), sort_keys=True) == state
    assert store.label_versions("s1") == [] and not list(studies.glob("labels/final/.*"))


def test_grid_within_tolerance_and_integral_floats_are_accepted(env) -> None:
    store, studies, _, uploads = env
    near = AFFINE.copy()
    near[:3, 3] += 0.5 * GRID_TOLERANCE_VOXELS * 1.1 / np.sqrt(3)
    store.save_label("s1", str(_nii(uploads / "near.nii.gz", _label(), near)), "final", dict(INFO))
    store.save_label("s1", str(_nii(uploads / "f.nii.gz", _label().astype(np.float32))), "final", dict(INFO))
    stored = nib.load(str(studies / "labels" / "final" / "s1.nii.gz"))
    assert stored.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(stored.dataobj), _label())
    assert np.allclose(stored.affine, AFFINE, atol=1e-5)
    empty = _nii(uploads / "zeros.nii.gz", np.zeros(SHAPE, np.uint8))
    store.save_label("s1", str(empty), "final", {"label_info": []})  # erasing every segment is allowed


def test_valid_save_keeps_the_previous_version_and_it_can_be_restored(env) -> None:
    store, studies, _, uploads = env
    old = _final(studies)
    new = _nii(uploads / "new.nii.gz", _label((3, 2)))
    info = {"label_info": [{"name": "other", "idx": 3}, {"name": "slab", "idx": 2}, {"name": "empty", "idx": 7}]}
    assert store.save_label("s1", str(new), "final", info) == "s1"
    assert _final(studies) == new.read_bytes()
    versions = store.label_versions("s1")
    assert len(versions) == 1 and versions[0].path.read_bytes() == old
    assert versions[0].info["label_info"] == INFO["label_info"]
    assert store.get_label_info("s1", "final")["label_info"] == info["label_info"]
    store.restore_label("s1", "final", versions[0].stamp)
    assert _final(studies) == old and store.get_label_info("s1", "final")["label_info"] == INFO["label_info"]
    assert [v.path.read_bytes() for v in store.label_versions("s1")] == [old, new.read_bytes()]


def test_history_is_neither_an_image_nor_a_tag_for_monai_label(env) -> None:
    from monailabel.datastore.local import LocalDatastore

    store, studies, _, uploads = env
    store.save_label("s1", str(_nii(uploads / "n.nii.gz", _label())), "final", dict(INFO))
    store.remove_label("s1", "final")
    assert (studies / ".samri" / "label-history" / "final" / "s1").is_dir()
    for fresh in (store, LocalDatastore(str(studies), extensions=("*.nii.gz", "*.nii", "*.nrrd"))):
        fresh.refresh()
        assert sorted(fresh.list_images()) == ["s1", "s2"] and fresh.status()["label_tags"] == {}


def test_nrrd_labels_with_and_without_geometry(env) -> None:
    import nrrd

    store, studies, _, uploads = env
    path = uploads / "label.nrrd"
    lps = AFFINE[:3, :3] * np.array([[-1], [-1], [1]])  # NRRD space directions are LPS, one per column
    origin = AFFINE[:3, 3] * np.array([-1, -1, 1])
    nrrd.write(str(path), _label(), {"space": "left-posterior-superior", "space directions": lps.T,
                                      "space origin": origin})
    store.save_label("s1", str(path), "final", dict(INFO))
    assert sorted(p.name for p in (studies / "labels" / "final").iterdir()) == ["s1.nrrd"]
    assert (studies / "labels" / "final" / "s1.nrrd").read_bytes() == path.read_bytes()
    assert store.label_versions("s1")[0].path.name.endswith(".nii.gz")
    # a file without any geometry (what tests and scripts write) can only mean the image grid
    bare = uploads / "bare.nrrd"
    nrrd.write(str(bare), _label(), {"encoding": "gzip"})
    store.save_label("s1", str(bare), "final", dict(INFO))
    stored = nib.load(str(studies / "labels" / "final" / "s1.nii.gz"))
    assert np.allclose(stored.affine, AFFINE, atol=1e-5) and np.array_equal(np.asarray(stored.dataobj), _label())
    assert not (studies / "labels" / "final" / "s1.nrrd").exists()
    bad = uploads / "bare_shape.nrrd"
    nrrd.write(str(bad), _label()[:, :, :5], {"encoding": "gzip"})
    assert _status(lambda: store.save_label("s1", str(bad), "final", dict(INFO))) == 422


def test_a_second_process_writing_info_keeps_a_label_the_first_just_saved(env) -> None:
    from monailabel.config import settings

    store, studies, _, uploads = env
    other = SamriLocalDatastore(str(studies), extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT)  # e.g. scoring
    store.save_label("s2", str(_nii(uploads / "l.nii.gz", _label())), "final", dict(INFO))
    other.update_image_info("s1", {"samri_scores": {"novelty": 0.5}})
    saved = json.loads((studies / "datastore_v2.json").read_text())["objects"]
    assert saved["s2"]["labels"]["final"]["info"]["label_info"] == INFO["label_info"]
    assert saved["s1"]["image"]["info"]["samri_scores"] == {"novelty": 0.5}


def test_unknown_ids_answer_404(env) -> None:
    store, _, _, uploads = env
    label = str(_nii(uploads / "l.nii.gz", _label()))
    for call in (lambda: store.get_image_info("nope"), lambda: store.get_image_uri("nope"),
                 lambda: store.update_image_info("nope", {}), lambda: store.remove_image("nope"),
                 lambda: store.save_label("nope", label, "final", dict(INFO)),
                 lambda: store.remove_label("nope", "final"), lambda: store.remove_label("s2", "final"),
                 lambda: store.get_label_info("s2", "final"), lambda: store.update_label_info("s2", "final", {}),
                 lambda: store.restore_label("s2", "final")):
        assert _status(call) == 404
    assert store.get_label_uri("s2", "final") == ""  # the download endpoint answers 404 itself


def test_image_uploads(env) -> None:
    store, studies, _, uploads = env
    good = _nii(uploads / "up.nii.gz", np.ones((8, 8, 4), np.int16))
    assert store.add_image("new", str(good), {"user": "me"}) == "new"
    assert (studies / "new.nii.gz").read_bytes() == good.read_bytes() and "new" in store.list_images()
    corrupt = uploads / "c.nii.gz"
    corrupt.write_bytes(b"not an image")
    flat = _nii(uploads / "flat.nii.gz", np.ones((8, 8), np.int16))
    assert _status(lambda: store.add_image("c", str(corrupt), {})) == 422
    assert _status(lambda: store.add_image("flat", str(flat), {})) == 422
    assert _status(lambda: store.add_image("a.nii.gzb", str(good), {})) == 422  # the scan would read "ab"
    # s1 has a final label: a new image on another grid would orphan it
    assert _status(lambda: store.add_image("s1", str(good), {})) == 409
    same = _nii(uploads / "same.nii.gz", np.zeros(SHAPE, np.float32))
    store.add_image("s1", str(same), {})
    assert store.get_label_by_image_id("s1", "final") == "s1" and _final(studies)


def test_through_monai_labels_datastore_and_session_routers(env, tmp_path: Path, monkeypatch) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from monailabel.endpoints import datastore as datastore_endpoints
    from monailabel.endpoints import session as session_endpoints

    store, studies, outside, uploads = env
    sessions = SamriSessions(str(tmp_path / "sessions"), 3600)

    class App:
        def datastore(self):
            return store

        def sessions(self):
            return sessions

        def on_save_label(self, image_id, label_id):
            return {}

    for module in (datastore_endpoints, session_endpoints):
        monkeypatch.setattr(module, "app_instance", lambda: App())
    api = FastAPI()
    api.include_router(datastore_endpoints.router)
    api.include_router(session_endpoints.router)
    client = TestClient(api)
    before_out, old = _tree_hash(outside), _final(studies)
    good = _nii(uploads / "g.nii.gz", _label()).read_bytes()
    params = {"params": json.dumps(INFO)}

    def put_label(tag: str, content: bytes, name: str = "label.nii.gz", data=params):
        return client.put("/datastore/label", params={"image": "s1", "tag": tag}, data=data,
                          files={"label": (name, content)})

    assert put_label("../../outside/x", good).status_code == 422
    assert put_label(str(outside / "x"), good).status_code == 422
    assert put_label("final", b"junk").status_code == 422
    assert put_label("final", b"1 2 3", "label.txt").status_code == 422
    assert put_label("final", good, data={"params": json.dumps({"label_info": "x"})}).status_code == 422
    assert _final(studies) == old
    assert client.put("/datastore/image", params={"image": "../outside/code/evil"},
                      files={"file": ("evil.py", b"import os")}).status_code == 422
    assert client.put("/datastore/image", files={"file": ("evil.py", b"import os")}).status_code == 422
    for raw in ("..%2Foutside%2Fexists", "..%252Foutside", "%2Fetc%2Fpasswd", "s1%00"):
        assert client.delete(f"/datastore/image?id={raw}").status_code == 422, raw
    assert client.get("/datastore/image/info", params={"image": "nope"}).status_code == 404
    assert client.delete("/datastore/label", params={"id": "nope", "tag": "final"}).status_code == 404
    assert client.put("/datastore/image/info", params={"image": "nope"}, data={"info": "{}"}).status_code == 404
    slip = tar(tmp_path / "slip.tar", [member("../../outside/evil.txt")])
    resp = client.put("/session/", params={"uncompress": "true"}, files={"files": ("slip.tar", slip.read_bytes())})
    assert resp.status_code == 422 and not (tmp_path / "sessions").exists()
    assert _tree_hash(outside) == before_out and _final(studies) == old
    resp = put_label("final", _nii(uploads / "n.nii.gz", _label((2, 1))).read_bytes())
    assert resp.status_code == 200 and resp.json()["label"] == "s1"
    assert [v.path.read_bytes() for v in store.label_versions("s1")] == [old]
    assert client.get("/datastore/label", params={"label": "s1", "tag": "final"}).status_code == 200


def test_dicomweb_datastore_checks_tag_and_label_before_storing(env, monkeypatch) -> None:
    """SAMRI's DICOMweb datastore runs the same checks (no Orthanc needed: storing is replaced)."""
    from apps.samri.lib.datastore.dicomweb import SamriDicomWebDatastore

    _, studies, outside, uploads = env
    store = object.__new__(SamriDicomWebDatastore)  # no client, no cache: only save_label's checks run
    stored = []
    monkeypatch.setattr(store, "get_image_uri", lambda image_id: str(studies / "s1.nii.gz"), raising=False)
    monkeypatch.setattr(store, "_save_final", lambda *args: stored.append(args) or "s1", raising=False)
    good = str(_nii(uploads / "good.nii.gz", _label()))
    frac = _label().astype(np.float32)
    frac[0, 0, 0] = 0.25
    before = _tree_hash(outside)
    for tag, path, info in (("../../outside/x", good, INFO), ("final", str(_nii(uploads / "f.nii.gz", frac)), INFO),
                            ("final", good, {"label_info": [{"name": "blob", "idx": 1}]})):
        assert _status(lambda: store.save_label("1.2.3", path, tag, dict(info))) == 422  # noqa: B023 (called at once)
    assert stored == [] and _tree_hash(outside) == before
    assert store.save_label("1.2.3", good, "final", dict(INFO)) == "s1" and len(stored) == 1
