"""The ``samri_2d`` and ``samri_3d`` infer tasks (MONAI Label type ``deepgrow``).

Request (form field ``params`` merged into MONAI Label's request dict), in image voxel indices:
``foreground`` / ``background`` ``[[i, j, k], ...]``, ``roi`` ``[i0, i1, j0, j1, k0, k1]``,
``slice`` (2D), ``label``, ``client_id``, ``reset_state``, ``result_*`` (see `options`). Slices are
taken along axis 2 (k), the axial plane of the sample studies and the one Slicer's 2D path uses.

A click refines the previous answer (its low-res logits are the mask prompt): a client with a
``client_id`` (Slicer) through its own state (`runtime.client_state.ClientStateStore`); a client
without one (OHIF, which sends every click so far) through the answer to the largest earlier set of
its clicks on the same image and label (`samri.inference.click_history`).

Response: a ``(X, Y, Z)`` uint8 file on the image grid (1 = the object; for ``samri_2d`` only the
request's slice is filled) and JSON params with ``label_names``, ``samri`` (slices, predicted IoU,
whether the client's previous logits were used, ``decoder_version`` that served it, and for
``samri_3d`` where propagation stopped and ``partial``) and ``latencies`` in seconds.

Budget of a ``samri_3d`` request (``--conf max_slices_3d`` / ``max_seconds_3d``): when it runs out
the answer holds what was computed, with ``samri.partial = {"reason": "max_slices" |
"max_seconds" | "cancelled", "slices_done": n, "seconds": s}``; otherwise ``partial`` is null. A
callable under `SHOULD_STOP_KEY` in the request is polled between slices (client gone: stop).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from samri.errors import SamriInputError
from samri.inference.click_history import ClickSet
from samri.inference.prompts import parse_request
from samri.inference.propagation import PropagationBudget
from samri.inference.request import run_request

from ..http_errors import http_errors
from ..runtime import SamriRuntime
from ..runtime.client_state import ClickHistoryRefinement, ClientIdRefinement
from ..server.context import current as current_request
from .options import parse_options
from .result import write_result

logger = logging.getLogger(__name__)

AXIS = 2
#: request key the app sets when ``image`` was resolved from the datastore (not an upload).
DATASTORE_IMAGE_KEY = "_samri_datastore_image"
#: request key naming the field an image error is reported under ("file" for uploads).
IMAGE_FIELD_KEY = "_samri_image_field"
#: request key of an optional ``Callable[[], bool]``: True ends a 3D propagation (the client went away).
SHOULD_STOP_KEY = "_samri_should_stop"


class SamriInfer(InferTask):
    """Interactive SAMRI segmentation for Slicer's point panel and OHIF's PointPrompts.

    Args:
        name: task name (``samri_2d`` / ``samri_3d``); part of the refinement-state key.
        runtime: the process's shared `SamriRuntime`.
        mode: ``"2d"`` (one slice) or ``"3d"`` (propagated in both directions).
        labels: label names shown by the clients.
    """

    def __init__(self, *, name: str, runtime: SamriRuntime, mode: str, labels: list[str]) -> None:
        if mode not in ("2d", "3d"):
            raise ValueError(f"mode={mode!r}: must be '2d' or '3d'")
        what = ("one slice from points and/or an ROI box" if mode == "2d"
                else "points and/or an ROI box, propagated through the volume in both directions")
        super().__init__(type=InferType.DEEPGROW, labels=list(labels), dimension=2 if mode == "2d" else 3,
                         description=f"SAMRI ({runtime.settings.model}): {what}")
        self.name = name
        self.runtime = runtime
        self.mode = mode

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Segment per ``request``; returns (result file path, result params)."""
        start = time.perf_counter()
        with http_errors(self.name), self.runtime.activity.active():
            options = parse_options(request)
            context = current_request()  # set by the hardened route: disconnects, yielding to clicks
            image = request.get("image")
            field = str(request.get(IMAGE_FIELD_KEY) or "image")
            if not isinstance(image, str) or not image:
                raise SamriInputError("image", image, "unknown image (not in the datastore and no file uploaded)")
            volume = self.runtime.volume(image, field)
            segmenter = self.runtime.segmenter()
            decoder_version = self.decoder_version()
            t_pre = time.perf_counter()

            if options.client_id:
                state = ClientIdRefinement(self.runtime.states, (self.name, options.client_id, image),
                                           label=options.label, content_key=volume.content_key,
                                           reset=options.reset_state)
            else:  # OHIF: no client_id; the clicks say which earlier answer this request refines
                state = ClickHistoryRefinement(self.runtime.click_history,
                                               (self.name, image, options.label, volume.content_key, decoder_version),
                                               ClickSet.of(parse_request(request, volume.shape, AXIS)),
                                               reset=options.reset_state)
            previous, previous_run = state.previous()
            result = run_request(segmenter, volume, request, mode=self.mode, axis=AXIS, previous_logits=previous,
                                 budget=self.budget(context.work_clock),
                                 should_stop=_should_stop(request) or context.should_stop, previous_run=previous_run)
            state.update(result)
            t_infer = time.perf_counter()
            if request.get(DATASTORE_IMAGE_KEY):
                slices = sorted(result.slices)
                self.runtime.schedule_precompute(image, around=slices[len(slices) // 2] if slices else None)
            path = write_result(result.mask, volume.affine, extension=options.result_extension,
                                compress=options.result_compress)
        end = time.perf_counter()
        summary = result.summary()
        prompted = (set(result.slices) if self.mode == "2d"
                    else set(result.request.prompted_slices()) - set(result.kept))  # kept: not decoded again
        summary["refined_slices"] = sorted(int(i) for i in previous if i in prompted)  # mask prompt used
        summary["decoder_version"] = decoder_version
        params = {"label_names": {options.label: 1}, "samri": summary,
                  "latencies": {"pre": round(t_pre - start, 4), "infer": round(t_infer - t_pre, 4),
                                "post": round(end - t_infer, 4), "total": round(end - start, 4)}}
        logger.info("%s %s label=%s client=%s slices=%s voxels=%d decoder=%s%s in %.3f s", self.name, image,
                    options.label, options.client_id, summary["slices"][:8], summary["voxels"], decoder_version,
                    f" partial={result.partial}" if result.partial else "", end - start)
        return str(path), params

    def budget(self, clock: Callable[[], float] = time.monotonic) -> PropagationBudget:
        """Slice and time limits of one 3D request, from ``--conf max_slices_3d`` / ``max_seconds_3d``;
        ``clock`` counts the request's own work (the route's excludes the pauses spent yielding to clicks)."""
        settings = self.runtime.settings
        return PropagationBudget(max_slices=settings.max_slices_3d, max_seconds=settings.max_seconds_3d, clock=clock)

    def decoder_version(self) -> str | None:
        """Version of the decoder the runtime serves now (``vNNNN``, ``base``; None for ``--conf decoder``)."""
        return self.runtime.status()["model"].get("decoder_version")


def _should_stop(request: dict[str, Any]) -> Callable[[], bool] | None:
    should_stop = request.get(SHOULD_STOP_KEY)
    return should_stop if callable(should_stop) else None
