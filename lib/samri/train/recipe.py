"""The reproducible recipe of the shipped default MRI decoder (``samri_lite``).

Training data: only the MNI152 tissue labels and the Colin27 AAL labels (the sample studies):
both originals and a bias-field variant of Colin27 (fixed seed). Everything else (Colin27 Brodmann
areas, inverted contrast, noise, other variants and seeds) stays unseen by training and is what the
decoder is evaluated on.

Checkpoint choice: every ``validation.label_stride``-th AAL structure (by voxel value, with its
other-hemisphere twin) is taken out of the training studies and put into a validation study of its
own (the original Colin27 image with only those structures named), so the best epoch is the one
that segments *structures it never trained on* best, which is what an annotator's new structure
(or a Brodmann area) asks of it. Its image is the original Colin27, so stage 1 encodes no extra slice
(the cache is keyed by content).

Pseudo-structures (the third stage, ``configs/training_default_decoder_pseudo.yaml``): Colin27's own
grey matter (its training AAL structures) and the white matter they enclose, cut into random Voronoi
parcels (`samri.train.pseudo_structures`), are added as one more study, so the decoder also learns
structures whose borders T1 does not show. No parcel holds a validation structure's voxel.

A lighter click loss (the fourth stage, ``configs/training_default_decoder_light_clicks.yaml``): the
third stage again with the click loss cut from 0.5 to 0.1, which stops the decoder's own answer to a
negative click from erasing the object (docs/DECODER.md, "Stage 4").

Tracts and small areas (the fifth stage, ``configs/training_default_decoder_tracts.yaml``): the fourth
stage again with two more pseudo-structure studies of the same image, a finer parcellation of its white
matter and tract-like tubes through it, validated on the validation cohort's JHU tracts and Harvard-Oxford
areas (``make val-split``; ``--validation-cohort``) as well as the AAL structures, pooled
(docs/DECODER.md, "Stage 5"). The test split's structures and their twins are never among them.

Run: ``make default-decoder`` (five ``samri default-decoder`` calls, each stage from the previous
one's decoder).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from samri.errors import SamriInputError
from samri.labels import side_less

logger = logging.getLogger(__name__)

#: (source study, variant, seed) used for training; variant None = the original volume.
#: Kept to three volumes so the recipe's stage 1 (~460 slice encodings) fits a CPU afternoon.
TRAINING_VOLUMES = (("colin27_t1", None, 0), ("colin27_t1", "bias:0.3", 101), ("mni152_t1", None, 0))


#: The validation study: a copy of this source volume naming only the held-out structures.
VALIDATION_SOURCE = "colin27_t1"
VALIDATION_STUDY = "colin27_t1~heldout_structures"

#: pseudo-structures (`samri.train.pseudo_structures`) are cut from this source's tissue, in studies of their
#: own (copies of the same image, so stage 1 encodes nothing more): compact parcels, finer parcels, tubes
PSEUDO_SOURCE = "colin27_t1"
PSEUDO_STUDY = "colin27_t1~pseudo_structures"
PSEUDO_FINE_STUDY = "colin27_t1~pseudo_fine"
PSEUDO_TUBE_STUDY = "colin27_t1~pseudo_tubes"
PSEUDO_SEED = 0
#: study -> (parcel shape, seed); each study's parcels are disjoint, the studies overlap
PSEUDO_STUDIES = {PSEUDO_STUDY: ("voronoi", PSEUDO_SEED), PSEUDO_FINE_STUDY: ("voronoi", 1),
                  PSEUDO_TUBE_STUDY: ("tube", 2)}

#: a validation cohort's study ``S`` is copied into the recipe's studies as ``S~validation``, naming only
#: the cohort's validation structures (`samri.evaluation.splits`)
COHORT_VALIDATION_SUFFIX = "~validation"

#: the recipe's first stage, in the config dir: only what differs from ``training.yaml``, overlaid on it
#: (`samri.train.config.load_train_config`); its second stage is ``training_default_decoder_clicks.yaml``.
RECIPE_YAML = "training_default_decoder.yaml"


def split_validation_labels(names: dict[str, int], stride: int) -> tuple[dict[str, int], dict[str, int]]:
    """``(training, validation)`` label names: every ``stride``-th structure (starting with the
    second, in voxel-value order) is held out for validation together with its other-hemisphere
    twin (``X_L``/``X_R``), so no validation structure has its mirror image in training.
    ``stride`` 0 holds out nothing."""
    if stride < 0 or stride == 1:
        raise SamriInputError("validation.label_stride", stride, "must be 0 (off) or at least 2")
    groups: dict[str, list[str]] = {}
    for name in sorted(names, key=names.get):
        groups.setdefault(side_less(name), []).append(name)
    held_groups = [g for k, g in enumerate(groups.values()) if stride and k % stride == 1]
    held = {n: names[n] for g in held_groups for n in g}
    return {n: v for n, v in names.items() if n not in held}, held


def pseudo_layout(cfg) -> dict[str, dict[str, int]]:
    """The pseudo-structure studies a `samri.train.config.TrainConfig` asks for: study -> tissue -> parcels."""
    return {PSEUDO_STUDY: {"grey": cfg.pseudo_grey_cells, "white": cfg.pseudo_white_cells},
            PSEUDO_FINE_STUDY: {"grey": cfg.pseudo_fine_grey_cells, "white": cfg.pseudo_fine_white_cells},
            PSEUDO_TUBE_STUDY: {"white": cfg.pseudo_white_tubes}}


def build_training_studies(sample_dir: Path, out_dir: Path, *, label_stride: int = 0,
                           pseudo: dict[str, dict[str, int]] | None = None, validation_cohort: Path | None = None,
                           validation_labels: Sequence[str] = ()) -> tuple[Path, list[str]]:
    """Write the recipe's studies folder (originals + seeded variants, labels/final, label_names.json).

    ``pseudo`` (study in `PSEUDO_STUDIES` -> ``{"grey": n, "white": m}``; 0 or missing = none, see
    `pseudo_layout`) adds those studies: the `PSEUDO_SOURCE` image with its training structures' grey
    matter and the white matter they enclose cut into that many random parcels (or tubes) each
    (`samri.train.pseudo_structures`); the validation structures' voxels are left out of them.

    ``validation_cohort`` (a `samri cohort` folder, e.g. ``make val-split``'s) adds each of its studies as
    a validation study (`COHORT_VALIDATION_SUFFIX`) naming only ``validation_labels``: structures of the
    test split's kind (tracts, Harvard-Oxford areas) next to the held-out AAL structures, so that the
    checkpoint is chosen on both kinds.

    Returns the folder and the validation study ids (empty when ``label_stride`` is 0 and there is no
    cohort: the run then splits by ``val_fraction``).
    """
    import nibabel as nib

    from samri.evaluation.variants import make_variant
    from samri.io import copy_file
    from samri.labels import load_label_names, write_label_names
    from samri.sample_data import write_sample_studies
    from samri.volume import save_label

    write_sample_studies(sample_dir)
    names = load_label_names(sample_dir)
    (out_dir / "labels" / "final").mkdir(parents=True, exist_ok=True)
    out_names, val_ids = {}, []
    if label_stride and VALIDATION_SOURCE in names:
        train_names, held = split_validation_labels(names[VALIDATION_SOURCE], label_stride)
        names = dict(names, **{VALIDATION_SOURCE: train_names})
        out_names[VALIDATION_STUDY] = held
        val_ids.append(VALIDATION_STUDY)
        for sub in ("", "labels/final"):
            _copy_if_missing(sample_dir / sub / f"{VALIDATION_SOURCE}.nii.gz",
                             out_dir / sub / f"{VALIDATION_STUDY}.nii.gz")
    for study, variant, seed in TRAINING_VOLUMES:
        if study not in names:
            logger.warning("recipe source %s not installed; skipped", study)
            continue
        study_id = study if variant is None else f"{study}~{variant.replace(':', '')}"
        target = out_dir / f"{study_id}.nii.gz"
        out_names[study_id] = names[study]
        labels = ("labels", "final")
        copy_file(sample_dir.joinpath(*labels, f"{study}.nii.gz"), out_dir.joinpath(*labels, f"{study_id}.nii.gz"))
        if target.exists():
            continue
        img = nib.load(str(sample_dir / f"{study}.nii.gz"))
        array = np.asanyarray(img.dataobj)
        if variant is not None:
            array = make_variant(array, variant, seed=seed)
        save_label(target, np.asarray(array, dtype=np.float32), img.affine)
    if validation_cohort is not None:
        cohort_names = _copy_cohort_validation(validation_cohort, out_dir, validation_labels)
        out_names.update(cohort_names)
        val_ids.extend(cohort_names)
    wanted = {study: {t: n for t, n in cells.items() if n} for study, cells in (pseudo or {}).items()}
    wanted = {study: cells for study, cells in wanted.items() if cells}
    if wanted and PSEUDO_SOURCE in names:
        out_names.update(_write_pseudo_studies(sample_dir, out_dir, names[PSEUDO_SOURCE], wanted))
    write_label_names(out_dir, out_names)
    return out_dir, val_ids


def _copy_cohort_validation(cohort: Path, out_dir: Path, labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """Copy a cohort's studies (image + label) as validation studies naming only ``labels``; their names."""
    from samri.labels import load_label_names

    if not labels:
        raise SamriInputError("validation_labels", list(labels), "name the cohort's validation structures")
    per_study = load_label_names(Path(cohort))
    if not per_study:
        raise SamriInputError("validation_cohort", str(cohort), "holds no study (label_names.json)")
    out: dict[str, dict[str, int]] = {}
    for study, names in sorted(per_study.items()):
        missing = sorted(set(labels) - set(names))
        if missing:
            raise SamriInputError("validation_labels", missing, f"not structures of {study} in {cohort}")
        study_id = f"{study}{COHORT_VALIDATION_SUFFIX}"
        for sub in ("", "labels/final"):
            _copy_if_missing(Path(cohort) / sub / f"{study}.nii.gz", out_dir / sub / f"{study_id}.nii.gz")
        out[study_id] = {n: names[n] for n in labels}
    return out


def _write_pseudo_studies(sample_dir: Path, out_dir: Path, train_names: dict[str, int],
                          wanted: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Write each wanted pseudo study (image copy + pseudo-structure label); return their label names."""
    import nibabel as nib

    from samri.train.pseudo_structures import pseudo_structure_labels, tissue_from_grey_labels
    from samri.volume import save_label

    unknown = sorted(set(wanted) - set(PSEUDO_STUDIES))
    if unknown:
        raise SamriInputError("pseudo", unknown, f"must be among {sorted(PSEUDO_STUDIES)}")
    img = nib.load(str(sample_dir / f"{PSEUDO_SOURCE}.nii.gz"))
    image = np.asanyarray(img.dataobj).astype(np.float32)
    atlas = np.asanyarray(nib.load(str(sample_dir / "labels" / "final" / f"{PSEUDO_SOURCE}.nii.gz")).dataobj)
    # every AAL structure bounds the white matter; only the training ones give grey parcels
    tissues = {"grey": np.isin(atlas, list(train_names.values())), "white": tissue_from_grey_labels(image, atlas > 0)}
    out: dict[str, dict[str, int]] = {}
    for study, cells in wanted.items():
        shape, seed = PSEUDO_STUDIES[study]
        labels, out[study] = pseudo_structure_labels({t: tissues[t] for t in cells}, cells, seed=seed, shape=shape,
                                                     spacing=tuple(img.header.get_zooms()[:3]))
        _copy_if_missing(sample_dir / f"{PSEUDO_SOURCE}.nii.gz", out_dir / f"{study}.nii.gz")
        save_label(out_dir / "labels" / "final" / f"{study}.nii.gz", labels, img.affine)
    return out


def _pseudo_metadata(layout: dict[str, dict[str, int]]) -> list[dict] | None:
    """What the checkpoint records of its pseudo-structures: study, shape, seed and parcels per tissue."""
    kept = [{"study": study, "shape": PSEUDO_STUDIES[study][0], "seed": PSEUDO_STUDIES[study][1],
             **{f"{t}_{'tubes' if PSEUDO_STUDIES[study][0] == 'tube' else 'cells'}": n
                for t, n in cells.items() if n}}
            for study, cells in layout.items() if any(cells.values())]
    return kept or None


def _decoder_identity(path: Path) -> dict:
    """Name, version and sha256 of a decoder file (the recipe records what a stage started from)."""
    import hashlib

    from samri.model.checkpoints import read_decoder_checkpoint

    meta = read_decoder_checkpoint(path)["metadata"]
    return {"file": Path(path).name, "version": meta.get("version"),
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def _copy_if_missing(src: Path, dst: Path) -> None:
    from samri.io import copy_file

    if not dst.exists():
        copy_file(src, dst)


def train_default_decoder(*, out: Path, work_dir: Path, cache_dir: Path | None, config: Path | None = None,
                          init_decoder: Path | None = None, validation_cohort: Path | None = None,
                          validation_labels: Sequence[str] = ()) -> dict:
    """Build the studies, train ``litemedsam``'s decoder with ``configs/training_default_decoder.yaml``
    (or ``config``; either overlaid on ``configs/training.yaml``), and copy the best decoder to ``out``
    (atomically). Returns the run summary.

    ``init_decoder`` starts from that decoder-only checkpoint instead of LiteMedSAM's own decoder
    (the recipe's second stage, `configs/training_default_decoder_clicks.yaml`, starts from the first's).
    ``validation_cohort`` / ``validation_labels``: more validation studies (`build_training_studies`).
    """
    from samri.config import config_dir, load_registry
    from samri.inference.embeddings import EmbeddingCache
    from samri.labels import load_label_names
    from samri.model.backends import apply_backend
    from samri.model.builders import load_model
    from samri.model.checkpoints import read_decoder_checkpoint, save_decoder_checkpoint
    from samri.train.config import load_train_config
    from samri.train.run import run_training
    from samri.train.stage1 import find_studies

    cfg = load_train_config(config or config_dir() / RECIPE_YAML)
    studies, val_ids = build_training_studies(
        work_dir / "samples", work_dir / "studies", label_stride=cfg.label_stride,
        pseudo=pseudo_layout(cfg), validation_cohort=validation_cohort, validation_labels=validation_labels)
    registry = load_registry()
    model = load_model(registry.spec("litemedsam"), decoder=init_decoder)
    # stage 1 encodes with the served encoder, as the app's trainer does: the embeddings (and cache
    # keys) serving and `samri evaluate` use; the decoder being trained stays PyTorch
    apply_backend(model, parts=("encoder",))
    result = run_training(find_studies(studies), model=model, out_dir=work_dir / "run", window=registry.window,
                          cache=EmbeddingCache(cache_dir=cache_dir), val_studies=val_ids or None,
                          **cfg.run_arguments())
    envelope = read_decoder_checkpoint(result.checkpoint)
    metadata = dict(envelope["metadata"], recipe="samri default-decoder (samri.train.recipe)",
                    recipe_config=str(config or f"configs/{RECIPE_YAML}"),
                    init_decoder=None if init_decoder is None else _decoder_identity(init_decoder),
                    training_volumes=[f"{s}{'~' + v if v else ''} seed {seed}" for s, v, seed in TRAINING_VOLUMES],
                    pseudo_structures=_pseudo_metadata(pseudo_layout(cfg)),
                    validation=({"study": VALIDATION_STUDY, "label_stride": cfg.label_stride,
                                 "structures": sorted(load_label_names(studies).get(VALIDATION_STUDY, {})),
                                 "cohort_studies": [v for v in val_ids if v != VALIDATION_STUDY],
                                 "cohort_structures": sorted(validation_labels)}
                                if val_ids else {"val_fraction": cfg.val_fraction}))
    # the shipped decoder is the best by validation Dice overall (the in-memory model), not the gate's
    # candidate (best trained epoch): if no epoch beat LiteMedSAM's own decoder, that one ships
    metadata["metrics"] = dict(metadata.get("metrics", {}), val=result.best)
    save_decoder_checkpoint(out, mask_decoder=model.mask_decoder, base_model="litemedsam",
                            preprocessing=envelope["preprocessing"], metadata=metadata)
    return {"checkpoint": str(out), "best": result.best, "baseline": result.baseline, "history": result.history}
