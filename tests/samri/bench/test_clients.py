"""``samri bench --http --clients N``: several clients and a 3D request on one real server."""

from __future__ import annotations

import numpy as np
import pytest

from samri.bench.clients import OTHER_DICE_CEIL, check_answer, multi_client_benchmark, structure_clicks
from tests.apps.helpers import COLIN, LiveServer, needs_colin


def test_check_answer_rejects_wrong_slice_empty_and_crossed_masks() -> None:
    own = np.zeros((20, 20, 5), bool)
    own[2:8, 2:8, 2] = True
    other = np.zeros_like(own)
    other[10:16, 10:16, 2] = True
    assert check_answer(own.astype(np.uint8), [2], own, {"other": other}, 0.5) == (1.0, None)
    moved = np.roll(own, 1, axis=2)
    assert "outside" in check_answer(moved, [2], own, {"other": other}, 0.5)[1]
    assert check_answer(np.zeros_like(own), [2], own, {}, 0.5)[1] == "empty mask"
    both = own | other  # Dice 0.67 against its own, 0.67 against the other client's structure
    score, why = check_answer(both, [2], own, {"other": other}, 0.5)
    assert score > 0.5 and OTHER_DICE_CEIL <= 2 / 3 and "against another client" in why
    assert "Dice" in check_answer(other, [2], own, {}, 0.5)[1]


def test_structure_clicks_are_slicer_requests_on_the_structure() -> None:
    truth = np.zeros((30, 30, 12), np.uint8)
    truth[5:20, 8:18, 3:9] = 4
    clicks = structure_clicks(truth, 4, "blob", n_slices=2)
    assert [c.k for c in clicks][0] in range(3, 9) and len(clicks) == 2 and clicks[0].k != clicks[1].k
    for c in clicks:
        assert c.params["slice"] == c.k and c.params["roi"] == [19, 5, 8, 17, c.k, c.k]
        i, j, k = c.params["foreground"][0]
        assert truth[i, j, k] == 4 and k == c.k


@pytest.mark.slow
@needs_colin
def test_two_clients_and_a_3d_request_get_their_own_correct_answers(live_server: LiveServer) -> None:
    from samri.bench.inprocess import clients_markdown

    report = multi_client_benchmark(live_server.url, COLIN, live_server.truth[COLIN], live_server.label_names[COLIN],
                                    clients=2, clicks=2, max_clicks=4, slices_3d=3)
    correct = report["correct"]
    assert correct["all_correct"], correct["failures"]
    during = report["clicks_during_3d"] + report["clicks_after_3d"]
    assert 2 * 2 <= during <= 2 * 4
    assert correct["answers"] == 2 * 2 + 2 + 2 * 2 + during + 1  # warm-up, solo, concurrent, with 3D, the 3D
    assert report["request_3d"]["status"] == 200 and 1 <= report["request_3d"]["filled_slices"] <= 3
    assert "partial" in report["request_3d"]  # null, or why the server cut the 3D answer short
    assert report["clicks_during_3d"] >= 1, "the clicks met the 3D request"
    for phase in ("concurrent", "with_3d"):
        for client in ("client-0", "client-1"):
            stats = report[phase]["latency_by_client"][client]
            assert stats["n"] == 0 or {"p50_ms", "p95_ms"} <= set(stats)
        assert report[phase]["clicks_per_s"] > 0
    assert {"p50_ms", "p95_ms"} <= set(report["solo"]["latency_by_client"]["client-0"])
    assert report["info_during_3d"]["n"] >= 1 and "p95_ms" in report["info_during_3d"]
    assert report["info_during_3d"]["errors"] == []
    assert report["throughput_ratio"] > 0 and report["throughput_ratio_with_3d"] > 0
    text = "\n".join(clients_markdown(report))
    assert "client-1 (Putamen_R)" in text and "`/info/` during the 3D request" in text and "wrong: 0" in text
