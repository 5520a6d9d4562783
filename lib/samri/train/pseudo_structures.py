"""Pseudo-structures for decoder training: a tissue class cut into random 3D parcels.

An annotator's new structure is often "this tissue, inside this region": a cortical area is grey
matter between borders T1 does not show, a tract is white matter. Atlases of such structures are
what the decoder is tested on, so training must not use them; instead we cut the training volume's
own grey and white matter into random Voronoi parcels (seed points drawn among the tissue's voxels,
each voxel to its nearest seed in mm) and train on each parcel as a structure. The decoder then
learns to keep to the tissue under the prompt, which the oracle analysis (docs/EVALUATION.md, "What
stops the targets") shows is most of what a box can ask for on such structures.

Voronoi parcels are compact. Tracts are not: a white-matter tract is a bundle a few mm across and
several cm long, so `tube_parcels` also cuts tubes along random smooth paths inside a tissue.

All arrays are volumes in voxel index order ``(X, Y, Z)`` of the source image.
"""

from __future__ import annotations

import logging

import numpy as np

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)


def tissue_from_grey_labels(image: np.ndarray, grey: np.ndarray, *, closing_voxels: int = 4) -> np.ndarray:
    """White matter of a T1 volume whose grey-matter structures are labelled (e.g. AAL).

    The brain's interior is the grey matter closed by ``closing_voxels`` iterations (one voxel each)
    and filled slice by slice (axis 2); inside it, outside the grey matter, white matter is the brighter of the two
    intensity classes Otsu finds (the darker one is CSF).

    Args:
        image: ``(X, Y, Z)`` T1 intensities.
        grey: ``(X, Y, Z)`` bool, the labelled grey matter.
    Returns:
        ``(X, Y, Z)`` bool white-matter mask.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    if image.shape != grey.shape:
        raise SamriInputError("grey", grey.shape, f"must have the image's shape {image.shape}")
    closed = ndimage.binary_closing(grey, structure=ndimage.generate_binary_structure(3, 1),
                                    iterations=closing_voxels)
    interior = np.zeros_like(closed)
    for z in range(closed.shape[2]):
        interior[:, :, z] = ndimage.binary_fill_holes(closed[:, :, z])
    inside = interior & ~grey
    if not inside.any():
        raise SamriInputError("grey", int(grey.sum()), "encloses no voxel: cannot find the white matter")
    threshold = float(threshold_otsu(image[inside]))
    return inside & (image >= threshold)


def voronoi_parcels(mask: np.ndarray, cells: int, rng: np.random.Generator,
                    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Cut ``mask`` into ``cells`` parcels: seeds drawn among its voxels, each voxel to the nearest seed (mm).

    Returns an int32 volume of ``mask``'s shape: 0 outside, 1..cells inside (a parcel may be empty
    only if two seeds coincide, which drawing without replacement rules out).
    """
    from scipy.spatial import cKDTree

    if cells < 1:
        raise SamriInputError("cells", cells, "must be at least 1")
    coords = np.argwhere(mask)
    if len(coords) < cells:
        raise SamriInputError("cells", cells, f"more than the mask's {len(coords)} voxels")
    scaled = coords * np.asarray(spacing, dtype=np.float64)
    seeds = scaled[rng.choice(len(coords), size=cells, replace=False)]
    _, nearest = cKDTree(seeds).query(scaled, k=1)
    out = np.zeros(mask.shape, dtype=np.int32)
    out[tuple(coords.T)] = nearest + 1
    return out


def tube_parcels(mask: np.ndarray, count: int, rng: np.random.Generator,
                 spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), *,
                 radius_mm: tuple[float, float] = (2.5, 4.5), length_mm: tuple[float, float] = (20.0, 80.0),
                 turn: float = 0.1) -> np.ndarray:
    """Cut ``count`` tract-like tubes out of ``mask``: each one the mask's voxels within a random radius
    (mm) of a random smooth path that starts at a random mask voxel and runs both ways while it stays in
    the mask, up to a random total length (mm). A voxel already in a tube stays in that one.

    Args:
        mask: ``(X, Y, Z)`` bool tissue.
        turn: how much the path's direction may change per mm (a random normal step of this size).
    Returns:
        int32 volume of ``mask``'s shape: 0 outside any tube, ``1..count`` inside (a tube may be empty
        or small where its path left the tissue at once; callers drop small ones).
    """
    from scipy.spatial import cKDTree

    if count < 1:
        raise SamriInputError("tubes", count, "must be at least 1")
    coords = np.argwhere(mask)
    if len(coords) == 0:
        raise SamriInputError("mask", 0, "holds no voxel to cut tubes from")
    step = float(min(spacing))
    scaled = coords * np.asarray(spacing, dtype=np.float64)
    tree = cKDTree(scaled)
    out = np.zeros(mask.shape, dtype=np.int32)
    for k in range(1, count + 1):
        start = scaled[rng.integers(len(scaled))]
        direction = _unit(rng.normal(size=3))
        half = rng.uniform(*length_mm) / 2
        path = [start]
        for sign in (1.0, -1.0):
            path += _walk(tree, start, sign * direction, half, step, turn, rng, max(spacing))
        near = np.unique(np.concatenate([np.asarray(i, dtype=np.int64)
                                         for i in tree.query_ball_point(np.asarray(path), r=rng.uniform(*radius_mm))]))
        voxels = coords[near]
        free = out[tuple(voxels.T)] == 0
        out[tuple(voxels[free].T)] = k
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _walk(tree, start: np.ndarray, direction: np.ndarray, length: float, step: float, turn: float,
          rng: np.random.Generator, tolerance: float) -> list[np.ndarray]:
    """Points (mm) of a smooth random walk from ``start``, ``step`` apart, for ``length`` mm. Where the
    next point would leave the tissue (nearest tissue voxel farther than ``tolerance``) the walk tries a
    few sharper turns, as a tract bends with the white matter, and stops if none stays inside."""
    points, p = [], start
    for _ in range(int(length / step)):
        for attempt in range(_TURN_ATTEMPTS):
            trial = _unit(direction + turn * step * (1 + 2 * attempt) * rng.normal(size=3))
            q = p + step * trial
            if tree.query(q)[0] <= tolerance:
                break
        else:
            break
        direction = trial
        points.append(q)
        p = q
    return points


#: sharper turns a tube's path tries before it stops at the tissue's edge
_TURN_ATTEMPTS = 6


def pseudo_structure_labels(tissues: dict[str, np.ndarray], cells: dict[str, int], *, seed: int,
                            spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                            min_voxels: int = 200, shape: str = "voronoi") -> tuple[np.ndarray, dict[str, int]]:
    """One label volume of pseudo-structures: each tissue cut into its own number of parcels.

    Args:
        tissues: tissue name -> ``(X, Y, Z)`` bool mask (disjoint; e.g. ``grey``, ``white``).
        cells: tissue name -> number of parcels.
        seed: the parcels' random seed (same seed, same parcels).
        min_voxels: parcels smaller than this are dropped.
        shape: ``voronoi`` (compact parcels that tile the tissue, `voronoi_parcels`) or ``tube``
            (tract-like tubes, `tube_parcels`).
    Returns:
        ``(labels, names)``: int16 volume (0 background) and ``{"pseudo_<tissue>_<k>": value}``
        (``pseudo_<tissue>_tube_<k>`` for tubes).
    """
    cutters = {"voronoi": voronoi_parcels, "tube": tube_parcels}
    if shape not in cutters:
        raise SamriInputError("shape", shape, f"must be one of {sorted(cutters)}")
    shapes = {m.shape for m in tissues.values()}
    if len(shapes) != 1:
        raise SamriInputError("tissues", sorted(shapes), "masks must share one shape")
    missing = set(tissues) - set(cells)
    if missing:
        raise SamriInputError("cells", sorted(missing), "no parcel count for these tissues")
    rng = np.random.default_rng(seed)
    labels = np.zeros(shapes.pop(), dtype=np.int16)
    names: dict[str, int] = {}
    for tissue, mask in tissues.items():
        parcels = cutters[shape](mask, cells[tissue], rng, spacing)
        counts = np.bincount(parcels.ravel(), minlength=cells[tissue] + 1)
        for k in range(1, cells[tissue] + 1):
            if counts[k] < min_voxels:
                continue
            value = len(names) + 1
            labels[parcels == k] = value
            names[f"pseudo_{tissue}_{'tube_' if shape == 'tube' else ''}{k:03d}"] = value
    logger.info("pseudo-structures: %d %s parcels (%s)", len(names), shape,
                ", ".join(f"{t} {cells[t]}" for t in tissues))
    return labels, names
