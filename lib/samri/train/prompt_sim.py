"""Prompt simulation for training and evaluation, in slice pixels ``(r, c)``.

SAMRI's modes (jittered box, one interior positive point, box + point) plus what SAMRI lacks:
negative points near the object, correction clicks sampled from the error region of a
previous prediction (so the refinement clicks annotators make at serving time are trained for), and
``propagated_box``: the box 3D propagation would give this slice, i.e. the box of the structure on
a slice 1 or 2 away plus the propagation margin, so the decoder learns to follow a structure from
slice to slice rather than to fill a box that is slightly wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import ndimage

from samri.errors import SamriInputError
from samri.inference.prompts import SlicePrompt
from samri.inference.segmenter import PropagationSettings, mask_box

SIM_MODES = ("box", "point", "box_point", "points_neg", "propagated_box")

#: slice offsets a ``propagated_box`` takes its box from
PROPAGATION_OFFSETS = (-2, -1, 1, 2)


@dataclass(frozen=True)
class SimSettings:
    """Prompt simulation settings (``configs/training.yaml`` ``prompts``).

    Attributes:
        mode_weights: relative frequency of each mode in `SIM_MODES`.
        box_jitter: max shift of each box edge as a fraction of the slice's longest side (SAMRI ~4%).
        max_negatives: up to this many negative points in ``points_neg`` mode.
        correction_prob: probability that a training sample gets a correction-click round.
    """

    mode_weights: Mapping[str, float] = None  # type: ignore[assignment]
    box_jitter: float = 0.04
    max_negatives: int = 2
    correction_prob: float = 0.5

    def __post_init__(self) -> None:
        weights = dict(self.mode_weights or {"box": 0.4, "point": 0.15, "box_point": 0.3, "points_neg": 0.15})
        unknown = set(weights) - set(SIM_MODES)
        if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
            raise SamriInputError("prompts.mode_weights", weights, f"use non-negative weights for {list(SIM_MODES)}")
        object.__setattr__(self, "mode_weights", weights)


def jittered_box(mask: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Tight box of ``mask`` with each edge moved by up to ``jitter`` x longest side."""
    box = mask_box(mask)
    h, w = mask.shape
    shift = rng.uniform(-1, 1, size=4) * jitter * max(h, w)
    r0, c0, r1, c1 = box + shift
    return np.array([np.clip(r0, 0, h - 1), np.clip(c0, 0, w - 1), np.clip(r1, 0, h - 1), np.clip(c1, 0, w - 1)])


def interior_sample(region: np.ndarray, rng: np.random.Generator, depth: float = 0.5) -> np.ndarray:
    """A random ``(r, c)`` of ``region`` at least ``depth`` x its maximal inner distance deep."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    candidates = np.argwhere(dist >= depth * dist.max())
    return candidates[rng.integers(len(candidates))].astype(np.float64)


def negative_points(mask: np.ndarray, n: int, rng: np.random.Generator, band: int = 6) -> np.ndarray:
    """Up to ``n`` background points within ``band`` pixels of the object (where confusions are)."""
    ring = ndimage.binary_dilation(mask, iterations=band) & ~mask
    cells = np.argwhere(ring)
    if n <= 0 or len(cells) == 0:
        return np.zeros((0, 2))
    pick = rng.choice(len(cells), size=min(n, len(cells)), replace=False)
    return cells[pick].astype(np.float64)


def simulate_prompt(mask: np.ndarray, mode: str, settings: SimSettings, rng: np.random.Generator,
                    neighbour: np.ndarray | None = None) -> SlicePrompt:
    """A prompt for a non-empty ``(H, W)`` ground-truth mask in one of `SIM_MODES`.

    Args:
        neighbour: ``propagated_box`` only: the structure's ``(H, W)`` mask on a nearby slice
            (see `PROPAGATION_OFFSETS`); its box plus `PropagationSettings.box_margin` is the prompt.
            Without one, or when it is empty, a jittered box of ``mask`` is used.
    """
    if not mask.any():
        raise SamriInputError("mask", "empty", "cannot simulate a prompt for an empty mask")
    if mode == "propagated_box":
        if neighbour is not None and neighbour.any():
            return SlicePrompt(box=mask_box(neighbour, PropagationSettings().box_margin))
        mode = "box"
    if mode == "box":
        return SlicePrompt(box=jittered_box(mask, settings.box_jitter, rng))
    if mode == "point":
        return SlicePrompt(points=[interior_sample(mask, rng)], labels=[1])
    if mode == "box_point":
        return SlicePrompt(box=jittered_box(mask, settings.box_jitter, rng),
                           points=[interior_sample(mask, rng)], labels=[1])
    if mode == "points_neg":
        neg = negative_points(mask, int(rng.integers(1, settings.max_negatives + 1)), rng)
        pos = interior_sample(mask, rng)[None]
        return SlicePrompt(points=np.concatenate([pos, neg]), labels=[1] + [0] * len(neg))
    raise SamriInputError("mode", mode, f"must be one of {list(SIM_MODES)}")


def pick_mode(settings: SimSettings, rng: np.random.Generator) -> str:
    names = list(settings.mode_weights)
    weights = np.array([settings.mode_weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def correction_click(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                                   int] | None:
    """Where an annotator would click next: inside the larger error region.

    Returns:
        (``(r, c)``, label): 1 for a missed object part (false negative), 0 for a false positive;
        None when the prediction is exact.
    """
    false_neg = truth & ~prediction
    false_pos = prediction & ~truth
    if not false_neg.any() and not false_pos.any():
        return None
    if false_neg.sum() >= false_pos.sum():
        return interior_sample(false_neg, rng, depth=0.8), 1
    return interior_sample(false_pos, rng, depth=0.8), 0
