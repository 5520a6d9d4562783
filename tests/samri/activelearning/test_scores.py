"""samri.activelearning.scores: model versions and when a stored score record is current."""

from __future__ import annotations

from samri.activelearning.scores import is_current, make_record, model_version


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
