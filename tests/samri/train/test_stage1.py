"""samri.train.stage1: encoding annotated studies once (skips, budgets, cache) and the split by study."""

from __future__ import annotations

import numpy as np
import pytest

from samri.config import load_registry
from samri.errors import SamriInputError
from samri.inference.embeddings import EmbeddingCache
from samri.train.stage1 import find_studies, split_by_study, spread, stage1
from tests.helpers import write_study


def test_stage1_encodes_once_and_skips_bad_studies(studies_dir, tiny_model, tmp_path):
    # a label on another grid, an empty label and a corrupt image are skipped with reasons
    write_study(studies_dir, "mismatch", seed=5, label=np.zeros((10, 10, 10), np.uint8))
    write_study(studies_dir, "empty", seed=6, label=np.zeros((40, 48, 30), np.uint8))
    (studies_dir / "corrupt.nii.gz").write_bytes(b"not a nifti")
    (studies_dir / "labels" / "final" / "corrupt.nii.gz").write_bytes(b"x")
    cache = EmbeddingCache(cache_dir=tmp_path / "cache")
    indices, stats = stage1(find_studies(studies_dir), tiny_model, cache, window=load_registry().window,
                            min_pixels=5, progress=False)
    assert sorted(i.study.study_id for i in indices) == ["s0", "s1", "s2"]
    assert set(stats.skipped) == {"mismatch", "empty", "corrupt"}
    assert "does not match image shape" in stats.skipped["mismatch"]
    encoded = stats.slices_encoded
    assert encoded == sum(len({s.index for s in i.samples}) for i in indices)
    _, again = stage1(find_studies(studies_dir), tiny_model, cache, window=load_registry().window,
                      min_pixels=5, progress=False)
    assert again.slices_encoded == 0  # resumable: cached slices cost nothing


def test_stage1_unknown_label_names_ignored_and_nothing_usable_errors(studies_dir, tiny_model):
    indices, _ = stage1(find_studies(studies_dir), tiny_model, EmbeddingCache(), window=load_registry().window,
                        min_pixels=5, include_labels=["blob"], progress=False)
    assert {s.value for i in indices for s in i.samples} == {1}
    with pytest.raises(SamriInputError, match="no usable annotated study"):
        stage1(find_studies(studies_dir), tiny_model, EmbeddingCache(), window=load_registry().window,
               min_pixels=5, include_labels=["nosuch"], progress=False)


def test_split_is_by_study(studies_dir, tiny_model):
    indices, _ = stage1(find_studies(studies_dir), tiny_model, EmbeddingCache(), window=load_registry().window,
                        min_pixels=5, progress=False)
    train, val = split_by_study(indices, 0.34, seed=0)
    assert {i.study.study_id for i in train}.isdisjoint({i.study.study_id for i in val})
    assert len(train) + len(val) == 3 and len(val) >= 1


def test_split_by_named_validation_studies(studies_dir, tiny_model):
    indices, _ = stage1(find_studies(studies_dir), tiny_model, EmbeddingCache(), window=load_registry().window,
                        min_pixels=5, progress=False)
    ids = sorted(i.study.study_id for i in indices)
    train, val = split_by_study(indices, 0.34, seed=0, val_studies=[ids[-1]])
    assert [i.study.study_id for i in val] == [ids[-1]] and sorted(i.study.study_id for i in train) == ids[:-1]
    with pytest.raises(SamriInputError, match="val_studies.*nosuch"):
        split_by_study(indices, 0.34, seed=0, val_studies=["nosuch"])
    with pytest.raises(SamriInputError, match="no study to train on"):
        split_by_study(indices, 0.34, seed=0, val_studies=ids)


# --- the budget -----------------------------------------------------------------------------------
def test_spread_takes_evenly_spaced_items():
    assert spread(list(range(10)), 3) == [0, 4, 9]
    assert spread([4, 5, 6], None) == [4, 5, 6] and spread([4, 5, 6], 7) == [4, 5, 6] and spread([4, 5], 0) == []


def test_stage1_slice_budget_is_shared_by_the_studies(studies_dir, tiny_model, tmp_path):
    cache = EmbeddingCache(cache_dir=tmp_path / "cache")
    events = []
    indices, stats = stage1(find_studies(studies_dir), tiny_model, cache, window=load_registry().window,
                            min_pixels=5, progress=False, max_slices=7, on_progress=events.append)
    per_study = [len({s.index for s in i.samples}) for i in indices]
    assert sum(per_study) == stats.slices_used == stats.slices_encoded == 7 and max(per_study) - min(per_study) <= 1
    assert stats.slices_labelled > 7
    for index in indices:  # spread over the labelled range, not the first slices
        used = sorted({s.index for s in index.samples})
        assert used[-1] - used[0] >= 10
    assert {e["phase"] for e in events} == {"stage1"} and events[-1]["studies_done"] == 3
    assert events[-1]["slices_encoded"] == 7 and events[-1]["max_slices"] == 7
    # cached labelled slices are free: a second run uses them all and encodes 7 new ones
    first = {(i.study.study_id, s.index) for i in indices for s in i.samples}
    again_idx, again = stage1(find_studies(studies_dir), tiny_model, cache, window=load_registry().window,
                              min_pixels=5, progress=False, max_slices=7)
    assert again.slices_encoded == 7 and again.slices_used == 14
    assert first <= {(i.study.study_id, s.index) for i in again_idx for s in i.samples}
    # a budget of 0 uses only what is cached
    _, cached_only = stage1(find_studies(studies_dir), tiny_model, cache, window=load_registry().window,
                            min_pixels=5, progress=False, max_slices=0)
    assert cached_only.slices_encoded == 0 and cached_only.slices_used == 14
