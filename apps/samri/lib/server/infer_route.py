"""The hardened ``POST /infer/{model}``: checked before MONAI Label's code runs, and run off the event loop.

MONAI Label 0.8.5's endpoint is an ``async def`` that runs the whole inference inside the event
loop, so one long request stalls every client and ``/info/``. This route keeps the endpoint's
signature and behaviour for good requests (it calls MONAI Label's own ``run_inference`` with the
same arguments) but first checks every field (`params`) and then runs it in a worker thread, in a
lane (`lanes`): clicks first, 3D requests yielding to them between slices. While it runs, the route
watches the connection; a client that goes away sets the request's ``cancelled`` flag
(`context.RequestContext`), which the 3D propagation checks between slices.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from typing import Any, Optional

from fastapi import BackgroundTasks, Depends, File, Form, Request, UploadFile
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from starlette.concurrency import run_in_threadpool

from .context import RequestContext, run_with
from .lanes import RequestLanes
from .names import served_names
from .params import check_id, check_model, check_output, http_error, parse_params

logger = logging.getLogger(__name__)

#: how often the route looks at the connection while the worker thread runs.
DISCONNECT_POLL_S = 0.25
#: models served in the interactive lane (everything else is heavy).
INTERACTIVE_MODELS = ("samri_2d",)


def _is_dicomweb(datastore: Any) -> bool:
    from monailabel.datastore.dicom import DICOMWebDatastore

    return isinstance(datastore, DICOMWebDatastore)


def _check_request(instance: Any, model: str, image: str, session_id: str, params: str | None,
                   has_file: bool, output: str | None) -> tuple[dict[str, Any], str | None]:
    """Every check that needs no image I/O; returns (params object, output)."""
    check_model(model, served_names(instance, "infers"))
    output = check_output(output, dicomweb=_is_dicomweb(instance.datastore()))
    payload = parse_params(params, model=model)
    if image:
        check_id("image", image)
    if session_id:
        check_id("session_id", session_id)
        sessions = instance.sessions()
        if sessions is None:
            raise http_error(422, "session_id", session_id, "sessions are not enabled on this server")
        if sessions.get_session(session_id) is None:
            raise http_error(404, "session_id", session_id, "no such session (PUT /session/ creates one)")
    if not (has_file or image or session_id):
        raise http_error(422, "image", image, "give ?image=<datastore id>, a session_id or upload a file")
    return payload, output


def make_infer_endpoint(lanes: RequestLanes):
    """The endpoint function for ``POST /infer/{model}`` (same parameters as MONAI Label's)."""
    from monailabel.endpoints.infer import run_inference
    from monailabel.interfaces.utils.app import app_instance

    async def api_run_inference(
        request: Request,
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[str] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        instance = app_instance()
        payload, output = _check_request(instance, model, image, session_id, params, file is not None, output)
        context = RequestContext()
        interactive = model in INTERACTIVE_MODELS
        if not interactive:
            context.pause = lanes.yield_to_interactive

        def work():
            with (lanes.interactive() if interactive else lanes.heavy()):
                if context.cancelled.is_set():
                    raise http_error(499, "client", "disconnected", "went away before its request ran")
                return run_with(context, run_inference, background_tasks, model, image, session_id,
                                json.dumps(payload), file, label, output)

        if interactive:
            job = asyncio.ensure_future(run_in_threadpool(work))
        else:
            loop = asyncio.get_running_loop()
            job = loop.run_in_executor(lanes.heavy_executor(), contextvars.copy_context().run, work)
        while True:
            done, _ = await asyncio.wait({job}, timeout=DISCONNECT_POLL_S)
            if done:
                return job.result()
            if not context.cancelled.is_set() and await request.is_disconnected():
                logger.info("infer %s %s: client disconnected; stopping its request", model, image)
                context.cancelled.set()

    return api_run_inference


__all__ = ["INTERACTIVE_MODELS", "make_infer_endpoint"]
