"""samri.train.run: a training run (tiny model): only the decoder trains, validation picks the epoch, progress
events and budget; and a short run of LiteMedSAM's decoder on real MRI (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from samri.config import load_registry
from samri.inference.embeddings import EmbeddingCache
from samri.labels import load_label_names
from samri.model.backends import apply_backend
from samri.model.builders import load_model
from samri.model.checkpoints import read_decoder_checkpoint
from samri.sample_data import write_sample_studies
from samri.train.run import run_training
from samri.train.stage1 import Study, find_studies
from samri.train.stage2 import TrainSettings
from samri.train.store import DecoderStore
from tests.helpers import small_train_settings, state_copy


def test_run_trains_only_the_decoder(studies_dir, fresh_tiny_model, tmp_path):
    model = fresh_tiny_model
    frozen = {"image_encoder": state_copy(model.image_encoder), "prompt_encoder": state_copy(model.prompt_encoder)}
    decoder_before = state_copy(model.mask_decoder)
    result = run_training(find_studies(studies_dir), model=model, out_dir=tmp_path / "run",
                          settings=small_train_settings(), window=load_registry().window, cache=EmbeddingCache(),
                          min_pixels=5, progress=False)
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


def test_training_lowers_validation_loss_on_synthetic_studies(studies_dir, fresh_tiny_model, tmp_path):
    settings = small_train_settings(lr=3e-3, epochs=3, max_steps_per_epoch=8, iou_weight=0.0)
    result = run_training(find_studies(studies_dir), model=fresh_tiny_model, out_dir=tmp_path / "run",
                          settings=settings, window=load_registry().window, cache=EmbeddingCache(), min_pixels=5,
                          progress=False)
    assert min(h["loss"] for h in result.history) < result.baseline["loss"]


def test_clicks_validation_picks_the_epoch_and_gates_by_its_score(studies_dir, fresh_tiny_model, tmp_path):
    """``validation_clicks`` runs the protocol per epoch; its mean Dice is the selection score."""
    from samri.train.run import selection_score

    settings = small_train_settings(epochs=1, max_steps_per_epoch=2, max_val_samples=4, validation_clicks=3)
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


def test_the_lone_point_threshold_is_chosen_on_validation():
    """The candidate is validated with a first point at 0 and the registry's threshold; the better mean
    Dice wins (a tie keeps the one it trained under) and the score follows; the model keeps its own."""
    from types import SimpleNamespace

    from samri.train.run import choose_lone_point_threshold

    class Trainer:
        def __init__(self, model, dice_by_threshold):
            self.model, self.dice, self.seen = model, dice_by_threshold, []

        def validate_clicks(self, samples, firsts, max_clicks):
            assert firsts == ("point",)
            t = self.model.lone_point_threshold
            self.seen.append(t)
            return {"clicks_point": [self.dice[t]] * max_clicks, "noc85_point": 3.0 - self.dice[t]}

    model = SimpleNamespace(lone_point_threshold=0.5, spec=SimpleNamespace(lone_point_threshold=0.5),
                            mask_decoder=SimpleNamespace(load_state_dict=lambda state: None))
    candidate = {"epoch": 2, "clicks_box": [0.7] * 3, "clicks_point": [0.4] * 3, "noc85_point": 2.9,
                 "clicks_score": 0.55, "score": 0.55}
    trainer = Trainer(model, {0.0: 0.6})
    out = choose_lone_point_threshold(trainer, model, candidate, {}, [], max_clicks=3)
    assert trainer.seen == [0.0] and model.lone_point_threshold == 0.5
    assert out["lone_point_threshold_choice"]["chosen"] == 0.0
    assert out["lone_point_threshold_choice"]["mean_dice"] == {"0.0": 0.6, "0.5": 0.4}
    assert out["clicks_point"] == [0.6] * 3 and out["noc85_point"] == pytest.approx(2.4)
    assert out["score"] == out["clicks_score"] == pytest.approx(0.65)
    kept = choose_lone_point_threshold(Trainer(model, {0.0: 0.4}), model, candidate, {}, [], max_clicks=3)
    assert kept["lone_point_threshold_choice"]["chosen"] == 0.5 and kept["score"] == pytest.approx(0.55)
    model.lone_point_threshold = 0.0  # a decoder chosen at 0 still tries the registry's value next time
    trainer = Trainer(model, {0.5: 0.45})
    assert choose_lone_point_threshold(trainer, model, candidate, {}, [], max_clicks=3)[
        "lone_point_threshold_choice"]["chosen"] == 0.5 and trainer.seen == [0.5]
    bare = SimpleNamespace(lone_point_threshold=0.0, spec=SimpleNamespace(lone_point_threshold=0.0))
    assert choose_lone_point_threshold(Trainer(bare, {}), bare, candidate, {}, [], max_clicks=3)[
        "lone_point_threshold_choice"] == {"chosen": 0.0, "mean_dice": {}, "seconds": 0.0}


def test_a_trained_decoder_records_the_chosen_threshold(studies_dir, fresh_tiny_model, tmp_path):
    fresh_tiny_model.lone_point_threshold = 0.5
    settings = small_train_settings(epochs=1, max_steps_per_epoch=2, max_val_samples=4, validation_clicks=3)
    result = run_training(find_studies(studies_dir), model=fresh_tiny_model, out_dir=tmp_path / "run",
                          settings=settings, window=load_registry().window, cache=EmbeddingCache(), min_pixels=5,
                          progress=False)
    meta = read_decoder_checkpoint(result.checkpoint)["metadata"]
    assert meta["point_prompts"] == "single"  # the tiny decoder answers points itself on these studies
    choice = meta["metrics"]["val"]["lone_point_threshold_choice"]
    assert set(choice["mean_dice"]) == {"0.0", "0.5"} and meta["lone_point_threshold"] == choice["chosen"]
    assert fresh_tiny_model.lone_point_threshold == 0.5


def test_a_trained_decoder_carries_the_studies_shapes(studies_dir, fresh_tiny_model, tmp_path):
    """``shape_prior.weight`` > 0: the decoder file holds the finished studies' named structures' sections, and a
    model loading it serves them (`samri.inference.shape_prior`)."""
    from samri.model.builders import apply_decoder_checkpoint
    from tests.helpers import tiny_spec

    settings = small_train_settings(epochs=1, max_steps_per_epoch=1, max_val_samples=2, shape_prior_weight=1.5,
                                    shape_prior_neighbours=4)
    studies = find_studies(studies_dir)
    result = run_training(studies, model=fresh_tiny_model, out_dir=tmp_path / "run", settings=settings,
                          window=load_registry().window, cache=EmbeddingCache(), min_pixels=5, progress=False)
    meta = read_decoder_checkpoint(result.checkpoint)["metadata"]
    names = sorted({n for s in studies for n in s.label_names})
    assert meta["shape_priors"]["weight"] == 1.5 and meta["shape_priors"]["structures"] == len(names)
    assert "shape_priors" in result.seconds
    start = read_decoder_checkpoint(result.priors_checkpoint)  # the starting weights with the same shapes
    assert start["shape_priors"]["entries"] and start["metadata"]["metrics"]["val"]["epoch"] == 0
    model = apply_decoder_checkpoint(load_model(tiny_spec()), result.checkpoint)
    assert model.shape_priors.names == names and model.shape_priors.settings.neighbours == 4
    plain = run_training(studies, model=fresh_tiny_model, out_dir=tmp_path / "plain",
                         settings=small_train_settings(epochs=1, max_steps_per_epoch=1, max_val_samples=2),
                         window=load_registry().window, cache=EmbeddingCache(), min_pixels=5, progress=False)
    assert apply_decoder_checkpoint(load_model(tiny_spec()), plain.checkpoint).shape_priors is None


def test_validation_shapes_come_from_the_training_studies_only(studies_dir, fresh_tiny_model, tmp_path,
                                                               monkeypatch):
    """The clicks validation (epoch choice and gate) serves box sessions with the training studies' shapes, never
    a validation study's own sections; one study serving both, no shape weight or no clicks validation: none."""
    from samri.train import run as run_module
    from samri.train.stage1 import StudyIndex

    used = []
    monkeypatch.setattr(run_module, "study_shape_priors",
                        lambda studies, **kw: used.append([s.study_id for s in studies]) or "shapes")
    studies = find_studies(studies_dir)
    idx = [StudyIndex(study=s, content_key=s.study_id, shape=(1, 1, 1)) for s in studies]
    settings = small_train_settings(shape_prior_weight=1.0, validation_clicks=3)
    picked = run_module.validation_shape_priors(idx[1:], idx[:1], settings, axes=(2,), include_labels=None)
    assert picked == "shapes" and used == [[s.study_id for s in studies[1:]]]
    assert run_module.validation_shape_priors(idx[:1], idx[:1], settings, axes=(2,), include_labels=None) is None
    for other in (small_train_settings(shape_prior_weight=0.0, validation_clicks=3),
                  small_train_settings(shape_prior_weight=1.0, validation_clicks=0)):
        assert run_module.validation_shape_priors(idx[1:], idx[:1], other, axes=(2,), include_labels=None) is None
    monkeypatch.undo()
    result = run_training(studies, model=fresh_tiny_model, out_dir=tmp_path / "run", settings=small_train_settings(
        epochs=1, max_steps_per_epoch=1, max_val_samples=2, validation_clicks=2, shape_prior_weight=1.0),
        window=load_registry().window, cache=EmbeddingCache(), min_pixels=5, progress=False, val_studies=["s0"])
    assert result.budget["val_shape_priors"] > 0


def test_point_prompt_mode_follows_validation():
    from samri.train.run import point_prompt_mode

    assert point_prompt_mode({"dice_box": 0.8, "dice_point": 0.7}) == "single"
    assert point_prompt_mode({"dice_box": 0.8, "dice_point": 0.1}) == "box_search"


# --- budget and progress --------------------------------------------------------------------------
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


# --- a short stage-1 + stage-2 run of LiteMedSAM's decoder on real MRI lowers the validation loss (slow) ----
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


@pytest.mark.slow
def test_short_run_on_real_mri_lowers_validation_loss(slab_studies, tmp_path):
    registry = load_registry()
    # stage 1 encodes with the served encoder, as the app's trainer does (eager took 30 of this test's 97 s)
    model = apply_backend(load_model(registry.spec("litemedsam")), "auto", parts=("encoder",),
                          export_dir=tmp_path / "export")
    # lr 1e-4 (the recipe's): at 2e-4 the second epoch's box Dice collapses for seeds 0 and 2 (to 0.0-0.16
    # from a 0.25-0.28 start, old and new prompt simulation alike), so the assertion below was luck. Batch 4
    # (34 s in all): seeds 0-2 each keep epoch 1, 0.06-0.11 above the start's box Dice
    settings = TrainSettings(lr=1e-4, epochs=2, batch_size=4, max_steps_per_epoch=10, max_val_samples=32, seed=0)
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
