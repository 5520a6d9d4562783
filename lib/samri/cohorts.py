"""Held-out evaluation cohorts: deformed MNI152 pseudo-subjects with structures no training saw.

Training used Colin27 with AAL labels, a bias-field copy of it, and the MNI152 template with three
tissue classes. A cohort written here differs in both what is segmented and how it looks:

- image: nilearn's MNI152 2009a T1 template (`samri.sample_data._load_mni152`, 197x233x189, 1 mm);
- labels: mricron-data's JHU white-matter tracts (values 1..48 kept) and Harvard-Oxford cortical
  areas (values 1..48 stored as 101..148), each resampled onto the template grid with
  ``nilearn.image.resample_to_img`` (nearest). Every label is kept inside the template's brain
  mask, Harvard-Oxford areas only on its grey matter (the thr0 atlas also covers white matter and
  the space around the brain); where the two atlases overlap JHU wins; structures under
  ``min_voxels`` voxels are dropped. Names are ``jhu_<name>`` / ``ho_<name>`` identifiers
  (all of this in `samri.atlases`);
- subjects: a seeded ``monai.transforms.Rand3DElasticd`` (smooth elastic field plus a small
  affine; image bilinear, label nearest) per subject, then a contrast (`CONTRASTS`) made with
  `samri.evaluation.variants.make_variant`; ``lowres+noise`` is written on a 1.5 mm grid.

Layout (a MONAI Label local datastore, as `samri.sample_data` writes)::

    out_dir/<subject>.nii.gz                 float32 image
    out_dir/labels/final/<subject>.nii.gz    uint8 labels on the image's grid and affine
    out_dir/label_names.json                 {subject: {name: value}} (structures present)
    out_dir/cohort.json                      {"seed", "recipe", "subjects": {id: {split, contrast, seed}},
                                              "structures"/"dropped": {name: voxels on the template grid}}
    out_dir/README.md                        recipe, seed and subjects in words

Arrays are in the files' voxel order (i, j, k); the template is RAS-aligned, so axis 2 runs
inferior -> superior. Every file is written atomically (`samri.io`). The same recipe and seed give
byte-identical arrays (on one machine and thread count); a second run skips finished subjects.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samri.atlases import (
    HO_ATLAS,
    JHU_ATLAS,
    atlas_on_grid,
    check_mricron_dir,
    merge_atlases,
    read_structure_names,
    split_hemispheres,
)
from samri.cohort_readme import cohort_readme
from samri.errors import SamriInputError
from samri.io import write_bytes, write_text
from samri.labels import load_label_names, write_label_names
from samri.neuromaps import INIA_ATLAS, INIA_T1, check_inia_files, load_macaque_template
from samri.sample_data import LABELS_SUBDIR, MNI152_TISSUES

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CONTRASTS", "DOMAINS", "CohortRecipe", "make_subject", "plan_subjects", "write_cohort"]

COHORT_FILE = "cohort.json"
README_FILE = "README.md"
_GZIP_LEVEL = 6
_MAX_SUBJECTS = 1000
#: ``human``: MNI152 with JHU + Harvard-Oxford (the test split); ``macaque``: INIA19 with NeuroMaps
#: (`samri.neuromaps`, the adaptation domain of ``samri adapt-sim``). Subject ids start with the prefix.
DOMAINS: dict[str, str] = {"human": "cohort", "macaque": "macaque"}

#: contrast -> (make_variant names applied in order, isotropic voxel size in mm of the written grid;
#: `KEEP_GRID` (1.0) keeps the template's own grid, whatever its voxel size: MNI152 1 mm, INIA19 0.5 mm)
KEEP_GRID = 1.0
CONTRASTS: dict[str, tuple[tuple[str, ...], float]] = {
    "t1": ((), 1.0),
    "t2like": (("t2like",), 1.0),
    "inverted+bias": (("inverted", "bias:0.3"), 1.0),
    "lowres+noise": (("rician:0.03",), 1.5),  # Rician: MRI magnitude noise, background too
}


@dataclass(frozen=True)
class CohortRecipe:
    """Everything that decides a cohort's voxels and splits (stored as ``recipe`` in ``cohort.json``).

    Attributes:
        domain: template and atlas (`DOMAINS`); ``min_voxels`` applies to either, the ``ho_*``
            fields to ``human`` only.
        seed: cohort seed; subject ``k``'s seed derives from ``(seed, k)`` (see `plan_subjects`).
        subjects: number of pseudo-subjects.
        annotate: how many of them are marked ``"annotate"`` (the rest ``"test"``).
        contrasts: contrast of subject ``k`` is ``contrasts[k % len(contrasts)]`` (`CONTRASTS`).
        min_voxels: structures smaller than this on the template grid are dropped.
        ho_offset: added to Harvard-Oxford values.
        ho_right: Harvard-Oxford's areas are bilateral; a voxel right of the midline (world x > 0,
            RAS) gets value + ``ho_right`` so each hemisphere is a structure of its own (``_l``/``_r``),
            as an annotator outlines one gyrus at a time; 0 keeps them bilateral.
        ho_tissue: template tissue (`samri.sample_data.MNI152_TISSUES`) that Harvard-Oxford areas
            are restricted to; ``None`` keeps the whole brain mask.
        sigma_range, magnitude_range: ``Rand3DElasticd`` smoothing (voxels) and magnitude.
        rotate_rad, scale, translate_vox: ranges (+-) of its affine part, per axis.
    """

    seed: int = 0
    subjects: int = 4
    annotate: int = 0
    domain: str = "human"
    contrasts: tuple[str, ...] = ("t1", "t2like", "inverted+bias", "lowres+noise")
    min_voxels: int = 200
    ho_offset: int = 100
    ho_right: int = 50
    ho_tissue: str | None = "grey_matter"
    sigma_range: tuple[float, float] = (6.0, 8.0)
    magnitude_range: tuple[float, float] = (150.0, 300.0)
    rotate_rad: float = 0.08
    scale: float = 0.05
    translate_vox: float = 3.0

    def validate(self) -> None:
        """Raise `SamriInputError` naming the first bad field."""
        bounds = (("seed", self.seed, 0, 2**31 - 1), ("subjects", self.subjects, 1, _MAX_SUBJECTS),
                  ("annotate", self.annotate, 0, self.subjects), ("min_voxels", self.min_voxels, 1, 10**9),
                  ("ho_right", self.ho_right, 0, 100))
        for field, value, low, high in bounds:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SamriInputError(field, value, f"an integer in [{low}, {high}]")
        if self.domain not in DOMAINS:
            raise SamriInputError("domain", self.domain, f"one of {sorted(DOMAINS)}")
        unknown = [c for c in self.contrasts if c not in CONTRASTS]
        if not self.contrasts or unknown:
            raise SamriInputError("contrasts", list(self.contrasts), f"known contrasts: {sorted(CONTRASTS)}")
        if self.ho_tissue is not None and self.ho_tissue not in MNI152_TISSUES:
            raise SamriInputError("ho_tissue", self.ho_tissue, f"one of {sorted(MNI152_TISSUES)} or None")

    def as_dict(self) -> dict[str, Any]:
        """JSON form: the fields, the contrasts' definitions and the atlas files."""
        atlas = ({"jhu_atlas": JHU_ATLAS, "ho_atlas": HO_ATLAS} if self.domain == "human"
                 else {"template": INIA_T1, "atlas": INIA_ATLAS})
        d = {**dataclasses.asdict(self), **atlas, "contrast_recipes": {
            c: {"variants": list(CONTRASTS[c][0]), "spacing_mm": CONTRASTS[c][1]} for c in self.contrasts}}
        return json.loads(json.dumps(d))

    def data_fields(self) -> dict[str, Any]:
        """`as_dict` less what does not change a subject's voxels (``subjects`` and ``annotate``)."""
        return {k: v for k, v in self.as_dict().items() if k not in ("subjects", "annotate")}


# --- subjects ------------------------------------------------------------------------------------
def plan_subjects(recipe: CohortRecipe) -> dict[str, dict[str, Any]]:
    """Subject id -> {"split", "contrast", "seed"}, in index order.

    Subject ``k`` has contrast ``contrasts[k % len]`` and seed ``SeedSequence([seed, k])`` (31 bits),
    so it does not change when more subjects are asked for; seeds are checked to be distinct. The
    ``annotate`` subjects are the first ones of a ``default_rng(seed)`` permutation, so raising
    ``annotate`` only moves subjects from ``test`` to ``annotate``.
    """
    import numpy as np

    recipe.validate()
    order = np.random.default_rng(recipe.seed).permutation(_MAX_SUBJECTS)
    chosen = [int(k) for k in order if k < recipe.subjects][: recipe.annotate]
    plan: dict[str, dict[str, Any]] = {}
    for k in range(recipe.subjects):
        contrast = recipe.contrasts[k % len(recipe.contrasts)]
        seed = int(np.random.SeedSequence([recipe.seed, k]).generate_state(1)[0]) & 0x7FFFFFFF
        sid = f"{DOMAINS[recipe.domain]}_s{k:02d}_{re.sub(r'[^0-9a-z]+', '_', contrast)}"
        plan[sid] = {"split": "annotate" if k in chosen else "test", "contrast": contrast, "seed": seed}
    if len({p["seed"] for p in plan.values()}) != len(plan):  # pragma: no cover - 2^-31 odds
        raise RuntimeError("two subjects drew one seed; choose another --seed")
    return plan


def deform(image: np.ndarray, label: np.ndarray, seed: int, recipe: CohortRecipe) -> tuple[np.ndarray, np.ndarray]:
    """Seeded elastic + affine deformation of ``(X, Y, Z)`` image (bilinear) and label (nearest), zero padded."""
    import numpy as np
    from monai.transforms import Rand3DElasticd

    t = Rand3DElasticd(keys=["image", "label"], sigma_range=recipe.sigma_range, magnitude_range=recipe.magnitude_range,
                       prob=1.0, rotate_range=(recipe.rotate_rad,) * 3, scale_range=(recipe.scale,) * 3,
                       translate_range=(recipe.translate_vox,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros")
    t.set_random_state(seed=seed)
    out = t({"image": image[None].astype(np.float32), "label": label[None].astype(np.float32)})
    deformed = np.asarray(out["image"].numpy()[0], dtype=np.float32)
    return deformed, np.rint(out["label"].numpy()[0]).astype(label.dtype)


def regrid(image: np.ndarray, label: np.ndarray, affine: np.ndarray,
           spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (area average) and label (nearest-exact) on an isotropic ``spacing_mm`` grid covering the same box.

    Returns ``(image, label, affine)``; new voxel ``i`` covers old voxels ``[i f, (i + 1) f)`` with
    ``f = old/new`` shape per axis, so its centre is old index ``(i + 0.5) f - 0.5``.
    """
    import numpy as np
    from monai.transforms import Resize

    old = np.array(image.shape)
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    new = np.maximum(2, np.rint(old * voxel / spacing_mm)).astype(int)
    if np.array_equal(new, old):
        return image, label, affine
    f = old / new
    scale = np.eye(4)
    scale[:3, :3] = np.diag(f)
    scale[:3, 3] = (f - 1) / 2
    small = np.asarray(Resize(tuple(new.tolist()), mode="area")(image[None]))[0].astype(np.float32)
    lab = np.asarray(Resize(tuple(new.tolist()), mode="nearest-exact")(label[None].astype(np.float32)))[0]
    return small, np.rint(lab).astype(label.dtype), affine @ scale


def make_subject(image: np.ndarray, label: np.ndarray, affine: np.ndarray, contrast: str, seed: int,
                 recipe: CohortRecipe) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pseudo-subject from the template ``(X, Y, Z)`` image and merged labels (voxel -> mm ``affine``).

    Returns float32 image, labels (``label``'s dtype) and the 4x4 affine of their (shared) grid.
    """
    from samri.evaluation.variants import make_variant

    variants, spacing = CONTRASTS[contrast]
    img, lab = deform(image, label, seed, recipe)
    if spacing != KEEP_GRID:
        img, lab, affine = regrid(img, lab, affine, spacing)
    for j, variant in enumerate(variants, 1):
        img = make_variant(img, variant, seed=(seed + j) % 2**31)
    return img, lab, affine


# --- writer --------------------------------------------------------------------------------------
@dataclass
class _Template:
    """Template T1, its tissue labels and the merged atlas, built on first use."""

    mricron_dir: Path
    recipe: CohortRecipe
    given: tuple[Any, Any] | None
    built: dict[str, Any] = dataclasses.field(default_factory=dict)

    def names(self) -> dict[int, str]:
        """Label value -> structure name (the macaque domain builds the template to know them)."""
        if self.recipe.domain == "macaque":
            return self.get()["names"]
        return _names(self.mricron_dir, self.recipe)

    def get(self) -> dict[str, Any]:
        if not self.built and self.recipe.domain == "macaque":
            import numpy as np

            t = load_macaque_template(self.mricron_dir, self.recipe.min_voxels)
            self.built = {"image": np.asarray(t.t1.dataobj, dtype=np.float32), "labels": t.labels, "kept": t.kept,
                          "dropped": t.dropped, "names": t.names, "affine": t.t1.affine,
                          "sform": int(t.t1.header["sform_code"]) or 2}
        if not self.built:
            import numpy as np

            from samri.sample_data import _load_mni152

            t1, tissue = self.given or _load_mni152()
            names = _names(self.mricron_dir, self.recipe)
            jhu = atlas_on_grid(self.mricron_dir / JHU_ATLAS, t1)
            ho = split_hemispheres(atlas_on_grid(self.mricron_dir / HO_ATLAS, t1), t1.affine, self.recipe.ho_right)
            labels, kept, dropped = merge_atlases(jhu, ho, np.asarray(tissue.dataobj), self.recipe, names)
            self.built = {"image": np.asarray(t1.dataobj, dtype=np.float32), "labels": labels, "kept": kept,
                          "dropped": {names[v]: n for v, n in dropped.items()}, "names": names,
                          "affine": t1.affine, "sform": int(t1.header["sform_code"]) or 2}
        return self.built


def _names(mricron_dir: Path, recipe: CohortRecipe) -> dict[int, str]:
    return read_structure_names(mricron_dir, ho_right=recipe.ho_right, ho_offset=recipe.ho_offset)


def _check_existing(out: Path, recipe: CohortRecipe) -> dict[str, Any]:
    """The folder's ``cohort.json`` (``{}`` if none); refuse one made with other voxel-deciding fields."""
    path = out / COHORT_FILE
    if not path.is_file():
        return {}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    old = {k: v for k, v in manifest.get("recipe", {}).items() if k not in ("subjects", "annotate")}
    if old != recipe.data_fields():
        raise SamriInputError("out", str(out), f"holds a cohort with another recipe ({old}); use an empty folder")
    return manifest


def _save_nifti(data: np.ndarray, affine: np.ndarray, sform: int, path: Path) -> None:
    from samri.sample_data import _nifti

    img = _nifti(data, affine, sform)
    write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0))


def write_cohort(out_dir: str | os.PathLike[str], recipe: CohortRecipe | None = None, *,
                 mricron_dir: str | os.PathLike[str] | None = None, template: tuple[Any, Any] | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Write (or complete) a cohort in ``out_dir``; see the module docstring for the layout.

    Args:
        out_dir: datastore folder (created when missing).
        recipe: `CohortRecipe` (default: 4 test subjects, seed 0).
        mricron_dir: folder with the JHU and Harvard-Oxford atlases (default ``$SAMRI_MRICRON_DIR``
            or ``/usr/share/mricron/templates``).
        template: ``(T1 image, tissue label image)`` NIfTI pair on one grid, values as
            `samri.sample_data.MNI152_TISSUES` (default: nilearn's MNI152 via ``_load_mni152``).
        progress: tqdm bar over subjects.

    Returns:
        The ``cohort.json`` content: ``seed``, ``recipe`` (`CohortRecipe.as_dict`), ``subjects``
        (`plan_subjects`), ``structures`` and ``dropped`` ({name: voxels on the template grid}).

    Raises:
        SamriInputError: a bad recipe field, missing atlas files (``mricron_dir``), or ``out_dir``
            holding a cohort made with another recipe (``out``; ``subjects``/``annotate`` may change).
    """
    from tqdm import tqdm

    from samri.sample_data import _mricron_dir

    recipe = recipe or CohortRecipe()
    plan = plan_subjects(recipe)
    folder = Path(mricron_dir) if mricron_dir is not None else _mricron_dir()
    (check_mricron_dir if recipe.domain == "human" else check_inia_files)(folder)
    out = Path(out_dir)
    previous = _check_existing(out, recipe)
    manifest: dict[str, Any] = {"seed": recipe.seed, "recipe": recipe.as_dict(), "subjects": plan}
    write_text(out / COHORT_FILE, json.dumps(manifest, indent=1) + "\n")  # first: a rerun checks it

    lazy = _Template(folder, recipe, template)
    names = lazy.names()
    label_dir = out.joinpath(*LABELS_SUBDIR)
    existing = load_label_names(out)
    subject_names: dict[str, dict[str, int]] = {}
    for sid, spec in tqdm(plan.items(), desc="cohort", unit="subject", disable=not progress):
        image_path, label_path = out / f"{sid}.nii.gz", label_dir / f"{sid}.nii.gz"
        if image_path.is_file() and label_path.is_file():
            subject_names[sid] = existing.get(sid) or _present_names(label_path, names)
            logger.info("cohort %s: kept existing %s", sid, image_path)
            continue
        start = time.perf_counter()
        t = lazy.get()
        img, lab, affine = make_subject(t["image"], t["labels"], t["affine"], spec["contrast"], spec["seed"], recipe)
        _save_nifti(img, affine, t["sform"], image_path)
        _save_nifti(lab, affine, t["sform"], label_path)
        subject_names[sid] = _present_names(lab, names)
        logger.info("cohort %s: %s %s, %d structures in %.1f s", sid, "x".join(map(str, img.shape)),
                    spec["contrast"], len(subject_names[sid]), time.perf_counter() - start)

    merged = {**existing, **subject_names}
    write_label_names(out, merged)
    if lazy.built:
        manifest["structures"] = {names[v]: n for v, n in lazy.built["kept"].items()}
        manifest["dropped"] = dict(lazy.built["dropped"])
    else:  # every subject existed: keep what the run that built the atlas recorded
        manifest.update({k: previous[k] for k in ("structures", "dropped") if k in previous})
    write_text(out / COHORT_FILE, json.dumps(manifest, indent=1) + "\n")
    write_text(out / README_FILE, cohort_readme(manifest))
    return manifest


def _present_names(label: np.ndarray | Path, names: dict[int, str]) -> dict[str, int]:
    """{name: value} of the values present in ``label`` (an array or a label file), in value order."""
    import nibabel as nib
    import numpy as np

    if isinstance(label, Path):
        label = np.asarray(nib.load(label).dataobj)
    values = np.flatnonzero(np.bincount(label.ravel().astype(np.int64)))
    return {names[int(v)]: int(v) for v in values if v}
