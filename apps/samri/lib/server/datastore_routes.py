"""Checked versions of MONAI Label 0.8.5's datastore write routes (``PUT`` image, label and their info).

MONAI Label's endpoints call ``json.loads`` on the ``params``/``info`` form field and then add a
``user`` key, so a field that is not JSON, or JSON that is not an object, ends as a 500. These
endpoints check the field first (422 naming it) and then call MONAI Label's own function with the
same arguments; ids, tags and the uploaded file itself are checked by the datastore
(``lib/datastore/local.py``), which refuses traversal and invalid labels. They are ``def``
endpoints, so FastAPI runs them in a worker thread: checking a label reads a volume.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from fastapi import BackgroundTasks, Depends, File, Form, UploadFile

from .params import http_error


def json_object(field: str, text: str | None) -> dict[str, Any]:
    """A form field holding a JSON object ("" and None = {}), else 422 naming ``field``."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise http_error(422, field, text, f"is not valid JSON ({str(exc)[:120]})") from exc
    if not isinstance(value, dict):
        raise http_error(422, field, value, "must be a JSON object")
    return value


def datastore_routes(role_annotator: str) -> dict[tuple[str, str], Callable]:
    """(method, path) -> endpoint, for the routes listed in `routes.EXPECTED_ROUTES` under /datastore."""
    from monailabel.endpoints import datastore
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.datastore import DefaultLabelTag

    def add_image(background_tasks: BackgroundTasks, image: Optional[str] = None, params: str = Form("{}"),
                  file: UploadFile = File(...), user: User = Depends(RBAC(role_annotator))):
        checked = json.dumps(json_object("params", params))
        return datastore.add_image(background_tasks, image, checked, file, user.username)

    def save_label(background_tasks: BackgroundTasks, image: str, params: str = Form("{}"),
                   tag: str = DefaultLabelTag.FINAL.value, label: UploadFile = File(...),
                   user: User = Depends(RBAC(role_annotator))):
        checked = json.dumps(json_object("params", params))
        return datastore.save_label(background_tasks, image, checked, tag, label, user.username)

    def put_image_info(image: str, info: str = Form("{}"), user: User = Depends(RBAC(role_annotator))):
        return datastore.update_image_info(image, json.dumps(json_object("info", info)), user.username)

    def put_label_info(label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(role_annotator))):
        return datastore.update_label_info(label, tag, json.dumps(json_object("info", info)), user.username)

    def update_label_info(label: str, tag: str, params: str = Form("{}"),
                          user: User = Depends(RBAC(role_annotator))):
        return datastore.update_label_info(label, tag, json.dumps(json_object("params", params)), user.username)

    return {("PUT", "/datastore/image"): add_image, ("PUT", "/datastore/"): add_image,
            ("PUT", "/datastore/label"): save_label, ("PUT", "/datastore/image/info"): put_image_info,
            ("PUT", "/datastore/label/info"): put_label_info, ("PUT", "/datastore/updatelabelinfo"): update_label_info}


__all__ = ["datastore_routes", "json_object"]
