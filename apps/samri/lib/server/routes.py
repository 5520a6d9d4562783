"""Hardening of the MONAI Label 0.8.5 routes this app serves, installed when the server constructs the app.

MONAI Label registers its routes before it constructs the app (in the server's lifespan), so the app
can put checked versions in front of some of them (the router matches in order, so the first wins).
What is replaced, and why:

==============================  ==================================================================
``POST /infer/{model}``         `infer_route`: every field checked first (4xx naming it), run in a
                                worker thread in a lane (clicks first), cancelled on disconnect
``POST /activelearning/{s}``    unknown strategy: 404 (was 500); runs in a worker thread
``POST /train/{model}``         unknown trainer: 404 (was a background job failing later)
``POST /scoring/{method}``      unknown scoring method: 404
``POST /batch/infer/{model}``   unknown model: 404
``GET/DELETE /session/{id}``    an id that is not a plain id (traversal): 422
``PUT /datastore/...``          `datastore_routes`: ``params``/``info`` not a JSON object: 422 (was
                                500); run in a worker thread (the datastore checks the label)
``GET /logs/``                  the request log shows every client's parameters: without MONAI
                                Label's auth it is served only with ``--conf expose_logs true``
``POST /infer/wsi*/{model}``    404 (whole-slide pathology; SAMRI serves MR volumes)
==============================  ==================================================================

`check_monailabel_contract` compares each replaced route with what this module was written
against (path, method, endpoint name, parameters) and raises at start-up if an upgrade changed it,
so the server fails loudly instead of silently serving an unhardened route.
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable, Optional

from fastapi import Depends, HTTPException
from fastapi.routing import APIRoute

from .names import TASK_ATTRIBUTES, served_names
from .params import check_id, http_error

logger = logging.getLogger(__name__)

#: (method, path) -> (endpoint module, endpoint name, parameter names) as in monailabel 0.8.5.
EXPECTED_ROUTES: dict[tuple[str, str], tuple[str, str, tuple[str, ...]]] = {
    ("POST", "/infer/{model}"): ("monailabel.endpoints.infer", "api_run_inference",
                                 ("background_tasks", "model", "image", "session_id", "params", "file", "label",
                                  "output", "user")),
    ("POST", "/activelearning/{strategy}"): ("monailabel.endpoints.activelearning", "api_sample",
                                             ("strategy", "params", "user")),
    ("POST", "/train/{model}"): ("monailabel.endpoints.train", "api_run_model",
                                 ("model", "params", "run_sync", "enqueue", "user")),
    ("POST", "/scoring/{method}"): ("monailabel.endpoints.scoring", "api_run_method",
                                    ("method", "params", "run_sync", "user")),
    ("POST", "/batch/infer/{model}"): ("monailabel.endpoints.batch_infer", "api_run",
                                       ("model", "images", "params", "run_sync", "user")),
    ("GET", "/session/{session_id}"): ("monailabel.endpoints.session", "api_get_session",
                                       ("session_id", "update_ts", "image", "user")),
    ("DELETE", "/session/{session_id}"): ("monailabel.endpoints.session", "api_remove_session",
                                          ("session_id", "user")),
    ("GET", "/logs/"): ("monailabel.endpoints.logs", "api_get_logs", ("lines", "html", "text", "refresh", "user")),
    ("PUT", "/datastore/image"): ("monailabel.endpoints.datastore", "api_add_image",
                                  ("background_tasks", "image", "params", "file", "user")),
    ("PUT", "/datastore/"): ("monailabel.endpoints.datastore", "api_add_image",
                             ("background_tasks", "image", "params", "file", "user")),
    ("PUT", "/datastore/label"): ("monailabel.endpoints.datastore", "api_save_label",
                                  ("background_tasks", "image", "params", "tag", "label", "user")),
    ("PUT", "/datastore/image/info"): ("monailabel.endpoints.datastore", "api_put_image_info",
                                       ("image", "info", "user")),
    ("PUT", "/datastore/label/info"): ("monailabel.endpoints.datastore", "api_put_label_info",
                                       ("label", "tag", "info", "user")),
    ("PUT", "/datastore/updatelabelinfo"): ("monailabel.endpoints.datastore", "api_update_label_info",
                                            ("label", "tag", "params", "user")),
}
#: routes answered 404: whole-slide pathology inference (SAMRI serves MR volumes).
REMOVED_PATHS = ("/infer/wsi/{model}", "/infer/wsi_v2/{model}")


def _prefix() -> str:
    from monailabel.config import settings

    return settings.MONAI_LABEL_API_STR


def _original(method: str, path: str) -> APIRoute:
    """The route MONAI Label's endpoint module registers for (method, path)."""
    import importlib

    module = importlib.import_module(EXPECTED_ROUTES[(method, path)][0])
    found = [r for r in module.router.routes if isinstance(r, APIRoute) and r.path == path and method in r.methods]
    if len(found) != 1:
        raise RuntimeError(f"monailabel route {method} {path}: found {len(found)} in {module.__name__} (expected 1); "
                           "the SAMRI hardening (apps/samri/lib/server/routes.py) was written for monailabel 0.8.5")
    return found[0]


def check_monailabel_contract(fastapi_app) -> None:
    """Raise RuntimeError if a route this module replaces differs from what it was written for."""
    for (method, path), (module, name, params) in EXPECTED_ROUTES.items():
        endpoint = _original(method, path).endpoint
        got = (endpoint.__module__, endpoint.__name__, tuple(inspect.signature(endpoint).parameters))
        if got != (module, name, params):
            raise RuntimeError(f"monailabel route {method} {path} changed: {got} != {(module, name, params)}; "
                               "review apps/samri/lib/server/routes.py for this monailabel version")
    import monailabel.interfaces.app as app_module

    for attribute in TASK_ATTRIBUTES.values():
        if attribute not in inspect.getsource(app_module.MONAILabelApp.__init__):
            raise RuntimeError(f"MONAILabelApp no longer sets {attribute}; review apps/samri/lib/server/names.py")


def _replace(fastapi_app, method: str, path: str, endpoint: Callable) -> None:
    """Serve (method, path) with ``endpoint``: inserted first, so it matches before MONAI Label's route."""
    old = _original(method, path) if (method, path) in EXPECTED_ROUTES else None
    route = APIRoute(_prefix() + path, endpoint, methods=[method], name=f"samri_{endpoint.__name__}",
                     summary=getattr(old, "summary", None), tags=getattr(old, "tags", None),
                     include_in_schema=getattr(old, "include_in_schema", True))
    fastapi_app.router.routes.insert(0, route)


def _known(kind: str, field: str, name: str) -> str:
    """``name`` if the app serves a task of ``kind`` by that name, else 404 listing the names."""
    from monailabel.interfaces.utils.app import app_instance

    known = served_names(app_instance(), kind)
    if name not in known:
        raise http_error(404, field, name, f"no such {field}; this server has {known}")
    return name


def _task_routes(role_user: str, role_annotator: str, role_admin: str) -> dict[tuple[str, str], Callable]:
    """``def`` endpoints (FastAPI runs them in a worker thread) that 404 unknown task names first."""
    from monailabel.endpoints import activelearning, batch_infer, scoring, train
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance

    def sample(strategy: str, params: Optional[dict] = None, user: User = Depends(RBAC(role_user))):
        return activelearning.sample(_known("strategies", "strategy", strategy), params, user.username)

    def run_train(model: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
                  enqueue: Optional[bool] = False, user: User = Depends(RBAC(role_admin))):
        name = _known("trainers", "model", model)
        check = getattr(app_instance()._trainers[name], "check_request", None)
        if check is not None:  # a bad option is a 422 now, not a failed background job later
            check({"model": name, **(params or {})})
        return train.run_model(name, params, run_sync, enqueue)

    def run_scoring(method: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
                    user: User = Depends(RBAC(role_annotator))):
        return scoring.run_method(_known("scoring", "method", method), params, run_sync)

    def run_batch(model: str,
                  images: Optional[batch_infer.BatchInferImageType] = batch_infer.BatchInferImageType.IMAGES_ALL,
                  params: Optional[dict] = None, run_sync: Optional[bool] = False,
                  user: User = Depends(RBAC(role_admin))):
        return batch_infer.run(_known("infers", "model", model), images, params, run_sync)

    return {("POST", "/activelearning/{strategy}"): sample, ("POST", "/train/{model}"): run_train,
            ("POST", "/scoring/{method}"): run_scoring, ("POST", "/batch/infer/{model}"): run_batch}


def harden_routes(fastapi_app, *, lanes, expose_logs: bool) -> None:
    """Replace the routes listed in the module docstring (call `check_monailabel_contract` first)."""
    from monailabel.config import settings
    from monailabel.endpoints import session

    from .datastore_routes import datastore_routes
    from .infer_route import make_infer_endpoint

    user_role, admin_role = settings.MONAI_LABEL_AUTH_ROLE_USER, settings.MONAI_LABEL_AUTH_ROLE_ADMIN
    annotator_role = settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR
    _replace(fastapi_app, "POST", "/infer/{model}", make_infer_endpoint(lanes))
    for (method, path), endpoint in _task_routes(user_role, annotator_role, admin_role).items():
        _replace(fastapi_app, method, path, endpoint)
    for (method, path), endpoint in datastore_routes(annotator_role).items():
        _replace(fastapi_app, method, path, endpoint)
    _replace_session_routes(fastapi_app, session, user_role)
    if not (settings.MONAI_LABEL_AUTH_ENABLE or expose_logs):
        _replace(fastapi_app, "GET", "/logs/", _logs_refused)
    else:
        logger.info("GET /logs/ served (%s)", "auth enabled: admins only" if settings.MONAI_LABEL_AUTH_ENABLE
                    else "--conf expose_logs true: anyone who can reach the server")
    for path in REMOVED_PATHS:
        _replace(fastapi_app, "POST", path, _not_served)
    logger.info("hardened routes: %s; not served: %s", ", ".join(f"{m} {p}" for m, p in EXPECTED_ROUTES),
                ", ".join(REMOVED_PATHS))


def _not_served(model: str):
    raise http_error(404, "model", model, "whole-slide (WSI) inference is not served by SAMRI; use /infer/{model}")


def _logs_refused():
    raise http_error(403, "logs", "/logs/", "the request log shows every client's parameters: enable MONAI "
                     "Label's auth (MONAI_LABEL_AUTH_ENABLE) or start with --conf expose_logs true")


def _replace_session_routes(fastapi_app, session, role: str) -> None:
    from monailabel.endpoints.user.auth import RBAC, User

    def known(call, session_id: str, *args):
        try:
            return call(check_id("session_id", session_id), *args)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            raise http_error(404, "session_id", session_id, "no such session (PUT /session/ creates one)") from exc

    def get_session(session_id: str, update_ts: bool = False, image: bool = False,
                    user: User = Depends(RBAC(role))):
        return known(session.get_session, session_id, update_ts, image)

    def remove_session(session_id: str, user: User = Depends(RBAC(role))):
        return known(session.remove_session, session_id)

    _replace(fastapi_app, "GET", "/session/{session_id}", get_session)
    _replace(fastapi_app, "DELETE", "/session/{session_id}", remove_session)


__all__ = ["EXPECTED_ROUTES", "check_monailabel_contract", "harden_routes"]
