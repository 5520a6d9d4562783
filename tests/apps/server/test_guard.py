"""`apps/samri/lib/server/guard.py`: no cross-origin browser request runs unless its origin is listed."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.middleware import Middleware
from fastapi.middleware.cors import CORSMiddleware
from fastapi.testclient import TestClient

from apps.samri.lib.server.guard import install_guard, origin_allowed

EVIL = "http://evil.example"
VIEWER = "https://viewer.example"


@pytest.mark.parametrize("origin,host,allowed", [
    ("http://127.0.0.1:8000", "127.0.0.1:8000", True),      # OHIF served by this server
    ("http://localhost:8000", "localhost:8000", True),
    ("http://[::1]:8000", "[::1]:8000", True),
    ("http://127.0.0.1:8001", "127.0.0.1:8000", False),     # another local port is another origin
    ("http://evil.example:8000", "evil.example:8000", False),  # DNS rebinding: same-origin by name only
    (EVIL, "127.0.0.1:8000", False),
    ("null", "127.0.0.1:8000", False),
    (VIEWER, "127.0.0.1:8000", True),                        # listed
])
def test_origin_rules(origin: str, host: str, allowed: bool) -> None:
    assert origin_allowed(origin, scheme="http", host=host, allowed_origins=[VIEWER]) is allowed


def monailabel_like_app() -> FastAPI:
    """What monailabel/app.py builds: CORS for any origin with credentials."""
    app = FastAPI(middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True,
                                         allow_methods=["*"], allow_headers=["*"])])
    calls = []

    @app.put("/datastore/label")
    async def save(request_body: dict | None = None):
        calls.append(request_body)
        return {"saved": True}

    app.state.calls = calls
    app.middleware_stack = app.build_middleware_stack()  # built as on the server's first event
    install_guard(app, allowed_origins=[VIEWER], max_body_bytes=1000)
    return app


def test_guard_refuses_other_origins_before_anything_runs() -> None:
    app = monailabel_like_app()
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    pre = client.options("/datastore/label", headers={"Origin": EVIL, "Access-Control-Request-Method": "PUT"})
    assert pre.status_code == 403 and "evil.example" in pre.json()["detail"]
    put = client.put("/datastore/label", json={"x": 1}, headers={"Origin": EVIL})
    assert put.status_code == 403 and app.state.calls == []


def test_listed_same_origin_and_originless_requests_are_served() -> None:
    app = monailabel_like_app()
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    pre = client.options("/datastore/label", headers={"Origin": VIEWER, "Access-Control-Request-Method": "PUT"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == VIEWER
    assert client.put("/datastore/label", json={}, headers={"Origin": VIEWER}).status_code == 200
    assert client.put("/datastore/label", json={}, headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
    assert client.put("/datastore/label", json={}).status_code == 200  # Slicer sends no Origin
    assert len(app.state.calls) == 3


def test_body_limit_is_413() -> None:
    client = TestClient(monailabel_like_app())
    resp = client.put("/datastore/label", content=b"{" + b" " * 2000 + b"}",
                      headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_guard_needs_the_cors_layer() -> None:
    app = FastAPI()
    app.middleware_stack = app.build_middleware_stack()
    with pytest.raises(RuntimeError, match="CORSMiddleware"):
        install_guard(app, allowed_origins=[], max_body_bytes=10)
