"""Helpers of the HTTP benchmark (`samri.bench.http`)."""

from __future__ import annotations

from samri.bench.http import ohif_series, percentiles_ms, shift_slice


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


def test_ohif_series_sends_every_click_so_far_without_client_id() -> None:
    series = ohif_series({"foreground": [[10, 20, 5]], "roi": [0, 30, 0, 30, 5, 5], "client_id": "x",
                          "result_extension": ".nrrd"})
    assert [len(r["foreground"]) for r in series] == [1, 2, 3, 4, 5]
    assert all(r["foreground"][:n] == series[n - 1]["foreground"] for n, r in enumerate(series) if n)
    assert all("roi" not in r and "client_id" not in r and r["result_extension"] == ".nrrd" for r in series)
    assert {p[2] for p in series[-1]["foreground"]} == {5} and len({tuple(p) for p in series[-1]["foreground"]}) == 5
    assert ohif_series({"roi": [0, 10, 20, 30, 4, 6]})[0]["foreground"] == [[5, 25, 5]]
