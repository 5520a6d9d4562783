"""Active-learning library (`samri.activelearning`) on the tiny random SAM: config, sampling, scores, selection."""

from __future__ import annotations

import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri.activelearning.config import ALConfig, load_al_config, parse_al_config
from samri.activelearning.novelty import DescriptorStore, cosine_distance, novelty_scores, pooled_descriptor
from samri.activelearning.sampling import head_mask, sample_slices
from samri.activelearning.scorer import StudyScorer
from samri.activelearning.scores import is_current, make_record, model_version
from samri.activelearning.selection import Candidate, NothingToAnnotate, Reservations, combined_values, rank
from samri.activelearning.uncertainty import grid_boxes, jitter_boxes, study_uncertainty
from samri.errors import SamriInputError
from samri.inference.embeddings import EmbeddingCache
from samri.inference.segmenter import Segmenter
from samri.intensity import WindowSettings
from tests.helpers import synthetic_array

REPO = Path(__file__).resolve().parents[3]


def _scorer(model, **kw) -> StudyScorer:
    return StudyScorer(Segmenter(model, EmbeddingCache()), kw.pop("config", ALConfig()), WindowSettings(),
                       version=model_version(model, "base"), **kw)


# --- config ---------------------------------------------------------------------------------------
def test_repo_config_parses_and_bad_values_name_their_key(tmp_path: Path) -> None:
    cfg = load_al_config(REPO / "configs" / "activelearning.yaml")
    assert cfg.slices.axis == 2 and sum(cfg.combined_weights.values()) > 0
    assert cfg.scoring_key("uncertainty") != cfg.scoring_key("novelty")
    with pytest.raises(SamriInputError, match=r"slices\.step"):
        parse_al_config({"slices": {"step": 0}})
    with pytest.raises(SamriInputError, match=r"combined\.weights"):
        parse_al_config({"combined": {"weights": {"uncertainty": 0, "novelty": 0}}})
    with pytest.raises(SamriInputError, match=r"novelty\.pooling"):
        parse_al_config({"novelty": {"pooling": "max"}})
    with pytest.raises(SamriInputError, match="file not found"):
        load_al_config(tmp_path / "missing.yaml")


# --- sampling and uncertainty --------------------------------------------------------------------
def test_head_mask_ignores_noise_and_sampling_is_even(make_volume) -> None:
    clean = make_volume()
    rng = np.random.default_rng(1)
    noisy = make_volume(synthetic_array() + rng.normal(0, 150, synthetic_array().shape).astype(np.float32))
    head_clean, head_noisy = head_mask(clean.windowed), head_mask(noisy.windowed)
    overlap = (head_clean & head_noisy).sum() / max(head_clean.sum(), 1)
    assert overlap > 0.8 and head_noisy.mean() < 0.5  # the noisy background is not "head"
    indices = sample_slices(head_clean, 2, step=3, max_slices=3, min_foreground=0.05)
    assert len(indices) == 3 and indices == sorted(indices)
    assert all(head_clean[:, :, i].mean() >= 0.05 for i in indices)
    assert sample_slices(np.zeros((5, 5, 9), bool), 2, step=2, max_slices=4, min_foreground=0.1) == [4]


def test_grid_boxes_lie_on_the_head_and_jitter_stays_inside() -> None:
    head = np.zeros((40, 48), bool)
    head[10:30, 12:40] = True
    cfg = ALConfig().uncertainty
    boxes = grid_boxes(head, cfg)
    assert 1 <= len(boxes) <= cfg.max_prompts * len(cfg.box_fractions)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    assert head[np.round(centres[:, 0]).astype(int), np.round(centres[:, 1]).astype(int)].all()
    moved = jitter_boxes(boxes, 3, 0.2, head.shape, np.random.default_rng(0))
    assert moved.shape == (len(boxes), 3, 4)
    assert (moved[..., 0] <= moved[..., 2]).all() and moved.min() >= 0 and moved[..., 2].max() <= 39


def test_study_uncertainty_is_bounded_reproducible_and_uses_the_label(tiny_model, prepared_volume, gt_mask) -> None:
    seg = Segmenter(tiny_model, EmbeddingCache())
    cfg = ALConfig().uncertainty
    head = head_mask(prepared_volume.windowed)
    indices = sample_slices(head, 2, step=4, max_slices=3, min_foreground=0.05)
    first = study_uncertainty(seg, prepared_volume, indices, cfg, head=head)
    again = study_uncertainty(seg, prepared_volume, indices, cfg, head=head)
    assert 0.0 <= first.value <= 1.0 and first.value == again.value
    assert [s.index for s in first.slices] == indices
    assert all(s.prompts > 0 and 0 <= s.fill <= 1 for s in first.slices)
    top = first.top_slices(2)
    assert len(top) == 2 and top[0]["uncertainty"] >= top[1]["uncertainty"]
    labelled = study_uncertainty(seg, prepared_volume, indices, cfg, head=head, label=gt_mask.astype(np.int32))
    assert all(s.label_disagreement is not None and 0 <= s.label_disagreement <= 1 for s in labelled.slices)


# --- novelty ----------------------------------------------------------------------------------------
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


# --- records and the scorer -----------------------------------------------------------------------
def test_records_are_current_only_for_the_same_model_settings_and_files(tiny_model, fresh_tiny_model) -> None:
    v1 = model_version(tiny_model, "base")
    assert v1 == model_version(fresh_tiny_model, "base") and v1 != model_version(tiny_model, "v0001")
    import torch

    with torch.no_grad():
        next(fresh_tiny_model.mask_decoder.parameters()).add_(0.01)
    assert model_version(fresh_tiny_model, "base") != v1  # same name, other weights
    rec = make_record("uncertainty", value=0.3, version=v1, config="c", inputs={"image": "1:2"})
    assert is_current(rec, version=v1, config="c", inputs={"image": "1:2"})
    assert not is_current(rec, version=v1, config="c", inputs={"image": "1:3"})
    assert not is_current(rec, version="other", config="c", inputs={"image": "1:2"})
    assert not is_current(None, version=v1, config="c", inputs={})
    bad = make_record("novelty", value=None, version=v1, config="c", inputs={}, reason="cannot read")
    assert bad["usable"] is False and bad["reason"] == "cannot read"


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


# --- selection --------------------------------------------------------------------------------------
def test_rank_and_combined_values() -> None:
    ranked = rank([Candidate("b", None), Candidate("a", 0.2), Candidate("c", 0.9), Candidate("d", 0.2)])
    assert [c.study_id for c in ranked] == ["c", "a", "d", "b"]
    combined = combined_values({"x": 1.0, "y": 0.0, "z": None}, {"x": 0.0, "y": 1.0, "z": None},
                               {"uncertainty": 3.0, "novelty": 1.0})
    assert combined["x"] == pytest.approx(0.75) and combined["y"] == pytest.approx(0.25) and combined["z"] is None


def test_reservations_give_concurrent_clients_different_studies() -> None:
    now = [0.0]
    book = Reservations(60, clock=lambda: now[0])
    ranked = rank([Candidate("a", 0.9), Candidate("b", 0.5), Candidate("c", 0.1)])
    picks: dict[str, str] = {}

    def ask(client: str) -> None:
        picks[client] = book.choose(ranked, client)[0].study_id

    threads = [threading.Thread(target=ask, args=(f"client{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(picks.values()) == ["a", "b", "c"]
    pick, shared = book.choose(ranked, "client4")  # all reserved: the one expiring first, flagged
    assert shared and pick.study_id in "abc"
    now[0] = 61.0  # reservations expire
    assert book.choose(ranked, "x")[0].study_id == "a"
    again, shared = book.choose(ranked, "x")  # asking again releases the client's own study
    assert again.study_id == "a" and not shared and book.held() == {"a": "x"}
    assert book.choose(ranked, "late")[0].study_id == "b"
    assert book.choose(ranked, None)[0].study_id == "c"  # anonymous requests are distinct clients
    with pytest.raises(NothingToAnnotate):
        book.choose([], "x")
