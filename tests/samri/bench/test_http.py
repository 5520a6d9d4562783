"""Helpers of the HTTP benchmark (`samri.bench.http`)."""

from __future__ import annotations

from samri.bench.http import percentiles_ms, shift_slice


def test_bench_helpers() -> None:
    moved = shift_slice({"foreground": [[1, 2, 3]], "roi": [0, 1, 0, 1, 3, 3], "slice": 3}, 2)
    assert moved == {"foreground": [[1, 2, 5]], "roi": [0, 1, 0, 1, 5, 5], "slice": 5}
    stats = percentiles_ms([0.1, 0.2, 0.3, 0.4])
    assert stats["n"] == 4 and stats["p50_ms"] == 250.0 and stats["max_ms"] == 400.0
