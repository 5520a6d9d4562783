"""Test doubles of the inference tests: a fake decoder that "segments" the ground-truth ellipsoid."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import torch

from samri.errors import SamriInputError
from samri.geometry import take_slice
from samri.inference.prompts import SlicePrompt
from samri.inference.propagation import mask_box
from samri.inference.segmenter import (
    SliceResult,
)
from tests.helpers import ELLIPSOID_CENTER

CENTER_K = int(ELLIPSOID_CENTER[2])  # 15

class FakeDecoder:
    """Stands in for `Segmenter.embedding` + `Segmenter.decode`: the object's section in the box.

    ``embedding`` returns the slice index as a tensor so that ``decode`` knows which slice it is
    on; ``decode`` returns the ground truth of that slice, restricted to the prompt's box when it
    has one, with a predicted IoU of 0.9 (or ``iou(slice index)``). Every decoded slice is counted.
    """

    def __init__(self, gt: np.ndarray, axis: int = 2, iou: float | Callable[[int], float] = 0.9):
        self.gt = gt
        self.axis = axis
        self.iou = iou
        self.decoded: Counter[int] = Counter()
        self.prompts: dict[int, list[SlicePrompt]] = {}

    def embedding(self, segmenter, volume, axis, index):
        assert axis == self.axis
        return torch.tensor([float(index)])

    def decode(self, segmenter, embedding, geom, prompt):
        index = int(embedding[0])
        if prompt.is_empty and prompt.mask_logits is None:
            raise SamriInputError("prompt", "empty", "give at least one point or a box")
        prompt.check_inside((geom.height, geom.width))
        self.decoded[index] += 1
        self.prompts.setdefault(index, []).append(prompt)
        section = take_slice(self.gt, self.axis, index).copy()
        assert section.shape == (geom.height, geom.width)
        if prompt.box is not None:
            r0, c0, r1, c1 = prompt.box
            inside = np.zeros_like(section)
            inside[int(np.ceil(r0)):int(np.floor(r1)) + 1, int(np.ceil(c0)):int(np.floor(c1)) + 1] = True
            section &= inside
        iou = self.iou(index) if callable(self.iou) else self.iou
        return SliceResult(mask=section, low_res_logits=torch.zeros(1, 1, 32, 32), iou=iou)



def object_slices(gt: np.ndarray, min_area: int, axis: int = 2) -> list[int]:
    """Slices whose section of the object has at least ``min_area`` pixels."""
    other = tuple(a for a in range(3) if a != axis)
    areas = gt.sum(axis=other)
    return [int(k) for k in np.flatnonzero(areas >= min_area)]


def box_around(gt: np.ndarray, index: int, margin: int = 1) -> SlicePrompt:
    return SlicePrompt(box=mask_box(take_slice(gt, 2, index), margin))
