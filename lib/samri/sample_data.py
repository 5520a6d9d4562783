"""Sample MRI studies with ground truth, written as a MONAI Label local datastore.

No MRI can be downloaded here, so the samples come from files already installed:

- ``"mni152"``: nilearn's bundled ICBM152 2009a T1 template (skull-stripped, 197x233x189, 1 mm)
  and its grey/white-matter probability maps, from which a 3-tissue label map is derived.
  Always available (nilearn is a dependency).
- ``"colin27"``: Colin27 (``ch2.nii.gz``, 181x217x181, 1 mm) with the AAL atlas (116 regions)
  from Debian's ``mricron-data`` package. Available only when that package is installed; the
  folder can be moved with the environment variable ``SAMRI_MRICRON_DIR``.

Layout written by :func:`write_sample_studies` (what ``monailabel start_server --studies``
expects)::

    out_dir/<study_id>.nii.gz                 image
    out_dir/labels/final/<study_id>.nii.gz    integer ground truth, same grid and affine
    out_dir/label_names.json                  {study_id: {label name: voxel value}}

All arrays are in the files' own voxel order (i, j, k) = (axis 0, 1, 2); both sources are
RAS-aligned 1 mm grids, so axis 2 is inferior -> superior (axial slices).

Every file is written atomically (`samri.io`: temporary file in the target folder, then rename), so
a killed run never leaves a half-written study for the datastore to pick up.
"""

from __future__ import annotations

import gzip
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samri.errors import SamriInputError
from samri.io import write_bytes
from samri.labels import LABEL_NAMES_FILE, load_label_names, write_label_names

if TYPE_CHECKING:  # pragma: no cover - typing only
    import nibabel as nib
    import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "MRICRON_DIR_ENV",
    "SOURCES",
    "SampleStudy",
    "available_sources",
    "write_sample_studies",
]

#: Environment variable overriding where mricron-data's templates live.
MRICRON_DIR_ENV = "SAMRI_MRICRON_DIR"
_DEFAULT_MRICRON_DIR = "/usr/share/mricron/templates"

#: Known sources, in the order they are written; value = the study id each one produces.
SOURCES: dict[str, str] = {"mni152": "mni152_t1", "colin27": "colin27_t1"}

LABELS_SUBDIR = ("labels", "final")

#: MNI152 tissue labels (voxel values). "csf" is everything inside the brain mask where neither
#: grey nor white matter is the most probable class (mostly CSF, some vessels and dura).
MNI152_TISSUES: dict[str, int] = {"csf": 1, "grey_matter": 2, "white_matter": 3}

_GRID_ATOL = 1e-3  # mm; tolerance when comparing affines of files meant to share one grid
_GZIP_LEVEL = 6

_COLIN_FILES = ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt")
_NILEARN_MNI_FILES = tuple(
    f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")
)

_SOURCE_NOTES = {
    "mni152": (
        "ICBM 2009a nonlinear symmetric T1 template + GM/WM probability maps bundled with nilearn "
        "(McConnell Brain Imaging Centre, (c) McGill; free use with attribution); tissue labels "
        "derived by samri.sample_data"
    ),
    "colin27": (
        "Colin27 (ch2) T1 + AAL atlas (Tzourio-Mazoyer et al. 2002) from Debian mricron-data "
        "(package licence BSD-3-clause; cite AAL and Holmes et al. 1998 for Colin27)"
    ),
}


@dataclass(frozen=True)
class SampleStudy:
    """One sample study written to a datastore folder.

    Attributes:
        study_id: MONAI Label image id (file name without ``.nii.gz``).
        image: path of the image, ``out_dir/<study_id>.nii.gz``.
        label: path of the ground truth, ``out_dir/labels/final/<study_id>.nii.gz``: integer
            labels (uint8) on exactly the image's voxel grid and affine.
        label_names: label name -> voxel value; 0 is background and is not listed.
        source: one line saying where the data came from and its licence terms.
    """

    study_id: str
    image: Path
    label: Path
    label_names: dict[str, int]
    source: str


def _mricron_dir() -> Path:
    """Folder holding mricron-data's templates (``$SAMRI_MRICRON_DIR`` or the Debian default)."""
    return Path(os.environ.get(MRICRON_DIR_ENV) or _DEFAULT_MRICRON_DIR)


def available_sources() -> list[str]:
    """Sample sources installed on this machine.

    Returns:
        A sub-list of ``["mni152", "colin27"]`` in that order: ``"mni152"`` whenever nilearn's
        bundled template files exist, ``"colin27"`` when ``ch2.nii.gz``, ``aal.nii.gz`` and
        ``aal.nii.txt`` are all in ``$SAMRI_MRICRON_DIR`` (default
        ``/usr/share/mricron/templates``, from Debian's ``mricron-data``).
    """
    found = ["mni152"] if _nilearn_mni152_installed() else []
    folder = _mricron_dir()
    if all((folder / name).is_file() for name in _COLIN_FILES):
        found.append("colin27")
    return found


def _nilearn_mni152_installed() -> bool:
    """Whether nilearn's bundled MNI152 T1/GM/WM files exist.

    Looks for the files next to the installed package first, because importing
    ``nilearn.datasets`` costs seconds (it pulls in scikit-learn and pandas); falls back to the
    import if nilearn ever moves them.
    """
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        logger.warning("nilearn is not installed: the mni152 sample is unavailable")
        return False
    data_dir = Path(spec.origin).parent / "datasets" / "data"
    if all((data_dir / name).is_file() for name in _NILEARN_MNI_FILES):
        return True
    from nilearn import datasets

    paths = (datasets.MNI152_FILE_PATH, datasets.GM_MNI152_FILE_PATH, datasets.WM_MNI152_FILE_PATH)
    return all(Path(p).is_file() for p in paths)


def write_sample_studies(
    out_dir: str | os.PathLike[str],
    sources: Sequence[str] | str | None = None,
    overwrite: bool = False,
) -> list[SampleStudy]:
    """Write sample studies with ground truth as a MONAI Label local datastore.

    A study whose image and label files both exist is left untouched (not even read) unless
    ``overwrite`` is true, so a second call is fast. ``label_names.json`` is merged: entries of
    studies not written by this call are kept.

    Args:
        out_dir: datastore folder (created when missing).
        sources: names from :data:`SOURCES` (a single string is accepted); ``None`` means every
            source from :func:`available_sources`.
        overwrite: rewrite studies that already exist.

    Returns:
        One :class:`SampleStudy` per requested source, in the order of :data:`SOURCES`.

    Raises:
        SamriInputError: ``sources`` names an unknown source or one that is not installed, or
            the installed files are inconsistent (grids that do not match, unnamed labels).
    """
    wanted = _check_sources(sources)
    out = Path(out_dir)
    label_dir = out.joinpath(*LABELS_SUBDIR)
    label_dir.mkdir(parents=True, exist_ok=True)

    studies = []
    for source in wanted:
        study_id = SOURCES[source]
        image_path = out / f"{study_id}.nii.gz"
        label_path = label_dir / f"{study_id}.nii.gz"
        names = _label_names(source)
        start = time.perf_counter()
        if not overwrite and image_path.is_file() and label_path.is_file():
            logger.info("sample %s: kept existing %s", study_id, image_path)
        else:
            image, label = _load_mni152() if source == "mni152" else _load_colin27(names)
            _save_nifti_atomic(image, image_path)
            _save_nifti_atomic(label, label_path)
            logger.info(
                "sample %s: wrote %s %s and %d labels to %s in %.1f s",
                study_id, "x".join(map(str, image.shape)), image.get_data_dtype(), len(names), out,
                time.perf_counter() - start,
            )  # fmt: skip
        studies.append(SampleStudy(study_id, image_path, label_path, names, _SOURCE_NOTES[source]))

    all_names = load_label_names(out)
    merged = {**all_names, **{s.study_id: s.label_names for s in studies}}
    if merged != all_names or not (out / LABEL_NAMES_FILE).is_file():
        write_label_names(out, merged)  # studies sorted by id, names stay in value order
    return studies


def _check_sources(sources: Sequence[str] | str | None) -> list[str]:
    """Validate ``sources`` and return them deduplicated in :data:`SOURCES` order."""
    available = available_sources()
    if sources is None:
        return available
    requested = [sources] if isinstance(sources, str) else list(sources)
    for name in requested:
        if not isinstance(name, str) or name not in SOURCES:
            raise SamriInputError(
                "sources", name, f"unknown sample source {name!r}; known sources: {', '.join(SOURCES)}"
            )
        if name not in available:
            needs = (
                "nilearn's bundled MNI152 files (reinstall nilearn)"
                if name == "mni152"
                else f"{', '.join(_COLIN_FILES)} in {_mricron_dir()} "
                f"(Debian package mricron-data, or set {MRICRON_DIR_ENV})"
            )
            raise SamriInputError("sources", name, f"sample source {name!r} is not installed: needs {needs}")
    return [name for name in SOURCES if name in requested]


def _label_names(source: str) -> dict[str, int]:
    """Label name -> value for a source, without reading any image."""
    if source == "mni152":
        return dict(MNI152_TISSUES)
    return _read_aal_names(_mricron_dir() / "aal.nii.txt")


def _read_aal_names(path: Path) -> dict[str, int]:
    """Parse mricron's ``aal.nii.txt``: one ``<value> <name> <code>`` per line (CRLF tolerated)."""
    names: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            value = -1
        if len(parts) < 2 or not 0 < value < 65536:
            raise SamriInputError(str(path), line, f"line {lineno} is not '<value> <name> [code]' with 0 < value")
        names[parts[1]] = value
    if not names:
        raise SamriInputError(str(path), "", "no label names found")
    return names


def _load_mni152() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """MNI152 2009a T1 and its 3-tissue label map, both on the template's 197x233x189 1 mm grid.

    The image is ``nilearn.datasets.load_mni152_template(resolution=1)``: float32 scaled to
    [0, 1]. Labels: inside nilearn's brain mask (template > 0.2,
    ``load_mni152_brain_mask``), each voxel takes the most probable of three classes,
    p_csf = max(0, 1 - p_gm - p_wm), p_gm, p_wm (ties go to the earlier class). So a voxel is
    grey (white) matter exactly when p_gm (p_wm) is at least both other probabilities; any
    p >= 0.5 always wins, and no tissue wins below 1/3. Values are :data:`MNI152_TISSUES`.
    """
    import numpy as np
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    for what, other in (("grey-matter map", gm), ("white-matter map", wm), ("brain mask", mask)):
        _check_same_grid(t1, other, "nilearn MNI152 template", what)

    p_gm = np.asarray(gm.dataobj, dtype=np.float32)
    p_wm = np.asarray(wm.dataobj, dtype=np.float32)
    p_csf = np.clip(1.0 - p_gm - p_wm, 0.0, None)
    tissue = np.argmax(np.stack([p_csf, p_gm, p_wm]), axis=0).astype(np.uint8) + 1
    labels = np.where(np.asarray(mask.dataobj) > 0, tissue, 0).astype(np.uint8)

    image_data = np.asarray(t1.dataobj, dtype=np.float32)
    sform_code = int(t1.header["sform_code"]) or 2  # keep the template's code (2, "aligned")
    return _nifti(image_data, t1.affine, sform_code), _nifti(labels, t1.affine, sform_code)


def _load_colin27(names: dict[str, int]) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Colin27 ``ch2`` T1 (native uint8) and AAL labels (uint8), on ch2's 181x217x181 1 mm grid.

    The AAL file must have ch2's shape and an affine within 1e-3 of ch2's; it is then saved
    with ch2's affine so image and label headers agree exactly.
    """
    import nibabel as nib
    import numpy as np

    folder = _mricron_dir()
    ch2 = nib.load(folder / "ch2.nii.gz")
    aal = nib.load(folder / "aal.nii.gz")
    _check_same_grid(ch2, aal, str(folder / "ch2.nii.gz"), str(folder / "aal.nii.gz"))

    image_data = np.asanyarray(ch2.dataobj)
    if image_data.ndim != 3:
        raise SamriInputError(str(folder / "ch2.nii.gz"), ch2.shape, "expected a 3D image")
    raw = np.asarray(aal.dataobj)
    labels = np.rint(raw) if raw.dtype.kind == "f" else raw
    if labels.min() < 0 or labels.max() >= 65536:
        raise SamriInputError(str(folder / "aal.nii.gz"), (labels.min(), labels.max()), "label values outside 0..65535")
    dtype = np.uint8 if labels.max() < 256 else np.uint16
    labels = labels.astype(dtype)
    present = set(np.flatnonzero(np.bincount(labels.ravel())).tolist()) - {0}
    unnamed = sorted(present - set(names.values()))
    if unnamed:
        raise SamriInputError(str(folder / "aal.nii.gz"), unnamed[:10], "label values with no name in aal.nii.txt")
    sform_code = int(ch2.header["sform_code"]) or 4
    return _nifti(image_data, ch2.affine, sform_code), _nifti(labels, ch2.affine, sform_code)


def _check_same_grid(ref: Any, other: Any, ref_name: str, other_name: str) -> None:
    """Raise unless ``other`` has ``ref``'s 3D shape and an affine within 1e-3 mm of it."""
    import numpy as np

    if tuple(ref.shape[:3]) != tuple(other.shape[:3]) or not np.allclose(
        ref.affine, other.affine, rtol=0.0, atol=_GRID_ATOL
    ):
        raise SamriInputError(
            other_name,
            {"shape": tuple(other.shape), "affine": np.round(other.affine, 4).tolist()},
            f"not on the voxel grid of {ref_name} (shape {tuple(ref.shape)}, "
            f"affine {np.round(ref.affine, 4).tolist()}); the two files must share one grid",
        )


def _nifti(data: np.ndarray, affine: np.ndarray, xform_code: int) -> nib.Nifti1Image:
    """A NIfTI-1 image whose sform and qform both hold ``affine`` (units mm), no scaling."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=xform_code)
    img.set_qform(affine, code=xform_code)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_slope_inter(1.0, 0.0)
    img.set_data_dtype(data.dtype)
    return img


def _save_nifti_atomic(img: nib.Nifti1Image, path: Path) -> None:
    """Save ``img`` gzip-compressed to ``path`` (``*.nii.gz``) atomically.

    The image is serialised in memory and written with `samri.io.write_bytes`, whose temporary
    name deliberately does not end in ``.nii.gz``: MONAI Label's datastore matches ``*.nii.gz``
    with fnmatch, which also matches hidden files.
    """
    write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0))
