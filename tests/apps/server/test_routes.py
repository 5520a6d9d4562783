"""`apps/samri/lib/server/routes.py` against the installed MONAI Label: the contract, and the routes served."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from apps.samri.lib.server import RequestLanes, harden_server
from apps.samri.lib.server import routes as routes_module


class FakeApp:
    """The attributes of a MONAILabelApp the hardened routes read (no model, no datastore I/O)."""

    def __init__(self, datastore) -> None:
        self._infers = {"samri_2d": object(), "samri_3d": object()}
        self._strategies = {"random": object()}
        self._trainers = {"samri": object()}
        self._scoring_methods = {}
        self._datastore = datastore
        self.requests: list[dict] = []

    def datastore(self):
        return self._datastore

    def sessions(self):
        return None


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    """MONAI Label's real FastAPI app with the hardening installed, served to a fake app instance."""
    import monailabel.app as server
    import monailabel.interfaces.utils.app as app_utils
    from monailabel.datastore.local import LocalDatastore

    fake = FakeApp(LocalDatastore(str(tmp_path_factory.mktemp("studies")), auto_reload=False))
    patch = pytest.MonkeyPatch()
    for module in ("monailabel.interfaces.utils.app", "monailabel.endpoints.infer"):
        patch.setattr(f"{module}.app_instance", lambda: fake)
    assert app_utils.app_instance() is fake
    server.app.middleware_stack = server.app.build_middleware_stack()
    harden_server(server.app, lanes=RequestLanes(), allowed_origins=(), max_body_bytes=1 << 20, expose_logs=False)
    yield TestClient(server.app), fake
    patch.undo()


def test_contract_holds_for_the_installed_monailabel() -> None:
    import monailabel.app as server

    routes_module.check_monailabel_contract(server.app)


def test_contract_fails_loudly_when_a_route_changes(monkeypatch) -> None:
    import monailabel.app as server

    key = ("POST", "/infer/{model}")
    module, name, params = routes_module.EXPECTED_ROUTES[key]
    monkeypatch.setitem(routes_module.EXPECTED_ROUTES, key, (module, name, params + ("new_argument",)))
    with pytest.raises(RuntimeError, match="changed"):
        routes_module.check_monailabel_contract(server.app)


@pytest.mark.parametrize("path,query,params,status,field", [
    ("/infer/nope", {"image": "x"}, "{}", 404, "model="),
    ("/infer/Samri_2d", {"image": "x"}, "{}", 404, "model="),
    ("/infer/samri_2d", {}, "{}", 422, "image="),
    ("/infer/samri_2d", {"image": "../etc/passwd"}, "{}", 422, "image="),
    ("/infer/samri_2d", {"image": "x"}, "[1, 2]", 422, "params="),
    ("/infer/samri_2d", {"image": "x"}, "{", 422, "params="),
    ("/infer/samri_2d", {"image": "x", "output": "dicom_seg"}, "{}", 422, "output="),
    ("/infer/samri_2d", {"image": "x", "session_id": "abc"}, "{}", 422, "session_id="),
    ("/infer/samri_2d", {"image": "x"}, json.dumps({"image": "/etc/passwd.nii.gz"}), 422, "params.image="),
])
def test_infer_rejections(hardened, path, query, params, status, field) -> None:
    client, _ = hardened
    resp = client.post(path, params=query, data={"params": params})
    assert resp.status_code == status, resp.text
    assert resp.json()["detail"].startswith(field), resp.text


@pytest.mark.parametrize("path", ["/activelearning/nope", "/train/nope", "/scoring/nope", "/batch/infer/nope",
                                  "/infer/wsi/samri_2d", "/infer/wsi_v2/samri_2d"])
def test_unknown_task_names_are_404(hardened, path) -> None:
    client, _ = hardened
    resp = client.post(path, json={})
    assert resp.status_code == 404, resp.text
    assert "nope" in resp.text or "WSI" in resp.text


def test_session_ids_are_checked_and_logs_closed(hardened) -> None:
    client, _ = hardened
    assert client.get("/session/..%2F..%2Fetc").status_code in (404, 422)
    assert client.get("/session/.hidden").status_code == 422
    assert client.get("/logs/").status_code == 403


@pytest.mark.parametrize("method,path,query,field", [
    ("put", "/datastore/label", {"image": "x", "tag": "final"}, "params"),
    ("put", "/datastore/image", {"image": "x"}, "params"),
    ("put", "/datastore/image/info", {"image": "x"}, "info"),
    ("put", "/datastore/label/info", {"label": "x", "tag": "final"}, "info"),
])
@pytest.mark.parametrize("text", ["{", "[1]", "3"])
def test_datastore_json_fields_are_422(hardened, method, path, query, field, text) -> None:
    client, _ = hardened
    files = {"label": ("l.nii.gz", b"x")} if path == "/datastore/label" else (
        {"file": ("i.nii.gz", b"x")} if path == "/datastore/image" else None)
    resp = getattr(client, method)(path, params=query, data={field: text}, files=files)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"].startswith(f"{field}="), resp.text
