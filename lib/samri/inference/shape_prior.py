"""Shape priors from finished studies: what a labelled structure looks like inside its box.

Annotators label the same structures study after study. Every finished label holds, per structure name and per
slice, a section of that structure; scaled to its own tight box, a section is a shape (``grid x grid`` in
``[0, 1]``), stored with the windowed image inside that box (``patch x patch``). When an annotator draws a box for a
structure whose name has finished sections (Slicer sends the segment's name as ``label``), of the sections whose
boxes are closest in size (in mm) those whose image correlates best with the new box's are averaged
(`ShapePriors.prior`; by size alone when none looks like it), scaled back onto the new box, and added to the
decoder's answer as logits (`fuse_prior`), on the first answer and on every refinement of that box's session; on an
answer with clicks, sections that contradict them count less. The decoder keeps the image's evidence; the prior says
where inside the box this structure usually lies. A lone first click of a named structure is answered as the box
around it whose image matches the sections (`ShapePriors.matched_point_box`), or else a box of the structure's
typical size centred on it (`ShapePriors.point_box`), and every refinement of a session without a box takes the
prior on the box around its answer that the image and the clicks choose (`ShapePriors.refined_box`). A 3D request of
a named structure takes the prior on its seeds and on every propagated slice (on the box it propagates with,
`samri.inference.propagation.Propagator`). Without a name, or for a name no finished study has, nothing changes.

Frames: slices ``(H, W)`` of a volume cut along ``axis`` (`samri.geometry.take_slice`); boxes
``(r0, c0, r1, c1)`` inclusive slice pixels (`SlicePrompt.box`); sizes in mm along those rows and
columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from samri.errors import SamriInputError
from samri.geometry import box_mask, check_axis, in_plane_axes, take_slice

logger = logging.getLogger(__name__)

#: a prior's probabilities are clipped to this before they become logits (a prior never forbids outright)
PRIOR_CLIP = 0.02

#: a lone first click of a named structure is answered as a box of this percentile of the structure's finished
#: sections' sizes, centred on the click (chosen on the adaptation cohort's annotate studies among 10-90;
#: docs/ADAPTATION.md)
POINT_BOX_PERCENTILE = 40.0

#: with the sections' image patches, a lone first click's box is searched instead: boxes of these percentiles of the
#: sections' sizes ...
POINT_SEARCH_PERCENTILES = (25.0, 40.0, 60.0)
#: ... centred on the click moved by these fractions of the box's side along rows and columns (steps of 1/16, one
#: pixel of a 16-pixel patch); the box whose image correlates best with the sections' wins (chosen on the adaptation
#: cohort's annotate studies: first answer 0.601 with steps of 1/8, 0.618 with these; docs/ADAPTATION.md)
POINT_SEARCH_SHIFTS = tuple(n / 16 for n in range(-6, 7))
#: a refinement's search tries boxes of these percentiles of the sections' sizes, wider than the lone click's (on the
#: annotate studies NoC@85 7.77 -> 7.64 over the lone click's three; docs/ADAPTATION.md) ...
REFINE_SEARCH_PERCENTILES = (10.0, 25.0, 40.0, 60.0, 80.0)
#: ... moved by these fractions of their side (steps of 1/8: there the finer steps gave what these give, at 2.6
#: times the cost)
REFINE_SEARCH_SHIFTS = tuple(n / 8 for n in range(-3, 4))
#: ... when its correlation reaches this (or ``min_correlation`` if higher): the best of 507 boxes correlates better
#: than one box by chance, so the search asks more (on the annotate studies with the new study's contrast inverted,
#: 0.5 let two thirds of the searches through and the first answer's Dice fell from 0.500 to 0.282; docs/ADAPTATION.md)
POINT_SEARCH_MIN_CORRELATION = 0.7


@dataclass(frozen=True)
class ShapePriorSettings:
    """How sections become a prior and how strongly it counts.

    Attributes:
        grid: side of a stored section, scaled to its box (pixels).
        neighbours: sections averaged into one prior when they are chosen by size alone (no image: sections
            stored without their image patch, or a request without the slice), those closest to the new box.
        weight: the prior's logits are multiplied by this before they are added to the decoder's.
        max_sections: most sections kept per (structure, axis); more are subsampled evenly.
        min_pixels: sections smaller than this (pixels) are not kept.
        patch: side of the windowed image inside a section's box, stored with it (pixels; 0 = none stored).
        candidates: with patches, the sections closest in size among which the image chooses.
        matched: with patches, sections averaged into one prior: the ``matched`` of the ``candidates`` whose
            patch correlates best (normalised cross-correlation) with the new box's image.
        min_correlation: below this mean correlation of the ``matched`` the image does not look like any finished
            section (another contrast, another anatomy): the sections are chosen by size alone, as without patches.
        click_penalty: on an answer with clicks (every refinement, a lone first click), a section's correlation is
            lowered by this times the fraction of the clicks inside the box that it contradicts (a positive click
            outside it, a negative one inside), so the clicks choose among the sections too; chosen by size alone,
            the ``neighbours`` of the ``candidates`` that contradict the fewest clicks are averaged (0 = the clicks
            choose nothing).
    """

    grid: int = 32
    neighbours: int = 16
    weight: float = 1.0
    max_sections: int = 512
    min_pixels: int = 16
    patch: int = 16
    candidates: int = 64
    matched: int = 4
    min_correlation: float = 0.5
    click_penalty: float = 0.3

    def __post_init__(self) -> None:
        if not float(self.click_penalty) >= 0.0:
            raise SamriInputError("shape_prior.click_penalty", self.click_penalty, "must be >= 0")
        if not -1.0 <= float(self.min_correlation) <= 1.0:
            raise SamriInputError("shape_prior.min_correlation", self.min_correlation, "must be in [-1, 1]")
        if int(self.patch) < 0:
            raise SamriInputError("shape_prior.patch", self.patch, "must be >= 0")
        for name in ("grid", "neighbours", "max_sections", "min_pixels", "candidates", "matched"):
            if int(getattr(self, name)) < 1:
                raise SamriInputError(f"shape_prior.{name}", getattr(self, name), "must be at least 1")
        if not float(self.weight) >= 0.0:
            raise SamriInputError("shape_prior.weight", self.weight, "must be >= 0")


class ShapePriors:
    """Sections of finished labels, per structure name and slicing axis.

    Args:
        sections: ``{(name, axis): (shapes (N, grid, grid) uint8 in 0..255, sizes_mm (N, 2) float32)}``.
        settings: `ShapePriorSettings`.
        patches: ``{(name, axis): (N, patch, patch) uint8}``, the windowed image inside each section's box (0..255
            for 0..1), in the order of ``sections``; a key without patches chooses its sections by size alone.
    """

    def __init__(self, sections: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]],
                 settings: ShapePriorSettings = ShapePriorSettings(),
                 patches: Mapping[tuple[str, int], np.ndarray] | None = None) -> None:
        self.settings = settings
        self.sections = {(str(n), int(a)): (np.asarray(s, np.uint8), np.asarray(z, np.float32))
                         for (n, a), (s, z) in sections.items()}
        self.patches = {(str(n), int(a)): np.asarray(p, np.uint8) for (n, a), p in (patches or {}).items()}
        for key, patch in self.patches.items():
            if key not in self.sections or len(patch) != len(self.sections[key][0]):
                raise SamriInputError("shape_prior.patches", key, "needs one patch per section of that structure")
        self._unit_patches: dict[tuple[str, int], np.ndarray] = {}

    @classmethod
    def from_labels(cls, labels: Iterable[tuple], *, axes: Iterable[int] = (2,),
                    settings: ShapePriorSettings = ShapePriorSettings()) -> "ShapePriors":
        """Collect every section of every named structure.

        Args:
            labels: per finished study ``(label volume (X, Y, Z) int, {name: value}, voxel spacing mm)``, or the
                same and the study's windowed image ``(X, Y, Z)`` in ``[0, 1]`` (`samri.volume.prepare_volume`), whose
                patch inside each section's box is stored with it (``settings.patch`` > 0). A structure keeps patches
                only when every study that has it gave an image.
            axes: slicing axes to collect along (the axes requests are served on).
        """
        found: dict[tuple[str, int], tuple[list[np.ndarray], list[tuple[float, float]], list[np.ndarray | None]]] = {}
        for volume, names, spacing, *rest in labels:
            volume = np.asarray(volume)
            image = _study_image(rest[0] if rest else None, volume.shape, settings)
            for axis in axes:
                rows, cols = in_plane_axes(check_axis(axis))
                for name, value in names.items():
                    structure = volume == int(value)
                    present = np.flatnonzero(structure.any(axis=tuple(a for a in range(3) if a != axis)))
                    for index in present:
                        plane = take_slice(structure, axis, int(index))
                        shape, size = _section(plane, settings, (float(spacing[rows]), float(spacing[cols])))
                        if shape is not None:
                            bucket = found.setdefault((str(name), int(axis)), ([], [], []))
                            bucket[0].append(shape)
                            bucket[1].append(size)
                            bucket[2].append(None if image is None else image_patch(
                                take_slice(image, axis, int(index)), _tight_box(plane), settings.patch))
        sections, patches = {}, {}
        for key, (shapes, sizes, found_patches) in found.items():
            keep = np.arange(len(shapes))
            if len(keep) > settings.max_sections:
                keep = np.unique(np.linspace(0, len(shapes) - 1, settings.max_sections).round().astype(int))
            sections[key] = (np.stack([shapes[i] for i in keep]), np.asarray([sizes[i] for i in keep], np.float32))
            if all(found_patches[i] is not None for i in keep):
                patches[key] = np.stack([found_patches[i] for i in keep])
        return cls(sections, settings, patches)

    @property
    def names(self) -> list[str]:
        return sorted({name for name, _ in self.sections})

    def __len__(self) -> int:
        return sum(len(shapes) for shapes, _ in self.sections.values())

    def prior(self, name: str | None, axis: int, box: np.ndarray, slice_shape: tuple[int, int],
              spacing_mm: tuple[float, float], image: np.ndarray | None = None,
              points: np.ndarray | None = None, labels: np.ndarray | None = None) -> np.ndarray | None:
        """``(H, W)`` float32 probability that a pixel belongs to structure ``name``, inside ``box`` (0
        outside it); None when no finished section of that name exists on this axis.

        The sections averaged: with ``image`` and stored patches, the ``matched`` of the ``candidates`` closest in
        size whose image inside their box correlates best with ``image`` inside ``box`` (the slice's own anatomy
        picks among sections of the right size); otherwise the ``neighbours`` closest in size. With clicks
        (``click_penalty`` > 0), sections that contradict them count less (`ShapePriorSettings.click_penalty`).

        Args:
            box: ``(4,)`` ``(r0, c0, r1, c1)`` inclusive slice pixels.
            slice_shape: the slice's ``(H, W)``.
            spacing_mm: the slice's row and column spacing.
            image: the slice's ``(H, W)`` windowed image in ``[0, 1]``, as the model reads it.
            points: ``(K, 2)`` ``(r, c)`` slice pixels, the session's clicks so far; labels: ``(K,)``, 1 positive.
        """
        found = self.sections.get((str(name), int(axis))) if name else None
        pixels = _pixel_box(box, slice_shape)
        if found is None or pixels is None:
            return None
        key, (r0, c0, r1, c1) = (str(name), int(axis)), pixels
        by_size = self._by_size(key, pixels, spacing_mm)
        chosen, wrong = by_size[:self.settings.neighbours], None
        if points is not None and len(points) and self.settings.click_penalty > 0:
            pool = by_size[:self.settings.candidates]
            wrong = self._contradicted(key, pool, np.asarray([pixels]), np.asarray(points, np.float64).reshape(-1, 2),
                                       np.asarray(labels).reshape(-1))[:, 0]
            chosen = pool[np.argsort(wrong, kind="stable")][:self.settings.neighbours]
        if image is not None and key in self.patches:
            matched, correlation = self._matched(key, by_size, image, pixels, wrong)
            if correlation >= self.settings.min_correlation:  # else it looks like none of them: by size
                chosen = matched
        mean = found[0][chosen].astype(np.float32).mean(axis=0) / 255.0
        scaled = F.interpolate(torch.from_numpy(mean)[None, None], size=(r1 - r0 + 1, c1 - c0 + 1), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
        out = np.zeros(slice_shape, np.float32)
        out[r0:r1 + 1, c0:c1 + 1] = scaled
        return out

    def _by_size(self, key: tuple[str, int], pixels: tuple[int, int, int, int],
                 spacing_mm: tuple[float, float]) -> np.ndarray:
        """Indices of ``key``'s sections, closest in size (mm) to the pixel box ``pixels`` first."""
        r0, c0, r1, c1 = pixels
        size = np.array([(r1 - r0 + 1) * spacing_mm[0], (c1 - c0 + 1) * spacing_mm[1]], np.float32)
        distance = np.abs(np.log(self.sections[key][1] / size)).sum(axis=1)  # relative difference of the sides
        return np.argsort(distance, kind="stable")

    def _matched(self, key: tuple[str, int], by_size: np.ndarray, image: np.ndarray,
                 pixels: tuple[int, int, int, int], wrong: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """The ``matched`` of the first ``candidates`` of ``by_size`` whose patch correlates best with ``image``
        inside ``pixels`` (less ``click_penalty`` x ``wrong``, the fractions of the clicks each of those candidates
        contradicts, when given), and their mean correlation."""
        candidates = by_size[:self.settings.candidates]
        query = _unit_rows(image_patch(image, pixels, self.patches[key].shape[-1])[None])[0]
        correlation = self._unit(key)[candidates] @ query
        score = correlation if wrong is None else correlation - self.settings.click_penalty * wrong
        best = np.argsort(-score, kind="stable")[:self.settings.matched]
        return candidates[best], float(correlation[best].mean())

    def _contradicted(self, key: tuple[str, int], indices: np.ndarray, pixel_boxes: np.ndarray, points: np.ndarray,
                      labels: np.ndarray, *, outside: bool = False) -> np.ndarray:
        """``(len(indices), B)``: for each of ``key``'s sections ``indices`` scaled onto each of the pixel boxes
        ``pixel_boxes`` ``(B, 4)`` ``(r0, c0, r1, c1)``, the fraction of the clicks ``points`` ``(K, 2)`` ``(r, c)``
        inside the box that it contradicts (a positive click outside the section, a negative one inside it; 0 where
        no click is inside the box). With ``outside``, the fraction of all the clicks, a positive click outside the
        box contradicting every section."""
        shapes = self.sections[key][0][indices]
        r0, c0, r1, c1 = (np.asarray(pixel_boxes, np.float64).reshape(-1, 4)[:, n, None] for n in range(4))  # (B, 1)
        inside = (points[None, :, 0] > r0 - 0.5) & (points[None, :, 0] < r1 + 0.5) & (
            points[None, :, 1] > c0 - 0.5) & (points[None, :, 1] < c1 + 0.5)  # (B, K)
        grid = shapes.shape[-1]
        rows = np.clip(np.round((points[None, :, 0] - r0 + 0.5) * grid / (r1 - r0 + 1) - 0.5), 0, grid - 1).astype(int)
        cols = np.clip(np.round((points[None, :, 1] - c0 + 0.5) * grid / (c1 - c0 + 1) - 0.5), 0, grid - 1).astype(int)
        within = (shapes[:, rows, cols] >= 128) & inside[None]  # (N, B, K)
        wrong = within != (labels > 0)[None, None]
        if outside:
            return wrong.mean(axis=2)
        return (wrong & inside[None]).sum(axis=2) / np.maximum(inside.sum(axis=1), 1)[None]

    def point_box(self, name: str | None, axis: int, point: np.ndarray, slice_shape: tuple[int, int],
                  spacing_mm: tuple[float, float]) -> np.ndarray | None:
        """``(4,)`` ``(r0, c0, r1, c1)`` box of structure ``name``'s typical section size (`POINT_BOX_PERCENTILE`
        of its finished sections' sizes in mm, per side) centred on ``point`` ``(r, c)`` and cut at the slice's
        edges; None when no finished section of that name exists on this axis."""
        found = self.sections.get((str(name), int(axis))) if name else None
        if found is None:
            return None
        return _centred_box(point, np.percentile(found[1], POINT_BOX_PERCENTILE, axis=0) / np.asarray(
            spacing_mm, np.float64), slice_shape)

    def matched_point_box(self, name: str | None, axis: int, point: np.ndarray, slice_shape: tuple[int, int],
                          spacing_mm: tuple[float, float], image: np.ndarray) -> np.ndarray | None:
        """``(4,)`` box a lone first click ``point`` ``(r, c)`` of structure ``name`` stands for, found by the slice's
        windowed ``image`` ``(H, W)``: of the boxes of `POINT_SEARCH_PERCENTILES` sizes centred on the click moved by
        `POINT_SEARCH_SHIFTS` of their side, the one whose image correlates best with its ``matched`` best
        ``candidates`` sections. None without patches for that name (`searches_by_image`) or when the best box's
        correlation is under `POINT_SEARCH_MIN_CORRELATION` or ``min_correlation`` (nothing there looks like a finished
        section)."""
        if not self.searches_by_image(name, axis):
            return None
        key = (str(name), int(axis))
        boxes = self._search_boxes(key, point, slice_shape, spacing_mm, POINT_SEARCH_PERCENTILES,
                                   POINT_SEARCH_SHIFTS)
        scores, _ = self._box_matches(key, boxes, slice_shape, spacing_mm, image)
        best = int(np.argmax(scores))  # the first of equal scores, in `_search_boxes`' order
        floor = max(self.settings.min_correlation, POINT_SEARCH_MIN_CORRELATION)
        return boxes[best] if scores[best] >= floor else None

    def refined_box(self, name: str | None, axis: int, box: np.ndarray, slice_shape: tuple[int, int],
                    spacing_mm: tuple[float, float], image: np.ndarray, points: np.ndarray,
                    labels: np.ndarray) -> np.ndarray:
        """``(4,)`` box a refinement of a session begun with a click takes the prior on, searched by the image and
        the clicks: of ``box`` (the tight box of the answer and the positive clicks) and the boxes of
        `REFINE_SEARCH_PERCENTILES` sizes centred on its centre moved by `REFINE_SEARCH_SHIFTS` of their side, the one
        whose ``matched`` sections score best: correlation with the windowed ``image`` ``(H, W)`` less
        ``click_penalty`` x the fraction of all the clicks ``points`` ``(K, 2)`` ``(r, c)`` / ``labels`` ``(K,)``
        that box and section contradict (a positive click outside the box or the section, a negative one inside
        the section). ``box`` itself without patches for that name, without clicks, or when the winner's
        correlation is under `POINT_SEARCH_MIN_CORRELATION` (the answer's own extent is wrong where it missed part
        of the structure or spilled over, and the clicks say where; docs/ADAPTATION.md)."""
        box = np.asarray(box, np.float64)
        points = np.asarray(points, np.float64).reshape(-1, 2)
        if not self.searches_by_image(name, axis) or not len(points):
            return box
        key = (str(name), int(axis))
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        boxes = np.concatenate([box[None], self._search_boxes(key, centre, slice_shape, spacing_mm,
                                                                  REFINE_SEARCH_PERCENTILES, REFINE_SEARCH_SHIFTS)])
        scores, correlations = self._box_matches(key, boxes, slice_shape, spacing_mm, image,
                                                 (points, np.asarray(labels).reshape(-1)))
        best = int(np.argmax(scores))  # the answer's own box wins ties
        floor = max(self.settings.min_correlation, POINT_SEARCH_MIN_CORRELATION)
        return boxes[best] if correlations[best] >= floor else box

    def _search_boxes(self, key: tuple[str, int], centre: tuple[float, float] | np.ndarray,
                      slice_shape: tuple[int, int], spacing_mm: tuple[float, float],
                      percentiles: tuple[float, ...], shifts: tuple[float, ...]) -> np.ndarray:
        """``(P * S * S, 4)`` boxes a search scores: per size of the ``P`` ``percentiles`` of ``key``'s sections'
        sizes (mm, per side), centred on ``centre`` ``(r, c)`` moved by each pair of the ``S`` ``shifts`` (fractions
        of that side; rows outer), cut at the slice (`_centred_boxes`)."""
        sides = np.percentile(self.sections[key][1], percentiles, axis=0) / np.asarray(
            spacing_mm, np.float64)  # (P, 2) pixels
        shifts = np.asarray(shifts, np.float64)
        moves = np.stack(np.meshgrid(shifts, shifts, indexing="ij"), axis=-1).reshape(-1, 2)  # (S * S, 2)
        side = np.repeat(sides, len(moves), axis=0)
        return _centred_boxes(np.asarray(centre, np.float64)[None] + np.tile(moves, (len(sides), 1)) * side, side,
                              slice_shape)

    def searches_by_image(self, name: str | None, axis: int) -> bool:
        """Whether structure ``name``'s sections on ``axis`` carry their image patches (chosen by the image)."""
        return bool(name) and (str(name), int(axis)) in self.patches

    def _box_matches(self, key: tuple[str, int], boxes: np.ndarray, slice_shape: tuple[int, int],
                     spacing_mm: tuple[float, float], image: np.ndarray,
                     clicks: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per box of ``boxes`` ``(B, 4)``: the score and the mean correlation of its ``matched`` best-scoring
        ``candidates`` sections (as `prior` chooses them), both ``(B,)``; -inf for a box outside the slice. Each
        section scores its correlation with the box's image, less ``click_penalty`` x the fraction of ``clicks``
        (``(K, 2)`` ``(r, c)`` points, ``(K,)`` labels; all of them, `_contradicted` with ``outside``) it
        contradicts, when given."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores, correlations = np.full(len(boxes), -np.inf), np.full(len(boxes), -np.inf)
        pixels, valid = _pixel_boxes(boxes, slice_shape)
        inside = np.flatnonzero(valid)
        if not len(inside):
            return scores, correlations
        pixels = pixels[inside]
        queries = _unit_rows(image_patches(image, pixels, self.patches[key].shape[-1]))
        unit = self._unit(key)
        sizes = pixels[:, 2:] - pixels[:, :2]
        _, first, group = np.unique(sizes, axis=0, return_index=True, return_inverse=True)
        for g, one in enumerate(first):  # boxes of one pixel size share their candidates
            rows = np.flatnonzero(group.reshape(-1) == g)
            candidates = self._by_size(key, tuple(pixels[one]), spacing_mm)[:self.settings.candidates]
            correlation = unit[candidates] @ queries[rows].T  # (candidates, boxes)
            score = correlation
            if clicks is not None:
                wrong = self._contradicted(key, candidates, pixels[rows], *clicks, outside=True)
                score = correlation - self.settings.click_penalty * wrong
            matched = min(self.settings.matched, len(candidates))
            top = np.argsort(-score, axis=0, kind="stable")[:matched]  # (matched, boxes)
            columns = np.arange(len(rows))[None]
            scores[inside[rows]] = score[top, columns].mean(axis=0)
            correlations[inside[rows]] = correlation[top, columns].mean(axis=0)
        return scores, correlations

    def _unit(self, key: tuple[str, int]) -> np.ndarray:
        """``key``'s patches as unit rows (`_unit_rows`), computed once."""
        unit = self._unit_patches.get(key)
        if unit is None:
            unit = self._unit_patches[key] = _unit_rows(self.patches[key])
        return unit

    def to_payload(self) -> dict[str, Any]:
        """Tensors, lists and numbers only (a decoder checkpoint's ``shape_priors``, read with weights_only)."""
        s = self.settings
        entries = []
        for (name, axis), (shapes, sizes) in sorted(self.sections.items()):
            entry = {"name": name, "axis": axis, "shapes": torch.from_numpy(shapes.copy()),
                     "sizes_mm": torch.from_numpy(sizes.copy())}
            if (name, axis) in self.patches:
                entry["patches"] = torch.from_numpy(self.patches[(name, axis)].copy())
            entries.append(entry)
        return {"settings": {"grid": s.grid, "neighbours": s.neighbours, "weight": float(s.weight),
                             "max_sections": s.max_sections, "min_pixels": s.min_pixels, "patch": s.patch,
                             "candidates": s.candidates, "matched": s.matched,
                             "min_correlation": float(s.min_correlation), "click_penalty": float(s.click_penalty)},
                "entries": entries}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], field: str = "shape_priors") -> "ShapePriors":
        """Inverse of `to_payload`; a malformed payload raises `SamriInputError` naming ``field``. Files written
        before patches were stored (no ``patches``) choose their sections by size alone, as they were served; files
        written before the clicks chose sections (no ``click_penalty``) keep their sections whatever the clicks."""
        try:
            settings = ShapePriorSettings(**{"click_penalty": 0.0, **dict(payload["settings"])})
            sections, patches = {}, {}
            for entry in payload["entries"]:
                shapes = np.asarray(entry["shapes"], dtype=np.uint8)
                sizes = np.asarray(entry["sizes_mm"], dtype=np.float32)
                if shapes.ndim != 3 or shapes.shape[1:] != (settings.grid, settings.grid) or sizes.shape != (
                        len(shapes), 2) or not (sizes > 0).all():
                    raise ValueError(f"entry {entry['name']!r}: shapes {shapes.shape}, sizes {sizes.shape}")
                key = (str(entry["name"]), check_axis(int(entry["axis"])))
                sections[key] = (shapes, sizes)
                if "patches" in entry:
                    patch = np.asarray(entry["patches"], dtype=np.uint8)
                    if patch.ndim != 3 or len(patch) != len(shapes) or patch.shape[1] != patch.shape[2]:
                        raise ValueError(f"entry {entry['name']!r}: patches {patch.shape}")
                    patches[key] = patch
        except (KeyError, TypeError, ValueError) as exc:
            raise SamriInputError(field, "malformed", str(exc)) from exc
        return cls(sections, settings, patches)


def image_patch(image: np.ndarray, box: tuple[int, int, int, int] | np.ndarray, side: int) -> np.ndarray:
    """``(side, side)`` uint8: the ``(H, W)`` windowed ``image`` (``[0, 1]``) inside ``box`` ``(r0, c0, r1, c1)``
    (inclusive pixels, already inside the slice), scaled as a section is (bilinear, `image_patches`)."""
    return image_patches(image, np.asarray([box]), side)[0]


def image_patches(image: np.ndarray, boxes: np.ndarray, side: int) -> np.ndarray:
    """``(N, side, side)`` uint8 patches of the ``(H, W)`` windowed ``image`` inside ``boxes`` ``(N, 4)`` (inclusive
    pixels, already inside the slice), each scaled bilinearly as ``torch.nn.functional.interpolate(...,
    mode="bilinear", align_corners=False)`` scales a crop (the same sample points and weights), all in one pass: a
    lone click's search scores 507 boxes."""
    image = np.asarray(image, np.float32)
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    r_lo, r_hi, r_w = _sample_points(boxes[:, 0], boxes[:, 2], side)
    c_lo, c_hi, c_w = _sample_points(boxes[:, 1], boxes[:, 3], side)
    rows_lo, rows_hi = r_lo[:, :, None], r_hi[:, :, None]
    cols_lo, cols_hi = c_lo[:, None, :], c_hi[:, None, :]
    wr, wc = r_w[:, :, None], c_w[:, None, :]
    top = (1 - wc) * image[rows_lo, cols_lo] + wc * image[rows_lo, cols_hi]
    bottom = (1 - wc) * image[rows_hi, cols_lo] + wc * image[rows_hi, cols_hi]
    scaled = (1 - wr) * top + wr * bottom
    return (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)


def _sample_points(first: np.ndarray, last: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per box ``(N,)`` inclusive pixel range: the ``(N, side)`` lower and upper source pixels of each output pixel and
    the upper one's weight (half-pixel centres, clamped at the first pixel, as PyTorch's bilinear scaling)."""
    length = (last - first + 1).astype(np.float32)[:, None]
    source = np.maximum((np.arange(side, dtype=np.float32)[None, :] + np.float32(0.5)) * (length / np.float32(side))
                        - np.float32(0.5), np.float32(0.0))
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, length.astype(np.int64) - 1)
    return first[:, None] + lower, first[:, None] + upper, (source - lower).astype(np.float32)


def _pixel_box(box: np.ndarray, slice_shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """``box`` rounded to whole pixels and cut at the slice's edges; None when nothing of it is left."""
    pixels, valid = _pixel_boxes(np.asarray(box, np.float64)[None], slice_shape)
    return tuple(int(v) for v in pixels[0]) if valid[0] else None


def _pixel_boxes(boxes: np.ndarray, slice_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``boxes`` ``(B, 4)`` rounded to whole pixels (half to even) and cut at the slice's edges: ``(B, 4)`` int64
    and ``(B,)`` whether anything of each is left."""
    h, w = slice_shape
    pixels = np.round(np.asarray(boxes, np.float64).reshape(-1, 4)).astype(np.int64)
    pixels[:, :2] = np.maximum(pixels[:, :2], 0)
    pixels[:, 2] = np.minimum(pixels[:, 2], h - 1)
    pixels[:, 3] = np.minimum(pixels[:, 3], w - 1)
    return pixels, (pixels[:, 2] >= pixels[:, 0]) & (pixels[:, 3] >= pixels[:, 1])


def _centred_box(centre: tuple[float, float] | np.ndarray, side_px: np.ndarray, slice_shape: tuple[int, int]
                 ) -> np.ndarray:
    """``(4,)`` box of ``side_px`` (rows, columns; at least one pixel) centred on ``centre``, cut at the slice."""
    return _centred_boxes(np.asarray(centre, np.float64)[None], np.asarray(side_px, np.float64)[None], slice_shape)[0]


def _centred_boxes(centres: np.ndarray, sides_px: np.ndarray, slice_shape: tuple[int, int]) -> np.ndarray:
    """``(B, 4)`` boxes of ``sides_px`` ``(B, 2)`` (rows, columns; at least one pixel) centred on ``centres``
    ``(B, 2)`` ``(r, c)``, cut at the slice."""
    half = np.maximum(np.asarray(sides_px, np.float64) - 1, 0.0) / 2  # at least the pixel (sections of finer voxels)
    low = np.maximum(centres - half, 0.0)
    high = np.minimum(centres + half, np.array([slice_shape[0] - 1.0, slice_shape[1] - 1.0]))
    return np.concatenate([low, high], axis=1)


def _unit_rows(patches: np.ndarray) -> np.ndarray:
    """``(N, p, p)`` patches -> ``(N, p * p)`` float32 rows of mean 0 and norm 1 (a flat patch: all 0), so a
    dot product is their normalised cross-correlation: blind to the studies' brightness and contrast."""
    rows = patches.reshape(len(patches), -1).astype(np.float32)
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def _tight_box(plane: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def _study_image(image: np.ndarray | None, label_shape: tuple[int, ...], settings: ShapePriorSettings
                 ) -> np.ndarray | None:
    """The study's windowed image when patches are stored; it must lie on the label's voxel grid."""
    if image is None or not settings.patch:
        return None
    image = np.asarray(image)
    if image.shape != tuple(label_shape):
        raise SamriInputError("image", list(image.shape), f"must have the label's shape {list(label_shape)}")
    return image


def _section(plane: np.ndarray, settings: ShapePriorSettings,
             spacing_mm: tuple[float, float]) -> tuple[np.ndarray | None, tuple[float, float]]:
    """One structure section ``(H, W)`` bool scaled to its tight box: ``(grid, grid)`` uint8, box size mm."""
    if int(plane.sum()) < settings.min_pixels:
        return None, (0.0, 0.0)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    crop = plane[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
    scaled = F.interpolate(torch.from_numpy(crop)[None, None], size=(settings.grid, settings.grid), mode="bilinear",
                           align_corners=False)[0, 0].numpy()
    return (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8), (crop.shape[0] * spacing_mm[0],
                                                                        crop.shape[1] * spacing_mm[1])


def prior_logits(prior: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``(H, W)`` logits of a prior (`ShapePriors.prior`), its probabilities clipped to `PRIOR_CLIP`;
    outside ``box`` the logit of `PRIOR_CLIP` (the box clip removes those pixels anyway)."""
    p = np.clip(prior, PRIOR_CLIP, 1.0 - PRIOR_CLIP)
    logits = np.log(p / (1.0 - p))
    return np.where(box_mask(box, prior.shape), logits, np.log(PRIOR_CLIP / (1.0 - PRIOR_CLIP))).astype(np.float32)


def fuse_prior(geom, low_res_logits: torch.Tensor, prior: np.ndarray, box: np.ndarray,
               weight: float) -> torch.Tensor:
    """The decoder's ``(1, 1, s, s)`` low-res logits plus ``weight`` x the prior's logits in that frame
    (`samri.geometry.SliceGeometry.slice_to_low_res`), so the mask and the logits fed back with the next
    click agree."""
    logits = torch.from_numpy(prior_logits(prior, box))[None, None]
    return low_res_logits.float() + weight * geom.slice_to_low_res(logits, low_res_logits.shape[-1])
