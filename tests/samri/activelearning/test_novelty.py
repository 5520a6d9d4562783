"""samri.activelearning.novelty on the tiny random SAM: descriptors, novelty ranking, the descriptor store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from samri.activelearning.config import ALConfig
from samri.activelearning.novelty import DescriptorStore, cosine_distance, novelty_scores, pooled_descriptor
from samri.activelearning.scorer import StudyScorer
from samri.activelearning.scores import model_version
from samri.inference.embeddings import EmbeddingCache
from samri.inference.segmenter import Segmenter
from samri.intensity import WindowSettings
from tests.helpers import synthetic_array


def _scorer(model, **kw) -> StudyScorer:
    return StudyScorer(Segmenter(model, EmbeddingCache()), kw.pop("config", ALConfig()), WindowSettings(),
                       version=model_version(model, "base"), **kw)


def test_novelty_ranks_inverted_contrast_above_a_near_duplicate(tiny_model) -> None:
    scorer = _scorer(tiny_model)
    base = synthetic_array()
    near_dup = base * 1.02 + np.random.default_rng(3).normal(0, 1.0, base.shape).astype(np.float32)
    inverted = (base.max() + base.min() - base).astype(np.float32)
    desc = {name: scorer.descriptor(name, array=arr, key=name)
            for name, arr in {"labelled": base, "near_dup": near_dup, "inverted": inverted}.items()}
    scores = novelty_scores(desc, {"labelled"})
    assert scores["inverted"]["value"] > scores["near_dup"]["value"]
    assert scores["near_dup"]["nearest"] == "labelled" and scores["labelled"]["value"] == 0.0
    cold = novelty_scores(desc, set())
    assert all(v["reference"] == "pool_mean" for v in cold.values())
    for pooling in ("mean", "mean_std"):
        emb = {0: np.ones((4, 2, 2), np.float32)}
        import torch

        vec = pooled_descriptor({k: torch.as_tensor(v) for k, v in emb.items()}, pooling)
        assert vec.shape == ((4,) if pooling == "mean" else (8,)) and abs(np.linalg.norm(vec) - 1) < 1e-5
    assert cosine_distance(np.ones(3), np.ones(3)) == pytest.approx(0.0, abs=1e-9)


def test_descriptor_store_round_trips_atomically(tmp_path: Path) -> None:
    store = DescriptorStore(tmp_path / "d")
    store.put("k", np.arange(4, dtype=np.float32))
    assert np.array_equal(DescriptorStore(tmp_path / "d").get("k"), np.arange(4))
    assert not list((tmp_path / "d").glob(".*tmp"))
    assert DescriptorStore(tmp_path / "d").get("other") is None
