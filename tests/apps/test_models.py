"""Which decoder is served (`lib.runtime.models.DecoderSelector` over `samri.train.store`) and the
shared model-with-decoder loader (`load_model_with_decoder`, used by the server and the trainer)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from apps.samri.lib.runtime.models import DecoderChoice, DecoderSelector, load_model_with_decoder
from samri.errors import SamriInputError
from samri.io import write_json
from tests.helpers import need_openvino


def _settings(tmp_path: Path, **conf) -> SimpleNamespace:
    base = {"decoder": None, "decoder_version": None, "decoder_store": tmp_path / "decoders", "model": "tiny",
            "checkpoint": None, "device": "cpu"}
    return SimpleNamespace(**{**base, **conf})


def test_selector_follows_the_store_and_keeps_its_choice_when_live_json_is_unreadable(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    selector = DecoderSelector(settings)
    assert selector.choose() == DecoderChoice("store", "base", None)
    live = settings.decoder_store / "live.json"
    write_json(live, {"version": "v0001", "file": "versions/v0001.pt"})
    assert selector.choose() == DecoderChoice("store", "v0001", settings.decoder_store / "versions" / "v0001.pt")
    live.write_text('{"version": 3}')  # not an entry: the previous choice stays
    assert selector.live_version() == "v0001"
    live.unlink()
    assert selector.live_version() == "base"
    pinned = DecoderSelector(_settings(tmp_path, decoder_version="v0002"))
    assert pinned.choose() == DecoderChoice("pinned", "v0002", settings.decoder_store / "versions" / "v0002.pt")
    assert DecoderSelector(_settings(tmp_path, decoder_version="base")).choose() == DecoderChoice("pinned", "base",
                                                                                                   None)


def test_loader_falls_back_to_the_base_decoder_except_for_conf(tmp_path: Path, tiny_registry: Path) -> None:
    settings = _settings(tmp_path)
    missing = tmp_path / "decoders" / "versions" / "v0001.pt"
    model, served = load_model_with_decoder(settings, DecoderChoice("store", "v0001", missing))
    assert served == {"source": "store", "version": "base", "path": None, "requested": "v0001",
                      "missing": str(missing)}
    assert model.spec.name == "tiny"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    _, served = load_model_with_decoder(settings, DecoderChoice("pinned", "v0007", broken))
    assert served["version"] == "base" and served["path"] is None and served["requested"] == "v0007"
    assert "error" in served
    with pytest.raises(SamriInputError):
        load_model_with_decoder(settings, DecoderChoice("conf", None, broken))


def test_holder_serves_pytorch_at_once_then_the_configured_backend(tmp_path: Path, tiny_registry: Path,
                                                                  monkeypatch) -> None:
    """The first request is served by PyTorch; the backend is prepared on a copy in a thread and
    swapped in when ready; the served model is never modified in place."""
    import threading

    import torch

    from apps.samri.lib.runtime.models import ModelHolder
    from samri.inference.embeddings import EmbeddingCache
    from samri.model import backends

    calls, release, exported = [], threading.Event(), torch.nn.Identity()

    def fake_apply(model, backend, precision, *, export_dir):
        assert release.wait(30)
        calls.append((backend, precision, export_dir, threading.current_thread().name))
        model.image_encoder = exported  # on the copy only
        model.backend_info = {"backend": "openvino", "precision": "fp32"}
        return model

    monkeypatch.setattr(backends, "apply_backend", fake_apply)
    settings = _settings(tmp_path, backend="openvino", precision="fp32", backend_cache_dir=tmp_path / "exports")
    holder = ModelHolder(settings=settings, cache=EmbeddingCache())
    first = holder.segmenter()
    info = holder.info()["backend"]
    assert info["backend"] == "torch" and info["pending"].startswith("openvino fp32")
    release.set()
    assert holder.wait_backend(30)
    assert calls == [("openvino", "fp32", tmp_path / "exports", "samri-backend-export")]
    fast = holder.segmenter()
    assert fast is not first and holder.info()["backend"] == {"backend": "openvino", "precision": "fp32"}
    assert fast.model.mask_decoder is first.model.mask_decoder  # eager weights shared, not copied
    assert fast.model.image_encoder is exported and first.model.image_encoder is not exported
    assert holder.loads == 1


def test_holder_keeps_pytorch_when_the_backend_fails_or_the_weights_changed(tmp_path: Path, tiny_registry: Path,
                                                                            monkeypatch) -> None:
    from apps.samri.lib.runtime.models import ModelHolder
    from samri.inference.embeddings import EmbeddingCache
    from samri.model import backends

    def failing(model, backend, precision, *, export_dir):
        model.backend_info = {"backend": "torch", "precision": "fp32", "reason": "fallback: export failed"}
        return model

    monkeypatch.setattr(backends, "apply_backend", failing)
    settings = _settings(tmp_path, backend="openvino", precision="fp32", backend_cache_dir=tmp_path / "exports")
    holder = ModelHolder(settings=settings, cache=EmbeddingCache())
    served = holder.segmenter()
    assert holder.wait_backend(30) and holder.segmenter() is served
    assert holder.info()["backend"]["reason"] == "fallback: export failed"

    import threading

    changed = threading.Event()

    def swap_weights(model, backend, precision, *, export_dir):
        assert changed.wait(30)  # the files changed while the export ran
        model.backend_info = {"backend": "openvino", "precision": "fp32"}
        return model

    monkeypatch.setattr(backends, "apply_backend", swap_weights)
    holder = ModelHolder(settings=settings, cache=EmbeddingCache())
    served = holder.segmenter()
    holder._loaded = ("other weights",)
    changed.set()
    assert holder.wait_backend(30) and holder._segmenter is served


def test_holder_serves_a_real_openvino_export(tmp_path: Path, tiny_registry: Path) -> None:
    """The tiny model exported for real: same masks as the PyTorch model it replaced."""
    need_openvino()
    import numpy as np

    from apps.samri.lib.runtime.models import ModelHolder
    from samri.inference.embeddings import EmbeddingCache
    from samri.inference.prompts import SlicePrompt
    from samri.volume import prepare_volume
    from tests.helpers import synthetic_array

    settings = _settings(tmp_path, backend="openvino", precision="fp32", backend_cache_dir=tmp_path / "exports")
    holder = ModelHolder(settings=settings, cache=EmbeddingCache())
    eager = holder.segmenter()
    volume = prepare_volume(synthetic_array())
    prompt = SlicePrompt(box=(8, 8, 30, 24))
    expected = eager.predict_slice(volume, 2, 10, prompt).mask
    assert holder.wait_backend(120)
    fast = holder.segmenter()
    assert fast.model.backend_info["backend"] == "openvino", fast.model.backend_info
    assert fast.model.cache_key() != eager.model.cache_key()  # fp32 OpenVINO embeddings are cached apart
    got = fast.predict_slice(volume, 2, 10, prompt).mask
    assert np.array_equal(got, expected) or (got != expected).mean() < 0.001
