"""Fixtures of the inference tests: the tiny-model segmenter and the fake decoder patched in."""

from __future__ import annotations

import pytest

from samri.inference.embeddings import EmbeddingCache
from samri.inference.segmenter import Segmenter

from .fakes import FakeDecoder


@pytest.fixture()
def segmenter(tiny_model) -> Segmenter:
    return Segmenter(tiny_model, EmbeddingCache())


@pytest.fixture()
def fake(monkeypatch, gt_mask) -> FakeDecoder:
    fake = FakeDecoder(gt_mask)
    monkeypatch.setattr(Segmenter, "embedding", lambda self, v, a, i: fake.embedding(self, v, a, i))
    monkeypatch.setattr(Segmenter, "decode", lambda self, e, g, p: fake.decode(self, e, g, p))
    return fake
