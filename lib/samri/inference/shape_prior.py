"""Shape priors from finished studies: what a labelled structure looks like inside its box.

Annotators label the same structures study after study. Every finished label holds, per structure
name and per slice, a section of that structure; scaled to its own tight box, a section is a shape
(``grid x grid`` in ``[0, 1]``). When an annotator draws a box for a structure whose name has finished
sections (Slicer sends the segment's name as ``label``), the sections whose boxes are closest in size
(in mm) are averaged, scaled back onto the new box, and added to the decoder's answer as logits
(`fuse_prior`), on the first answer and on every refinement of that box's session. The decoder keeps
the image's evidence; the prior says where inside the box this structure usually lies. A lone first
click of a named structure is answered as a box of the structure's typical size centred on it
(`ShapePriors.point_box`), and every refinement of a session without a box takes the prior on the tight
box of its answer and positive clicks. A 3D request of a named structure takes the prior on its seeds and on
every propagated slice (on the box it propagates with, `samri.inference.propagation.Propagator`). Without a
name, or for a name no finished study has, nothing changes.

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


@dataclass(frozen=True)
class ShapePriorSettings:
    """How sections become a prior and how strongly it counts.

    Attributes:
        grid: side of a stored section, scaled to its box (pixels).
        neighbours: sections averaged into one prior, those closest to the new box in size.
        weight: the prior's logits are multiplied by this before they are added to the decoder's.
        max_sections: most sections kept per (structure, axis); more are subsampled evenly.
        min_pixels: sections smaller than this (pixels) are not kept.
    """

    grid: int = 32
    neighbours: int = 16
    weight: float = 1.0
    max_sections: int = 512
    min_pixels: int = 16

    def __post_init__(self) -> None:
        for name in ("grid", "neighbours", "max_sections", "min_pixels"):
            if int(getattr(self, name)) < 1:
                raise SamriInputError(f"shape_prior.{name}", getattr(self, name), "must be at least 1")
        if not float(self.weight) >= 0.0:
            raise SamriInputError("shape_prior.weight", self.weight, "must be >= 0")


class ShapePriors:
    """Sections of finished labels, per structure name and slicing axis.

    Args:
        sections: ``{(name, axis): (shapes (N, grid, grid) uint8 in 0..255, sizes_mm (N, 2) float32)}``.
        settings: `ShapePriorSettings`.
    """

    def __init__(self, sections: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]],
                 settings: ShapePriorSettings = ShapePriorSettings()) -> None:
        self.settings = settings
        self.sections = {(str(n), int(a)): (np.asarray(s, np.uint8), np.asarray(z, np.float32))
                         for (n, a), (s, z) in sections.items()}

    @classmethod
    def from_labels(cls, labels: Iterable[tuple[np.ndarray, Mapping[str, int], tuple[float, float, float]]], *,
                    axes: Iterable[int] = (2,), settings: ShapePriorSettings = ShapePriorSettings()) -> "ShapePriors":
        """Collect every section of every named structure.

        Args:
            labels: ``(label volume (X, Y, Z) int, {name: value}, voxel spacing mm)`` per finished study.
            axes: slicing axes to collect along (the axes requests are served on).
        """
        found: dict[tuple[str, int], tuple[list[np.ndarray], list[tuple[float, float]]]] = {}
        for volume, names, spacing in labels:
            volume = np.asarray(volume)
            for axis in axes:
                rows, cols = in_plane_axes(check_axis(axis))
                for name, value in names.items():
                    structure = volume == int(value)
                    present = np.flatnonzero(structure.any(axis=tuple(a for a in range(3) if a != axis)))
                    for index in present:
                        shape, size = _section(take_slice(structure, axis, int(index)), settings,
                                               (float(spacing[rows]), float(spacing[cols])))
                        if shape is not None:
                            bucket = found.setdefault((str(name), int(axis)), ([], []))
                            bucket[0].append(shape)
                            bucket[1].append(size)
        sections = {}
        for key, (shapes, sizes) in found.items():
            keep = np.arange(len(shapes))
            if len(keep) > settings.max_sections:
                keep = np.unique(np.linspace(0, len(shapes) - 1, settings.max_sections).round().astype(int))
            sections[key] = (np.stack([shapes[i] for i in keep]), np.asarray([sizes[i] for i in keep], np.float32))
        return cls(sections, settings)

    @property
    def names(self) -> list[str]:
        return sorted({name for name, _ in self.sections})

    def __len__(self) -> int:
        return sum(len(shapes) for shapes, _ in self.sections.values())

    def prior(self, name: str | None, axis: int, box: np.ndarray, slice_shape: tuple[int, int],
              spacing_mm: tuple[float, float]) -> np.ndarray | None:
        """``(H, W)`` float32 probability that a pixel belongs to structure ``name``, inside ``box`` (0
        outside it); None when no finished section of that name exists on this axis.

        Args:
            box: ``(4,)`` ``(r0, c0, r1, c1)`` inclusive slice pixels.
            slice_shape: the slice's ``(H, W)``.
            spacing_mm: the slice's row and column spacing.
        """
        found = self.sections.get((str(name), int(axis))) if name else None
        if found is None:
            return None
        shapes, sizes = found
        h, w = slice_shape
        r0, c0, r1, c1 = (int(round(float(v))) for v in box)
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h - 1), min(c1, w - 1)
        if r1 < r0 or c1 < c0:
            return None
        size = np.array([(r1 - r0 + 1) * spacing_mm[0], (c1 - c0 + 1) * spacing_mm[1]], np.float32)
        distance = np.abs(np.log(sizes / size)).sum(axis=1)  # relative difference of the box's sides
        nearest = np.argsort(distance, kind="stable")[:self.settings.neighbours]
        mean = shapes[nearest].astype(np.float32).mean(axis=0) / 255.0
        scaled = F.interpolate(torch.from_numpy(mean)[None, None], size=(r1 - r0 + 1, c1 - c0 + 1), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
        out = np.zeros((h, w), np.float32)
        out[r0:r1 + 1, c0:c1 + 1] = scaled
        return out

    def point_box(self, name: str | None, axis: int, point: np.ndarray, slice_shape: tuple[int, int],
                  spacing_mm: tuple[float, float]) -> np.ndarray | None:
        """``(4,)`` ``(r0, c0, r1, c1)`` box of structure ``name``'s typical section size (`POINT_BOX_PERCENTILE`
        of its finished sections' sizes in mm, per side) centred on ``point`` ``(r, c)`` and cut at the slice's
        edges; None when no finished section of that name exists on this axis."""
        found = self.sections.get((str(name), int(axis))) if name else None
        if found is None:
            return None
        side_px = np.percentile(found[1], POINT_BOX_PERCENTILE, axis=0) / np.asarray(spacing_mm, np.float64)
        half = np.maximum(side_px - 1, 0.0) / 2  # at least the clicked pixel (sections from finer voxels)
        h, w = slice_shape
        r, c = float(point[0]), float(point[1])
        return np.array([max(0.0, r - half[0]), max(0.0, c - half[1]), min(h - 1.0, r + half[0]),
                         min(w - 1.0, c + half[1])])

    def to_payload(self) -> dict[str, Any]:
        """Tensors, lists and numbers only (a decoder checkpoint's ``shape_priors``, read with weights_only)."""
        s = self.settings
        return {"settings": {"grid": s.grid, "neighbours": s.neighbours, "weight": float(s.weight),
                             "max_sections": s.max_sections, "min_pixels": s.min_pixels},
                "entries": [{"name": name, "axis": axis, "shapes": torch.from_numpy(shapes.copy()),
                             "sizes_mm": torch.from_numpy(sizes.copy())}
                            for (name, axis), (shapes, sizes) in sorted(self.sections.items())]}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], field: str = "shape_priors") -> "ShapePriors":
        """Inverse of `to_payload`; a malformed payload raises `SamriInputError` naming ``field``."""
        try:
            settings = ShapePriorSettings(**dict(payload["settings"]))
            sections = {}
            for entry in payload["entries"]:
                shapes = np.asarray(entry["shapes"], dtype=np.uint8)
                sizes = np.asarray(entry["sizes_mm"], dtype=np.float32)
                if shapes.ndim != 3 or shapes.shape[1:] != (settings.grid, settings.grid) or sizes.shape != (
                        len(shapes), 2) or not (sizes > 0).all():
                    raise ValueError(f"entry {entry['name']!r}: shapes {shapes.shape}, sizes {sizes.shape}")
                sections[(str(entry["name"]), check_axis(int(entry["axis"])))] = (shapes, sizes)
        except (KeyError, TypeError, ValueError) as exc:
            raise SamriInputError(field, "malformed", str(exc)) from exc
        return cls(sections, settings)


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
