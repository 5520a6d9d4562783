"""The INIA19 rhesus macaque template and its NeuroMaps labels (mricron-data): the adaptation domain.

`samri.cohorts` writes pseudo-subjects of this template with ``--domain macaque``: another species
(a brain about a fifth of a human one, imaged at 0.5 mm), structures no SAMRI training used, and
(with the ``t2like`` contrast) a contrast the recipe never trained on. mricron-data ships the
template (``inia19-t1-brain``, skull-stripped T1, 168x206x128 at 0.5 mm, RAS) and the NeuroMaps
label map on the same grid (724 values up to 1605) but no names, so a structure is named by its
NeuroMaps value: ``neuromaps_<value>``. Structures under ``min_voxels`` voxels are dropped and the
kept ones renumbered 1..N in value order (uint8, as a MONAI Label label file with ``label_info``).
Arrays are ``(X, Y, Z)`` in the files' voxel order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from samri.errors import SamriInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import nibabel as nib
    import numpy as np

__all__ = ["INIA_ATLAS", "INIA_T1", "MacaqueTemplate", "check_inia_files", "load_macaque_template"]

INIA_T1 = "inia19-t1-brain.nii.gz"
INIA_ATLAS = "inia19-NeuroMaps.nii.gz"
_MAX_STRUCTURES = 255  # uint8 labels


@dataclass
class MacaqueTemplate:
    """The template with its kept structures renumbered.

    Attributes:
        t1: the template T1 (NIfTI, 0.5 mm, RAS).
        labels: ``(X, Y, Z)`` uint8, 0 background, 1..N the kept structures.
        names: new value -> ``neuromaps_<original value>``.
        kept: new value -> voxels; dropped: ``neuromaps_<value>`` -> voxels (under ``min_voxels``).
    """

    t1: "nib.Nifti1Image"
    labels: "np.ndarray"
    names: dict[int, str]
    kept: dict[int, int]
    dropped: dict[str, int]


def check_inia_files(mricron_dir: Path) -> None:
    """Raise `SamriInputError` (``mricron_dir``) when the template or its label map is missing."""
    missing = [f for f in (INIA_T1, INIA_ATLAS) if not (mricron_dir / f).is_file()]
    if missing:
        raise SamriInputError("mricron_dir", str(mricron_dir), f"missing {', '.join(missing)} (Debian package "
                              "mricron-data, or set SAMRI_MRICRON_DIR / --mricron-dir)")


def load_macaque_template(mricron_dir: Path, min_voxels: int) -> MacaqueTemplate:
    """Read the template and its NeuroMaps labels; keep structures of at least ``min_voxels`` voxels
    inside the brain (T1 > 0), renumbered 1..N.

    Raises:
        SamriInputError: missing files, grids that differ, or more than 255 structures kept
            (``min_voxels`` too small for uint8 labels).
    """
    import nibabel as nib
    import numpy as np

    check_inia_files(mricron_dir)
    t1 = nib.load(str(mricron_dir / INIA_T1))
    atlas = nib.load(str(mricron_dir / INIA_ATLAS))
    if atlas.shape[:3] != t1.shape[:3] or not np.allclose(atlas.affine, t1.affine, atol=1e-3):
        raise SamriInputError("mricron_dir", str(mricron_dir), f"{INIA_ATLAS} is not on {INIA_T1}'s grid")
    values = np.rint(np.asarray(atlas.dataobj)).astype(np.int32)
    values[np.asarray(t1.dataobj) <= 0] = 0
    counts = np.bincount(values.ravel())
    present = {int(v): int(counts[v]) for v in np.flatnonzero(counts) if v}
    keep = [v for v, n in present.items() if n >= min_voxels]
    if len(keep) > _MAX_STRUCTURES:
        raise SamriInputError("min_voxels", min_voxels, f"keeps {len(keep)} structures; at most {_MAX_STRUCTURES}")
    lookup = np.zeros(len(counts), dtype=np.uint8)
    lookup[keep] = np.arange(1, len(keep) + 1)
    return MacaqueTemplate(
        t1=t1, labels=lookup[values], names={i: f"neuromaps_{v}" for i, v in enumerate(keep, 1)},
        kept={i: present[v] for i, v in enumerate(keep, 1)},
        dropped={f"neuromaps_{v}": n for v, n in present.items() if n < min_voxels})
