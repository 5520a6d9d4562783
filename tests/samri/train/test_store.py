"""samri.train.store: the publish gate (margin, NoC@85), publishing, rollback and an interrupted publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from samri.errors import SamriInputError
from samri.model.builders import load_model
from samri.model.checkpoints import save_decoder_checkpoint
from samri.train.store import DecoderStore, gate, mean_noc85
from tests.helpers import tiny_spec


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


def test_gate_compares_selection_scores_when_present(tiny_model, tmp_path):
    from samri.model.checkpoints import save_decoder_checkpoint

    store = DecoderStore(tmp_path / "decoders", base_model="tiny")
    path = save_decoder_checkpoint(tmp_path / "s.pt", mask_decoder=tiny_model.mask_decoder,
                                   base_model=tiny_model.spec.name, preprocessing=tiny_model.preprocessing.to_dict(),
                                   metadata={"metrics": {"val": {"dice": 0.5, "score": 0.8, "epoch": 1},
                                                         "baseline_val": {"dice": 0.7, "score": 0.6}}})
    out = store.publish(path)
    assert out["published"] and "0.8000 > live 0.6000" in out["reason"]


# --- publishing and rollback ----------------------------------------------------------------------
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


def test_publish_is_gated_and_rollback_restores(tiny_model, tmp_path):
    store = DecoderStore(tmp_path / "decoders", base_model="tiny")
    assert store.live() is None
    first = store.publish(_candidate(tmp_path, tiny_model, "a.pt", 0.7, 0.6))
    assert first["published"] and store.live()["version"] == "v0001"
    worse = store.publish(_candidate(tmp_path, tiny_model, "b.pt", 0.5, 0.7), margin=0.05)
    assert not worse["published"] and "margin" in worse["reason"] and store.live()["version"] == "v0001"
    unchanged = store.publish(_candidate(tmp_path, tiny_model, "c.pt", 0.7, 0.7, epoch=0))
    assert not unchanged["published"]
    assert store.publish(_candidate(tmp_path, tiny_model, "d.pt", 0.8, 0.7))["version"] == "v0002"
    assert store.live_path() == tmp_path / "decoders" / "versions" / "v0002.pt"
    assert store.rollback()["version"] == "v0001"
    assert store.rollback("v0002")["version"] == "v0002"
    assert store.rollback("base") is None and store.live() is None
    with pytest.raises(SamriInputError, match="version"):
        store.rollback("v0099")
    assert [e["version"] for e in store.index()] == ["v0001", "v0002"]
    # a published file serves as a decoder on its base model
    model = load_model(tiny_spec(), decoder=tmp_path / "decoders" / "versions" / "v0002.pt")
    assert model.decoder_info["metrics"]["val"]["dice"] == 0.8


def test_publish_killed_midway_leaves_live_state(tiny_model, tmp_path, monkeypatch):
    store = DecoderStore(tmp_path / "decoders", base_model="tiny")
    store.publish(_candidate(tmp_path, tiny_model, "a.pt", 0.7, 0.6))
    live_before = store.live_file.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr("samri.io.shutil.copyfile", boom)  # killed while the version is copied
    with pytest.raises(KeyboardInterrupt):
        store.publish(_candidate(tmp_path, tiny_model, "b.pt", 0.9, 0.7))
    assert store.live_file.read_bytes() == live_before
    assert [e["version"] for e in store.index()] == ["v0001"]
    assert not [p for p in (tmp_path / "decoders").rglob("*") if p.name.startswith(".")]


def test_publish_refuses_other_base_model(tiny_model, tmp_path):
    store = DecoderStore(tmp_path / "decoders", base_model="litemedsam")
    with pytest.raises(SamriInputError, match="base model"):
        store.publish(_candidate(tmp_path, tiny_model, "a.pt", 0.7, 0.6))


def test_shape_priors_publish_without_the_gate_only_with_priors(tiny_model, tmp_path):
    """`DecoderStore.publish_shape_priors`: the live weights with newer shapes go live whatever the gate said;
    a file without shapes keeps the refusal."""
    import numpy as np

    from samri.inference.shape_prior import ShapePriors

    store = DecoderStore(tmp_path / "decoders", base_model="tiny")
    labels = np.zeros((10, 10, 2), np.int16)
    labels[2:6, 2:6, :] = 1
    payload = ShapePriors.from_labels([(labels, {"a": 1}, (1.0, 1.0, 1.0))]).to_payload()
    common = dict(mask_decoder=tiny_model.mask_decoder, base_model="tiny",
                  preprocessing=tiny_model.preprocessing.to_dict())
    metrics = {"val": {"score": 0.6, "epoch": 0}, "baseline_val": {"score": 0.6}}
    with_shapes = save_decoder_checkpoint(tmp_path / "p.pt", shape_priors=payload, metadata={
        "metrics": metrics, "shape_priors": {"structures": 1, "sections": 2}}, **common)
    out = store.publish_shape_priors(with_shapes, refused="refused: no better")
    assert out["published"] and out["version"] == "v0001" and out["shape_priors_only"]
    assert out["reason"].startswith("refused: no better; the live decoder's weights")
    assert store.live()["version"] == "v0001" and store.index()[0]["shape_priors_only"] is True
    plain = save_decoder_checkpoint(tmp_path / "q.pt", metadata={"metrics": metrics}, **common)
    assert store.publish_shape_priors(plain, refused="refused: x") == {"published": False, "version": None,
                                                                       "reason": "refused: x"}
    assert store.live()["version"] == "v0001"
