"""The simulated annotation pool of ``samri al-sim``: real volumes, their realistic variants, thin slabs.

Offline there are only two real subjects (MNI152 with tissue labels, Colin27 with AAL labels), so
the pool is made of them and of copies with realistic acquisition changes (`samri.evaluation.variants`:
contrast inversion, bias field, Gaussian/Rician noise, lower resolution; chains such as
``inverted+noise:0.03`` apply several in order). Variants are applied to the whole volume; then,
to keep the CPU cost small, each study keeps every ``z_step``-th axial slice of the labelled range
(a slab with ``z_step`` mm spacing), written as a NIfTI study with its ``final`` label so the
trainer reads it as it reads a datastore.

Frames: arrays ``(X, Y, Z)`` in file voxel order; a slab keeps X and Y and the affine's z column is
scaled by ``z_step`` (its origin moved to the first kept slice).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from samri.errors import SamriInputError
from samri.labels import load_label_names, write_label_names

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimStudy:
    """One study of the simulation.

    Attributes:
        study_id: ``<source>`` or ``<source>__<variant chain>`` (``:`` written as ``-``).
        source: the real volume it comes from (``mni152_t1``, ``colin27_t1``).
        variant: the variant chain (``""`` = the real volume).
        image: slab image file; label: its ``final`` label file.
        label_names: ``{name: value}`` of the structures kept.
        held_out: True for the evaluation studies (never in the pool).
    """

    study_id: str
    source: str
    variant: str
    image: Path
    label: Path
    label_names: dict[str, int]
    held_out: bool = False


def study_name(source: str, chain: str) -> str:
    if not chain:
        return source
    return f"{source}__{re.sub(r'[^A-Za-z0-9.+_-]', '-', chain)}"


def apply_chain(array: np.ndarray, chain: str, seed: int) -> np.ndarray:
    """Apply ``"a+b:0.1"`` variants in order (each with its own seed); ``""`` returns float32 ``array``."""
    from samri.evaluation.variants import make_variant

    out = np.asarray(array, dtype=np.float32)
    for n, part in enumerate(p for p in chain.split("+") if p):
        out = make_variant(out, part, seed=seed + 17 * n)
    return out


def slab_indices(label: np.ndarray, z_step: int) -> np.ndarray:
    """Every ``z_step``-th axial index of the range holding labels (centred in that range)."""
    present = np.flatnonzero(label.reshape(-1, label.shape[2]).any(axis=0))
    if present.size == 0:
        raise SamriInputError("label", "all zero", "the source label has no structure")
    lo, hi = int(present[0]), int(present[-1])
    count = (hi - lo) // z_step + 1
    offset = (hi - lo - (count - 1) * z_step) // 2
    return np.arange(lo + offset, hi + 1, z_step)[:count]


def slab_affine(affine: np.ndarray, first: int, z_step: int) -> np.ndarray:
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, float(first)]) + affine[:3, 3]
    out[:3, 2] = affine[:3, 2] * z_step
    return out


def _names(studies_dir: Path, source: str, wanted: Sequence[str]) -> dict[str, int]:
    names = load_label_names(studies_dir).get(source, {})
    return {k: v for k, v in names.items() if not wanted or k in wanted}


def build_pool(studies_dir: str | Path, out_dir: str | Path, *, pool: Mapping[str, Sequence[str]],
               held_out: Mapping[str, Sequence[str]], labels: Sequence[str], z_step: int,
               seed: int = 0) -> list[SimStudy]:
    """Write every pool and held-out study under ``out_dir`` (images + ``labels/final``).

    Args:
        studies_dir: the sample studies (``samri sample-data``): ``<source>.nii.gz``,
            ``labels/final/<source>.nii.gz`` and ``label_names.json``.
        pool / held_out: ``{source: [variant chain, ...]}`` (``""`` = the real volume).
        labels: structure names kept (others are set to 0); empty keeps all named ones.
        z_step: slab spacing in slices.

    Raises:
        SamriInputError: a source, its label or a variant name that does not exist.
    """
    import nibabel as nib

    from samri.volume import load_image, save_label

    studies_dir, out_dir = Path(studies_dir), Path(out_dir)
    out: list[SimStudy] = []
    for role, table in (("pool", pool), ("held_out", held_out)):
        for n_src, (source, chains) in enumerate(sorted(table.items())):
            image = load_image(studies_dir / f"{source}.nii.gz", f"{role}.{source}")
            label = np.asarray(load_image(studies_dir / "labels" / "final" / f"{source}.nii.gz", "label").array)
            names = _names(studies_dir, source, labels)
            if not names:
                raise SamriInputError(f"{role}.{source}", list(labels), "none of these labels is named for this source")
            kept = np.isin(label, list(names.values()))
            label = np.where(kept, label, 0).astype(np.int16)
            z = slab_indices(label, z_step)
            affine = slab_affine(image.affine, int(z[0]), z_step)
            for n_var, chain in enumerate(chains):
                sid = study_name(source, chain)
                img_path = out_dir / f"{sid}.nii.gz"
                lab_path = out_dir / "labels" / "final" / f"{sid}.nii.gz"
                if not (img_path.is_file() and lab_path.is_file()):
                    full = apply_chain(image.array, chain, seed + 1000 * (role == "held_out") + 100 * n_src + n_var)
                    save_label(img_path, np.ascontiguousarray(full[:, :, z]), affine)
                    save_label(lab_path, np.ascontiguousarray(label[:, :, z]), affine)
                present = set(np.unique(np.asarray(nib.load(str(lab_path)).dataobj)).tolist())
                out.append(SimStudy(sid, source, chain, img_path, lab_path,
                                    {k: v for k, v in names.items() if v in present}, held_out=role == "held_out"))
    ids = [s.study_id for s in out]
    if len(set(ids)) != len(ids):
        raise SamriInputError("simulation.pool", ids, "study ids repeat (a variant listed twice)")
    write_label_names(out_dir, {s.study_id: s.label_names for s in out})
    return out
