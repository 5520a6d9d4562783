"""Helpers of the HTTP benchmark (`samri.bench.http`)."""

from __future__ import annotations

from samri.bench.http import percentiles_ms, shift_slice


def test_bench_helpers() -> None:
    moved = shift_slice({"foreground": [[1, 2, 3]], "roi": [0, 1, 0, 1, 3, 3], "slice": 3}, 2)
    assert moved == {"foreground": [[1, 2, 5]], "roi": [0, 1, 0, 1, 5, 5], "slice": 5}
    stats = percentiles_ms([0.1, 0.2, 0.3, 0.4])
    assert stats["n"] == 4 and stats["p50_ms"] == 250.0 and stats["max_ms"] == 400.0


def test_bench_markdown_keeps_sections_other_commands_wrote() -> None:
    """`make bench` rewrites its own sections and keeps the ones `make bench-vit-b` or a person wrote."""
    from samri.bench.inprocess import other_sections

    old = ["# SAMRI benchmarks", "old header", "", "## HTTP round trip (samri_2d)", "old http", "",
           "## Inference backends: sam_vit_b (random weights)", "vit-b table", "", "",
           "## 4 clients at once, one more running a 3D request", "old clients", "",
           "## int8 encoder (NNCF post-training quantization): probed, not offered", "int8 text"]
    new = ["# SAMRI benchmarks", "new header", "", "## HTTP round trip (samri_2d)", "new http"]
    assert other_sections(old, new) == ["", "## Inference backends: sam_vit_b (random weights)", "vit-b table", "",
                                        "## int8 encoder (NNCF post-training quantization): probed, not offered",
                                        "int8 text"]
    assert other_sections([], new) == []
