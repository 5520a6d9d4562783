"""Stage 1, stage 2, the batched decoder trick, publishing, rollback and torchrun (tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from samri.config import load_registry
from samri.errors import SamriInputError
from samri.geometry import SliceGeometry
from samri.inference.embeddings import EmbeddingCache
from samri.inference.prompts import SlicePrompt
from samri.model.builders import load_model
from samri.model.checkpoints import read_decoder_checkpoint
from samri.train.run import run_training
from samri.train.stage1 import find_studies, split_by_study, stage1
from samri.train.stage2 import TrainSettings, decoder_forward, encode_prompts
from samri.train.store import DecoderStore
from tests.helpers import tiny_spec, write_study

REPO = Path(__file__).resolve().parents[3]


def _settings(**kw) -> TrainSettings:
    base = dict(lr=1e-3, epochs=2, batch_size=4, max_steps_per_epoch=3, max_val_samples=16)
    base.update(kw)
    return TrainSettings(**base)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_batched_decoder_equals_per_image_calls(tiny_model):
    """The zero-image trick gives exactly what one decoder call per image gives."""
    torch.manual_seed(1)
    c, h, w = tiny_model.embedding_shape
    embeddings = torch.randn(3, c, h, w)
    geom = SliceGeometry(40, 48, tiny_model.input_size)
    prompts = [SlicePrompt(box=[5, 6, 20, 30]), SlicePrompt(box=[10, 2, 30, 40]), SlicePrompt(box=[0, 0, 39, 47])]
    sparse, dense = encode_prompts(tiny_model, [geom] * 3, prompts)
    pe = tiny_model.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        batched, iou = decoder_forward(tiny_model, tiny_model.mask_decoder, embeddings, sparse, dense, pe)
        for n in range(3):
            one, one_iou = tiny_model.mask_decoder(image_embeddings=embeddings[n:n + 1], image_pe=pe,
                                                   sparse_prompt_embeddings=sparse[n:n + 1],
                                                   dense_prompt_embeddings=dense[n:n + 1], multimask_output=False)
            torch.testing.assert_close(batched[n:n + 1], one, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[n:n + 1], one_iou, atol=1e-5, rtol=1e-5)


def test_encode_prompts_pads_mixed_prompt_types(tiny_model):
    geom = SliceGeometry(40, 48, tiny_model.input_size)
    prompts = [SlicePrompt(box=[5, 6, 20, 30]), SlicePrompt(points=[[3, 4], [8, 9], [10, 10]], labels=[1, 0, 1])]
    sparse, dense = encode_prompts(tiny_model, [geom] * 2, prompts)
    # 3 points + SAM's own not-a-point pad (no box) = 4 tokens; the box's 2 tokens are padded to 4
    assert sparse.shape[:2] == (2, 4) and dense.shape[0] == 2
    pad = tiny_model.prompt_encoder.not_a_point_embed.weight[0]
    torch.testing.assert_close(sparse[0, 2], pad)
    torch.testing.assert_close(sparse[0, 3], pad)


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


def test_run_trains_only_the_decoder(studies_dir, fresh_tiny_model, tmp_path):
    model = fresh_tiny_model
    frozen = {"image_encoder": _state(model.image_encoder), "prompt_encoder": _state(model.prompt_encoder)}
    decoder_before = _state(model.mask_decoder)
    result = run_training(find_studies(studies_dir), model=model, out_dir=tmp_path / "run", settings=_settings(),
                          window=load_registry().window, cache=EmbeddingCache(), min_pixels=5, progress=False)
    for name, before in frozen.items():
        after = getattr(model, name).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"{name} changed"
    assert len(result.history) == 2 and all(h["train_loss"] is not None for h in result.history)
    envelope = read_decoder_checkpoint(result.checkpoint)
    meta = envelope["metadata"]
    assert envelope["base_model"] == "tiny" and meta["point_prompts"] in ("single", "box_search")
    assert set(meta["training_data"]["val_studies"]).isdisjoint(meta["training_data"]["train_studies"])
    assert "val" in meta["metrics"] and "baseline_val" in meta["metrics"]
    assert (tmp_path / "run" / "manifest.json").is_file()
    # the file holds the best *trained* epoch (the gate's candidate) even when no epoch beat the start
    assert result.candidate["epoch"] >= 1 and meta["metrics"]["val"] == result.candidate
    assert any(not torch.equal(decoder_before[k], envelope["mask_decoder"][k]) for k in decoder_before)
    # the model in memory keeps the best decoder overall (the starting one when nothing improved)
    kept = model.mask_decoder.state_dict()
    assert all(torch.equal(decoder_before[k], kept[k]) for k in kept) == (result.best["epoch"] == 0)
    assert result.best["dice"] >= max([result.baseline["dice"]] + [h["dice"] for h in result.history])


def test_step_with_propagated_boxes_reads_neighbour_slices(studies_dir, fresh_tiny_model, tmp_path):
    """Every sample prompted the way 3D propagation prompts: the box of a slice 1-2 away (+ margin)."""
    from samri.annotator import SimSettings
    from samri.train.stage2 import DecoderTrainer, SampleSource

    model = fresh_tiny_model
    cache = EmbeddingCache()
    indices, _ = stage1(find_studies(studies_dir), model, cache, window=load_registry().window, min_pixels=5,
                        progress=False)
    source = SampleSource(indices, cache, model.cache_key(), model.input_size)
    sample = indices[0].samples[len(indices[0].samples) // 2]
    rng = np.random.default_rng(0)
    near = source.neighbour(sample, rng)
    assert near is not None and near.shape == source.target(sample).shape and near.any()
    edge = type(sample)(sample.study_id, sample.axis, 0, sample.value, 0)
    at_edge = [source.neighbour(edge, np.random.default_rng(seed)) for seed in range(20)]
    assert any(n is None for n in at_edge) and any(n is not None for n in at_edge)  # slices -2, -1 do not exist
    settings = _settings(sim=SimSettings(mode_weights={"propagated_box": 1.0}, correction_prob=1.0))
    for param in model.mask_decoder.parameters():
        param.requires_grad_(True)  # as run_training sets them up
    trainer = DecoderTrainer(model=model, source=source, settings=settings)
    before = _state(model.mask_decoder)
    out = trainer.step(indices[0].samples[:4], np.random.default_rng(1))
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.mask_decoder.state_dict().items())


def test_step_runs_corrective_rounds_in_sequence_with_the_logits_fed_back(studies_dir, fresh_tiny_model):
    """SAM-style iterative training: each round adds one corrective click and feeds the last logits."""
    from samri.annotator import SimSettings
    from samri.train.stage2 import DecoderTrainer, SampleSource

    model = fresh_tiny_model
    cache = EmbeddingCache()
    indices, _ = stage1(find_studies(studies_dir), model, cache, window=load_registry().window, min_pixels=5,
                        progress=False)
    source = SampleSource(indices, cache, model.cache_key(), model.input_size)
    settings = _settings(sim=SimSettings(mode_weights={"box": 1.0}, correction_prob=1.0, correction_rounds=3))
    for param in model.mask_decoder.parameters():
        param.requires_grad_(True)
    trainer = DecoderTrainer(model=model, source=source, settings=settings)
    calls = []
    forward = trainer._forward

    def recording(samples, prompts, *args):
        calls.append(prompts)
        return forward(samples, prompts, *args)

    trainer._forward = recording
    rng = np.random.default_rng(0)
    while True:  # rounds are drawn from 1..3: step until a 3-round step shows up
        calls.clear()
        out = trainer.step(indices[0].samples[:2], rng)
        if len(calls) == 4:
            break
    assert np.isfinite(out["loss"])
    first, *rounds = calls
    assert all(p.mask_logits is None for p in first)
    for k, prompts in enumerate(rounds, start=1):
        for p in prompts:
            assert p.mask_logits is not None and p.box is not None
            assert len(p.points) <= k  # one click per round (none once a prediction is exact)
    assert any(len(p.points) == 3 for p in rounds[-1])


def test_training_lowers_validation_loss_on_synthetic_studies(studies_dir, fresh_tiny_model, tmp_path):
    settings = _settings(lr=3e-3, epochs=3, max_steps_per_epoch=8, iou_weight=0.0)
    result = run_training(find_studies(studies_dir), model=fresh_tiny_model, out_dir=tmp_path / "run",
                          settings=settings, window=load_registry().window, cache=EmbeddingCache(), min_pixels=5,
                          progress=False)
    assert min(h["loss"] for h in result.history) < result.baseline["loss"]


def test_click_loss_is_low_only_where_the_logits_agree_with_the_clicks():
    from samri.train.stage2 import click_loss

    geom = SliceGeometry(40, 48, 64)  # low-res frame 16: 4 input pixels per logit
    logits = torch.full((2, 1, 16, 16), -8.0)
    logits[:, :, :8, :8] = 8.0  # object in the top-left quarter of the input frame
    inside, outside = [5.0, 5.0], [35.0, 40.0]
    agree = [SlicePrompt(points=[inside, outside], labels=[1, 0]), SlicePrompt()]
    disagree = [SlicePrompt(points=[outside, inside], labels=[1, 0]), SlicePrompt()]
    assert float(click_loss(logits, [geom] * 2, agree)) < 1e-3
    assert float(click_loss(logits, [geom] * 2, disagree)) > 7.0
    assert float(click_loss(logits, [geom] * 2, [SlicePrompt(), SlicePrompt()])) == 0.0
    logits.requires_grad_(True)
    click_loss(logits, [geom] * 2, disagree).backward()
    assert int((logits.grad != 0).sum()) == 2  # only the two clicked logits


def test_clicks_validation_picks_the_epoch_and_gates_by_its_score(studies_dir, fresh_tiny_model, tmp_path):
    """``validation_clicks`` runs the protocol per epoch; its mean Dice is the selection score."""
    from samri.train.run import selection_score

    settings = _settings(epochs=1, max_steps_per_epoch=2, max_val_samples=4, validation_clicks=3)
    result = run_training(find_studies(studies_dir), model=fresh_tiny_model, out_dir=tmp_path / "run",
                          settings=settings, window=load_registry().window, cache=EmbeddingCache(), min_pixels=5,
                          progress=False)
    for val in (result.baseline, *result.history):
        for first in ("box", "point"):
            curve = val[f"clicks_{first}"]
            assert len(curve) == 3 and all(0.0 <= d <= 1.0 for d in curve)
            assert 1.0 <= val[f"noc85_{first}"] <= 3.0
        assert val["score"] == pytest.approx(np.mean(val["clicks_box"] + val["clicks_point"]), abs=1e-3)
    meta = read_decoder_checkpoint(result.checkpoint)["metadata"]["metrics"]
    assert meta["val"]["score"] == selection_score(meta["val"])
    assert selection_score({"dice": 0.7}) == 0.7  # runs without clicks validation: box Dice


def test_gate_compares_selection_scores_when_present(tiny_model, tmp_path):
    from samri.model.checkpoints import save_decoder_checkpoint

    store = DecoderStore(tmp_path / "decoders", base_model="tiny")
    path = save_decoder_checkpoint(tmp_path / "s.pt", mask_decoder=tiny_model.mask_decoder,
                                   base_model=tiny_model.spec.name, preprocessing=tiny_model.preprocessing.to_dict(),
                                   metadata={"metrics": {"val": {"dice": 0.5, "score": 0.8, "epoch": 1},
                                                         "baseline_val": {"dice": 0.7, "score": 0.6}}})
    out = store.publish(path)
    assert out["published"] and "0.8000 > live 0.6000" in out["reason"]


def _fake_candidate(tmp_path, model, name: str, val: float, baseline: float, epoch: int = 1) -> Path:
    from samri.model.checkpoints import save_decoder_checkpoint

    return save_decoder_checkpoint(tmp_path / name, mask_decoder=model.mask_decoder, base_model=model.spec.name,
                                   preprocessing=model.preprocessing.to_dict(),
                                   metadata={"metrics": {"val": {"dice": val, "epoch": epoch},
                                                         "baseline_val": {"dice": baseline}}})


def test_publish_is_gated_and_rollback_restores(tiny_model, tmp_path):
    store = DecoderStore(tmp_path / "decoders", base_model="tiny")
    assert store.live() is None
    first = store.publish(_fake_candidate(tmp_path, tiny_model, "a.pt", 0.7, 0.6))
    assert first["published"] and store.live()["version"] == "v0001"
    worse = store.publish(_fake_candidate(tmp_path, tiny_model, "b.pt", 0.5, 0.7), margin=0.05)
    assert not worse["published"] and "margin" in worse["reason"] and store.live()["version"] == "v0001"
    unchanged = store.publish(_fake_candidate(tmp_path, tiny_model, "c.pt", 0.7, 0.7, epoch=0))
    assert not unchanged["published"]
    assert store.publish(_fake_candidate(tmp_path, tiny_model, "d.pt", 0.8, 0.7))["version"] == "v0002"
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
    store.publish(_fake_candidate(tmp_path, tiny_model, "a.pt", 0.7, 0.6))
    live_before = store.live_file.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr("samri.io.shutil.copyfile", boom)  # killed while the version is copied
    with pytest.raises(KeyboardInterrupt):
        store.publish(_fake_candidate(tmp_path, tiny_model, "b.pt", 0.9, 0.7))
    assert store.live_file.read_bytes() == live_before
    assert [e["version"] for e in store.index()] == ["v0001"]
    assert not [p for p in (tmp_path / "decoders").rglob("*") if p.name.startswith(".")]


def test_publish_refuses_other_base_model(tiny_model, tmp_path):
    store = DecoderStore(tmp_path / "decoders", base_model="litemedsam")
    with pytest.raises(SamriInputError, match="base model"):
        store.publish(_fake_candidate(tmp_path, tiny_model, "a.pt", 0.7, 0.6))


def test_cli_train_and_publish(studies_dir, tiny_config_dir, tmp_path, monkeypatch, capsys):
    from samri.cli import main

    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(tiny_config_dir))
    code = main(["train", "--studies", str(studies_dir), "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache"), "--publish", str(tmp_path / "decoders")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert Path(summary["checkpoint"]).is_file() and "publish" in summary
    assert main(["train", "--studies", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2


@pytest.mark.slow  # two processes, each importing torch
def test_torchrun_two_cpu_processes(studies_dir, tiny_config_dir, tmp_path):
    env = {**os.environ, "SAMRI_CONFIG_DIR": str(tiny_config_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "lib")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "samri.train", "--studies", str(studies_dir), "--out", str(tmp_path / "run"),
           "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = read_decoder_checkpoint(tmp_path / "run" / "decoder.pt")["metadata"]
    assert meta["settings"]["world_size"] == 2
    # stage 1 was sharded: both ranks' slices are in the shared cache, each encoded once
    assert len(list((tmp_path / "cache").rglob("*.npy"))) > 0


def test_point_prompt_mode_follows_validation():
    from samri.train.run import point_prompt_mode

    assert point_prompt_mode({"dice_box": 0.8, "dice_point": 0.7}) == "single"
    assert point_prompt_mode({"dice_box": 0.8, "dice_point": 0.1}) == "box_search"
