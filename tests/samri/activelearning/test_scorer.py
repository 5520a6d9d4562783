"""Active-learning scores with LiteMedSAM on real MRI (slow: real weights, ~12 slice encodings).

The MNI152 T1 template (nilearn) and copies of it: a heavily corrupted one (Gaussian noise at 40 %
of the head's 99.5th percentile, then a strong bias field), a near-duplicate (2 % brighter, faint
noise) and a contrast-inverted one (`samri.evaluation.variants`).
"""

from __future__ import annotations

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
from samri.model.builders import load_model

pytestmark = pytest.mark.slow


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


def test_uncertainty_ranks_a_heavily_corrupted_study_above_the_clean_one(scorer, mni) -> None:
    corrupted = make_variant(make_variant(mni, "noise:0.4", seed=0), "bias:0.8", seed=1)
    clean = scorer.uncertainty("clean", array=mni, key="clean")
    bad = scorer.uncertainty("corrupted", array=corrupted, key="corrupted")
    assert clean["usable"] and bad["usable"]
    assert len(bad["details"]["slices_scored"]) == len(clean["details"]["slices_scored"]) == 3
    assert bad["value"] > clean["value"], (bad["value"], clean["value"])


def test_novelty_ranks_inverted_contrast_above_a_near_duplicate(scorer, mni) -> None:
    rng = np.random.default_rng(0)
    near_dup = (mni * 1.02 + rng.normal(0, 0.002 * float(mni.max()), mni.shape)).astype(np.float32)
    inverted = make_variant(mni, "inverted")
    desc = {name: scorer.descriptor(name, array=arr, key=name)
            for name, arr in {"labelled": mni, "near_dup": near_dup, "inverted": inverted}.items()}
    scores = novelty_scores(desc, {"labelled"})
    assert scores["inverted"]["value"] > scores["near_dup"]["value"], scores
