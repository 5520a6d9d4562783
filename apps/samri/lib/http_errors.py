"""How SAMRI errors become HTTP status codes in MONAI Label 0.8.5.

MONAI Label's ``/infer`` endpoint registers no exception handler: any exception from
``MONAILabelApp.infer`` (``MONAILabelException`` included) ends as a bare HTTP 500. FastAPI's
``HTTPException`` is the one type it turns into a status code and a JSON body
``{"detail": message}``; ``MONAILabelApp.infer`` calls the task in the endpoint's own thread (or
re-raises from its thread pool), so raising it inside a task reaches the client unchanged.

* `samri.errors.SamriInputError` (bad request field, bad or unreadable image) -> 422, the message
  naming the field and value;
* an unknown image id -> 404 (raised by the app before the task runs);
* `ModelUnavailable` (weights that cannot be loaded: server configuration) -> 503.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from fastapi import HTTPException

from samri.errors import SamriInputError

from .runtime import ModelUnavailable

logger = logging.getLogger(__name__)

INPUT_ERROR_STATUS = 422
UNKNOWN_IMAGE_STATUS = 404
MODEL_UNAVAILABLE_STATUS = 503


@contextmanager
def http_errors(task: str) -> Iterator[None]:
    """Re-raise SAMRI errors from the block as `fastapi.HTTPException` with a 4xx/503 status."""
    try:
        yield
    except SamriInputError as exc:
        logger.warning("%s: rejected request: %s", task, exc)
        raise HTTPException(status_code=INPUT_ERROR_STATUS, detail=f"{task}: {exc}") from exc
    except ModelUnavailable as exc:
        logger.error("%s: %s", task, exc)
        raise HTTPException(status_code=MODEL_UNAVAILABLE_STATUS, detail=f"{task}: {exc}") from exc


def unknown_image(image_id: str) -> HTTPException:
    """The 404 for an image id the datastore does not hold."""
    return HTTPException(status_code=UNKNOWN_IMAGE_STATUS,
                         detail=f"image={image_id!r}: not found in the datastore (see GET /datastore/)")
