"""A run's budget (stage-1 slices, steps, validation pairs), its progress events, and the publish gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from samri.config import load_registry
from samri.inference.embeddings import EmbeddingCache
from samri.model.checkpoints import read_decoder_checkpoint, save_decoder_checkpoint
from samri.train.config import TrainConfig
from samri.train.run import run_training
from samri.train.stage1 import find_studies, spread, stage1
from samri.train.stage2 import TrainSettings
from samri.train.store import DecoderStore, gate, mean_noc85


def _candidate(tmp_path: Path, model, name: str, val: float, live: float, epoch: int = 1) -> Path:
    return save_decoder_checkpoint(tmp_path / name, mask_decoder=model.mask_decoder, base_model=model.spec.name,
                                   preprocessing=model.preprocessing.to_dict(),
                                   metadata={"metrics": {"val": {"dice": val, "epoch": epoch},
                                                         "baseline_val": {"dice": live}}})


# --- the gate -------------------------------------------------------------------------------------
def test_gate_margin_decides_a_candidate_just_below_live():
    ok, reason = gate(0.766, 0.772, 0.05)
    assert ok and reason.startswith("within margin") and "0.0060 below" in reason
    ok, reason = gate(0.766, 0.772, 0.0)
    assert not ok and reason.startswith("refused") and "does not beat" in reason
    ok, reason = gate(0.70, 0.772, 0.05)
    assert not ok and reason.startswith("refused") and "more than gate_margin 0.05" in reason
    ok, reason = gate(0.78, 0.772, 0.0)
    assert ok and reason.startswith("improved")
    assert gate(0.772, 0.772, 0.0)[0] is False  # margin 0: it must improve


def test_gate_refuses_a_better_score_that_costs_clicks():
    ok, reason = gate(0.80, 0.77, 0.0, new_noc=3.6, live_noc=3.5)
    assert not ok and "NoC@85 3.60" in reason and "allowed 0.05" in reason
    ok, reason = gate(0.80, 0.77, 0.0, new_noc=3.52, live_noc=3.5)  # within NOC_TOLERANCE
    assert ok and "NoC@85 3.52 vs live 3.50" in reason
    assert gate(0.76, 0.77, 0.02, new_noc=3.7, live_noc=3.5)[0] is True  # margin 0.02 allows 0.25 clicks
    assert gate(0.80, 0.77, 0.0, new_noc=None, live_noc=3.5)[0] is True  # no clicks validation: score only
    assert mean_noc85({"noc85_box": 3.0, "noc85_point": 4.0, "dice": 0.7}) == 3.5
    assert mean_noc85({"dice": 0.7}) is None


def test_store_gate_reads_noc_from_the_candidate(tiny_model, tmp_path):
    store = DecoderStore(tmp_path / "decoders", base_model="tiny")
    path = save_decoder_checkpoint(tmp_path / "n.pt", mask_decoder=tiny_model.mask_decoder, base_model="tiny",
                                   preprocessing=tiny_model.preprocessing.to_dict(),
                                   metadata={"metrics": {"val": {"score": 0.8, "epoch": 1, "noc85_box": 4.0},
                                                         "baseline_val": {"score": 0.7, "noc85_box": 3.0}}})
    refused = store.publish(path)
    assert not refused["published"] and "NoC@85" in refused["reason"] and store.live() is None


def test_store_publishes_within_margin_refuses_without_and_never_the_start(tiny_model, tmp_path):
    store = DecoderStore(tmp_path / "decoders", base_model="tiny")
    within = store.publish(_candidate(tmp_path, tiny_model, "a.pt", 0.766, 0.772), margin=0.05)
    assert within["published"] and within["version"] == "v0001" and within["reason"].startswith("within margin")
    assert store.index()[0]["gate"] == within["reason"]
    refused = store.publish(_candidate(tmp_path, tiny_model, "b.pt", 0.766, 0.772), margin=0.0)
    assert not refused["published"] and refused["version"] is None and refused["reason"].startswith("refused")
    above = store.publish(_candidate(tmp_path, tiny_model, "c.pt", 0.80, 0.772), margin=0.0)
    assert above["published"] and above["version"] == "v0002" and above["reason"].startswith("improved")
    start = store.publish(_candidate(tmp_path, tiny_model, "d.pt", 0.772, 0.772, epoch=0), margin=0.5)
    assert not start["published"] and "no trained epoch" in start["reason"]
    assert store.live()["version"] == "v0002"


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


def test_run_reports_progress_budget_and_phase_seconds(studies_dir, fresh_tiny_model, tmp_path):
    settings = TrainSettings(lr=1e-3, epochs=2, batch_size=2, max_steps_per_epoch=3, max_val_samples=3, max_slices=9)
    events = []
    result = run_training(find_studies(studies_dir), model=fresh_tiny_model, out_dir=tmp_path / "run",
                          settings=settings, window=load_registry().window, cache=EmbeddingCache(), min_pixels=5,
                          val_fraction=0.34, progress=False, on_progress=events.append)
    phases = [e["phase"] for e in events]
    assert phases[0] == "stage1" and phases.index("validation") < phases.index("stage2")
    steps = [e for e in events if e["phase"] == "stage2"]
    assert [(e["epoch"], e["step"], e["total_steps"]) for e in steps] == \
        [(1, 1, 3), (1, 2, 3), (1, 3, 3), (2, 1, 3), (2, 2, 3), (2, 3, 3)]
    assert all(e["total_epochs"] == 2 and e["loss"] > 0 for e in steps)
    validated = [e for e in events if "val" in e]
    assert [e["epoch"] for e in validated] == [0, 1, 2] and all("dice" in e["val"] for e in validated)
    pairs = [e for e in events if e["phase"] == "validation" and "pairs_done" in e]
    assert pairs[-1]["pairs_done"] == pairs[-1]["pairs_total"] == 3 * 3
    budget = result.budget
    assert budget["slices_used"] == 9 and budget["steps_per_epoch"] == 3 and budget["steps"] == 6
    assert budget["val_pairs"] == 3 and budget["val_prompts"] == 9 and budget["validations"] == 3
    assert set(result.seconds) == {"stage1", "stage2", "validation", "total"}
    assert result.seconds["total"] >= result.seconds["stage1"] + result.seconds["stage2"] - 0.2
    meta = read_decoder_checkpoint(result.checkpoint)["metadata"]
    assert meta["budget"] == budget and meta["phase_seconds"] == result.seconds
    assert [h["steps"] for h in result.history] == [3, 3]


def test_an_epoch_without_steps_is_no_candidate(studies_dir, fresh_tiny_model, tmp_path):
    """Stopped before the first step: the file holds the starting decoder, which the gate refuses."""
    settings = TrainSettings(lr=1e-3, epochs=1, batch_size=4, max_steps_per_epoch=3, max_val_samples=4)
    result = run_training(find_studies(studies_dir), model=fresh_tiny_model, out_dir=tmp_path / "run",
                          settings=settings, window=load_registry().window, cache=EmbeddingCache(), min_pixels=5,
                          progress=False, stop_check=lambda: True)
    assert result.candidate["epoch"] == 0 and result.history[0]["steps"] == 0
    store = DecoderStore(tmp_path / "decoders", base_model="tiny")
    out = store.publish(result.checkpoint, margin=1.0)
    assert not out["published"] and "no trained epoch" in out["reason"]


@pytest.mark.parametrize("value,expected", [(None, None), (0, None), (12, 12)])
def test_yaml_budget_zero_or_null_is_unbounded(value, expected):
    settings = TrainConfig.from_mapping({"max_slices": value, "max_steps_per_epoch": value}).settings
    assert settings.max_slices == expected and settings.max_steps_per_epoch == expected
