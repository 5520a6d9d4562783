"""samri.model.checkpoints: every loader, with small checkpoints written by the tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from samri.errors import CheckpointError, SamriInputError
from samri.intensity import Preprocessing
from samri.model import checkpoints as ckpt
from samri.model.builders import ModelSpec, apply_decoder_checkpoint, load_model, state_fingerprint
from samri.model.checkpoints import (
    DECODER_FORMAT,
    DECODER_FORMAT_VERSION,
    atomic_torch_save,
    read_checkpoint,
    read_decoder_checkpoint,
    save_decoder_checkpoint,
    unwrap_state_dict,
)
from tests.helpers import TINY_ARCHITECTURE, tiny_spec

UNPICKLE_CALLS: list[str] = []


def _record_unpickle() -> str:
    UNPICKLE_CALLS.append("called")
    return "payload"


class Smuggled:
    """A non-tensor object whose unpickling would run code (must be refused)."""

    def __reduce__(self):
        return (_record_unpickle, ())


def full_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def perturbed(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in state.items()}


def assert_same_weights(module, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    got = module.state_dict()
    assert set(got) == {k[len(prefix):] for k in state if k.startswith(prefix)}
    for k, v in got.items():
        assert torch.equal(v, state[prefix + k]), k


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture()
def tiny_state(fresh_tiny_model) -> dict[str, torch.Tensor]:
    """A full SAM state dict of the tiny model, with weights different from the fresh model's."""
    return perturbed(full_state(fresh_tiny_model))


# --- full checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "model_state_dict", "module", "model+module"])
def test_full_checkpoint_loads_strictly(tmp_path, tiny_state, wrap):
    state = dict(tiny_state)
    if "module" in wrap:
        state = {f"module.{k}": v for k, v in state.items()}
    if wrap.startswith("model") and wrap != "module":
        key = wrap.split("+")[0]
        obj = {key: state, "epoch": 3, "note": "trainer extras are ignored"}
    elif wrap == "state_dict":
        obj = {"state_dict": state, "model": "a name, not a mapping"}
    else:
        obj = state
    path = tmp_path / "full.pth"
    torch.save(obj, path)
    model = load_model(tiny_spec(), checkpoint=path)
    assert_same_weights(model, tiny_state)
    assert model.spec.checkpoint == str(path)
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_checkpoint_in_spec_is_used(tmp_path, tiny_state):
    path = tmp_path / "in_spec.pth"
    torch.save(tiny_state, path)
    spec = ModelSpec(name="tiny", architecture=dict(TINY_ARCHITECTURE), checkpoint=str(path),
                     preprocessing=Preprocessing(input_size=64))
    assert_same_weights(load_model(spec), tiny_state)


def test_encoder_id_follows_the_encoder_weights(tmp_path, tiny_state, fresh_tiny_model):
    path = tmp_path / "w.pth"
    torch.save(tiny_state, path)
    loaded = load_model(tiny_spec(), checkpoint=path)
    assert loaded.encoder_id.startswith("tiny-")
    assert loaded.encoder_id != fresh_tiny_model.encoder_id
    assert load_model(tiny_spec(), checkpoint=path).encoder_id == loaded.encoder_id
    assert loaded.encoder_id == f"tiny-{state_fingerprint(loaded.image_encoder)}"
    # a decoder-only change does not change the encoder id (embeddings stay valid)
    state2 = dict(tiny_state)
    state2 = {k: (v + 1 if k.startswith("mask_decoder.") and v.is_floating_point() else v) for k, v in state2.items()}
    torch.save(state2, tmp_path / "w2.pth")
    assert load_model(tiny_spec(), checkpoint=tmp_path / "w2.pth").encoder_id == loaded.encoder_id


def test_missing_key_is_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_model(tiny_spec(), checkpoint=path)
    msg = str(err.value)
    assert err.value.field == "checkpoint"
    assert str(path) in msg and "1 missing keys" in msg and "mask_decoder.iou_token.weight" in msg


def test_unexpected_key_is_named(tmp_path, tiny_state):
    state = dict(tiny_state, **{"image_encoder.extra_head.weight": torch.zeros(3)})
    path = tmp_path / "unexpected.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_model(tiny_spec(), checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg and "1 unexpected keys" in msg and "image_encoder.extra_head.weight" in msg


def test_shape_mismatch_is_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 64)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_model(tiny_spec(), checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg and "shape mismatch" in msg
    assert "mask_decoder.iou_token.weight: file (1, 64) vs model (1, 32)" in msg


def test_wrong_architecture_checkpoint_fails_cleanly(tmp_path, tiny_state):
    """A checkpoint of another variant fails with the mismatch, never a half-loaded model."""
    arch = dict(TINY_ARCHITECTURE, embed_dim=16)
    other = load_model(ModelSpec(name="tiny", architecture=arch, checkpoint=None,
                                 preprocessing=Preprocessing(input_size=64), random_init=True))
    path = tmp_path / "other.pth"
    torch.save(full_state(other), path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model(tiny_spec(), checkpoint=path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="file not found") as err:
        load_model(tiny_spec(), checkpoint=path)
    assert err.value.field == "checkpoint" and str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="file not found"):
        read_checkpoint(tmp_path)  # a folder is not a checkpoint file


@pytest.mark.parametrize("content", [b"", b"not a torch file at all" * 10, b"PK\x03\x04garbage"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        load_model(tiny_spec(), checkpoint=path)
    assert str(path) in str(err.value)


def test_truncated_file(tmp_path, tiny_state):
    path = tmp_path / "truncated.pth"
    torch.save(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        load_model(tiny_spec(), checkpoint=path)
    assert str(path) in str(err.value)


def test_pickled_object_is_refused_under_weights_only(tmp_path, tiny_state):
    path = tmp_path / "smuggled.pth"
    torch.save({"model": tiny_state, "extra": Smuggled()}, path)
    UNPICKLE_CALLS.clear()
    with pytest.raises(CheckpointError, match="weights-only") as err:
        load_model(tiny_spec(), checkpoint=path)
    assert str(path) in str(err.value)
    assert UNPICKLE_CALLS == [], "the smuggled object's code must never run"


@pytest.mark.parametrize("obj", [[1, 2, 3], {"a": "string"}, {"w": torch.zeros(2), "n": 3}, "text"])
def test_non_state_dict_is_refused(tmp_path, obj):
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="state dict of tensors") as err:
        load_model(tiny_spec(), checkpoint=path)
    assert str(path) in str(err.value)


def test_unwrap_state_dict_strips_module_prefix_only_at_start():
    state = {"module.a": torch.zeros(1), "b.module.c": torch.ones(1)}
    out = unwrap_state_dict({"state_dict": state}, "x.pth")
    assert set(out) == {"a", "b.module.c"}


# --- decoder-only checkpoints -------------------------------------------------------------------
def trained_decoder(model, seed: int = 7) -> dict[str, torch.Tensor]:
    """Give ``model.mask_decoder`` new random weights (as training would) and return them."""
    new = perturbed(full_state(model.mask_decoder), seed)
    model.mask_decoder.load_state_dict(new)
    return new


def test_decoder_checkpoint_round_trip(tmp_path, fresh_tiny_model):
    weights = trained_decoder(fresh_tiny_model)
    prep = Preprocessing(input_size=64, slice_minmax=True, value_scale=1.0, pixel_mean=(0.0, 0.0, 0.0),
                         pixel_std=(1.0, 1.0, 1.0))
    metadata = {"training_data": ["study1", "study2"], "metrics": {"dice": 0.87}, "version": "0.1.0"}
    path = tmp_path / "sub" / "decoder.pt"
    written = save_decoder_checkpoint(path, mask_decoder=fresh_tiny_model.mask_decoder, base_model="tiny",
                                      preprocessing=prep.to_dict(), metadata=metadata)
    assert written == path and path.is_file() and no_temp_files(tmp_path)

    envelope = read_decoder_checkpoint(path)
    assert envelope["format"] == DECODER_FORMAT and envelope["format_version"] == DECODER_FORMAT_VERSION
    assert envelope["base_model"] == "tiny" and envelope["metadata"] == metadata

    torch.manual_seed(123)  # random-init weights: seed both builds alike
    base = load_model(tiny_spec())
    torch.manual_seed(123)
    model = load_model(tiny_spec(), decoder=path)
    assert_same_weights(model.mask_decoder, weights)
    # encoder and prompt encoder come from the base, untouched
    for part in ("image_encoder", "prompt_encoder"):
        for (k, v), (_, w) in zip(getattr(model, part).state_dict().items(), getattr(base, part).state_dict().items()):
            assert torch.equal(v, w), k
    assert model.decoder_info["path"] == str(path)
    assert model.decoder_info["metrics"] == {"dice": 0.87}
    assert model.decoder_info["training_data"] == ["study1", "study2"]
    assert model.preprocessing == prep
    assert base.decoder_info == {} and base.preprocessing == Preprocessing(input_size=64)
    # embeddings of the adopted preprocessing are a different cache entry
    assert model.encoder_id == base.encoder_id and model.cache_key() != base.cache_key()
    assert not any(p.requires_grad for p in model.parameters())


def test_decoder_with_full_checkpoint(tmp_path, tiny_state, fresh_tiny_model):
    full = tmp_path / "full.pth"
    torch.save(tiny_state, full)
    weights = trained_decoder(fresh_tiny_model)
    dec = save_decoder_checkpoint(tmp_path / "dec.pt", mask_decoder=fresh_tiny_model.mask_decoder,
                                  base_model="tiny", preprocessing=Preprocessing(input_size=64).to_dict(), metadata={})
    model = load_model(tiny_spec(), checkpoint=full, decoder=dec)
    assert_same_weights(model.mask_decoder, weights)
    assert_same_weights(model.image_encoder, tiny_state, prefix="image_encoder.")


def test_decoder_for_another_base_model_is_refused(tmp_path, fresh_tiny_model):
    path = save_decoder_checkpoint(tmp_path / "dec.pt", mask_decoder=fresh_tiny_model.mask_decoder,
                                   base_model="litemedsam", preprocessing=Preprocessing(input_size=64).to_dict(),
                                   metadata={})
    with pytest.raises(CheckpointError) as err:
        load_model(tiny_spec(), decoder=path)
    msg = str(err.value)
    assert err.value.field == "decoder" and str(path) in msg and "'litemedsam'" in msg and "'tiny'" in msg


@pytest.mark.parametrize("change", [{"format": "something-else"}, {"format_version": 2}, "drop:metadata",
                                    "drop:mask_decoder", "not-a-dict"])
def test_decoder_wrong_format_is_refused(tmp_path, fresh_tiny_model, change):
    payload = {"format": DECODER_FORMAT, "format_version": DECODER_FORMAT_VERSION, "base_model": "tiny",
               "preprocessing": Preprocessing(input_size=64).to_dict(), "metadata": {},
               "mask_decoder": full_state(fresh_tiny_model.mask_decoder)}
    if isinstance(change, dict):
        payload.update(change)
    elif change == "not-a-dict":
        payload = [1, 2]
    else:
        del payload[change.split(":")[1]]
    path = tmp_path / "dec.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        load_model(tiny_spec(), decoder=path)
    assert err.value.field == "decoder" and str(path) in str(err.value)


def test_full_checkpoint_given_as_decoder_is_refused(tmp_path, tiny_state):
    path = tmp_path / "full.pth"
    torch.save(tiny_state, path)
    with pytest.raises(CheckpointError, match="not a SAMRI decoder checkpoint"):
        load_model(tiny_spec(), decoder=path)


def test_decoder_key_mismatch_names_file_and_key(tmp_path, fresh_tiny_model):
    state = full_state(fresh_tiny_model.mask_decoder)
    del state["iou_token.weight"]
    payload = {"format": DECODER_FORMAT, "format_version": DECODER_FORMAT_VERSION, "base_model": "tiny",
               "preprocessing": Preprocessing(input_size=64).to_dict(), "metadata": {}, "mask_decoder": state}
    path = tmp_path / "dec.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        load_model(tiny_spec(), decoder=path)
    assert str(path) in str(err.value) and "mask_decoder.iou_token.weight" in str(err.value)


def test_decoder_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found") as err:
        load_model(tiny_spec(), decoder=tmp_path / "missing.pt")
    assert err.value.field == "decoder"


@pytest.mark.parametrize("problem", ["input_size", "point_prompts", "preprocessing_key"])
def test_refused_decoder_leaves_a_live_model_untouched(tmp_path, fresh_tiny_model, problem):
    """apply_decoder_checkpoint works in place (serving reloads decoders): a refused file changes nothing."""
    donor = load_model(tiny_spec())
    trained_decoder(donor)
    prep = Preprocessing(input_size=256 if problem == "input_size" else 64, slice_minmax=True).to_dict()
    if problem == "preprocessing_key":
        prep["pixel_means"] = [0.0, 0.0, 0.0]
    metadata = {"v": 2, "point_prompts": "sometimes" if problem == "point_prompts" else "box_search"}
    path = save_decoder_checkpoint(tmp_path / "dec.pt", mask_decoder=donor.mask_decoder, base_model="tiny",
                                   preprocessing=prep, metadata=metadata)
    before = full_state(fresh_tiny_model.mask_decoder)
    with pytest.raises(CheckpointError) as err:
        apply_decoder_checkpoint(fresh_tiny_model, path)
    assert err.value.field == "decoder" and str(path) in str(err.value)
    assert fresh_tiny_model.decoder_info == {}
    assert fresh_tiny_model.preprocessing == Preprocessing(input_size=64)
    assert fresh_tiny_model.point_prompts == "native"
    assert_same_weights(fresh_tiny_model.mask_decoder, before)


def test_decoder_point_prompts_mode_is_adopted(tmp_path, fresh_tiny_model):
    assert fresh_tiny_model.point_prompts == "native"
    path = save_decoder_checkpoint(tmp_path / "dec.pt", mask_decoder=fresh_tiny_model.mask_decoder, base_model="tiny",
                                   preprocessing=Preprocessing(input_size=64).to_dict(),
                                   metadata={"point_prompts": "box_search"})
    assert load_model(tiny_spec(), decoder=path).point_prompts == "box_search"
    plain = save_decoder_checkpoint(tmp_path / "plain.pt", mask_decoder=fresh_tiny_model.mask_decoder,
                                    base_model="tiny", preprocessing=Preprocessing(input_size=64).to_dict(),
                                    metadata={})
    assert load_model(tiny_spec(), decoder=plain).point_prompts == "native"  # kept from the spec


def test_spec_point_prompts_validation():
    with pytest.raises(SamriInputError, match=r"^models\.x\.point_prompts='sometimes'"):
        ModelSpec(name="x", architecture="sam_vit_b", checkpoint=None, preprocessing=Preprocessing(),
                  point_prompts="sometimes")
    with pytest.raises(SamriInputError, match=r"^models\.x\.point_prompts_3d='often'"):
        ModelSpec(name="x", architecture="sam_vit_b", checkpoint=None, preprocessing=Preprocessing(),
                  point_prompts_3d="often")


@pytest.mark.parametrize("metadata, expected", [
    ({"point_prompts": "single"}, "single_or_box"),  # the registry's 3D choice holds for a "single" decoder
    ({"point_prompts": "box_search"}, None),  # a decoder that did not learn points keeps its mode in 3D
    ({"point_prompts": "single", "point_prompts_3d": "box_search"}, "box_search"),  # its own choice wins
])
def test_decoder_point_prompts_3d(tmp_path, fresh_tiny_model, metadata, expected):
    spec = replace(tiny_spec(), point_prompts_3d="single_or_box")
    path = save_decoder_checkpoint(tmp_path / "dec.pt", mask_decoder=fresh_tiny_model.mask_decoder, base_model="tiny",
                                   preprocessing=Preprocessing(input_size=64).to_dict(), metadata=metadata)
    assert load_model(spec, decoder=path).point_prompts_3d == expected
    assert load_model(spec).point_prompts_3d == "single_or_box"  # no decoder: the spec's


def test_decoder_with_an_unknown_3d_mode_is_refused(tmp_path, fresh_tiny_model):
    path = save_decoder_checkpoint(tmp_path / "dec.pt", mask_decoder=fresh_tiny_model.mask_decoder, base_model="tiny",
                                   preprocessing=Preprocessing(input_size=64).to_dict(),
                                   metadata={"point_prompts": "single", "point_prompts_3d": "often"})
    with pytest.raises(CheckpointError, match="point_prompts_3d='often'"):
        apply_decoder_checkpoint(fresh_tiny_model, path)
    assert fresh_tiny_model.point_prompts == "native" and fresh_tiny_model.point_prompts_3d is None


# --- atomic writes ------------------------------------------------------------------------------
def test_atomic_save_leaves_no_temp_files(tmp_path):
    path = atomic_torch_save({"w": torch.arange(5)}, tmp_path / "deep" / "x.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5))
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.pt"]


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch, fresh_tiny_model):
    path = save_decoder_checkpoint(tmp_path / "dec.pt", mask_decoder=fresh_tiny_model.mask_decoder,
                                   base_model="tiny", preprocessing=Preprocessing(input_size=64).to_dict(),
                                   metadata={"generation": 1})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_decoder_checkpoint(path, mask_decoder=fresh_tiny_model.mask_decoder, base_model="tiny",
                                preprocessing=Preprocessing(input_size=64).to_dict(), metadata={"generation": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_decoder_checkpoint(path)["metadata"] == {"generation": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dec.pt"]


def test_interrupt_by_keyboard_also_cleans_up(tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("metadata, expected", [
    ({"point_prompts": "single"}, 1.0),  # the registry's threshold holds for a "single" decoder
    ({"point_prompts": "box_search"}, 0.0),  # measured for single-mask answers only
    ({"point_prompts": "single", "lone_point_threshold": 0.5}, 0.5),  # its own choice wins
])
def test_decoder_lone_point_threshold(tmp_path, fresh_tiny_model, metadata, expected):
    spec = replace(tiny_spec(), lone_point_threshold=1.0)
    path = save_decoder_checkpoint(tmp_path / "dec.pt", mask_decoder=fresh_tiny_model.mask_decoder, base_model="tiny",
                                   preprocessing=Preprocessing(input_size=64).to_dict(), metadata=metadata)
    assert load_model(spec, decoder=path).lone_point_threshold == expected
    assert load_model(spec).lone_point_threshold == 1.0  # no decoder: the spec's


@pytest.mark.parametrize("value", [-1.0, 9.0, "high", float("nan")])
def test_a_lone_point_threshold_out_of_range_is_refused(tmp_path, fresh_tiny_model, value):
    with pytest.raises(SamriInputError, match=r"^models\.x\.lone_point_threshold="):
        ModelSpec(name="x", architecture="sam_vit_b", checkpoint=None, preprocessing=Preprocessing(),
                  lone_point_threshold=value)
    path = save_decoder_checkpoint(tmp_path / "dec.pt", mask_decoder=fresh_tiny_model.mask_decoder, base_model="tiny",
                                   preprocessing=Preprocessing(input_size=64).to_dict(),
                                   metadata={"point_prompts": "single", "lone_point_threshold": value})
    with pytest.raises(CheckpointError, match="lone_point_threshold"):
        apply_decoder_checkpoint(fresh_tiny_model, path)
    assert fresh_tiny_model.lone_point_threshold == 0.0  # the live model is untouched


def test_decoder_shape_priors_load_with_it_and_a_malformed_payload_is_refused(tmp_path, fresh_tiny_model):
    """A decoder file's ``shape_priors`` (`samri.inference.shape_prior`) load with it under weights_only."""
    import numpy as np

    from samri.inference.shape_prior import ShapePriors

    labels = np.zeros((20, 20, 3), np.int16)
    labels[4:12, 5:15, :] = 1
    priors = ShapePriors.from_labels([(labels, {"a": 1}, (1.0, 1.0, 1.0))])
    save = dict(mask_decoder=fresh_tiny_model.mask_decoder, base_model="tiny",
                preprocessing=Preprocessing(input_size=64).to_dict(), metadata={})
    path = save_decoder_checkpoint(tmp_path / "dec.pt", shape_priors=priors.to_payload(), **save)
    loaded = load_model(tiny_spec(), decoder=path).shape_priors
    assert loaded.names == ["a"] and len(loaded) == 3
    assert load_model(tiny_spec()).shape_priors is None
    bad = save_decoder_checkpoint(tmp_path / "bad.pt", shape_priors={"entries": [{"name": "a"}]}, **save)
    with pytest.raises(CheckpointError, match="shape_priors"):
        apply_decoder_checkpoint(fresh_tiny_model, bad)
    assert fresh_tiny_model.shape_priors is None  # the live model is untouched
