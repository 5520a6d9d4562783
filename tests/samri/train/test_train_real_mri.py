"""A short stage-1 + stage-2 run of LiteMedSAM's decoder on real MRI lowers the validation loss (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.config import load_registry
from samri.inference.embeddings import EmbeddingCache
from samri.labels import load_label_names
from samri.model.builders import load_model
from samri.sample_data import write_sample_studies
from samri.train.run import run_training
from samri.train.stage1 import Study
from samri.train.stage2 import TrainSettings

pytestmark = pytest.mark.slow

#: axial slabs (first slice, slice count) cut from each sample volume: small enough to encode in
#: about half a minute, each a separate study so the validation split is by study.
SLABS = ((64, 4), (76, 4))


def _write_slab(image: Path, label: Path, start: int, count: int, out: Path, study_id: str,
                label_names: dict[str, int]) -> Study:
    img, lab = nib.load(str(image)), nib.load(str(label))
    shift = np.eye(4)
    shift[2, 3] = start  # keeps world coordinates: voxel k of the slab is voxel start + k of the source
    affine = img.affine @ shift
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, start:start + count].astype(np.float32), affine),
             str(out / f"{study_id}.nii.gz"))
    label_path = out / f"{study_id}_label.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, start:start + count].astype(np.uint8), affine),
             str(label_path))
    return Study(study_id=study_id, image=out / f"{study_id}.nii.gz", label=label_path, label_names=label_names)


@pytest.fixture(scope="module")
def slab_studies(tmp_path_factory) -> list[Study]:
    src = tmp_path_factory.mktemp("sources")
    write_sample_studies(src)
    names = load_label_names(src)
    out = tmp_path_factory.mktemp("slabs")
    studies = []
    for image in sorted(src.glob("*.nii.gz")):
        sid = image.name[: -len(".nii.gz")]
        for start, count in SLABS:
            studies.append(_write_slab(image, src / "labels" / "final" / image.name, start, count, out,
                                       f"{sid}_z{start}", dict(names[sid])))
    return studies


def test_short_run_on_real_mri_lowers_validation_loss(slab_studies, tmp_path):
    registry = load_registry()
    model = load_model(registry.spec("litemedsam"))
    # lr 1e-4 (the recipe's): at 2e-4 the second epoch's box Dice collapses for seeds 0 and 2 (to 0.0-0.16
    # from a 0.25-0.28 start, old and new prompt simulation alike), so the assertion below was luck
    settings = TrainSettings(lr=1e-4, epochs=2, batch_size=8, max_steps_per_epoch=10, max_val_samples=32, seed=0)
    result = run_training(slab_studies, model=model, out_dir=tmp_path / "run", settings=settings,
                          window=registry.window, cache=EmbeddingCache(cache_dir=tmp_path / "cache"),
                          min_pixels=30, val_fraction=0.25, progress=False)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest, "stage 1 wrote no manifest"
    assert result.stats["studies_used"], result.stats
    losses = [h["loss"] for h in result.history]
    assert min(losses) < result.baseline["loss"], (result.baseline, result.history)
    # the file holds the best *trained* epoch (not the starting decoder), and training did not make it
    # worse than where it started by more than noise on 32 validation pairs
    trained = [h for h in result.history if h["steps"] > 0]
    assert trained and result.candidate["epoch"] >= 1, (result.candidate, result.history)
    assert result.candidate["dice"] == max(h["dice"] for h in trained)
    assert result.candidate["dice"] >= result.baseline["dice"] - 0.02, (result.baseline, result.candidate)
    assert result.checkpoint is not None and Path(result.checkpoint).is_file()
