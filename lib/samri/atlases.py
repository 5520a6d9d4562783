"""The JHU white-matter and Harvard-Oxford cortical atlases (mricron-data) as one named label map.

What `samri.cohorts` labels its pseudo-subjects with: the two atlases' names read and cleaned
(`structure_names`: ``jhu_<name>``, ``ho_<name>[_l|_r]``), each atlas resampled (nearest) onto the
template grid (`atlas_on_grid`), Harvard-Oxford split per hemisphere (`split_hemispheres`) and
offset, and both merged inside the template's brain mask (`merge_atlases`). Arrays are
``(X, Y, Z)`` in the files' voxel order; affines map voxels to RAS mm.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from samri.errors import SamriInputError
from samri.sample_data import MNI152_TISSUES

if TYPE_CHECKING:  # pragma: no cover - typing only
    import nibabel as nib
    import numpy as np

    from samri.cohorts import CohortRecipe

__all__ = ["HO_ATLAS", "JHU_ATLAS", "JHU_NAMES", "atlas_on_grid", "check_mricron_dir", "clean_name",
           "merge_atlases", "read_ho_names", "read_jhu_names", "read_structure_names", "split_hemispheres",
           "structure_names"]

JHU_ATLAS = "JHU-WhiteMatter-labels-1mm.nii.gz"
JHU_NAMES = "JHU-WhiteMatter-labels-1mm.nii.txt"
HO_ATLAS = "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz"
HO_NAMES_CONFIG = "harvard_oxford_cortical_names.json"  # in configs/: FSL name -> value (1..48)


def check_mricron_dir(mricron_dir: Path) -> None:
    """Raise `SamriInputError` (``mricron_dir``) when an atlas file is missing."""
    missing = [f for f in (JHU_ATLAS, JHU_NAMES, HO_ATLAS) if not (mricron_dir / f).is_file()]
    if missing:
        raise SamriInputError("mricron_dir", str(mricron_dir), f"missing {', '.join(missing)} (Debian package "
                              "mricron-data, or set SAMRI_MRICRON_DIR / --mricron-dir)")


def read_structure_names(mricron_dir: Path, *, ho_right: int, ho_offset: int) -> dict[int, str]:
    """Merged label value -> name for mricron's JHU names and ``configs/`` Harvard-Oxford names
    (see `read_ho_names` for ``ho_right`` and `structure_names` for ``ho_offset``)."""
    from samri.config import config_dir

    return structure_names(read_jhu_names(mricron_dir / JHU_NAMES),
                           read_ho_names(config_dir() / HO_NAMES_CONFIG, ho_right), ho_offset)


def clean_name(prefix: str, raw: str) -> str:
    """``"jhu", "Fornix_(cres)_/_Stria"`` -> ``"jhu_fornix_cres_stria"``: lower case, runs of anything
    but letters and digits -> one underscore, apostrophes dropped (``Heschl's`` -> ``heschls``)."""
    body = re.sub(r"[^0-9a-z]+", "_", raw.replace("'", "").lower()).strip("_")
    if not body:
        raise SamriInputError("name", raw, "a structure name needs a letter or digit")
    return f"{prefix}_{body}"


def read_jhu_names(path: Path) -> dict[int, str]:
    """mricron's ``JHU-*.nii.txt``: ``<value><TAB><name>`` lines (CRLF tolerated); 0 (Unclassified) skipped."""
    names: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit():
            raise SamriInputError(str(path), line, f"line {lineno} is not '<value> <name>'")
        if int(parts[0]) > 0:
            names[int(parts[0])] = parts[1].strip()
    return names


def read_ho_names(path: Path, right: int = 0) -> dict[int, str]:
    """``configs/harvard_oxford_cortical_names.json`` ({FSL name: value}) -> {value: name}; with
    ``right`` > 0 one entry per hemisphere: ``value: name_L`` and ``value + right: name_R``."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    names = {int(v): str(k) for k, v in raw.items()}
    if not right:
        return names
    if max(names) >= right:
        raise SamriInputError("ho_right", right, f"Harvard-Oxford values reach {max(names)}")
    return {**{v: f"{n}_L" for v, n in names.items()}, **{v + right: f"{n}_R" for v, n in names.items()}}


def split_hemispheres(atlas: np.ndarray, affine: np.ndarray, right: int) -> np.ndarray:
    """``(X, Y, Z)`` labels with ``right`` added to labelled voxels whose world x (RAS mm) is > 0."""
    import numpy as np

    if not right:
        return atlas
    i, j, k = np.meshgrid(*(np.arange(n) for n in atlas.shape[:3]), indexing="ij", sparse=True)
    world_x = affine[0, 0] * i + affine[0, 1] * j + affine[0, 2] * k + affine[0, 3]
    return np.where((atlas > 0) & (world_x > 0), atlas + right, atlas)


def structure_names(jhu: dict[int, str], ho: dict[int, str], ho_offset: int) -> dict[int, str]:
    """Merged label value -> clean unique name (JHU values as-is, Harvard-Oxford + ``ho_offset``)."""
    if jhu and ho and max(jhu) >= ho_offset + min(ho):
        raise SamriInputError("ho_offset", ho_offset, f"JHU values reach {max(jhu)}: offset too small")
    out = {v: clean_name("jhu", n) for v, n in jhu.items()}
    out.update({v + ho_offset: clean_name("ho", n) for v, n in ho.items()})
    seen: dict[str, int] = {}
    for value, name in out.items():
        if name in seen:
            raise SamriInputError("names", name, f"values {seen[name]} and {value} clean to the same name")
        seen[name] = value
    return out


def atlas_on_grid(path: Path, template: nib.Nifti1Image) -> np.ndarray:
    """Integer atlas ``path`` resampled (nearest) onto ``template``'s grid: ``template.shape[:3]`` int32."""
    import nibabel as nib
    import numpy as np
    from nilearn.image import resample_to_img

    atlas = nib.load(path)
    out = resample_to_img(atlas, template, interpolation="nearest", force_resample=True, copy_header=True)
    return np.rint(np.asarray(out.dataobj)).astype(np.int32).reshape(template.shape[:3])


def merge_atlases(jhu: np.ndarray, ho: np.ndarray, tissue: np.ndarray, recipe: CohortRecipe,
                  names: dict[int, str]) -> tuple[np.ndarray, dict[int, int], dict[int, int]]:
    """One label map from two atlases on the template grid (all ``(X, Y, Z)``).

    JHU values are kept, Harvard-Oxford values are offset by ``recipe.ho_offset``; JHU wins where both
    label a voxel. Everything outside ``tissue > 0`` (the brain mask) is 0, Harvard-Oxford also
    outside ``tissue == MNI152_TISSUES[recipe.ho_tissue]``. Structures under ``recipe.min_voxels``
    are set to 0.

    Returns:
        (uint8 labels, {value: voxels} kept, {value: voxels} dropped as too small).

    Raises:
        SamriInputError: a value present in an atlas has no name in ``names``.
    """
    import numpy as np

    brain = tissue > 0
    ho_zone = brain if recipe.ho_tissue is None else tissue == MNI152_TISSUES[recipe.ho_tissue]
    merged = np.where(ho_zone & (ho > 0), ho + recipe.ho_offset, 0)
    merged = np.where(brain & (jhu > 0), jhu, merged).astype(np.int32)
    counts = np.bincount(merged.ravel())
    present = {int(v): int(counts[v]) for v in np.flatnonzero(counts) if v}
    unnamed = sorted(set(present) - set(names))
    if unnamed:
        raise SamriInputError("atlas", unnamed[:10], "label values with no name")
    kept = {v: n for v, n in present.items() if n >= recipe.min_voxels}
    dropped = {v: n for v, n in present.items() if n < recipe.min_voxels}
    merged[~np.isin(merged, list(kept))] = 0
    dtype = np.uint8 if max(kept, default=0) < 256 else np.int16
    return merged.astype(dtype), kept, dropped
