"""Checks on what a client sends to ``POST /infer/{model}``, before MONAI Label's endpoint sees it.

MONAI Label 0.8.5 answers a ``params`` form field that is not a JSON object, a missing image and an
unknown model with a bare 500 (it calls ``json.loads`` and the app without a handler). These checks
turn each into a 4xx whose detail names the field and the value:

* 413: ``params`` longer than `MAX_PARAMS_BYTES`, a point list longer than `MAX_POINTS`;
* 422: ``params`` not JSON, not an object, nested deeper than `MAX_JSON_DEPTH`; an ``image`` or
  ``session_id`` that is not a plain id (paths, traversal, separators); keys the path and query own
  (``image``, ``model``, ...) overridden from ``params``; ``output=dicom_seg`` on a local store;
* 404: an unknown model (listing the known ones).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping

from fastapi import HTTPException

from samri.errors import SamriInputError

#: longest ``params`` form field accepted (a Slicer request is well under 1 KB). Starlette itself
#: refuses a form field over 1 MiB with 400 "Field exceeded maximum size" before the route runs.
MAX_PARAMS_BYTES = 256 << 10
#: most points per ``foreground`` / ``background`` list (an annotator clicks tens, not thousands).
MAX_POINTS = 1000
#: deepest nesting of ``params`` (the schema needs 3: object > list > point).
MAX_JSON_DEPTH = 16
#: ``output`` values of MONAI Label's infer endpoint.
OUTPUTS = ("image", "json", "all", "dicom_seg")
#: request keys that the path, the query or the server set; a client may not override them in params.
RESERVED_KEYS = ("image", "file", "session", "session_id", "description", "device", "model_path")
#: private request keys the app sets for itself (never taken from a client).
PRIVATE_PREFIX = "_samri"
#: an image or session id: a file name stem (local store) or a DICOM UID; no separators, no traversal.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")


def http_error(status: int, field: str, value: Any, reason: str) -> HTTPException:
    """An `HTTPException` whose detail reads ``field=value: reason`` (as `SamriInputError` does)."""
    return HTTPException(status_code=status, detail=str(SamriInputError(field, value, reason)))


def check_model(model: str, models: Iterable[str]) -> str:
    """``model`` exactly as registered (case and spaces matter, as in the path), else 404."""
    known = sorted(models)
    if model not in known:
        raise http_error(404, "model", model, f"no such model; this server serves {known}")
    return model


def check_output(output: str | None, *, dicomweb: bool) -> str | None:
    """``output`` one of `OUTPUTS` (None = MONAI Label's default); ``dicom_seg`` only over DICOMweb."""
    if output is None or output == "":
        return None
    if output not in OUTPUTS:
        raise http_error(422, "output", output, f"must be one of {list(OUTPUTS)}")
    if output == "dicom_seg" and not dicomweb:
        raise http_error(422, "output", output, "DICOM SEG results need a DICOMweb datastore; "
                         "ask for output=image or all")
    return output


def check_id(field: str, value: str) -> str:
    """A plain datastore/session id, else 422; the answer never depends on what exists on disk."""
    if not _ID_RE.match(value) or ".." in value:
        raise http_error(422, field, value, "must be a datastore id (letters, digits, '.', '_', '-'; "
                         "no paths), as listed by GET /datastore/")
    return value


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, counted without recursion; stops counting past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_params(text: str | bytes | None, *, model: str) -> dict[str, Any]:
    """The ``params`` form field as a checked JSON object (see the module docstring for the rules)."""
    if text is None or text == "" or text == b"":
        return {}
    if len(text) > MAX_PARAMS_BYTES:
        raise http_error(413, "params", f"<{len(text)} bytes>", f"longer than {MAX_PARAMS_BYTES} bytes")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON or an integer of > 4300 digits
        raise http_error(422, "params", text, f"is not valid JSON ({str(exc)[:120]})") from exc
    if not isinstance(value, dict):
        raise http_error(422, "params", value, "must be a JSON object such as {\"foreground\": [[i, j, k]]}")
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise http_error(422, "params", "<nested>", f"nested deeper than {MAX_JSON_DEPTH} levels")
    for key in value:
        if key.startswith(PRIVATE_PREFIX) or key in RESERVED_KEYS:
            raise http_error(422, f"params.{key}", value[key], "is set by the server; give the image "
                             "as ?image=<id> (or upload a file) and the model in the path")
    if "model" in value and value["model"] != model:
        raise http_error(422, "params.model", value["model"], f"differs from the path's model {model!r}")
    for key in ("foreground", "background"):
        points = value.get(key)
        if isinstance(points, list) and len(points) > MAX_POINTS:
            raise http_error(413, key, f"<{len(points)} points>", f"more than {MAX_POINTS} points")
    return value


def reject_final_save(request: Mapping[str, Any], final_tag: str = "final") -> None:
    """An /infer result is never saved over a finished label: ``save_label`` with the final tag is 422."""
    save = request.get("save_label")
    if save not in (True, "true", "True", "1", 1):
        return
    tag = request.get("label_tag", "original")
    if not isinstance(tag, str):
        raise http_error(422, "label_tag", tag, "must be a label tag name such as 'original'")
    if tag == final_tag:
        raise http_error(422, "label_tag", final_tag, "an /infer result is never saved as the finished label; "
                         "submit it with PUT /datastore/label?tag=final (which checks it against the image)")


__all__ = ["MAX_JSON_DEPTH", "MAX_PARAMS_BYTES", "MAX_POINTS", "OUTPUTS", "check_id", "check_model",
           "check_output", "http_error", "parse_params", "reject_final_save"]
