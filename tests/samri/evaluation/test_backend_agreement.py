"""samri.evaluation.backend_agreement: backends compared session by session with PyTorch eager."""

from __future__ import annotations

import pytest

from samri.evaluation.backend_agreement import agreement_lines, backend_agreement


def _row(model: str, structure: str, curve: list[float], noc85: int) -> dict:
    return {"model": model, "variant": "", "image": "a", "structure": structure, "slice": 3, "first": "box",
            "dice_curve": curve, "noc": {"85": noc85}}


def test_differences_per_interaction_against_the_torch_partner():
    rows = [_row("m[torch]", "s1", [0.5, 0.9], 2), _row("m[openvino:fp32]", "s1", [0.5, 0.9], 2),
            _row("m[torch]", "s2", [0.6, 0.8], 3), _row("m[openvino:fp32]", "s2", [0.7, 0.86], 2),
            _row("m[openvino:fp32]", "s3", [0.1], 1),  # no torch session: not compared
            _row("other", "s1", [0.2], 1)]  # no backend key: not compared
    out = backend_agreement(rows)
    assert list(out) == ["m[openvino:fp32]"]
    a = out["m[openvino:fp32]"]
    assert a["reference"] == "m[torch]" and a["sessions"] == 2 and a["noc_85_changed"] == 1
    assert a["mean_dice_diff"] == pytest.approx((0 + 0 + 0.1 + 0.06) / 4, abs=1e-5)
    assert a["max_abs_dice_diff"] == pytest.approx(0.1) and a["dice_1_diff"] == pytest.approx(0.05)
    lines = agreement_lines({"backend_agreement": out})
    assert lines[0].startswith("## Backends against PyTorch") and "| m[openvino:fp32] | m[torch] | 2 |" in lines[-2]


def test_no_backends_no_section():
    assert backend_agreement([_row("m", "s", [0.5], 1)]) == {} and agreement_lines({}) == []
