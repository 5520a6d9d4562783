"""samri.activelearning.scorer: a study's score records on the tiny random SAM, and with LiteMedSAM on
real MRI (slow: real weights, ~12 slice encodings).

The real MRI is the MNI152 T1 template (nilearn) and copies of it: a heavily corrupted one (Gaussian
noise at 40 % of the head's 99.5th percentile, then a strong bias field), a near-duplicate (2 %
brighter, faint noise) and a contrast-inverted one (`samri.evaluation.variants`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.activelearning.config import ALConfig, SliceSampling
from samri.activelearning.novelty import novelty_scores
from samri.activelearning.scorer import StudyScorer
from samri.activelearning.scores import model_version
from samri.config import load_registry
from samri.evaluation.variants import make_variant
from samri.inference.embeddings import EmbeddingCache
from samri.inference.segmenter import Segmenter
from samri.intensity import WindowSettings
from samri.model.builders import load_model
from tests.helpers import synthetic_array


def _scorer(model, **kw) -> StudyScorer:
    return StudyScorer(Segmenter(model, EmbeddingCache()), kw.pop("config", ALConfig()), WindowSettings(),
                       version=model_version(model, "base"), **kw)


def test_corrupt_or_constant_study_is_unusable_with_a_reason(tiny_model, tmp_path: Path) -> None:
    scorer = _scorer(tiny_model)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really a gzip nifti")
    rec = scorer.uncertainty(corrupt)
    assert rec["usable"] is False and "cannot be read" in rec["reason"] and rec["value"] is None
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 6), np.float32), np.eye(4)), str(flat))
    assert scorer.uncertainty(flat)["usable"] is False
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(synthetic_array(), np.eye(4)), str(good))
    ok = scorer.uncertainty(good)
    assert ok["usable"] and 0 <= ok["value"] <= 1 and ok["details"]["top_slices"]
    assert ok["inputs"]["image"] and ok["details"]["used_original_label"] is False


# --- LiteMedSAM on real MRI (slow) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def mni() -> np.ndarray:
    from samri.sample_data import _load_mni152

    try:
        image, _ = _load_mni152()
    except Exception as exc:  # nilearn's template missing: nothing real to test on
        pytest.skip(f"MNI152 template not available ({exc})")
    return np.asarray(image.dataobj, dtype=np.float32)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> StudyScorer:
    registry = load_registry()
    model = load_model(registry.spec("litemedsam"))
    config = ALConfig(slices=SliceSampling(step=6, max_slices=3))
    cache = EmbeddingCache(cache_dir=tmp_path_factory.mktemp("al_real_cache"))
    return StudyScorer(Segmenter(model, cache), config, registry.window, version=model_version(model, "base"))


@pytest.mark.slow
def test_uncertainty_ranks_a_heavily_corrupted_study_above_the_clean_one(scorer, mni) -> None:
    corrupted = make_variant(make_variant(mni, "noise:0.4", seed=0), "bias:0.8", seed=1)
    clean = scorer.uncertainty("clean", array=mni, key="clean")
    bad = scorer.uncertainty("corrupted", array=corrupted, key="corrupted")
    assert clean["usable"] and bad["usable"]
    assert len(bad["details"]["slices_scored"]) == len(clean["details"]["slices_scored"]) == 3
    assert bad["value"] > clean["value"], (bad["value"], clean["value"])


@pytest.mark.slow
def test_novelty_ranks_inverted_contrast_above_a_near_duplicate(scorer, mni) -> None:
    rng = np.random.default_rng(0)
    near_dup = (mni * 1.02 + rng.normal(0, 0.002 * float(mni.max()), mni.shape)).astype(np.float32)
    inverted = make_variant(mni, "inverted")
    desc = {name: scorer.descriptor(name, array=arr, key=name)
            for name, arr in {"labelled": mni, "near_dup": near_dup, "inverted": inverted}.items()}
    scores = novelty_scores(desc, {"labelled"})
    assert scores["inverted"]["value"] > scores["near_dup"]["value"], scores
