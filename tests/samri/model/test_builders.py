"""samri.model.builders: a registry entry without its weights, the ViT presets pinned to upstream, the tiny
model (the registry itself: tests/samri/test_config.py)."""

from __future__ import annotations

import pytest
import torch

from samri.config import load_registry
from samri.errors import CheckpointError, SamriInputError
from samri.intensity import Preprocessing
from samri.model.builders import ModelSpec, build_model, load_model
from tests.helpers import tiny_spec


# --- registry -----------------------------------------------------------------------------------
def test_registry_model_without_checkpoint_names_checkpoint():
    spec = load_registry().spec("sam_vit_b")
    with pytest.raises(CheckpointError) as err:
        load_model(spec)
    assert err.value.field == "checkpoint" and "sam_vit_b" in str(err.value) and "checkpoint" in str(err.value)


def test_unknown_architecture_and_input_size_mismatch():
    with pytest.raises(SamriInputError, match=r"^architecture='vit_q'"):
        build_model(ModelSpec(name="x", architecture="vit_q", checkpoint=None, preprocessing=Preprocessing(),
                              random_init=True))
    with pytest.raises(SamriInputError, match=r"^preprocessing\.input_size=1024"):
        build_model(tiny_spec(preprocessing=Preprocessing(input_size=1024)))


def test_tiny_model_properties(tiny_model):
    assert tiny_model.input_size == 64
    assert tiny_model.embedding_shape == (32, 8, 8)
    assert tiny_model.low_res_size == 32
    assert tiny_model.device == torch.device("cpu")
    assert tiny_model.cache_key() == f"{tiny_model.encoder_id}-{Preprocessing(input_size=64).key()}"
    with torch.inference_mode():
        emb = tiny_model.image_encoder(torch.zeros(2, 3, 64, 64))
    assert tuple(emb.shape) == (2, *tiny_model.embedding_shape)


@pytest.mark.slow  # builds a random ViT-B (~90 M parameters): a few seconds to tens on 2 cores
def test_sam_vit_b_random_init_matches_segment_anything_layout():
    """The sam_vit_b builder gives the official checkpoint layout (so the real files load strictly)."""
    model = load_model(ModelSpec(name="sam_vit_b", architecture="sam_vit_b", checkpoint=None,
                                 preprocessing=Preprocessing(input_size=1024), random_init=True))
    assert model.embedding_shape == (256, 64, 64) and model.input_size == 1024 and model.low_res_size == 256
    decoder_params = sum(p.numel() for p in model.mask_decoder.parameters())
    assert 3.5e6 < decoder_params < 4.5e6  # "about 4 M parameters" (DESIGN.md)
    from segment_anything.modeling import Sam

    # the official Sam's state dict (pixel mean/std are non-persistent buffers) has the same keys and shapes
    reference = Sam(image_encoder=model.image_encoder, prompt_encoder=model.prompt_encoder,
                    mask_decoder=model.mask_decoder)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_l", "sam_vit_h"])
def test_vit_presets_match_segment_anything_builders(name, monkeypatch):
    import importlib

    from samri.model.builders import SAM_VIT_PRESETS

    module = importlib.import_module("segment_anything.build_sam")
    monkeypatch.setattr(module, "_build_sam", lambda **kwargs: kwargs)  # capture, build nothing
    official = getattr(module, f"build_{name}")()
    preset = SAM_VIT_PRESETS[name]
    assert official["encoder_embed_dim"] == preset["embed_dim"]
    assert official["encoder_depth"] == preset["depth"]
    assert official["encoder_num_heads"] == preset["num_heads"]
    assert list(official["encoder_global_attn_indexes"]) == list(preset["global_attn_indexes"])


@pytest.mark.slow
def test_real_litemedsam_loads_through_the_registry():
    reg = load_registry()
    model = load_model(reg.spec("litemedsam"))
    assert model.embedding_shape == (256, 64, 64)
    assert model.input_size == 256 and model.low_res_size == 256
    assert model.preprocessing == reg.spec("litemedsam").preprocessing
    with torch.inference_mode():
        emb = model.image_encoder(torch.zeros(1, 3, 256, 256))
    assert tuple(emb.shape) == (1, 256, 64, 64) and torch.isfinite(emb).all()
