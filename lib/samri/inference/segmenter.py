"""2D prediction on cached embeddings and 3D propagation in both directions.

Frames: masks are returned in slice pixels ``(H, W)`` / volume voxels ``(X, Y, Z)``; prompts come
as `samri.inference.prompts.SlicePrompt` in slice pixels; the decoder's low-res logits (``(1, 1, s, s)``) are
kept for refinement clicks.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from samri.errors import SamriInputError
from samri.geometry import SliceGeometry, check_axis, in_plane_axes, put_slice, take_slice
from samri.inference.embeddings import EmbeddingCache, get_embeddings
from samri.inference.prompts import SlicePrompt
from samri.inference.propagation import PropagationBudget, PropagationSettings, Propagator, mask_box
from samri.inference.refine import CLICK_MERGES, ClickFill, clipped_to_box, fill_clicks, local_merge, logits_for_mask
from samri.inference.reuse import PropagationMemo
from samri.inference.shape_prior import fuse_prior

__all__ = ["BOX_SEARCH_HALF_SIZES", "PropagationBudget", "PropagationSettings", "Segmenter", "SliceResult",
           "VolumeResult", "mask_box"]

logger = logging.getLogger(__name__)


@dataclass
class SliceResult:
    """One slice's prediction.

    Attributes:
        mask: ``(H, W)`` bool in slice pixels.
        low_res_logits: ``(1, 1, s, s)`` decoder logits (feed back as ``SlicePrompt.mask_logits``).
        iou: the decoder's predicted IoU of ``mask``.
    """

    mask: np.ndarray
    low_res_logits: torch.Tensor
    iou: float

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class VolumeResult:
    """A 3D prediction on the image grid.

    Attributes:
        mask: ``(X, Y, Z)`` bool.
        slices: ``{slice index: SliceResult}`` along ``axis`` for every predicted slice.
        axis: the slicing axis.
        stops: where and why each front stopped (`samri.inference.propagation.PropagationRun.stops`).
        partial: None, or why the budget ended propagation early
            (`samri.inference.propagation.PropagationRun.partial`).
        memo: what this client's next request may reuse (`samri.inference.reuse`); None when partial.
        kept: slices taken from the previous run's memo instead of predicted (ascending).
    """

    mask: np.ndarray
    slices: dict[int, SliceResult] = field(default_factory=dict)
    axis: int = 2
    stops: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None
    memo: PropagationMemo | None = None
    kept: list[int] = field(default_factory=list)


#: identities of segmenters (a memo of one segmenter's run is never reused by another)
_SEGMENTER_IDS = itertools.count(1)

#: half sizes of the candidate boxes of `Segmenter._box_search`, as fractions of the slice's longest side
BOX_SEARCH_HALF_SIZES = (0.02, 0.04, 0.06, 0.09, 0.13, 0.2)


def _answer_box(mask: np.ndarray, prompt: SlicePrompt) -> np.ndarray | None:
    """Tight ``(r0, c0, r1, c1)`` box of a ``(H, W)`` answer and the prompt's positive clicks; None without a
    positive click."""
    positive = prompt.points[prompt.labels > 0]
    if not len(positive):
        return None
    covered = mask.copy()
    covered[positive[:, 0].astype(int), positive[:, 1].astype(int)] = True
    return mask_box(covered)


def _fit_score(mask: np.ndarray, iou: float, prompt: SlicePrompt) -> tuple[int, float]:
    """How well a candidate ``(H, W)`` mask answers points-only clicks: (positive clicks inside minus
    negative clicks inside, predicted IoU); higher is better."""
    inside = np.array([bool(mask[int(round(r)), int(round(c))]) for r, c in prompt.points], dtype=bool)
    return int(inside[prompt.labels == 1].sum()) - int(inside[prompt.labels == 0].sum()), float(iou)


class Segmenter:
    """SAMRI prediction over a `samri.volume.PreparedVolume` with cached embeddings.

    Args:
        model: a `samri.model.builders.SamModel`.
        cache: the shared `samri.inference.embeddings.EmbeddingCache`.
        propagation: 3D stopping rules.
        click_merge: ``"local"``: a refinement (clicks + the previous logits) changes the previous
            mask only in the changed regions that hold a click it got wrong
            (`samri.inference.refine.local_merge`); ``"global"``: the decoder's new mask as it is.
        click_fill: on a refinement (a prompt with the previous logits), a click the answer still
            contradicts changes the mask around it (`samri.inference.refine.fill_clicks`); None: off.
        box_clip: a prompted slice's answer keeps no pixel outside the user's box, unless a positive
            click lies outside it (`samri.inference.refine.clip_to_box`).
    """

    def __init__(self, model, cache: EmbeddingCache, *, propagation: PropagationSettings = PropagationSettings(),
                 click_merge: str = "local", click_fill: ClickFill | None = ClickFill(), box_clip: bool = True):
        if click_merge not in CLICK_MERGES:
            raise SamriInputError("click_merge", click_merge, f"must be one of {list(CLICK_MERGES)}")
        self.model = model
        self.cache = cache
        self.propagation = propagation
        self.click_merge = click_merge
        self.click_fill = click_fill
        self.box_clip = box_clip
        self.uid = next(_SEGMENTER_IDS)
        self._dense_pe: torch.Tensor | None = None

    def dense_pe(self) -> torch.Tensor:
        """The prompt encoder's positional encoding of the embedding grid (constant: computed once)."""
        if self._dense_pe is None:
            with torch.inference_mode():
                self._dense_pe = self.model.prompt_encoder.get_dense_pe()
        return self._dense_pe

    def embedding(self, volume, axis: int, index: int) -> torch.Tensor:
        """``(C, h, w)`` embedding of one slice (encoded on a cache miss)."""
        return get_embeddings(self.model, volume, self.cache, axis, [index])[int(index)]

    def slice_geometry(self, volume, axis: int) -> SliceGeometry:
        rows, cols = in_plane_axes(axis)
        return SliceGeometry(volume.shape[rows], volume.shape[cols], self.model.input_size)

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, geom: SliceGeometry, prompt: SlicePrompt, *,
               point_prompts: str | None = None) -> SliceResult:
        """Prompt encoder + mask decoder on one embedding ``(C, h, w)``.

        A single point without box or mask is ambiguous, so for SAM-trained decoders
        (``point_prompts == "native"``) three masks are predicted and the one with the best
        predicted IoU is kept (SAM's recommendation); otherwise one mask (decoders our trainer
        wrote, ``"single"``, learned points on that output only).
        Models trained with boxes only (``point_prompts == "box_search"``, e.g. LiteMedSAM) turn
        a points-only prompt into a search over boxes around the points (`_box_search`);
        ``"single_or_box"`` lets a first points-only prompt pick between both (`_single_or_box`).
        With ``"single"``, a lone first point (no box, no previous logits) is answered where the logits
        exceed the model's ``lone_point_threshold`` (the logits are shifted by it).
        ``point_prompts`` overrides the model's mode for this call (3D seeds: `point_prompts_3d`).
        """
        if prompt.is_empty and prompt.mask_logits is None:
            raise SamriInputError("prompt", "empty", "give at least one point or a box")
        prompt.check_inside((geom.height, geom.width))
        mode = point_prompts or self.point_prompts
        if prompt.box is None and (prompt.labels == 1).any() and mode == "box_search":
            return self._merged(geom, prompt, self._box_search(embedding, geom, prompt))
        if (prompt.box is None and prompt.mask_logits is None and (prompt.labels == 1).any()
                and mode == "single_or_box"):
            return self._single_or_box(embedding, geom, prompt)
        multimask = (len(prompt.points) == 1 and prompt.box is None and prompt.mask_logits is None
                     and mode == "native")
        low_res, iou = self._run_decoder(embedding, self.model.prompt_encoder(**prompt.to_model(geom,
                                                                                                self.model.device)),
                                         multimask)
        best = int(torch.argmax(iou[0])) if multimask else 0
        low_res = low_res[:, best:best + 1]
        if mode == "single" and prompt.box is None and prompt.mask_logits is None and self.lone_point_threshold:
            # the single-mask answer to a lone point spills into the tissue around it; shifted, the mask
            # is logits > threshold and the logits fed back with the next click say the same
            low_res = low_res - self.lone_point_threshold
        mask = geom.logits_to_slice(low_res)[0, 0].numpy() > 0.0
        return self._merged(geom, prompt, SliceResult(mask=mask, low_res_logits=low_res, iou=float(iou[0, best])))

    def _merged(self, geom: SliceGeometry, prompt: SlicePrompt, result: SliceResult) -> SliceResult:
        """`click_merge` ``"local"``: keep a refinement's changes local to the clicks it answers."""
        if self.click_merge != "local" or prompt.mask_logits is None or not len(prompt.points):
            return result
        merged = local_merge(geom, prompt.mask_logits, result.low_res_logits, prompt.points, prompt.labels)
        if merged is None:
            return result
        return SliceResult(mask=merged[0], low_res_logits=merged[1], iou=result.iou)

    @property
    def point_prompts(self) -> str:
        return getattr(self.model, "point_prompts", "native")

    @property
    def lone_point_threshold(self) -> float:
        """Logit threshold of a lone first point's single-mask answer (`samri.model.builders.ModelSpec`)."""
        return float(getattr(self.model, "lone_point_threshold", 0.0) or 0.0)

    @property
    def point_prompts_3d(self) -> str:
        """How a 3D seed prompted by points alone is decoded (`samri.model.builders.SamModel.point_prompts_3d`)."""
        return getattr(self.model, "point_prompts_3d", None) or self.point_prompts

    def _run_decoder(self, embedding: torch.Tensor, prompt_embeddings: tuple[torch.Tensor, torch.Tensor],
                     multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask decoder for ``B`` prompts on one embedding: ``(B, M, s, s)`` logits, ``(B, M)`` IoU."""
        model = self.model
        sparse, dense = prompt_embeddings
        low_res, iou = model.mask_decoder(image_embeddings=embedding[None].to(model.device),
                                          image_pe=self.dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=multimask)
        return low_res.float().cpu(), iou.float().cpu()

    def _single_or_box(self, embedding: torch.Tensor, geom: SliceGeometry, prompt: SlicePrompt) -> SliceResult:
        """First points-only prompt (no box, no previous logits), ``point_prompts == "single_or_box"``:
        the single-mask answer to the points competes with the box search's candidates, each box sent
        with the points (`_box_search`); the winner is picked as there (points inside, then predicted IoU)."""
        embedded = self.model.prompt_encoder(**prompt.to_model(geom, self.model.device))
        logits, iou = self._run_decoder(embedding, embedded, multimask=False)
        single = SliceResult(mask=geom.logits_to_slice(logits)[0, 0].numpy() > 0.0, low_res_logits=logits[:, :1],
                             iou=float(iou[0, 0]))
        boxed = self._box_search(embedding, geom, prompt, with_points=True)
        return max((single, boxed), key=lambda result: _fit_score(result.mask, result.iou, prompt))

    def _box_search(self, embedding: torch.Tensor, geom: SliceGeometry, prompt: SlicePrompt, *,
                    with_points: bool = False) -> SliceResult:
        """Points-only prompt for a box-trained decoder: try boxes around the positive points.

        Candidates are the positive points' bounding box grown by each of `BOX_SEARCH_HALF_SIZES`
        (fractions of the slice's longest side); all are decoded in one batch, each with the points
        too when ``with_points``. The winner is the mask that contains the most positive and fewest
        negative points, then the highest predicted IoU (`_fit_score`).
        """
        positive = prompt.points[prompt.labels == 1]
        side = max(geom.height, geom.width)
        lo, hi = positive.min(axis=0), positive.max(axis=0)
        boxes = []
        for frac in BOX_SEARCH_HALF_SIZES:
            half = max(2.0, frac * side)
            boxes.append([max(lo[0] - half, 0), max(lo[1] - half, 0),
                          min(hi[0] + half, geom.height - 1), min(hi[1] + half, geom.width - 1)])
        device = self.model.device
        boxes_xy = torch.as_tensor(np.stack([geom.box_to_input(b) for b in boxes]), dtype=torch.float32, device=device)
        masks = None
        if prompt.mask_logits is not None:
            masks = prompt.mask_logits.to(device).expand(len(boxes), -1, -1, -1)
        points = None
        if with_points:
            coords, labels = prompt.to_model(geom, device)["points"]
            points = (coords.expand(len(boxes), -1, -1), labels.expand(len(boxes), -1))
        embedded = self.model.prompt_encoder(points=points, boxes=boxes_xy, masks=masks)
        low_res, iou = self._run_decoder(embedding, embedded, multimask=False)
        full = geom.logits_to_slice(low_res)[:, 0].numpy() > 0.0
        best = max(range(len(boxes)), key=lambda n: _fit_score(full[n], float(iou[n, 0]), prompt))
        return SliceResult(mask=full[best], low_res_logits=low_res[best:best + 1, :1], iou=float(iou[best, 0]))

    def predict_slice(self, volume, axis: int, index: int, prompt: SlicePrompt, *,
                      point_prompts: str | None = None, shape_prior: bool = True) -> SliceResult:
        """2D prediction on slice ``index`` along ``axis`` (encodes it on a cache miss); on a refinement
        every click holds in the answer (`click_fill`). ``point_prompts``: as in `decode`. ``shape_prior``:
        a box of a named structure takes the model's shape prior (`with_shape_prior`)."""
        axis = check_axis(axis)
        geom = self.slice_geometry(volume, axis)
        rows, cols = in_plane_axes(axis)
        spacing = getattr(volume, "spacing", None)
        return self.answer(self.embedding(volume, axis, index), geom, prompt,
                           image=take_slice(volume.windowed, axis, index), point_prompts=point_prompts,
                           prior_at=None if spacing is None or not shape_prior else (axis, (spacing[rows],
                                                                                             spacing[cols])))

    def answer(self, embedding: torch.Tensor, geom: SliceGeometry, prompt: SlicePrompt, *,
               image: np.ndarray | None = None, point_prompts: str | None = None,
               prior_at: tuple[int, tuple[float, float]] | None = None) -> SliceResult:
        """The served answer on one embedding ``(C, h, w)``: `decode` (a lone first click of a named structure as
        the box it stands for, `point_box`), then the shape prior (only with ``prior_at``, ``(axis, (row mm,
        column mm))`` of the slice: `with_shape_prior`), then the box clip
        (``box_clip``), then click fill (``click_fill``; only with ``image``, the ``(H, W)`` windowed slice in
        ``[0, 1]``)."""
        override = {} if point_prompts is None else {"point_prompts": point_prompts}
        sized = None if prior_at is None else self.point_box(geom, prompt, *prior_at, image=image)
        if sized is not None:  # answered as the box it stands for; a box only centred on the click is unsure and
            # the prior would misplace it, a box found by the image takes the prior of the sections it matched
            box, found_by_image = sized
            prompt = replace(prompt, box=box, structure=prompt.structure if found_by_image else None)
        result = self.decode(embedding, geom, prompt, **override)
        if prior_at is not None:
            result = self.with_shape_prior(geom, prompt, result, *prior_at, image=image)
        if self.box_clip:
            result = clipped_to_box(geom, result, prompt.box, prompt.points, prompt.labels)
        if self.click_fill is None or image is None or prompt.mask_logits is None or not len(prompt.points):
            return result
        filled = fill_clicks(result.mask, image, prompt.points, prompt.labels, self.click_fill)
        if filled is result.mask:
            return result
        logits = logits_for_mask(geom, result.low_res_logits, result.mask, filled)
        return SliceResult(mask=filled, low_res_logits=logits, iou=result.iou)

    def point_box(self, geom: SliceGeometry, prompt: SlicePrompt, axis: int, spacing_mm: tuple[float, float],
                  image: np.ndarray | None = None) -> tuple[np.ndarray, bool] | None:
        """``(box, found by the image)``: the box a lone first click of a named structure stands for around the first
        positive click, found by the windowed slice ``image`` when the sections carry their images and one matches
        (`samri.inference.shape_prior.ShapePriors.matched_point_box`), else the structure's typical section size
        centred on it (`ShapePriors.point_box`); None for a prompt with a box or previous logits, without a positive
        click or name, or without finished sections."""
        priors = getattr(self.model, "shape_priors", None)
        positive = prompt.points[prompt.labels > 0]
        if (priors is None or prompt.box is not None or prompt.mask_logits is not None or not prompt.structure
                or not len(positive)):
            return None
        shape = (geom.height, geom.width)
        if image is not None:
            matched = priors.matched_point_box(prompt.structure, axis, positive[0], shape, spacing_mm, image)
            if matched is not None:
                return matched, True
        typical = priors.point_box(prompt.structure, axis, positive[0], shape, spacing_mm)
        return None if typical is None else (typical, False)

    def with_shape_prior(self, geom: SliceGeometry, prompt: SlicePrompt, result: SliceResult, axis: int,
                         spacing_mm: tuple[float, float], image: np.ndarray | None = None) -> SliceResult:
        """An answer of a named structure with the model's shape prior of ``prompt.structure`` added to its logits
        (`samri.inference.shape_prior`): on a box (the first answer and every refinement of a session with a box), or,
        without a box, on the tight box of the answer and the positive clicks (a lone first click answered without a
        box) or on the box the image and the clicks choose around it (a refinement of a session begun with a click,
        `samri.inference.shape_prior.ShapePriors.refined_box`); ``result`` itself when the model has no prior for that
        structure on ``axis`` or the prompt has neither box nor positive click. On a refinement the previous logits
        already carry the prior where the clicks changed nothing, so there it adds up; on the validation sessions that
        beat adding it to the first answer only (docs/ADAPTATION.md). ``image``: the ``(H, W)`` windowed slice; with it
        the sections are chosen by what the slice shows inside the box as well as by size
        (`samri.inference.shape_prior.ShapePriors.prior`)."""
        priors = getattr(self.model, "shape_priors", None)
        if priors is None or not prompt.structure:
            return result
        box = prompt.box if prompt.box is not None else _answer_box(result.mask, prompt)
        if box is None:
            return result
        if prompt.box is None and prompt.mask_logits is not None and image is not None:
            box = priors.refined_box(prompt.structure, axis, box, (geom.height, geom.width), spacing_mm, image,
                                     prompt.points, prompt.labels)
        prior = priors.prior(prompt.structure, axis, box, (geom.height, geom.width), spacing_mm, image=image,
                             points=prompt.points, labels=prompt.labels)
        if prior is None:
            return result
        logits = fuse_prior(geom, result.low_res_logits, prior, box, priors.settings.weight)
        return replace(result, mask=geom.logits_to_slice(logits)[0, 0].numpy() > 0.0, low_res_logits=logits)

    def propagate(self, volume, axis: int, seeds: dict[int, SlicePrompt], *,
                  bounds: tuple[int, int] | None = None, roi_box: np.ndarray | None = None,
                  budget: PropagationBudget | None = None, should_stop: Callable[[], bool] | None = None,
                  memo: PropagationMemo | None = None, progress: bool = False) -> VolumeResult:
        """Segment prompted slices, then follow the object through the volume in both directions.

        Each next slice is prompted with the box of the previous slice's mask (plus a margin,
        clipped to ``roi_box``); propagation stops where the object ends (see
        `PropagationSettings`), at ``bounds`` (inclusive slice range), where another seed's
        result already is, or when ``budget`` runs out (the result is then marked ``partial``).

        Args:
            seeds: ``{slice index: prompt}``; at least one.
            bounds: inclusive slice range to stay within (e.g. the ROI's), default whole axis.
            roi_box: ``(r0, c0, r1, c1)`` in-plane limit for propagated boxes.
            budget: slice, time and cancellation limits (default: none).
            should_stop: polled between slices; True ends propagation (overrides ``budget.should_stop``).
            memo: this client's previous run on the same image (``VolumeResult.memo``): slices no
                changed seed reaches are kept from it (`samri.inference.reuse`).
        """
        axis = check_axis(axis)
        if not seeds:
            raise SamriInputError("seeds", {}, "3D propagation needs at least one prompted slice")
        n = volume.shape[axis]
        bounds = bounds if bounds is not None else (0, n - 1)
        budget = budget or PropagationBudget()
        if should_stop is not None:
            budget = replace(budget, should_stop=should_stop)
        roi_key = None if roi_box is None else tuple(float(v) for v in roi_box)
        structure = next((p.structure for p in seeds.values() if p.structure), None)
        context = (self.uid, getattr(volume, "content_key", id(volume)), axis,
                   tuple(int(b) for b in bounds), roi_key, self.propagation, structure,
                   id(getattr(self.model, "shape_priors", None)))
        run = Propagator(self, volume, axis, bounds=bounds, roi_box=roi_box, budget=budget,
                         structure=structure).run(seeds, memo=memo, context=context)
        result = VolumeResult(mask=np.zeros(volume.shape, dtype=bool), slices=run.slices, axis=axis,
                              stops=run.stops, partial=run.partial, memo=run.memo, kept=run.kept)
        for index, res in result.slices.items():
            put_slice(result.mask, axis, index, res.mask)
        logger.info("3D propagation on axis %d: %d slices (%d kept from the previous run) from %d seeds (stops %s%s)",
                    axis, len(result.slices), len(run.kept), len(seeds), [(s["at"], s["reason"]) for s in run.stops],
                    f", partial: {run.partial['reason']}" if run.partial else "")
        return result
