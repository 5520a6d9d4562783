"""FLOP counts, matmul speed and the fraction-of-limit table (samri.bench.limits)."""

from __future__ import annotations

import json

import pytest

from samri.bench.limits import (
    _main,
    backend_runtime,
    fractions,
    markdown,
    matmul_gflops,
    model_flops,
    report_model,
)
from samri.errors import SamriInputError


def test_litemedsam_flops_match_the_issue_count():
    # issue 16 counted 75 GFLOP per LiteMedSAM slice and 3.6 per box click with the same counter
    flops = model_flops("litemedsam")
    assert flops["input_size"] == 256
    assert flops["encoder_gflop"] == pytest.approx(74.9, abs=0.5)
    assert flops["box_click_gflop"] == pytest.approx(3.62, abs=0.05)


def test_matmul_speed_is_measured_and_bad_names_are_refused():
    assert matmul_gflops("torch", "fp32", size=128, repeats=2) > 0
    with pytest.raises(SamriInputError, match="precision"):
        matmul_gflops("torch", "int4", size=8)
    with pytest.raises(SamriInputError, match="runtime"):
        matmul_gflops("tensorflow", "fp32", size=8)


def _report(model: str = "litemedsam") -> dict:
    return {"model": f"{model} (random weights)", "backends": {
        "torch": {"serves": "torch/fp32", "encoder_s_per_slice": {"p50": 1.0},
                  "cached_click_ms": {"box": {"p50": 50.0}}},
        "auto": {"serves": "openvino/bf16", "encoder_s_per_slice": {"p50": 0.25},
                 "cached_click_ms": {"box": {"p50": 20.0}}}}}


def test_fractions_divide_the_time_at_matmul_speed_by_the_measured_time():
    assert backend_runtime("auto", {"serves": "openvino/bf16"}) == ("openvino", "bf16")
    assert backend_runtime("torch", {}) == ("torch", "fp32")
    assert report_model({"model": {"name": "samri_lite", "input_size": 256}}) == "samri_lite"
    assert report_model({"model": "sam_vit_h (random weights)"}) == "sam_vit_h"
    flops = {"litemedsam": {"encoder_gflop": 100.0, "box_click_gflop": 4.0}}
    rows = fractions(flops, {"torch fp32": 100.0, "openvino bf16": 400.0}, [_report(), _report("sam_vit_b")])
    assert [(r["backend"], r["runtime"]) for r in rows] == [("torch", "torch fp32"), ("auto", "openvino bf16")]
    eager, fast = rows
    assert eager["encoder_limit_s"] == pytest.approx(1.0) and eager["encoder_fraction"] == pytest.approx(1.0)
    assert eager["click_limit_ms"] == pytest.approx(40.0) and eager["click_fraction"] == pytest.approx(0.8)
    assert fast["encoder_limit_s"] == pytest.approx(0.25) and fast["encoder_gflops"] == pytest.approx(400.0)
    assert fast["click_fraction"] == pytest.approx(10.0 / 20.0)
    # a runtime whose matmul speed was not measured gives no row
    assert fractions(flops, {"torch fp32": 100.0}, [_report()])[0]["backend"] == "torch"


def test_the_command_writes_json_and_its_section(tmp_path, capsys):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_report()))
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Another section\n\nkept\n")
    _main([str(bench), "--runtime", "torch fp32", "--json", str(tmp_path / "limits.json"), "--markdown", str(doc)])
    report = json.loads((tmp_path / "limits.json").read_text())
    assert list(report["flops"]) == ["litemedsam"] and report["matmul_gflops"]["torch fp32"] > 0
    assert [r["backend"] for r in report["rows"]] == ["torch"]
    text = doc.read_text()
    assert "## Another section" in text and "kept" in text
    assert "| litemedsam | torch (torch fp32) |" in text and markdown(report)[0] in text
    assert "| litemedsam | 74.9 | 3.62 |" in capsys.readouterr().out
