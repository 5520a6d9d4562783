"""Stage 2: train only SAM's mask decoder on cached embeddings with simulated prompts.

Frames: embeddings ``(B, C, h, w)``; decoder logits and targets in the low-res decoder frame
``(B, 1, s, s)`` (the model-input frame scaled by ``s / S``, padding included as background).
Its settings, `TrainSettings`, live in `samri.train.config` (imported here for existing callers).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss

from samri.annotator import (
    PROPAGATED_KINDS,
    PROPAGATION_OFFSETS,
    corrective_click,
    pick_mode,
    simulate_prompt,
    slice_session,
    training_prompt,
)
from samri.evaluation.clicks import FIRST_INTERACTIONS, noc
from samri.geometry import SliceGeometry, in_plane_axes, take_slice
from samri.inference.embeddings import EmbeddingCache, EmbeddingKey
from samri.inference.prompts import SlicePrompt
from samri.inference.propagation import PropagationSettings, mask_box
from samri.inference.refine import FORCED_LOGIT, ClickFill, box_bound, low_res_cover
from samri.inference.shape_prior import ShapePriors
from samri.intensity import WindowSettings
from samri.train.config import TrainSettings
from samri.train.stage1 import SliceSample, StudyIndex, label_slice

logger = logging.getLogger(__name__)


class SampleSource:
    """Reads a sample's embedding (from the shared cache), ground-truth slice and, given the
    ``window`` serving uses, its windowed image slice (for click fill in `DecoderTrainer.validate_clicks`)."""

    def __init__(self, indices: Sequence[StudyIndex], cache: EmbeddingCache, encoder_key: str, input_size: int,
                 *, window: WindowSettings | None = None):
        self.by_study = {i.study.study_id: i for i in indices}
        self.cache = cache
        self.encoder_key = encoder_key
        self.input_size = input_size
        self.window = window
        self._labels: dict[str, np.ndarray] = {}
        self._spacings: dict[str, tuple[float, float, float]] = {}
        self._windowed: dict[str, np.ndarray | None] = {}

    def embedding(self, s: SliceSample) -> torch.Tensor:
        emb = self.cached_embedding(s)
        if emb is None:
            raise RuntimeError(f"embedding missing for {s} (stage 1 did not run for this study)")
        return emb

    def cached_embedding(self, s: SliceSample) -> torch.Tensor | None:
        """``(C, h, w)`` embedding of the sample's slice, or None when stage 1 did not encode it."""
        return self.cache.get(EmbeddingKey(self.by_study[s.study_id].content_key, s.axis, s.index, self.encoder_key))

    def target(self, s: SliceSample) -> np.ndarray:
        self._load_label(s.study_id)
        return label_slice(self._labels[s.study_id], s)

    def _load_label(self, study_id: str) -> None:
        if study_id not in self._labels:
            from samri.volume import load_image

            label = load_image(self.by_study[study_id].study.label, "label")
            self._labels[study_id] = np.asarray(label.array)
            self._spacings[study_id] = tuple(float(v) for v in label.spacing)

    def structure(self, s: SliceSample) -> str | None:
        """The name of the sample's structure (its study's ``label_names``), None when unnamed."""
        names = {value: name for name, value in self.by_study[s.study_id].study.label_names.items()}
        return names.get(s.value)

    def spacing_mm(self, s: SliceSample) -> tuple[float, float]:
        """``(row mm, column mm)`` of the sample's slice (the label volume's voxel spacing)."""
        self._load_label(s.study_id)
        rows, cols = in_plane_axes(s.axis)
        spacing = self._spacings[s.study_id]
        return spacing[rows], spacing[cols]

    def image(self, s: SliceSample) -> np.ndarray | None:
        """``(H, W)`` float32 windowed slice in ``[0, 1]``, as serving reads it; None without a ``window``,
        or when the study's image changed on disk since stage 1 indexed it (its embeddings are the old image's).
        Only the last study's windowed volume is kept: validation asks study by study, and a datastore's
        volumes together may not fit in memory."""
        if self.window is None:
            return None
        if s.study_id not in self._windowed:
            from samri.volume import load_image, prepare_volume

            volume = prepare_volume(load_image(self.by_study[s.study_id].study.image), self.window)
            changed = volume.content_key != self.by_study[s.study_id].content_key
            if changed:
                logger.warning("study %s changed on disk since stage 1: validated without click fill", s.study_id)
            self._windowed = {s.study_id: None if changed else volume.windowed}
        windowed = self._windowed[s.study_id]
        return None if windowed is None else take_slice(windowed, s.axis, s.index)

    def neighbour_sample(self, s: SliceSample, rng: np.random.Generator) -> SliceSample | None:
        """The same structure on a random slice `PROPAGATION_OFFSETS` away (None off the volume)."""
        index = s.index + int(rng.choice(PROPAGATION_OFFSETS))
        if not 0 <= index < self.by_study[s.study_id].shape[s.axis]:
            return None
        return SliceSample(s.study_id, s.axis, index, s.value, 0)

    def geometry(self, s: SliceSample) -> SliceGeometry:
        rows, cols = in_plane_axes(s.axis)
        shape = self.by_study[s.study_id].shape
        return SliceGeometry(shape[rows], shape[cols], self.input_size)


def low_res_target(geom: SliceGeometry, mask: np.ndarray, size: int) -> torch.Tensor:
    """``(1, s, s)`` float target of a slice mask in the decoder's low-res frame."""
    full = torch.as_tensor(geom.mask_to_input(mask), dtype=torch.float32)[None, None]
    return F.interpolate(full, size=(size, size), mode="area")[0].round()


def click_loss(logits: torch.Tensor, geoms: Sequence[SliceGeometry], prompts: Sequence[SlicePrompt]) -> torch.Tensor:
    """Binary cross-entropy of the logits at each prompt's clicks against their labels.

    The Dice/focal loss weighs a click's pixel like any other of the ``s x s`` frame, so a decoder
    can ignore a negative click at almost no cost; this term makes every click count.

    Args:
        logits: ``(B, 1, s, s)`` decoder logits (`samri.geometry.SliceGeometry.points_to_low_res` frame).
        prompts: one per row; points in slice pixels ``(r, c)``. Rows without points add nothing.
    Returns:
        the mean over rows with points (0 when none has any).
    """
    size = logits.shape[-1]
    terms = []
    for n, (geom, prompt) in enumerate(zip(geoms, prompts)):
        if not len(prompt.points):
            continue
        rows, cols = geom.points_to_low_res(prompt.points, size).T
        values = logits[n, 0, torch.as_tensor(rows), torch.as_tensor(cols)]
        target = torch.as_tensor(prompt.labels, dtype=values.dtype, device=values.device)
        terms.append(F.binary_cross_entropy_with_logits(values, target))
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0


def clip_logits_to_boxes(logits: torch.Tensor, geoms: Sequence[SliceGeometry],
                         prompts: Sequence[SlicePrompt]) -> torch.Tensor:
    """``(B, 1, s, s)`` logits as serving's box clip leaves them (`samri.inference.refine.clip_to_box`).

    Where a prompt's box bounds the answer (`samri.inference.refine.box_bound`), the low-res cells
    that hold no pixel of the box become ``-FORCED_LOGIT``: a constant, so the loss there has no
    gradient. Serving clips whatever the decoder answers outside the box, so training should not
    spend the decoder's capacity (or shrink its answer inside the box) to avoid a leak nobody sees.
    """
    size = logits.shape[-1]
    keep = torch.ones_like(logits, dtype=torch.bool)
    clipped = False
    for n, (geom, prompt) in enumerate(zip(geoms, prompts)):
        inside = box_bound(prompt.box, (geom.height, geom.width), prompt.points, prompt.labels)
        if inside is not None:
            keep[n] = low_res_cover(geom, inside, size)[0].to(logits.device)
            clipped = True
    if not clipped:
        return logits
    return torch.where(keep, logits, torch.full_like(logits, -FORCED_LOGIT))


def encode_prompts(model, geoms: Sequence[SliceGeometry], prompts: Sequence[SlicePrompt]) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Frozen prompt encoder per sample, padded to one batch: sparse ``(B, n, C)``, dense ``(B, C, h, w)``.

    Sparse prompts are padded with SAM's not-a-point token, as SAM pads its own point prompts.
    """
    pe = model.prompt_encoder
    sparse, dense = [], []
    with torch.no_grad():
        for geom, prompt in zip(geoms, prompts):
            s, d = pe(**prompt.to_model(geom, model.device))
            sparse.append(s[0])
            dense.append(d[0])
        n = max(s.shape[0] for s in sparse)
        pad = pe.not_a_point_embed.weight
        sparse = [torch.cat([s, pad.expand(n - s.shape[0], -1)]) if s.shape[0] < n else s for s in sparse]
    return torch.stack(sparse), torch.stack(dense)


def decoder_forward(model, decoder: torch.nn.Module, embeddings: torch.Tensor, sparse: torch.Tensor,
                    dense: torch.Tensor, image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask decoder on a batch of *different* images: ``(B, 1, s, s)`` logits, ``(B, 1)`` IoU.

    segment_anything's decoder repeats one image embedding per prompt and then adds the dense
    prompt embedding; passing a zero image and ``dense + embedding`` gives per-image inputs.
    """
    zero = torch.zeros_like(embeddings[:1])
    return decoder(image_embeddings=zero, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                   dense_prompt_embeddings=dense + embeddings, multimask_output=False)


class DecoderTrainer:
    """Stage-2 optimisation of ``model.mask_decoder`` (optionally DDP-wrapped as ``decoder``)."""

    def __init__(self, *, model, source: SampleSource, settings: TrainSettings, decoder: torch.nn.Module | None = None):
        self.model = model
        self.source = source
        self.settings = settings
        self.decoder = decoder or model.mask_decoder
        self.loss_fn = DiceFocalLoss(sigmoid=True, lambda_dice=settings.lambda_dice,
                                     lambda_focal=settings.lambda_focal, gamma=settings.focal_gamma)
        params = [p for p in model.mask_decoder.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        with torch.no_grad():
            self.image_pe = model.prompt_encoder.get_dense_pe()
        self.low_res = model.low_res_size

    def _forward(self, samples, prompts, geoms, targets, embeddings):
        sparse, dense = encode_prompts(self.model, geoms, prompts)
        logits, iou_pred = decoder_forward(self.model, self.decoder, embeddings, sparse, dense, self.image_pe)
        if self.settings.box_clip:
            logits = clip_logits_to_boxes(logits, geoms, prompts)
        seg_loss = self.loss_fn(logits, targets)
        with torch.no_grad():
            pred = logits > 0
            inter = (pred & (targets > 0.5)).flatten(1).sum(1).float()
            union = (pred | (targets > 0.5)).flatten(1).sum(1).float().clamp(min=1)
            true_iou = inter / union
        iou_loss = F.mse_loss(iou_pred[:, 0], true_iou)
        if self.settings.click_weight:
            seg_loss = seg_loss + self.settings.click_weight * click_loss(logits, geoms, prompts)
        return logits, seg_loss, iou_loss

    @torch.no_grad()
    def chained_prompt(self, near: SliceSample | None, near_mask: np.ndarray | None, geom: SliceGeometry,
                       rng: np.random.Generator) -> SlicePrompt | None:
        """One step of 3D propagation with ``chain_logits``, as served: the decoder answers the
        neighbouring slice ``near`` (its jittered box; the answer clipped to that box, as serving clips),
        and this slice gets that answer's box plus the propagation margin and its low-res logits
        ``(1, 1, s, s)`` as the mask prompt (`samri.inference.propagation.Propagator`). None when the
        neighbour is off the volume, empty or not encoded, or the answer is empty (the caller then
        prompts with the neighbour's true box)."""
        if near is None or near_mask is None or not near_mask.any():
            return None
        embedding = self.source.cached_embedding(near)
        if embedding is None:
            return None
        seed = training_prompt(near_mask, "box", self.settings.sim, rng)
        sparse, dense = encode_prompts(self.model, [geom], [seed])
        # the bare decoder (same weights): a no-grad forward needs no DDP synchronisation
        logits, _ = decoder_forward(self.model, self.model.mask_decoder, embedding[None].to(self.model.device), sparse,
                                    dense, self.image_pe)
        logits = clip_logits_to_boxes(logits, [geom], [seed]).detach()
        box = mask_box(geom.logits_to_slice(logits)[0, 0].cpu().numpy() > 0, PropagationSettings().box_margin)
        return None if box is None else SlicePrompt(box=box, mask_logits=logits)

    def batch(self, samples: Sequence[SliceSample]):
        embeddings = torch.stack([self.source.embedding(s) for s in samples]).to(self.model.device)
        masks = [self.source.target(s) for s in samples]
        geoms = [self.source.geometry(s) for s in samples]
        targets = torch.stack([low_res_target(g, m, self.low_res) for g, m in zip(geoms, masks)]).to(self.model.device)
        return embeddings, masks, geoms, targets

    def step(self, samples: Sequence[SliceSample], rng: np.random.Generator) -> dict[str, float]:
        """One optimiser step: a simulated prompt per sample, then for some corrective-click rounds.

        A corrected sample gets 1..``sim.correction_rounds`` clicks in sequence, each placed by
        `samri.annotator.corrective_click` on the previous round's prediction and sent with all
        clicks so far and the previous logits as the mask prompt, as a client's next click is served.
        """
        self.decoder.train()
        embeddings, masks, geoms, targets = self.batch(samples)
        prompts = []
        for s, m, geom in zip(samples, masks, geoms):
            mode = pick_mode(self.settings.sim, rng)
            near = self.source.neighbour_sample(s, rng) if mode in PROPAGATED_KINDS else None
            near_mask = None if near is None else self.source.target(near)
            chained = self.chained_prompt(near, near_mask, geom, rng) if mode == "propagated_chain" else None
            prompts.append(chained or training_prompt(m, mode, self.settings.sim, rng, neighbour=near_mask))
        logits, seg_loss, iou_loss = self._forward(samples, prompts, geoms, targets, embeddings)
        loss = seg_loss + self.settings.iou_weight * iou_loss
        corrected = [n for n in range(len(samples)) if rng.random() < self.settings.sim.correction_prob]
        max_rounds = self.settings.sim.correction_rounds if corrected else 0
        rounds = int(rng.integers(1, max_rounds + 1)) if max_rounds > 1 else max_rounds
        round_losses = []
        current = {n: (prompts[n], logits[n:n + 1].detach()) for n in corrected}
        for _ in range(rounds):
            follow = []
            for n in corrected:
                p, previous = current[n]
                pred = geoms[n].logits_to_slice(previous)[0, 0].cpu().numpy() > 0
                click = corrective_click(pred, masks[n], rng)
                pts, lbl = p.points, p.labels
                if click is not None:
                    pts, lbl = np.concatenate([pts, click[0][None]]), np.concatenate([lbl, [click[1]]])
                follow.append(SlicePrompt(points=pts, labels=lbl, box=p.box, mask_logits=previous))
            idx = torch.as_tensor(corrected)
            logits2, seg2, iou2 = self._forward([samples[n] for n in corrected], follow,
                                                [geoms[n] for n in corrected], targets[idx], embeddings[idx])
            round_losses.append(seg2 + self.settings.iou_weight * iou2)
            current = {n: (follow[k], logits2[k:k + 1].detach()) for k, n in enumerate(corrected)}
        if round_losses:
            loss = loss + torch.stack(round_losses).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), "seg_loss": float(seg_loss.detach()),
                "iou_loss": float(iou_loss.detach())}

    @torch.no_grad()
    def validate(self, samples: Sequence[SliceSample], modes: Sequence[str] = ("box", "box+point", "point"),
                 on_batch: Callable[[int, int], None] | None = None) -> dict:
        """The evaluation's deterministic prompts (`samri.annotator.simulate_prompt` without a
        generator: tight box, deepest point); Dice at slice resolution; loss in the low-res frame.
        Figures are keyed ``dice_<mode>`` with ``+`` spelled ``_`` (``dice_box_point``).

        Args:
            on_batch: called with ``(pairs done, pairs total)`` (over all modes) after every batch.
        """
        self.decoder.eval()
        out: dict[str, Any] = {}
        losses = []
        for k, mode in enumerate(modes):
            dices = []
            for start in range(0, len(samples), self.settings.batch_size):
                chunk = samples[start:start + self.settings.batch_size]
                embeddings, masks, geoms, targets = self.batch(chunk)
                prompts = [simulate_prompt(m, mode) for m in masks]
                logits, seg_loss, _ = self._forward(chunk, prompts, geoms, targets, embeddings)
                if mode == "box":
                    losses.append(float(seg_loss) * len(chunk))
                for n, m in enumerate(masks):
                    pred = geoms[n].logits_to_slice(logits[n:n + 1])[0, 0].cpu().numpy() > 0
                    dices.append(2 * (pred & m).sum() / max(pred.sum() + m.sum(), 1))
                if on_batch is not None:
                    on_batch(k * len(samples) + start + len(chunk), len(modes) * len(samples))
            out[f"dice_{mode.replace('+', '_')}"] = float(np.mean(dices)) if dices else 0.0
        out["loss"] = float(sum(losses) / max(len(samples), 1))
        out["dice"] = out.get("dice_box", 0.0)
        return out

    def validate_clicks(self, samples: Sequence[SliceSample], firsts: Sequence[str] = FIRST_INTERACTIONS,
                        max_clicks: int = 5, on_sample: Callable[[int, int], None] | None = None,
                        shape_priors: ShapePriors | None = None) -> dict:
        """The clicks protocol on validation pairs (`samri.annotator.slice_session`), answered as
        served (`samri.inference.segmenter.Segmenter.answer` on the cached embedding: the box clip
        when ``box_clip`` is set, click fill on the windowed slice when ``validation_click_fill`` is
        set and the source has the serving window).

        ``shape_priors``: served as Slicer's named requests are (each prompt names its structure; a session
        takes these shapes, `Segmenter.point_box` and `Segmenter.with_shape_prior`); they must not hold the validation
        studies' own sections. None: unnamed prompts, as OHIF's (the model's own shapes are not used).

        Returns:
            ``{"clicks_<first>": [mean Dice after interaction 1..max_clicks], "noc85_<first>": mean
            NoC@85 (failures count ``max_clicks``), "clicks_score": mean Dice over every curve and
            interaction}``; the score rewards a good first mask and corrections that improve it.
        """
        from samri.inference.segmenter import Segmenter

        self.decoder.eval()
        fill = self.settings.validation_click_fill and self.source.window is not None
        segmenter = Segmenter(self.model, self.source.cache, click_fill=ClickFill() if fill else None,
                              box_clip=self.settings.box_clip)
        out: dict[str, Any] = {}
        curves_all = []
        own_priors = getattr(self.model, "shape_priors", None)
        self.model.shape_priors = shape_priors
        try:
            for k, first in enumerate(firsts):
                curves = []
                for n, s in enumerate(samples):
                    curves.append(slice_session(self._served(segmenter, s, fill, shape_priors is not None),
                                                self.source.target(s), first=first, max_clicks=max_clicks))
                    if on_sample is not None:
                        on_sample(k * len(samples) + n + 1, len(firsts) * len(samples))
                curves = np.asarray(curves, dtype=np.float64).reshape(-1, max_clicks)
                curves_all.append(curves)
                out[f"clicks_{first}"] = [round(float(v), 4) for v in curves.mean(axis=0)] if len(curves) else []
                reached = [noc(c, 0.85) or max_clicks for c in curves]
                out[f"noc85_{first}"] = float(np.mean(reached)) if reached else float(max_clicks)
        finally:
            self.model.shape_priors = own_priors
        stacked = np.concatenate(curves_all) if curves_all else np.zeros((0, max_clicks))
        out["clicks_score"] = float(stacked.mean()) if stacked.size else 0.0
        return out

    def _served(self, segmenter, s: SliceSample, fill: bool, named: bool
                ) -> Callable[[SlicePrompt], tuple[np.ndarray, torch.Tensor]]:
        """``prompt -> (mask, low-res logits)`` on sample ``s``'s cached embedding, as the server answers it;
        ``named``: the prompt names the structure, with the slice's spacing for its shape prior."""
        embedding, geom = self.source.embedding(s), self.source.geometry(s)
        structure = self.source.structure(s) if named else None
        image = self.source.image(s) if fill or structure else None  # click fill; the shapes' choice of sections
        prior_at = (s.axis, self.source.spacing_mm(s)) if structure else None

        def decode(prompt: SlicePrompt) -> tuple[np.ndarray, torch.Tensor]:
            if structure:
                prompt = replace(prompt, structure=structure)
            res = segmenter.answer(embedding, geom, prompt, image=image, prior_at=prior_at)
            return res.mask, res.low_res_logits

        return decode
