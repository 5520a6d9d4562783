"""The simulated annotator: prompts and corrective clicks derived from ground truth.

One source for training (random draws), validation and evaluation (deterministic draws), so a
checkpoint's validation figure is the figure ``samri evaluate`` reports for the same pairs.

Frames: 2D masks are ``(H, W)`` bool slice pixels and points ``(r, c)``; boxes ``(r0, c0, r1, c1)``
inclusive pixel extremes; 3D masks ``(X, Y, Z)`` bool voxels and points ``(i, j, k)``.

Prompt kinds (`PROMPT_KINDS`): ``box`` (tight box, optionally jittered), ``point`` (one positive
click inside), ``box+point``, ``points_neg`` (one positive and up to ``max_negatives`` negative
clicks near the object), ``propagated_box`` (the box 3D propagation would give this slice: a
neighbouring slice's box plus the propagation margin) and ``propagated_chain`` (the same box here; the
trainer replaces it with the decoder's own answer on the neighbouring slice, its box and its logits as
the mask prompt, as propagation with ``chain_logits`` prompts: `samri.train.stage2.DecoderTrainer`).
With ``rng=None`` every draw is deterministic: no jitter, the deepest interior point (distance-transform maximum).
With a generator the interior point is drawn among the deep pixels, as an annotator's click varies.

A corrective click (`corrective_click`) goes where the field's interactive protocol puts it
(RITM, SAM, nnInteractive's evaluation): into the largest connected error region, at its deepest
point; positive when that region is missed object, negative when it is false positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from samri.errors import SamriInputError
from samri.inference.prompts import SlicePrompt
from samri.inference.propagation import PropagationSettings, mask_box

PROMPT_KINDS = ("box", "point", "box+point", "points_neg", "propagated_box", "propagated_chain")
#: the kinds prompted from a neighbouring slice
PROPAGATED_KINDS = ("propagated_box", "propagated_chain")

#: slice offsets a propagated kind takes its box from
PROPAGATION_OFFSETS = (-2, -1, 1, 2)

#: how deep (fraction of the region's largest inner distance) a randomly drawn click lies
POINT_DEPTH = 0.5
CLICK_DEPTH = 0.8


@dataclass(frozen=True)
class SimSettings:
    """Training prompt settings (``configs/training.yaml`` ``prompts``).

    Attributes:
        mode_weights: relative frequency of each of `PROMPT_KINDS`.
        box_jitter: max shift of each box edge as a fraction of the slice's longest side (SAMRI ~4%).
        max_negatives: up to this many negative points in ``points_neg`` mode.
        correction_prob: probability that a training sample gets corrective-click rounds.
        correction_rounds: most corrective clicks in sequence for such a sample (each fed the
            previous round's logits, as serving does), drawn uniformly from 1..this.
    """

    mode_weights: Mapping[str, float] = None  # type: ignore[assignment]
    box_jitter: float = 0.04
    max_negatives: int = 2
    correction_prob: float = 0.5
    correction_rounds: int = 1

    def __post_init__(self) -> None:
        weights = dict(self.mode_weights or {"box": 0.4, "point": 0.15, "box+point": 0.3, "points_neg": 0.15})
        unknown = set(weights) - set(PROMPT_KINDS)
        if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
            raise SamriInputError("prompts.mode_weights", weights, f"use non-negative weights for {list(PROMPT_KINDS)}")
        if self.correction_rounds < 1:
            raise SamriInputError("prompts.correction_rounds", self.correction_rounds, "must be at least 1")
        object.__setattr__(self, "mode_weights", weights)


# --- boxes and points ---------------------------------------------------------------------------
def jitter_box(box: np.ndarray, shape: tuple[int, int], jitter: float, rng: np.random.Generator | None) -> np.ndarray:
    """Move each edge of ``(r0, c0, r1, c1)`` by up to ``jitter`` x the longest side (uniform, ordered, clipped).

    ``rng=None`` or ``jitter <= 0`` returns ``box`` unchanged.
    """
    if rng is None or jitter <= 0:
        return np.asarray(box, dtype=np.float64)
    amount = jitter * max(shape)
    b = np.asarray(box, dtype=np.float64) + rng.uniform(-amount, amount, size=4)
    r0, r1 = sorted((b[0], b[2]))
    c0, c1 = sorted((b[1], b[3]))
    h, w = shape
    return np.array([np.clip(r0, 0, h - 1), np.clip(c0, 0, w - 1), np.clip(r1, 0, h - 1), np.clip(c1, 0, w - 1)])


def depth_map(region: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance of each pixel/voxel of ``region`` to the nearest outside one (the array's border counts as outside)."""
    pad = np.pad(np.asarray(region, dtype=bool), 1)
    inner = tuple(slice(1, -1) for _ in range(pad.ndim))
    return ndimage.distance_transform_edt(pad, sampling=spacing)[inner]


def interior_point(region: np.ndarray, rng: np.random.Generator | None = None, depth: float | None = POINT_DEPTH,
                   spacing: Sequence[float] | None = None) -> np.ndarray | None:
    """A point inside ``region`` (2D ``(r, c)`` or 3D ``(i, j, k)``, float); None if it is empty.

    ``rng=None`` or ``depth=None``: the deepest point (distance-transform maximum, first in C order
    on ties). Otherwise a random point at least ``depth`` x the largest inner distance deep.
    """
    region = np.asarray(region, dtype=bool)
    if not region.any():
        return None
    dist = depth_map(region, spacing)
    if rng is None or depth is None:
        return np.array(np.unravel_index(int(np.argmax(dist)), region.shape), dtype=np.float64)
    candidates = np.argwhere(dist >= depth * dist.max())
    return candidates[rng.integers(len(candidates))].astype(np.float64)


def negative_points(mask: np.ndarray, n: int, rng: np.random.Generator, band: int = 6) -> np.ndarray:
    """Up to ``n`` background ``(r, c)`` within ``band`` pixels of the object (where confusions are)."""
    ring = ndimage.binary_dilation(mask, iterations=band) & ~mask
    cells = np.argwhere(ring)
    if n <= 0 or len(cells) == 0:
        return np.zeros((0, 2))
    pick = rng.choice(len(cells), size=min(n, len(cells)), replace=False)
    return cells[pick].astype(np.float64)


# --- first prompts ------------------------------------------------------------------------------
def check_kind(kind: str, allowed: Sequence[str] = PROMPT_KINDS, field_name: str = "mode") -> str:
    if kind not in allowed:
        raise SamriInputError(field_name, kind, f"must be one of {list(allowed)}")
    return kind


def simulate_prompt(mask: np.ndarray, kind: str, *, jitter: float = 0.0, rng: np.random.Generator | None = None,
                    point_depth: float | None = None, neighbour: np.ndarray | None = None,
                    max_negatives: int = 2) -> SlicePrompt:
    """A prompt of ``kind`` for a non-empty ``(H, W)`` ground-truth mask.

    Args:
        jitter: box edge jitter (fraction of the longest side); used only with ``rng``.
        rng: draws the box jitter (and, with ``point_depth``, the point); None = deterministic.
        point_depth: None = the deepest interior point (validation, evaluation: the click an
            annotator aims at the middle); a fraction = a random point that deep (training).
        neighbour: `PROPAGATED_KINDS` only: the structure's mask on a nearby slice
            (`PROPAGATION_OFFSETS`); its box plus `PropagationSettings.box_margin` is the prompt.
            Without one, or when it is empty, the slice's own (jittered) box is used.
        max_negatives: ``points_neg``: up to this many negatives (needs ``rng``; none without).
    """
    check_kind(kind)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise SamriInputError("mask", "empty", "cannot simulate a prompt for an empty mask")
    if kind in PROPAGATED_KINDS:
        if neighbour is not None and np.any(neighbour):
            return SlicePrompt(box=mask_box(neighbour, PropagationSettings().box_margin))
        kind = "box"
    box = jitter_box(mask_box(mask), mask.shape, jitter, rng) if "box" in kind else None
    if kind == "box":
        return SlicePrompt(box=box)
    point = interior_point(mask, rng, point_depth)[None]
    if kind == "points_neg" and rng is not None:
        neg = negative_points(mask, int(rng.integers(1, max_negatives + 1)), rng)
        return SlicePrompt(points=np.concatenate([point, neg]), labels=[1] + [0] * len(neg))
    return SlicePrompt(points=point, labels=[1], box=box)


def training_prompt(mask: np.ndarray, kind: str, settings: SimSettings, rng: np.random.Generator,
                    neighbour: np.ndarray | None = None) -> SlicePrompt:
    """`simulate_prompt` with the training settings' jitter and negatives (random draws)."""
    return simulate_prompt(mask, kind, jitter=settings.box_jitter, rng=rng, point_depth=POINT_DEPTH,
                           neighbour=neighbour, max_negatives=settings.max_negatives)


def pick_mode(settings: SimSettings, rng: np.random.Generator) -> str:
    names = list(settings.mode_weights)
    weights = np.array([settings.mode_weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


# --- corrective clicks --------------------------------------------------------------------------
def _largest_error(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The largest connected error component (full connectivity) and its click label (1 missed, 0 extra)."""
    best, best_size = None, 0
    for error, label in ((truth & ~prediction, 1), (prediction & ~truth, 0)):
        if not error.any():
            continue
        components, n = ndimage.label(error, structure=np.ones((3,) * error.ndim, dtype=bool))
        sizes = np.bincount(components.ravel())[1:]
        k = int(np.argmax(sizes))
        if sizes[k] > best_size:  # ties: the missed part first (positive clicks come first)
            best, best_size = (components == k + 1, label), int(sizes[k])
    return best


def corrective_click(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator | None = None, *,
                     spacing: Sequence[float] | None = None,
                     depth: float = CLICK_DEPTH) -> tuple[np.ndarray, int] | None:
    """Where the annotator clicks next: the deepest point of the largest connected error region.

    Works on ``(H, W)`` slices and ``(X, Y, Z)`` volumes (``spacing`` makes the 3D depth metric
    in mm). ``rng`` draws among the points at least ``depth`` x the region's depth (training).

    Returns:
        (point, label): ``(r, c)`` or ``(i, j, k)`` float, and 1 for missed object (positive
        click) or 0 for a false positive (negative click); None when the prediction is exact.
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise SamriInputError("prediction", list(prediction.shape), f"must match the truth's shape {list(truth.shape)}")
    found = _largest_error(prediction, truth)
    if found is None:
        return None
    region, label = found
    return interior_point(region, rng, depth, spacing), label


# --- a session on one slice ---------------------------------------------------------------------
def slice_session(decode: Callable[[SlicePrompt], tuple[np.ndarray, Any]], truth: np.ndarray, *, first: str,
                  max_clicks: int) -> list[float]:
    """Dice after each interaction of the protocol's annotator on one ``(H, W)`` slice.

    The first interaction is ``first`` (``box`` or ``point``, deterministic as in evaluation),
    then corrective clicks (`corrective_click`), each sent with the box, *all* clicks so far and
    the previous logits as the mask prompt, as a client's next click is served. ``decode`` maps a
    prompt to ``(mask (H, W) bool, low-res logits)``. Stops early on an exact mask (the curve
    keeps its last value), so the list always has ``max_clicks`` entries.
    """
    from samri.evaluation.metrics import dice

    truth = np.asarray(truth, dtype=bool)
    prompt = simulate_prompt(truth, check_kind(first, ("box", "point"), "first"))
    curve: list[float] = []
    while len(curve) < max_clicks:
        mask, logits = decode(prompt)
        curve.append(dice(mask, truth))
        click = corrective_click(mask, truth)
        if click is None:
            break
        prompt = SlicePrompt(points=np.concatenate([prompt.points, click[0][None]]),
                             labels=np.concatenate([prompt.labels, [click[1]]]), box=prompt.box, mask_logits=logits)
    return curve + [curve[-1]] * (max_clicks - len(curve))
