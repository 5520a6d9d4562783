"""The reproducible recipe of the shipped default MRI decoder (``samri_lite``).

Training data: only the MNI152 tissue labels and the Colin27 AAL labels (the sample studies):
both originals and a bias-field variant of Colin27 (fixed seed). Everything else (Colin27 Brodmann areas, inverted contrast, other variants and
seeds) stays unseen by training and is what the decoder is evaluated on.

Run: ``samri default-decoder --out lib/samri/assets/samri_lite_decoder.pt`` (``make default-decoder``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: (source study, variant, seed) used for training; variant None = the original volume.
#: Kept to three volumes so the recipe's stage 1 (~460 slice encodings) fits a CPU afternoon.
TRAINING_VOLUMES = (("colin27_t1", None, 0), ("colin27_t1", "bias:0.3", 101), ("mni152_t1", None, 0))


def build_training_studies(sample_dir: Path, out_dir: Path) -> Path:
    """Write the recipe's studies folder (originals + seeded variants, labels/final, label_names.json)."""
    import nibabel as nib

    from samri.data import load_label_names, write_sample_studies
    from samri.variants import make_variant
    from samri.volume import save_label

    write_sample_studies(sample_dir)
    names = load_label_names(sample_dir)
    (out_dir / "labels" / "final").mkdir(parents=True, exist_ok=True)
    out_names = {}
    for study, variant, seed in TRAINING_VOLUMES:
        if study not in names:
            logger.warning("recipe source %s not installed; skipped", study)
            continue
        study_id = study if variant is None else f"{study}~{variant.replace(':', '')}"
        target = out_dir / f"{study_id}.nii.gz"
        out_names[study_id] = names[study]
        shutil.copyfile(sample_dir / "labels" / "final" / f"{study}.nii.gz",
                        out_dir / "labels" / "final" / f"{study_id}.nii.gz")
        if target.exists():
            continue
        img = nib.load(str(sample_dir / f"{study}.nii.gz"))
        array = np.asanyarray(img.dataobj)
        if variant is not None:
            array = make_variant(array, variant, seed=seed)
        save_label(target, np.asarray(array, dtype=np.float32), img.affine)
    (out_dir / "label_names.json").write_text(json.dumps(out_names, indent=1))
    return out_dir


def train_default_decoder(*, out: Path, work_dir: Path, cache_dir: Path | None, config: Path | None = None) -> dict:
    """Build the studies, train ``litemedsam``'s decoder with ``configs/training_default_decoder.yaml``,
    and copy the best decoder to ``out`` (atomically). Returns the run summary."""
    from samri.checkpoints import read_decoder_checkpoint, save_decoder_checkpoint
    from samri.config import config_dir, load_registry, read_yaml
    from samri.embeddings import EmbeddingCache
    from samri.models import load_model
    from samri.train.data import find_studies
    from samri.train.run import run_training
    from samri.train.stage2 import TrainSettings

    studies = build_training_studies(work_dir / "samples", work_dir / "studies")
    cfg = read_yaml(config or config_dir() / "training_default_decoder.yaml", field="config")
    registry = load_registry()
    model = load_model(registry.spec("litemedsam"))
    result = run_training(find_studies(studies), model=model, out_dir=work_dir / "run",
                          settings=TrainSettings.from_config(cfg), window=registry.window,
                          cache=EmbeddingCache(cache_dir=cache_dir), min_pixels=int(cfg.get("min_pixels", 30)),
                          axes=tuple(cfg.get("axes", [2])), val_fraction=float(cfg.get("val_fraction", 0.25)))
    envelope = read_decoder_checkpoint(result.checkpoint)
    metadata = dict(envelope["metadata"], recipe="samri default-decoder (samri.train.recipe)",
                    training_volumes=[f"{s}{'~' + v if v else ''} seed {seed}" for s, v, seed in TRAINING_VOLUMES])
    model.mask_decoder.load_state_dict(envelope["mask_decoder"])
    save_decoder_checkpoint(out, mask_decoder=model.mask_decoder, base_model="litemedsam",
                            preprocessing=envelope["preprocessing"], metadata=metadata)
    return {"checkpoint": str(out), "best": result.best, "baseline": result.baseline, "history": result.history}
