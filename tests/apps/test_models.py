"""Which decoder is served (`lib.runtime.models.DecoderSelector` over `samri.train.store`) and the
shared model-with-decoder loader (`load_model_with_decoder`, used by the server and the trainer)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from apps.samri.lib.runtime.models import DecoderChoice, DecoderSelector, load_model_with_decoder
from samri.errors import SamriInputError
from samri.io import write_json


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


def test_holder_serves_through_the_configured_backend(tmp_path: Path, tiny_registry: Path, monkeypatch) -> None:
    """`ModelHolder` hands its settings' backend to `samri.model.backends.apply_backend`; /info/ shows it."""
    from apps.samri.lib.runtime.models import ModelHolder
    from samri.inference.embeddings import EmbeddingCache
    from samri.model import backends

    calls = []

    def fake_apply(model, backend, precision, *, export_dir):
        calls.append((backend, precision, export_dir))
        model.backend_info = {"backend": "openvino", "precision": "bf16"}
        return model

    monkeypatch.setattr(backends, "apply_backend", fake_apply)
    settings = _settings(tmp_path, backend="openvino", precision="bf16", backend_cache_dir=tmp_path / "exports")
    holder = ModelHolder(settings=settings, cache=EmbeddingCache())
    holder.segmenter()
    assert calls == [("openvino", "bf16", tmp_path / "exports")]
    assert holder.info()["backend"] == {"backend": "openvino", "precision": "bf16"}
