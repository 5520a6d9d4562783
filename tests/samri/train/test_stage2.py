"""samri.train.stage2: the batched decoder trick, prompt encoding, training steps and the click loss (tiny model)."""

from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import torch

from samri.config import load_registry
from samri.geometry import SliceGeometry
from samri.inference.embeddings import EmbeddingCache
from samri.inference.prompts import SlicePrompt
from samri.train.stage1 import find_studies, stage1
from samri.train.stage2 import decoder_forward, encode_prompts
from tests.helpers import small_train_settings, state_copy


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
    near_sample = source.neighbour_sample(sample, rng)
    assert abs(near_sample.index - sample.index) in (1, 2) and near_sample.value == sample.value
    near = source.target(near_sample)
    assert near.shape == source.target(sample).shape and near.any()
    edge = type(sample)(sample.study_id, sample.axis, 0, sample.value, 0)
    at_edge = [source.neighbour_sample(edge, np.random.default_rng(seed)) for seed in range(20)]
    assert any(n is None for n in at_edge) and any(n is not None for n in at_edge)  # slices -2, -1 do not exist
    settings = small_train_settings(sim=SimSettings(mode_weights={"propagated_box": 1.0}, correction_prob=1.0))
    for param in model.mask_decoder.parameters():
        param.requires_grad_(True)  # as run_training sets them up
    trainer = DecoderTrainer(model=model, source=source, settings=settings)
    before = state_copy(model.mask_decoder)
    out = trainer.step(indices[0].samples[:4], np.random.default_rng(1))
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.mask_decoder.state_dict().items())


def test_step_runs_corrective_rounds_in_sequence_with_the_logits_fed_back(studies_dir, fresh_tiny_model):
    """SAM-style iterative training: each round adds one corrective click and feeds the last logits."""
    from samri.annotator import SimSettings

    sim = SimSettings(mode_weights={"box": 1.0}, correction_prob=1.0, correction_rounds=3)
    trainer, indices = _trainer_on_studies(studies_dir, fresh_tiny_model, small_train_settings(sim=sim))
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


def test_clip_logits_to_boxes_fixes_the_cells_outside_a_binding_box():
    """Training sees the box clip serving applies: outside the box a constant, so no gradient there."""
    from samri.inference.refine import FORCED_LOGIT
    from samri.train.stage2 import clip_logits_to_boxes

    geom = SliceGeometry(32, 32, 32)  # low-res frame 32: logits map 1:1 onto pixels
    logits = torch.full((3, 1, 32, 32), 2.0, requires_grad=True)
    box = [8.0, 4.0, 15.0, 19.0]  # rows 8..15, columns 4..19
    prompts = [SlicePrompt(box=box),
               SlicePrompt(box=box, points=[[2.0, 2.0]], labels=[1]),  # a positive click outside lifts the clip
               SlicePrompt(points=[[10.0, 10.0]], labels=[1])]  # no box: nothing to clip
    clipped = clip_logits_to_boxes(logits, [geom] * 3, prompts)
    assert float(clipped[0, 0, 8:16, 4:20].min()) == 2.0 and int((clipped[0] == 2.0).sum()) == 8 * 16
    assert float(clipped[0, 0, 0, 0]) == -FORCED_LOGIT and float(clipped[0, 0, 16, 10]) == -FORCED_LOGIT
    assert torch.equal(clipped[1:], logits[1:])
    clipped.sum().backward()
    assert int((logits.grad[0] != 0).sum()) == 8 * 16 and int((logits.grad[1:] != 0).sum()) == 2 * 32 * 32
    plain = torch.zeros(1, 1, 32, 32)
    assert clip_logits_to_boxes(plain, [geom], [SlicePrompt(points=[[1.0, 1.0]], labels=[0])]) is plain


def test_trainer_with_box_clip_trains_on_the_clipped_logits(studies_dir, fresh_tiny_model):
    from samri.annotator import SimSettings
    from samri.inference.refine import FORCED_LOGIT

    settings = small_train_settings(box_clip=True, sim=SimSettings(mode_weights={"box": 1.0}, box_jitter=0.0))
    trainer, indices = _trainer_on_studies(studies_dir, fresh_tiny_model, settings)
    samples = indices[0].samples[:2]
    embeddings, masks, geoms, targets = trainer.batch(samples)
    prompts = [SlicePrompt(box=[2.0, 2.0, 6.0, 6.0]) for _ in samples]
    logits, _, _ = trainer._forward(samples, prompts, geoms, targets, embeddings)
    assert float(logits[:, :, -1, -1].max()) == -FORCED_LOGIT  # far from the box: clipped
    assert (logits != -FORCED_LOGIT).any()


def _trainer_on_studies(studies_dir, model, settings):
    """A `DecoderTrainer` (trainable decoder, as run_training sets it up) on the studies' stage-1 samples."""
    from samri.train.stage2 import DecoderTrainer, SampleSource

    cache = EmbeddingCache()
    indices, _ = stage1(find_studies(studies_dir), model, cache, window=load_registry().window, min_pixels=5,
                        progress=False)
    source = SampleSource(indices, cache, model.cache_key(), model.input_size, window=load_registry().window)
    for param in model.mask_decoder.parameters():
        param.requires_grad_(True)
    return DecoderTrainer(model=model, source=source, settings=settings), indices


def test_sample_source_reads_the_windowed_slice_serving_reads(studies_dir, fresh_tiny_model):
    from samri.geometry import take_slice
    from samri.train.stage2 import SampleSource
    from samri.volume import load_image, prepare_volume

    trainer, indices = _trainer_on_studies(studies_dir, fresh_tiny_model, small_train_settings())
    sample = indices[0].samples[0]
    served = prepare_volume(load_image(indices[0].study.image), load_registry().window)
    image = trainer.source.image(sample)
    assert image.shape == trainer.source.target(sample).shape
    np.testing.assert_array_equal(image, take_slice(served.windowed, sample.axis, sample.index))
    no_window = SampleSource(indices, trainer.source.cache, fresh_tiny_model.cache_key(), fresh_tiny_model.input_size)
    assert no_window.image(sample) is None
    other = SampleSource(indices, trainer.source.cache, fresh_tiny_model.cache_key(), fresh_tiny_model.input_size,
                         window=replace(load_registry().window, upper_percentile=90.0))
    assert other.image(sample) is None  # another window, another content key: not the image stage 1 embedded


def test_clicks_validation_fills_clicks_on_the_image_only_when_asked(studies_dir, fresh_tiny_model, monkeypatch):
    """With ``validation_click_fill`` the served answer gets the windowed slice (so click fill runs) and the
    segmenter has serving's click fill; without it, neither."""
    from samri.inference.segmenter import Segmenter

    seen = []
    answer = Segmenter.answer

    def recording(self, embedding, geom, prompt, *, image=None, point_prompts=None, prior_at=None):
        seen.append((self.click_fill is not None, image is not None))
        return answer(self, embedding, geom, prompt, image=image, point_prompts=point_prompts, prior_at=prior_at)

    monkeypatch.setattr(Segmenter, "answer", recording)
    for fill in (False, True):
        seen.clear()
        trainer, indices = _trainer_on_studies(studies_dir, fresh_tiny_model,
                                               small_train_settings(validation_click_fill=fill))
        out = trainer.validate_clicks(indices[0].samples[:2], firsts=("box",), max_clicks=3)
        assert len(out["clicks_box"]) == 3
        assert seen and set(seen) == {(fill, fill)}, fill


def test_clicks_validation_names_the_structure_only_with_shapes(studies_dir, fresh_tiny_model, monkeypatch):
    """Given shapes, every answer of a validation session is served as a named Slicer request (the structure's
    name, the slice's spacing for its prior) with those shapes on the model; without, unnamed as before. The
    model's own shapes are back afterwards."""
    from samri.inference.segmenter import Segmenter
    from samri.inference.shape_prior import ShapePriors, ShapePriorSettings

    seen = []
    answer = Segmenter.answer

    def recording(self, embedding, geom, prompt, *, image=None, point_prompts=None, prior_at=None):
        seen.append((prompt.structure, prior_at, self.model.shape_priors))
        return answer(self, embedding, geom, prompt, image=image, point_prompts=point_prompts, prior_at=prior_at)

    monkeypatch.setattr(Segmenter, "answer", recording)
    trainer, indices = _trainer_on_studies(studies_dir, fresh_tiny_model, small_train_settings())
    sample = indices[0].samples[0]
    name = {v: n for n, v in indices[0].study.label_names.items()}[sample.value]
    label = np.asarray(nib.load(indices[0].study.label).dataobj)
    priors = ShapePriors.from_labels([(label.astype(np.int32), indices[0].study.label_names, (1.0, 1.0, 1.0))],
                                     axes=(sample.axis,), settings=ShapePriorSettings())
    own = object()
    fresh_tiny_model.shape_priors = own
    trainer.validate_clicks([sample], firsts=("box",), max_clicks=2)
    assert seen and all(s == (None, None, None) for s in seen)
    seen.clear()
    trainer.validate_clicks([sample], firsts=("box",), max_clicks=2, shape_priors=priors)
    assert seen and all(s == (name, (sample.axis, (1.0, 1.0)), priors) for s in seen)
    assert fresh_tiny_model.shape_priors is own


def test_chained_prompt_is_one_propagation_step_with_the_neighbours_logits(studies_dir, fresh_tiny_model,
                                                                             monkeypatch):
    """``propagated_chain``: the decoder answers the neighbouring slice (its own box, clipped as served),
    and this slice gets that answer's box plus the propagation margin and its logits as the mask prompt."""
    from samri.annotator import SimSettings
    from samri.inference.propagation import PropagationSettings, mask_box
    from samri.train import stage2

    model = fresh_tiny_model
    cache = EmbeddingCache()
    indices, _ = stage1(find_studies(studies_dir), model, cache, window=load_registry().window, min_pixels=5,
                        progress=False)
    source = stage2.SampleSource(indices, cache, model.cache_key(), model.input_size)
    sample = indices[0].samples[len(indices[0].samples) // 2]
    near = source.neighbour_sample(sample, np.random.default_rng(0))
    near_mask = source.target(near)
    geom = source.geometry(sample)
    assert near_mask.any() and source.cached_embedding(near) is not None
    size = model.low_res_size
    found = stage2.low_res_target(geom, near_mask, size)[None] > 0.5  # the decoder "finds" the neighbour's section
    answer = torch.where(found, torch.tensor(5.0), torch.tensor(-5.0))
    answer[..., :, :2] = 5.0  # and leaks along the frame's edge, outside the neighbour's box: clipped as served
    seen = {}

    def fake_forward(model_, decoder, embeddings, sparse, dense, image_pe):
        seen["embedding"] = embeddings
        return answer.clone(), torch.zeros(1, 1)

    monkeypatch.setattr(stage2, "decoder_forward", fake_forward)
    settings = small_train_settings(sim=SimSettings(mode_weights={"propagated_chain": 1.0}, box_jitter=0.0))
    for param in model.mask_decoder.parameters():
        param.requires_grad_(True)  # as run_training sets them up
    trainer = stage2.DecoderTrainer(model=model, source=source, settings=settings)
    prompt = trainer.chained_prompt(near, near_mask, geom, np.random.default_rng(0))
    torch.testing.assert_close(seen["embedding"][0], source.cached_embedding(near))
    seed = SlicePrompt(box=mask_box(near_mask))
    expected = stage2.clip_logits_to_boxes(answer, [geom], [seed])  # as serving clips the neighbour's answer
    torch.testing.assert_close(prompt.mask_logits, expected)
    answer_mask = geom.logits_to_slice(expected)[0, 0].numpy() > 0
    assert answer_mask.any() and not (expected[..., :, :2] > 0).all()
    np.testing.assert_array_equal(prompt.box, mask_box(answer_mask, PropagationSettings().box_margin))
    assert prompt.points is None or len(prompt.points) == 0
    # no prompt to chain from: an empty neighbour, or one stage 1 never encoded
    assert trainer.chained_prompt(near, np.zeros_like(near_mask), geom, np.random.default_rng(0)) is None
    assert trainer.chained_prompt(None, None, geom, np.random.default_rng(0)) is None
    empty_source = stage2.SampleSource(indices, EmbeddingCache(), model.cache_key(), model.input_size)
    bare = stage2.DecoderTrainer(model=model, source=empty_source, settings=settings)
    assert bare.chained_prompt(near, near_mask, geom, np.random.default_rng(0)) is None


def test_step_with_chained_prompts_trains(studies_dir, fresh_tiny_model):
    """A step where every sample is prompted as chained propagation runs and moves the decoder."""
    from samri.annotator import SimSettings
    from samri.train.stage2 import DecoderTrainer, SampleSource

    model = fresh_tiny_model
    cache = EmbeddingCache()
    indices, _ = stage1(find_studies(studies_dir), model, cache, window=load_registry().window, min_pixels=5,
                        progress=False)
    source = SampleSource(indices, cache, model.cache_key(), model.input_size)
    settings = small_train_settings(sim=SimSettings(mode_weights={"propagated_chain": 1.0}, correction_prob=1.0))
    for param in model.mask_decoder.parameters():
        param.requires_grad_(True)
    trainer = DecoderTrainer(model=model, source=source, settings=settings)
    before = state_copy(model.mask_decoder)
    out = trainer.step(indices[0].samples[:4], np.random.default_rng(1))
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.mask_decoder.state_dict().items())
