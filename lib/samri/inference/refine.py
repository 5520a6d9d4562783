"""What a corrective click does to the previous mask (local merge, click fill), and the box clip.

Local merge (FocalClick's "progressive merge"):

A corrective click says one thing: *here* the previous mask is wrong. A decoder that follows the
click often changes the mask elsewhere too (a negative click in a leak can also erase part of the
object), so the new prediction is accepted only inside the changed regions that contain a click the
previous mask got wrong; everywhere else the previous mask stays. That keeps every correction local,
so Dice does not fall when a click is answered too broadly. When the decoder follows none of those
clicks, only its changes of the clicks' sign stay (removals after a negative click, additions after
a positive one).

Click fill (`fill_clicks`): a click the decoder did not follow (a positive click left outside the
mask, a negative one left inside) still changes the mask around it, so no click is ignored.

Box clip (`clip_to_box`): the answer on a slice the user drew a box on keeps nothing outside that
box, unless a positive click lies outside it.

Frames: masks ``(H, W)`` bool slice pixels; clicks ``(r, c)``; logits ``(1, 1, s, s)`` in the
decoder's low-res frame (`samri.geometry.SliceGeometry`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from samri.geometry import SliceGeometry, box_mask

CLICK_MERGES = ("local", "global")
#: the low-res logit a rule writes where it forces a pixel in (+) or out (-) of the mask
FORCED_LOGIT = 8.0


def disagreeing_clicks(previous: np.ndarray, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(K, 2)`` int ``(r, c)`` of the clicks ``previous`` contradicts (positive outside, negative inside)."""
    if not len(points):
        return np.zeros((0, 2), dtype=np.int64)
    h, w = previous.shape
    rc = np.clip(np.round(np.asarray(points, dtype=np.float64)), 0, [h - 1, w - 1]).astype(np.int64)
    wrong = previous[rc[:, 0], rc[:, 1]] != (np.asarray(labels) == 1)
    return rc[wrong]


#: a click's region of influence: this many times its distance to the previous mask's boundary
FOCUS_SCALE = 2.0


def _near_clicks(previous: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    """Pixels within `FOCUS_SCALE` x each click's distance to the previous mask's boundary of it.

    A negative click deep inside a false positive, or a positive click far into missed object,
    has a large region of influence; one near the boundary a small one (FocalClick's focus crop).
    """
    inside = ndimage.distance_transform_edt(previous)
    outside = ndimage.distance_transform_edt(~previous)
    rr, cc = np.indices(previous.shape)
    near = np.zeros(previous.shape, dtype=bool)
    for r, c in clicks:
        radius = FOCUS_SCALE * max(float(inside[r, c] if previous[r, c] else outside[r, c]), 1.0)
        near |= (rr - r) ** 2 + (cc - c) ** 2 <= radius ** 2
    return near


def low_res_cover(geom: SliceGeometry, region: np.ndarray, size: int) -> torch.Tensor:
    """``(1, 1, s, s)`` bool: the low-res logit cells that hold any pixel of the ``(H, W)`` region."""
    full = torch.as_tensor(geom.mask_to_input(region), dtype=torch.float32)[None, None]
    return F.adaptive_max_pool2d(full, size) > 0.5


def local_merge(geom: SliceGeometry, previous_logits: torch.Tensor, new_logits: torch.Tensor, points: np.ndarray,
                labels: np.ndarray) -> tuple[np.ndarray, torch.Tensor] | None:
    """The previous mask with only the click-bearing changes of the new one.

    Args:
        previous_logits, new_logits: ``(1, 1, s, s)``; the previous request's and this one's.
        points, labels: every click of the request, ``(N, 2)`` ``(r, c)`` and ``(N,)`` 1/0.

    Returns:
        ``(mask (H, W) bool, logits (1, 1, s, s))`` -- the logits are the new ones inside the accepted
        regions and the previous ones elsewhere (fed back with the next click) -- or None when no
        click contradicts the previous mask: the caller keeps the new prediction as it is. When the
        new prediction changed none of the contradicted clicks' pixels, see `_ignored_clicks`.
    """
    previous = geom.logits_to_slice(previous_logits.float())[0, 0].numpy() > 0.0
    new = geom.logits_to_slice(new_logits.float())[0, 0].numpy() > 0.0
    clicks = disagreeing_clicks(previous, points, labels)
    if not len(clicks):
        return None
    regions, _ = ndimage.label(previous ^ new, structure=np.ones((3, 3), dtype=bool))
    ids = {int(v) for v in regions[clicks[:, 0], clicks[:, 1]] if v}
    if not ids:
        return _ignored_clicks(geom, previous_logits, previous, new, clicks)
    accept = np.isin(regions, sorted(ids)) & _near_clicks(previous, clicks)
    mask = np.where(accept, new, previous)
    size = new_logits.shape[-1]
    accept_low = low_res_cover(geom, accept, size)
    logits = torch.where(accept_low, new_logits.float(), previous_logits.float().to(new_logits.device))
    return mask, logits


def _ignored_clicks(geom: SliceGeometry, previous_logits: torch.Tensor, previous: np.ndarray, new: np.ndarray,
                    clicks: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """The answer when the decoder followed none of ``clicks`` (`disagreeing_clicks`, ``(K, 2)``).

    Its other changes are not licensed by any click, so only those of the clicks' sign stay: after
    ignored negative clicks (inside the previous mask) only removals, after ignored positive ones
    only additions, after both none (click fill then applies the clicks, `fill_clicks`). Accepting
    every change here made a negative click lower Dice on average (docs/DECODER.md, "Clicks the
    decoder ignores").
    """
    negative = previous[clicks[:, 0], clicks[:, 1]]  # a contradicted click inside the mask says "not here"
    if negative.all():
        kept = previous & new
    elif not negative.any():
        kept = previous | new
    else:
        kept = previous
    logits = previous_logits.float()
    if (kept != previous).any():
        logits = logits_for_mask(geom, logits, previous, kept)
    return kept, logits


# --- the user's box bounds the object ------------------------------------------------------------
def box_bound(box: np.ndarray | None, shape: tuple[int, int], points: np.ndarray | None = None,
              labels: np.ndarray | None = None) -> np.ndarray | None:
    """``(H, W)`` bool mask of the user's box when it bounds the answer, else None: no box, or a
    positive click outside it (which overrules the box).

    Args:
        box: ``(4,)`` ``(r0, c0, r1, c1)`` inclusive slice pixels (`SlicePrompt.box`), or None.
        shape: the slice's ``(H, W)``.
        points, labels: ``(N, 2)`` ``(r, c)`` and ``(N,)`` 1/0 (None: no clicks).
    """
    if box is None:
        return None
    inside = box_mask(box, shape)
    if points is not None and len(points):
        h, w = shape
        rc = np.clip(np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2)), 0, [h - 1, w - 1]).astype(np.int64)
        positive = rc[np.asarray(labels).reshape(-1) == 1]
        if not inside[positive[:, 0], positive[:, 1]].all():
            return None
    return inside


def clip_to_box(mask: np.ndarray, box: np.ndarray | None, points: np.ndarray | None = None,
                labels: np.ndarray | None = None) -> np.ndarray:
    """``mask`` without the pixels outside the user's box, unless a positive click lies outside it.

    A box says "the object is in here", yet the decoder's answer to it often runs on along a tract
    or a gyrus past the box's edges (docs/DECODER.md, "The user's box bounds the mask"). A positive
    click outside the box overrules the box: then nothing is clipped.

    Args:
        mask: ``(H, W)`` bool.
        box: ``(4,)`` ``(r0, c0, r1, c1)`` inclusive slice pixels (`SlicePrompt.box`), or None.
        points, labels: ``(N, 2)`` ``(r, c)`` and ``(N,)`` 1/0 (None: no clicks).

    Returns:
        ``(H, W)`` bool; ``mask`` itself when nothing is outside or there is nothing to clip to.
    """
    inside = box_bound(box, mask.shape, points, labels)
    if inside is None or not (mask & ~inside).any():
        return mask
    return mask & inside


def clipped_to_box(geom: SliceGeometry, result, box: np.ndarray | None, points: np.ndarray | None = None,
                   labels: np.ndarray | None = None):
    """A `samri.inference.segmenter.SliceResult` clipped to ``box`` (`clip_to_box`), its logits agreeing
    (`logits_for_mask`, so the next click's mask prompt carries the clip); ``result`` itself when
    nothing was outside."""
    clipped = clip_to_box(result.mask, box, points, labels)
    if clipped is result.mask:
        return result
    logits = logits_for_mask(geom, result.low_res_logits, result.mask, clipped)
    return replace(result, mask=clipped, low_res_logits=logits)


# --- every click holds ------------------------------------------------------------------------
@dataclass(frozen=True)
class ClickFill:
    """How a click the decoder did not follow is applied to the mask (`fill_clicks`).

    Attributes:
        tolerance: largest windowed-intensity difference (the volume's ``[0, 1]`` window) from the
            clicked pixel that the filled region may include.
        radius_scale: the region's radius, times the click's distance to the mask's boundary.
        max_radius: cap on that radius, as a fraction of the slice's longest side.
    """

    tolerance: float = 0.15
    radius_scale: float = 1.5
    max_radius: float = 0.3


def fill_clicks(mask: np.ndarray, image: np.ndarray, points: np.ndarray, labels: np.ndarray,
                settings: ClickFill = ClickFill()) -> np.ndarray:
    """The mask with every click honoured: a positive click outside it or a negative one inside it
    adds (removes) the connected pixels of similar intensity around the click, in a disk whose
    radius follows the click's distance to the mask's boundary (a click deep in a missed region
    fills more than one near the edge), and never nearer to a click of the other sign than to
    itself. Clicks the mask already agrees with change nothing.

    Args:
        mask: ``(H, W)`` bool, the decoder's (merged) answer.
        image: ``(H, W)`` windowed slice in ``[0, 1]``.
        points, labels: ``(N, 2)`` ``(r, c)`` and ``(N,)`` 1 positive / 0 negative, in order.

    Returns:
        ``(H, W)`` bool; ``mask`` itself when no click disagrees.
    """
    h, w = mask.shape
    rc = np.clip(np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2)), 0, [h - 1, w - 1]).astype(np.int64)
    want = np.asarray(labels).reshape(-1) == 1
    if not len(rc) or np.all(mask[rc[:, 0], rc[:, 1]] == want):
        return mask
    out = mask.copy()
    cap = max(2.0, settings.max_radius * max(h, w))
    for (r, c), positive in zip(rc, want):
        if out[r, c] == positive:
            continue
        radius = min(max(settings.radius_scale * _boundary_distance(out, r, c), 2.0), cap)
        # work in the disk's bounding window only: a click costs about a millisecond
        r0, r1 = max(0, int(r - radius)), min(h, int(r + radius) + 1)
        c0, c1 = max(0, int(c - radius)), min(w, int(c + radius) + 1)
        rr, cc = np.ogrid[r0:r1, c0:c1]
        distance2 = (rr - r) ** 2 + (cc - c) ** 2
        window = out[r0:r1, c0:c1]
        region = (distance2 <= radius ** 2) & (np.abs(image[r0:r1, c0:c1] - image[r, c]) <= settings.tolerance)
        for r2, c2 in rc[want != positive]:  # never past the midline to a click that says the opposite
            region &= distance2 < (rr - r2) ** 2 + (cc - c2) ** 2
        if not positive:
            region &= window
        components, _ = ndimage.label(region)
        at_click = components[r - r0, c - c0]
        chosen = components == at_click if at_click else np.zeros_like(region)
        chosen[r - r0, c - c0] = True
        out[r0:r1, c0:c1] = window | chosen if positive else window & ~chosen
    return out


def _boundary_distance(mask: np.ndarray, r: int, c: int) -> float:
    """Distance from pixel ``(r, c)`` to the nearest pixel of the other state (inf: none exists)."""
    other = np.argwhere(mask != mask[r, c])
    if not len(other):
        return float("inf")
    return float(np.sqrt(((other - (r, c)) ** 2).sum(axis=1).min()))


def logits_for_mask(geom: SliceGeometry, logits: torch.Tensor, before: np.ndarray, after: np.ndarray,
                    magnitude: float = FORCED_LOGIT) -> torch.Tensor:
    """``(1, 1, s, s)`` logits agreeing with ``after`` where it differs from ``before`` (``(H, W)``
    bool), so the next click's mask prompt carries the filled or erased pixels."""
    size = logits.shape[-1]
    out = logits.float().clone()
    for region, value in ((after & ~before, magnitude), (before & ~after, -magnitude)):
        if region.any():
            out[low_res_cover(geom, region, size)] = value
    return out
