"""Per-client refinement state (`lib.runtime.client_state`)."""

from __future__ import annotations

import torch

from apps.samri.lib.runtime.client_state import ClientStateStore


def _logits(value: float) -> torch.Tensor:
    return torch.full((1, 1, 8, 8), float(value))


def test_state_refines_until_reset_label_or_content_change() -> None:
    store = ClientStateStore()
    key = ("samri_2d", "c1", "/img.nii.gz")
    assert store.previous(key, label="a", content_key="k1") == {}
    store.update(key, label="a", content_key="k1", logits={5: _logits(1.0)})
    store.update(key, label="a", content_key="k1", logits={6: _logits(2.0)})
    prev = store.previous(key, label="a", content_key="k1")
    assert sorted(prev) == [5, 6] and float(prev[6].mean()) == 2.0
    assert store.previous(key, label="b", content_key="k1") == {}  # new label: start over
    store.update(key, label="a", content_key="k1", logits={5: _logits(1.0)})
    assert store.previous(key, label="a", content_key="k2") == {}  # image rewritten
    store.update(key, label="a", content_key="k1", logits={5: _logits(1.0)})
    assert store.previous(key, label="a", content_key="k1", reset=True) == {}
    assert store.previous(None, label="a", content_key="k1") == {}
    store.update(None, label="a", content_key="k1", logits={5: _logits(1.0)})
    assert len(store) == 0 and store.nbytes == 0


def test_state_lru_bounds() -> None:
    store = ClientStateStore(max_entries=3, max_bytes=1 << 20)
    for n in range(5):
        store.update(("t", f"c{n}", "img"), label="a", content_key="k", logits={0: _logits(n)})
    assert len(store) == 3
    assert store.previous(("t", "c0", "img"), label="a", content_key="k") == {}
    assert store.previous(("t", "c4", "img"), label="a", content_key="k") != {}
    small = ClientStateStore(max_bytes=3 * 8 * 8 * 4)
    for n in range(5):
        small.update(("t", f"c{n}", "img"), label="a", content_key="k", logits={0: _logits(n)})
    assert len(small) == 3 and small.nbytes <= 3 * 8 * 8 * 4
    small.update(("t", "big", "img"), label="a", content_key="k", logits={i: _logits(i) for i in range(4)})
    assert small.previous(("t", "big", "img"), label="a", content_key="k") == {}  # over max_bytes alone
    assert len(small) == 3 and small.nbytes <= 3 * 8 * 8 * 4




def test_state_keeps_the_last_3d_run_until_the_state_starts_over() -> None:
    store = ClientStateStore()
    key = ("samri_3d", "c1", "/img.nii.gz")
    memo = object()
    assert store.previous_run(key, label="a", content_key="k1") is None
    store.update(key, label="a", content_key="k1", logits={5: _logits(1.0)}, run=memo)
    assert store.previous_run(key, label="a", content_key="k1") is memo
    assert store.previous_run(key, label="b", content_key="k1") is None
    assert store.previous_run(key, label="a", content_key="k2") is None
    assert store.previous_run(None, label="a", content_key="k1") is None
    store.previous(key, label="a", content_key="k1", reset=True)  # the request resets: state dropped
    assert store.previous_run(key, label="a", content_key="k1") is None
    store.update(key, label="a", content_key="k1", logits={5: _logits(1.0)}, run=memo)
    store.update(key, label="a", content_key="k1", logits={6: _logits(1.0)})  # a partial run leaves no memo
    assert store.previous_run(key, label="a", content_key="k1") is None
