"""Uncertainty of the served decoder on a study, from prompts the scorer makes itself.

No annotator prompt is needed. On each sampled slice (`samri.activelearning.sampling`):

1. a SAM-style point grid (`segment_anything.utils.amg.build_point_grid`) is laid over the head's
   bounding box and the points on the head are kept (at most ``max_prompts``, evenly spread);
2. around each point, boxes of a few sizes (``box_fractions`` of the slice side) and
   ``perturbations`` jittered copies of each are decoded in one batch on the cached embedding;
3. per base box: ``1 - predicted IoU`` (the IoU head), ``1 - stability``
   (`segment_anything.utils.amg.calculate_stability_score`: IoU of the mask at logit thresholds
   -1 and +1), ``1 - agreement`` (mean IoU between the box's mask and its jittered copies') and
   ``fill`` (the fraction of the box the mask covers), weighted (``weights``) into one number in
   ``[0, 1]``; the slice's value is their mean.

Why ``fill``: measured with LiteMedSAM on MNI152 (docs/ACTIVE_LEARNING.md), the IoU head and the
stability are *higher* on a heavily corrupted copy (noise + bias field) than on the clean image:
the decoder confidently returns the box itself when it sees no structure. A mask that fills its
prompt box is that failure, so it counts as uncertainty; the IoU and stability terms keep small
default weights.

When the study already has a model label (MONAI Label's ``original`` tag), each of its largest
structures on the slice is prompted with jittered copies of its own box and the slice also gets
``1 - mean Dice`` between those masks and the label: how much the model's answer depends on the
exact prompt. The study's score is the mean over slices; the per-slice values are kept so an
annotator can be sent to the slices most likely wrong.

Frames: masks and logits are compared in the decoder's low-res frame ``(s, s)`` (the model-input
frame scaled by ``s / S``; both masks share its padding); boxes are made in slice pixels
``(r0, c0, r1, c1)`` and mapped with `samri.geometry.SliceGeometry`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from samri.activelearning.config import UncertaintySettings
from samri.geometry import SliceGeometry, in_plane_axes, take_slice

logger = logging.getLogger(__name__)


@dataclass
class SliceUncertainty:
    """One slice's uncertainty and its parts (all in ``[0, 1]``; higher = less sure)."""

    index: int
    value: float
    iou: float
    stability: float
    agreement: float
    fill: float = 0.0
    label_disagreement: float | None = None
    prompts: int = 0

    def to_dict(self) -> dict:
        out = {"slice": self.index, "uncertainty": round(self.value, 4), "pred_iou": round(self.iou, 4),
               "stability": round(self.stability, 4), "agreement": round(self.agreement, 4),
               "fill": round(self.fill, 4), "prompts": self.prompts}
        if self.label_disagreement is not None:
            out["label_disagreement"] = round(self.label_disagreement, 4)
        return out


@dataclass
class StudyUncertainty:
    """A study's uncertainty: ``value`` (mean over slices) and every scored slice."""

    value: float
    axis: int
    slices: list[SliceUncertainty] = field(default_factory=list)

    def top_slices(self, n: int) -> list[dict]:
        """The ``n`` slices with the highest uncertainty (most likely wrong), as dicts."""
        ranked = sorted(self.slices, key=lambda s: s.value, reverse=True)[:n]
        return [s.to_dict() for s in ranked]


def grid_boxes(head: np.ndarray, settings: UncertaintySettings) -> np.ndarray:
    """Base boxes ``(N, 4)`` ``(r0, c0, r1, c1)`` around grid points on the head of a ``(H, W)`` slice."""
    from segment_anything.utils.amg import build_point_grid

    rows = np.flatnonzero(head.any(axis=1))
    cols = np.flatnonzero(head.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 4))
    grid = build_point_grid(settings.grid_points)  # (n*n, 2) normalised (x, y) cell centres
    r = rows[0] + grid[:, 1] * (rows[-1] - rows[0])
    c = cols[0] + grid[:, 0] * (cols[-1] - cols[0])
    points = np.stack([r, c], axis=1)
    on_head = head[np.round(points[:, 0]).astype(int), np.round(points[:, 1]).astype(int)]
    points = points[on_head]
    if len(points) == 0:  # thin or ring-shaped foreground: use its deepest pixel
        points = np.array([[rows[len(rows) // 2], cols[len(cols) // 2]]], dtype=np.float64)
    if len(points) > settings.max_prompts:
        points = points[np.round(np.linspace(0, len(points) - 1, settings.max_prompts)).astype(int)]
    h, w = head.shape
    side = max(h, w)
    boxes = []
    for pr, pc in points:
        for frac in settings.box_fractions:
            half = max(2.0, frac * side)
            boxes.append([max(pr - half, 0), max(pc - half, 0), min(pr + half, h - 1), min(pc + half, w - 1)])
    return np.asarray(boxes, dtype=np.float64)


def jitter_boxes(boxes: np.ndarray, n: int, jitter: float, shape: tuple[int, int],
                 rng: np.random.Generator) -> np.ndarray:
    """``(N, n, 4)`` copies of ``(N, 4)`` boxes, each edge moved by up to ``jitter`` x the box side."""
    if n == 0 or len(boxes) == 0:
        return np.zeros((len(boxes), 0, 4))
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1).clip(min=2.0)  # (N, 2)
    scale = np.concatenate([size, size], axis=1)[:, None, :]  # (N, 1, 4)
    moved = boxes[:, None, :] + rng.uniform(-jitter, jitter, size=(len(boxes), n, 4)) * scale
    h, w = shape
    moved[..., [0, 2]] = moved[..., [0, 2]].clip(0, h - 1)
    moved[..., [1, 3]] = moved[..., [1, 3]].clip(0, w - 1)
    lo = np.minimum(moved[..., :2], moved[..., 2:])
    hi = np.maximum(moved[..., :2], moved[..., 2:])
    return np.concatenate([lo, hi], axis=-1)


@torch.inference_mode()
def decode_boxes(segmenter, embedding: torch.Tensor, geom: SliceGeometry, boxes: np.ndarray,
                 chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``(B, 4)`` slice-pixel boxes on one ``(C, h, w)`` embedding, batched.

    Returns:
        ``(B, s, s)`` low-res logits and ``(B,)`` predicted IoU (single-mask output).
    """
    model = segmenter.model
    device = model.device
    logits, ious = [], []
    for start in range(0, len(boxes), chunk):
        part = boxes[start:start + chunk]
        xy = torch.as_tensor(np.stack([geom.box_to_input(b) for b in part]), dtype=torch.float32, device=device)
        sparse, dense = model.prompt_encoder(points=None, boxes=xy, masks=None)
        low_res, iou = model.mask_decoder(image_embeddings=embedding[None].to(device), image_pe=segmenter.dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=False)
        logits.append(low_res[:, 0].float().cpu())
        ious.append(iou[:, 0].float().cpu())
    return torch.cat(logits), torch.cat(ious)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks broadcast over leading dims (two empty masks agree: 1)."""
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(-2).sum(-1).float()
    total = a.flatten(-2).sum(-1).float() + b.flatten(-2).sum(-1).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def box_fill(masks: torch.Tensor, boxes: np.ndarray, geom: SliceGeometry) -> torch.Tensor:
    """Fraction of each slice-pixel box covered by its low-res mask: ``(B, s, s)`` bool, ``(B, 4)`` -> ``(B,)``."""
    scale = masks.shape[-1] / geom.input_size
    out = torch.zeros(len(boxes))
    for k, box in enumerate(boxes):
        x0, y0, x1, y1 = (int(round(v * scale)) for v in geom.box_to_input(box))
        window = masks[k, max(y0, 0):y1 + 1, max(x0, 0):x1 + 1]
        out[k] = window.float().mean() if window.numel() else 0.0
    return out


def self_prompt_uncertainty(segmenter, embedding: torch.Tensor, geom: SliceGeometry, head: np.ndarray,
                            settings: UncertaintySettings, rng: np.random.Generator) -> dict[str, float]:
    """One slice: ``{"value", "iou", "stability", "agreement", "fill", "prompts"}`` (means over base boxes)."""
    from segment_anything.utils.amg import calculate_stability_score

    base = grid_boxes(head, settings)
    if len(base) == 0:
        return {"value": 1.0, "iou": 0.0, "stability": 0.0, "agreement": 0.0, "fill": 1.0, "prompts": 0}
    n = settings.perturbations
    jittered = jitter_boxes(base, n, settings.jitter, head.shape, rng)  # (N, n, 4)
    allboxes = np.concatenate([base, jittered.reshape(-1, 4)]) if n else base
    logits, iou = decode_boxes(segmenter, embedding, geom, allboxes)
    nb = len(base)
    pred_iou = iou[:nb].clamp(0.0, 1.0)
    stability = calculate_stability_score(logits[:nb], 0.0, 1.0).clamp(0.0, 1.0)
    masks = logits > 0
    if n:
        agree = _iou(masks[:nb, None], masks[nb:].reshape(nb, n, *masks.shape[1:])).mean(dim=1)
    else:
        agree = torch.ones(nb)
    fill = box_fill(masks[:nb], base, geom)
    w = settings.weights
    per_box = (w["iou"] * (1 - pred_iou) + w["stability"] * (1 - stability) + w["agreement"] * (1 - agree)
               + w["fill"] * fill)
    per_box = per_box / max(sum(w.values()), 1e-9)
    return {"value": float(per_box.mean()), "iou": float(pred_iou.mean()), "stability": float(stability.mean()),
            "agreement": float(agree.mean()), "fill": float(fill.mean()), "prompts": len(allboxes)}


def label_disagreement(segmenter, embedding: torch.Tensor, geom: SliceGeometry, label: np.ndarray,
                       settings: UncertaintySettings, rng: np.random.Generator) -> float | None:
    """``1 - mean Dice`` between the ``(H, W)`` integer label's structures and masks from jittered boxes.

    None when the slice holds no structure. Only the ``max_structures`` largest are prompted.
    """
    from samri.inference.segmenter import mask_box

    values, counts = np.unique(label[label > 0], return_counts=True)
    if values.size == 0:
        return None
    order = np.argsort(-counts)[: settings.max_structures]
    boxes, targets = [], []
    size = segmenter.model.low_res_size
    for v in values[order]:
        mask = label == v
        box = mask_box(mask)
        copies = jitter_boxes(box[None], max(1, settings.perturbations), settings.jitter, mask.shape, rng)[0]
        boxes.append(copies)
        frame = torch.as_tensor(geom.mask_to_input(mask), dtype=torch.float32)[None, None]
        target = F.interpolate(frame, size=(size, size), mode="area")[0, 0] >= 0.5
        targets.append(target.expand(len(copies), -1, -1))
    logits, _ = decode_boxes(segmenter, embedding, geom, np.concatenate(boxes))
    dice = _dice(logits > 0, torch.cat(targets))
    return float(1.0 - dice.mean())


def study_uncertainty(segmenter, volume, indices: Sequence[int], settings: UncertaintySettings, *, axis: int = 2,
                      label: np.ndarray | None = None, embeddings: Mapping[int, torch.Tensor] | None = None,
                      head: np.ndarray | None = None, seed: int = 0) -> StudyUncertainty:
    """Score one study.

    Args:
        segmenter: a `samri.inference.segmenter.Segmenter` (model + embedding cache).
        volume: its `samri.volume.PreparedVolume`.
        indices: slices to score along ``axis``.
        label: ``(X, Y, Z)`` integer model label (``original`` tag) on the volume's grid, or None.
        embeddings: ``{slice: (C, h, w)}`` already fetched (default: through ``segmenter``'s cache).
        head: ``(X, Y, Z)`` bool head mask (default: `samri.activelearning.sampling.head_mask`).
        seed: seed of the box jitter (per slice: ``seed + index``), so scores are reproducible.
    """
    from samri.activelearning.sampling import head_mask
    from samri.inference.embeddings import get_embeddings

    if head is None:
        head = head_mask(volume.windowed)
    if embeddings is None:
        embeddings = get_embeddings(segmenter.model, volume, segmenter.cache, axis, indices)
    rows, cols = in_plane_axes(axis)
    geom = SliceGeometry(volume.shape[rows], volume.shape[cols], segmenter.model.input_size)
    slices = []
    for index in indices:
        rng = np.random.default_rng(seed + int(index))
        parts = self_prompt_uncertainty(segmenter, embeddings[index], geom, take_slice(head, axis, index), settings,
                                        rng)
        value = parts["value"]
        result = SliceUncertainty(index=int(index), value=value, iou=parts["iou"], stability=parts["stability"],
                                  agreement=parts["agreement"], fill=parts["fill"], prompts=int(parts["prompts"]))
        if label is not None:
            dis = label_disagreement(segmenter, embeddings[index], geom, take_slice(label, axis, index), settings, rng)
            if dis is not None:
                result.label_disagreement = dis
                result.value = (1 - settings.label_weight) * value + settings.label_weight * dis
        slices.append(result)
    total = float(np.mean([s.value for s in slices])) if slices else 1.0
    return StudyUncertainty(value=total, axis=axis, slices=slices)
