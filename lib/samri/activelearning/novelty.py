"""Novelty: how unlike the labelled studies a study looks to the image encoder.

A study's descriptor is its sampled slices' embeddings pooled per slice, averaged over slices and
L2-normalised. Pooling (``novelty.pooling``): ``grid`` (default) averages each of the ``C`` channels
over a ``g x g`` grid of the ``(h, w)`` plane (a ``(C g^2,)`` vector: keeps where in the slice a
feature is); ``mean`` over the whole plane (``(C,)``); ``mean_std`` adds each channel's standard
deviation (``(2C,)``). Measured with LiteMedSAM (docs/ACTIVE_LEARNING.md), its embeddings change
little under contrast inversion once averaged over the plane; the grid keeps about twice the
separation from a near-duplicate. Embeddings come from the shared cache, so this costs nothing once
a study was scored or annotated.

A study's novelty is the cosine distance (``1 - cos``, in ``[0, 2]``) to the nearest labelled
study's descriptor; with no labelled study yet, the distance to the mean descriptor of all studies.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

logger = logging.getLogger(__name__)


def pooled_descriptor(embeddings: Mapping[int, torch.Tensor], pooling: str = "grid", grid_size: int = 4) -> np.ndarray:
    """``{slice: (C, h, w)}`` -> L2-normalised float32 descriptor (see the module docstring)."""
    if not embeddings:
        raise ValueError("pooled_descriptor needs at least one slice embedding")
    stacked = torch.stack([e.float() for e in embeddings.values()])  # (N, C, h, w)
    if pooling == "grid":
        size = max(1, min(int(grid_size), stacked.shape[-1], stacked.shape[-2]))
        per_slice = torch.nn.functional.adaptive_avg_pool2d(stacked, size).flatten(1)
    else:
        flat = stacked.flatten(2)
        parts = [flat.mean(-1)]
        if pooling == "mean_std":
            parts.append(flat.std(-1))
        per_slice = torch.cat(parts, dim=1)
    vec = per_slice.mean(0).numpy().astype(np.float64)
    norm = float(np.linalg.norm(vec))
    return (vec / norm if norm > 0 else vec).astype(np.float32)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0
    return float(1.0 - np.dot(a, b) / (na * nb))


def novelty_scores(descriptors: Mapping[str, np.ndarray], labelled: set[str] | frozenset[str]) -> dict[str, dict]:
    """Novelty of every study in ``descriptors`` (labelled ones included, for reference).

    Returns:
        ``{study: {"value": distance, "nearest": labelled study or None, "reference": "labelled" |
        "pool_mean"}}``.
    """
    refs = {k: v for k, v in descriptors.items() if k in labelled}
    out: dict[str, dict] = {}
    if not refs:
        if not descriptors:
            return out
        centre = np.mean(np.stack(list(descriptors.values())), axis=0)
        for study, vec in descriptors.items():
            out[study] = {"value": cosine_distance(vec, centre), "nearest": None, "reference": "pool_mean"}
        return out
    for study, vec in descriptors.items():
        dists = {ref: cosine_distance(vec, rvec) for ref, rvec in refs.items() if ref != study}
        if not dists:  # the only labelled study itself
            out[study] = {"value": 0.0, "nearest": study, "reference": "labelled"}
            continue
        nearest = min(dists, key=dists.get)
        out[study] = {"value": dists[nearest], "nearest": nearest, "reference": "labelled"}
    return out


class DescriptorStore:
    """Descriptors on disk, one ``.npy`` per (encoder, content, slices, pooling) key, written atomically.

    Args:
        root: folder (e.g. ``<app>/model/activelearning/descriptors``); None keeps them in memory.
    """

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root else None
        self._memory: dict[str, np.ndarray] = {}

    def _path(self, key: str) -> Path:
        import hashlib

        return self.root / f"{hashlib.blake2b(key.encode(), digest_size=12).hexdigest()}.npy"

    def get(self, key: str) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        if self.root is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            vec = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            logger.warning("dropping unreadable descriptor %s (%s)", path, exc)
            path.unlink(missing_ok=True)
            return None
        self._memory[key] = vec
        return vec

    def put(self, key: str, vec: np.ndarray) -> None:
        self._memory[key] = vec
        if self.root is None:
            return
        from samri.io import atomic_write

        atomic_write(self._path(key), lambda f: np.save(f, vec, allow_pickle=False))
