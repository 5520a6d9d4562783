"""Training data: annotated studies, stage 1 (embeddings through the shared cache), slice samples.

A `Study` is an image with a label volume and its label names. Stage 1 loads each study once,
checks it, encodes the slices that contain labels (already-cached slices cost nothing; the cache
is the resumable state) and returns a `StudyIndex` per usable study: what stage 2 needs to read
embeddings back without touching the image again. ``max_slices`` bounds the encoder passes of a
run's stage 1: each study gets an equal share, taken as evenly spaced labelled slices; labelled
slices already in the cache are used as well (they cost nothing).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from samri.errors import SamriInputError
from samri.geometry import take_slice
from samri.inference.embeddings import EmbeddingCache, EmbeddingKey, get_embeddings
from samri.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Study:
    """An annotated study.

    Attributes:
        study_id: datastore id.
        image: image path.
        label: integer label volume path on the image's grid.
        label_names: ``{name: voxel value}`` (from MONAI Label's ``label_info`` or label_names.json).
    """

    study_id: str
    image: Path
    label: Path
    label_names: dict[str, int]


@dataclass
class SliceSample:
    """One (slice, structure) training pair: axis, slice index, label value, object area (px)."""

    study_id: str
    axis: int
    index: int
    value: int
    area: int


@dataclass
class StudyIndex:
    """What stage 2 needs from a study: cache keys and the label volume path."""

    study: Study
    content_key: str
    shape: tuple[int, int, int]
    samples: list[SliceSample] = field(default_factory=list)


@dataclass
class DataStats:
    """Counts and skip reasons of a run (also written into the checkpoint metadata)."""

    studies_used: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    slices_encoded: int = 0
    slices_labelled: int = 0  # slices holding a sample, before the ``max_slices`` budget
    slices_used: int = 0      # slices kept: already cached ones plus the budget's (all cached after stage 1)

    def to_dict(self) -> dict:
        return asdict(self)


def find_studies(studies_dir: str | Path, tag: str = "final") -> list[Study]:
    """Studies of a MONAI Label local datastore folder that have a ``labels/<tag>`` volume; label names from
    ``label_names.json``, else from the datastore's stored ``label_info`` (`samri.labels.datastore_label_names`)."""
    from samri.labels import datastore_label_names, load_label_names

    root = Path(studies_dir)
    if not root.is_dir():
        raise SamriInputError("studies", str(root), "folder not found")
    names = {**datastore_label_names(root, tag), **load_label_names(root)}
    out = []
    for image in sorted(root.glob("*.nii*")):
        study_id = image.name.split(".nii")[0]
        label = root / "labels" / tag / image.name
        if label.is_file():
            out.append(Study(study_id, image, label, dict(names.get(study_id, {}))))
    return out


def _label_values(study: Study, include: Sequence[str] | None, stats: DataStats) -> dict[int, str]:
    names = study.label_names
    if include is not None:
        unknown = [n for n in names if n not in include]
        for n in unknown:
            logger.info("%s: label %r not in include_labels: ignored", study.study_id, n)
        names = {n: v for n, v in names.items() if n in include}
    return {int(v): n for n, v in names.items()}


def index_study(study: Study, *, window, min_pixels: int, axes: Sequence[int],
                include_labels: Sequence[str] | None, stats: DataStats):
    """Load and check one study; ``(PreparedVolume, StudyIndex)`` or None (skipped, reason logged)."""
    from samri.volume import load_image, prepare_volume

    try:
        image = load_image(study.image)
        label = load_image(study.label, field_name="label").array
        if label.shape != image.array.shape:
            raise SamriInputError("label", f"shape {label.shape}", f"does not match image shape {image.array.shape}")
        volume = prepare_volume(image, window)
    except (SamriInputError, OSError) as exc:
        stats.skipped[study.study_id] = str(exc)
        logger.warning("skipping study %s: %s", study.study_id, exc)
        return None
    label = np.asarray(label).astype(np.int64)
    values = _label_values(study, include_labels, stats) if study.label_names else \
        {int(v): str(v) for v in np.unique(label) if v != 0}
    present = [v for v in values if (label == v).any()]
    if not present:
        stats.skipped[study.study_id] = "label volume has no (named) structure"
        logger.warning("skipping study %s: label volume has no (named) structure", study.study_id)
        return None
    index = StudyIndex(study=study, content_key=volume.content_key, shape=volume.shape)
    for axis in axes:
        moved = np.moveaxis(label, axis, 0)
        for v in present:
            areas = (moved == v).reshape(moved.shape[0], -1).sum(axis=1)
            index.samples += [SliceSample(study.study_id, axis, int(i), v, int(a))
                              for i, a in enumerate(areas) if a >= min_pixels]
    return volume, index


def spread(items: Sequence[int], k: int | None) -> list[int]:
    """``k`` evenly spaced items of a sorted sequence (all of them when ``k`` is None or large enough)."""
    if k is None or k >= len(items):
        return list(items)
    if k <= 0:
        return []
    picks = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in picks]


def limit_slices(index: StudyIndex, budget: int | None, axes: Sequence[int],
                 free: frozenset[tuple[int, int]] = frozenset()) -> int:
    """Keep the samples of the ``free`` ``(axis, slice)`` pairs (already cached) and of at most
    ``budget`` other slices (evenly spaced, split over ``axes``); returns the labelled slice count."""
    keep: set[tuple[int, int]] = set()
    labelled = new = 0
    for n, axis in enumerate(axes):
        slices = sorted({s.index for s in index.samples if s.axis == axis})
        labelled += len(slices)
        share = None if budget is None else (budget - new) // (len(axes) - n)
        picked = spread([i for i in slices if (axis, i) not in free], share)
        new += len(picked)
        keep |= {(axis, i) for i in picked} | {(axis, i) for i in slices if (axis, i) in free}
    index.samples = [s for s in index.samples if (s.axis, s.index) in keep]
    return labelled


def _cached(index: StudyIndex, cache: EmbeddingCache, encoder_key: str) -> frozenset[tuple[int, int]]:
    pairs = {(s.axis, s.index) for s in index.samples}
    return frozenset(p for p in pairs if EmbeddingKey(index.content_key, p[0], p[1], encoder_key) in cache)


ProgressFn = Callable[[dict[str, Any]], None]


def _bar(total: int, desc: str, show: bool):
    if not show or not total:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="slice")


def stage1(studies: Iterable[Study], model, cache: EmbeddingCache, *, window,
           min_pixels: int = TrainConfig.min_pixels, axes: Sequence[int] = TrainConfig.axes,
           include_labels: Sequence[str] | None = None, shard: tuple[int, int] = (0, 1),
           stats: DataStats | None = None, progress: bool = True, max_slices: int | None = None,
           on_progress: ProgressFn | None = None) -> tuple[list[StudyIndex], DataStats]:
    """Index every study and encode the slices that hold samples.

    Args:
        shard: ``(rank, world_size)``: this process encodes only every ``world_size``-th study;
            all ranks index all studies (cheap) so they agree on the sample list.
        max_slices: the most slices this run encodes over all studies (None = every labelled
            slice); what remains of it is shared equally by the studies still to come, each
            taking evenly spaced labelled slices. Labelled slices already in the cache are used
            on top, for free (single process only: under DDP the ranks' caches change while they
            index, so every used slice counts).
        on_progress: called after every few encoded slices with ``{"phase": "stage1",
            "study", "studies_done", "studies_total", "slices_encoded", "max_slices"}``.
    """
    stats = stats or DataStats()
    rank, world = shard
    studies = list(studies)
    indices = []
    spent = 0  # slices of the budget taken so far

    def report(n: int, study_id: str) -> None:
        if on_progress is not None:
            on_progress({"phase": "stage1", "study": study_id, "studies_done": n, "studies_total": len(studies),
                         "slices_encoded": stats.slices_encoded, "slices_used": stats.slices_used,
                         "max_slices": max_slices})

    for n, study in enumerate(studies):
        report(n, study.study_id)
        loaded = index_study(study, window=window, min_pixels=min_pixels, axes=axes,
                             include_labels=include_labels, stats=stats)
        if loaded is None:
            continue
        volume, index = loaded
        if not index.samples:
            stats.skipped[study.study_id] = f"no structure of at least {min_pixels} px in any slice"
            logger.warning("skipping study %s: %s", study.study_id, stats.skipped[study.study_id])
            continue
        left = len(studies) - n  # a ceiling share: a budget of at least one slice per study reaches every study
        budget = None if max_slices is None else -(-max(0, max_slices - spent) // left)
        free = _cached(index, cache, model.cache_key()) if max_slices is not None and world == 1 else frozenset()
        labelled = limit_slices(index, budget, axes, free)
        spent += len({(s.axis, s.index) for s in index.samples} - free)
        stats.slices_labelled += labelled
        if not index.samples:
            stats.skipped[study.study_id] = f"no slice left of the max_slices budget ({max_slices})"
            logger.warning("skipping study %s: %s", study.study_id, stats.skipped[study.study_id])
            continue
        indices.append(index)
        stats.studies_used.append(study.study_id)
        stats.samples += len(index.samples)
        for axis in axes:
            slices = sorted({s.index for s in index.samples if s.axis == axis})
            stats.slices_used += len(slices)
            if n % world != rank:
                continue
            bar = _bar(len(slices), f"encoding {study.study_id} axis {axis}", progress)
            for start in range(0, len(slices), 4):  # small chunks: progress, and no dict of every embedding
                before = cache.stats["encoded"]
                get_embeddings(model, volume, cache, axis, slices[start:start + 4], progress=False)
                stats.slices_encoded += cache.stats["encoded"] - before
                report(n, study.study_id)
                if bar is not None:
                    bar.update(len(slices[start:start + 4]))
            if bar is not None:
                bar.close()
        if rank == 0:
            logger.info("stage 1: %s: %d of %d labelled slices, %d samples (%d slices encoded so far)",
                        study.study_id, len({(s.axis, s.index) for s in index.samples}), labelled,
                        len(index.samples), stats.slices_encoded)
    report(len(studies), "")
    if not indices:
        raise SamriInputError("studies", sorted(stats.skipped) or [], "no usable annotated study: "
                              + "; ".join(f"{k}: {v}" for k, v in stats.skipped.items()) if stats.skipped
                              else "no usable annotated study (no image has a final label)")
    return indices, stats


def split_by_study(indices: Sequence[StudyIndex], val_fraction: float, seed: int,
                   val_studies: Sequence[str] | None = None) -> tuple[list, list]:
    """Train/validation split by study (never by slice). With one study, it serves both.

    Args:
        val_studies: study ids to validate on instead of a seeded random ``val_fraction``
            (the default-decoder recipe validates on a study holding structures no training
            study has); every id must be a usable study.
    """
    if val_studies:
        known, wanted = {i.study.study_id for i in indices}, set(val_studies)
        missing = sorted(wanted - known)
        if missing:
            raise SamriInputError("val_studies", missing, f"not among the usable studies {sorted(known)}")
        val = [i for i in indices if i.study.study_id in wanted]
        train = [i for i in indices if i.study.study_id not in wanted]
        if not train:
            raise SamriInputError("val_studies", list(val_studies), "leaves no study to train on")
        return train, val
    order = list(indices)
    np.random.default_rng(seed).shuffle(order)
    if len(order) < 2 or val_fraction <= 0:
        return order, order
    n_val = min(len(order) - 1, max(1, int(round(val_fraction * len(order)))))
    return order[n_val:], order[:n_val]


def label_slice(label: np.ndarray, sample: SliceSample) -> np.ndarray:
    """``(H, W)`` bool target of ``sample`` from the study's ``(X, Y, Z)`` label volume."""
    return take_slice(label, sample.axis, sample.index) == sample.value


def write_manifest(path: Path, indices: Sequence[StudyIndex], stats: DataStats) -> None:
    """A human-readable record of what stage 1 produced (atomic)."""
    from samri.io import write_json

    write_json(path, {"stats": stats.to_dict(), "studies": [
        {"study_id": i.study.study_id, "image": str(i.study.image), "label": str(i.study.label),
         "content_key": i.content_key, "shape": list(i.shape), "samples": len(i.samples)} for i in indices]})
