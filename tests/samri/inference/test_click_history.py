"""samri.inference.click_history: refinement state found from the clicks of clients without client_id."""

from __future__ import annotations

import numpy as np
import torch

from samri.inference.click_history import ClickHistory, ClickSet
from samri.inference.prompts import parse_request

SHAPE = (40, 36, 8)


def clicks(fg=(), bg=(), roi=None) -> ClickSet:
    params = {"foreground": [list(p) for p in fg], "background": [list(p) for p in bg]}
    if roi is not None:
        params["roi"] = roi
    return ClickSet.of(parse_request(params, SHAPE, 2))


def logits(value: float) -> dict[int, torch.Tensor]:
    return {4: torch.full((1, 1, 8, 8), value)}


def test_a_set_extends_an_earlier_one_only_by_adding_clicks_with_the_same_roi():
    one = clicks(fg=[(10, 10, 4)])
    two = clicks(fg=[(10, 10, 4)], bg=[(3, 3, 4)])
    assert two.extends(one) and not one.extends(two) and not one.extends(one)
    assert not clicks(fg=[(11, 10, 4)], bg=[(3, 3, 4)]).extends(one)  # a moved click is another prompt
    assert not clicks(fg=[(10, 10, 4)], bg=[(3, 3, 4)], roi=[2, 30, 2, 30, 4, 4]).extends(one)
    assert clicks(fg=[(10, 10, 4), (12, 12, 4)]) == clicks(fg=[(12, 12, 4), (10, 10, 4)])  # order-free
    assert len(two) == 2
    again = clicks(fg=[(10, 10, 4), (10, 10, 4)])  # the same voxel clicked twice is a new click
    assert again.extends(one) and len(again) == 2 and not one.extends(again)


def test_previous_is_the_largest_earlier_set_the_request_extends():
    history = ClickHistory()
    one = clicks(fg=[(10, 10, 4)])
    two = clicks(fg=[(10, 10, 4)], bg=[(3, 3, 4)])
    history.remember("scope", one, logits(1.0))
    history.remember("scope", two, logits(2.0), run="memo")
    found, run = history.previous("scope", clicks(fg=[(10, 10, 4), (20, 20, 4)], bg=[(3, 3, 4)]))
    assert float(found[4].mean()) == 2.0 and run == "memo"
    found, run = history.previous("scope", clicks(fg=[(10, 10, 4), (20, 20, 4)]))
    assert float(found[4].mean()) == 1.0 and run is None
    assert history.previous("scope", one) == ({}, None)  # the same clicks again: nothing to extend
    assert history.previous("other scope", two) == ({}, None)
    assert history.previous("scope", clicks(fg=[(30, 30, 4)])) == ({}, None)


def test_the_history_is_bounded_per_scope_in_scopes_and_in_bytes():
    history = ClickHistory(per_scope=2, max_scopes=2)
    chain = [clicks(fg=[(10, 10, 4)] + [(20, 5 + n, 4) for n in range(k)]) for k in range(4)]
    for k, c in enumerate(chain):
        history.remember("a", c, logits(float(k)))
    assert len(history) == 2  # the newest two of the chain
    assert history.previous("a", clicks(fg=[(10, 10, 4)] + [(20, 5 + n, 4) for n in range(5)]))[0][4].mean() == 3.0
    assert history.previous("a", chain[1]) == ({}, None)  # chain[0] was dropped
    history.remember("b", chain[0], logits(0.0))
    history.remember("c", chain[0], logits(0.0))
    assert len(history) == 2 and history.previous("a", chain[3]) == ({}, None)  # scope "a" was least recent
    small = ClickHistory(max_bytes=1000)  # three answers of 8x8 float32 (256 bytes) fit
    for k in range(4):
        small.remember("s", chain[k], logits(float(k)))
    assert len(small) == 3 and small.previous("s", chain[1]) == ({}, None)  # the oldest went, not the scope
    assert float(small.previous("s", clicks(fg=[(10, 10, 4)] + [(20, 5 + n, 4) for n in range(5)]))[0][4].mean()) == 3
    small.remember("s", chain[0], {4: torch.zeros(1, 1, 32, 32)})  # one answer larger than max_bytes
    assert small.previous("s", chain[2]) == ({}, None) and len(small) == 0


def test_slices_an_answer_did_not_predict_keep_the_logits_it_refined():
    history = ClickHistory()
    one, two = clicks(fg=[(10, 10, 4)]), clicks(fg=[(10, 10, 4), (12, 12, 5)])
    history.remember("s", one, {3: torch.ones(1, 1, 8, 8), 4: torch.ones(1, 1, 8, 8)})
    history.remember("s", two, {4: torch.zeros(1, 1, 8, 8), 5: torch.zeros(1, 1, 8, 8)})
    found, _ = history.previous("s", clicks(fg=[(10, 10, 4), (12, 12, 5), (2, 2, 6)]))
    assert sorted(found) == [3, 4, 5] and float(found[3].mean()) == 1.0 and float(found[4].mean()) == 0.0


def test_remembered_logits_are_copies_on_the_cpu():
    history = ClickHistory()
    source = logits(1.0)
    history.remember("s", clicks(fg=[(10, 10, 4)]), source)
    source[4].add_(5.0)
    found, _ = history.previous("s", clicks(fg=[(10, 10, 4), (2, 2, 4)]))
    assert np.allclose(found[4].numpy(), 1.0)  # a later change to the caller's tensor does not reach it
