"""samri.bench.backends: backend specs, the report's shape, and its docs/BENCHMARKS.md section."""

from __future__ import annotations

import json

import nibabel as nib
import pytest

from samri.bench.backends import SECTION_TITLE, backend_figures, backends_markdown, parse_backend, update_section
from samri.errors import SamriInputError
from tests.helpers import backend_figures_stub, need_openvino


def test_parse_backend():
    assert parse_backend("torch") == ("torch", "torch", "auto")
    assert parse_backend("OpenVINO:BF16") == ("openvino:bf16", "openvino", "bf16")
    assert parse_backend("auto") == ("auto", "auto", "auto")
    with pytest.raises(SamriInputError, match="backend precision"):
        parse_backend("openvino:int2")
    with pytest.raises(SamriInputError, match="backend="):
        parse_backend("tvm")


def test_markdown_section_is_replaced_not_repeated(tmp_path):
    report = {"model": "samri_lite", "data": {"study": "s", "label": "l", "axis": 2, "slice": 3},
              "load_average_1m": {"start": 1.0, "end": 2.0},
              "backends": {"torch": backend_figures_stub("torch", "torch/fp32"),
                           "openvino:bf16": backend_figures_stub("o", "openvino/bf16")}}
    lines = backends_markdown(report, "samri bench --backend torch")
    assert any(line.startswith("| openvino:bf16 (openvino/bf16) |") for line in lines)
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# SAMRI benchmarks\n\n## Training step\n\nx\n")
    update_section(doc, lines)
    update_section(doc, lines)  # regenerated: still one section
    text = doc.read_text()
    assert text.count(SECTION_TITLE) == 1 and text.startswith("# SAMRI benchmarks") and "## Training step" in text
    doc.write_text(f"# B\n\n{SECTION_TITLE}\n\nOLD-CONTENT\n\n## After\n\ny\n")
    update_section(doc, lines)
    text = doc.read_text()
    assert "OLD-CONTENT" not in text and text.count(SECTION_TITLE) == 1
    assert text.index(SECTION_TITLE) < text.index("## After")


@pytest.mark.slow
def test_backend_figures_tiny_model(tiny_registry, sample_studies_dir, tmp_path):
    """The report's shape on the tiny model: torch is added as the reference; ratios and agreement per backend."""
    need_openvino()
    report = backend_figures(["openvino:fp32"], studies=sample_studies_dir, repeats=2, encoder_slices=2,
                             export_dir=tmp_path, volume_figures=True)
    assert list(report["backends"]) == ["torch", "openvino:fp32"]
    fast = report["backends"]["openvino:fp32"]
    assert fast["serves"] == "openvino/fp32" and fast["cached_click_ms"]["box"]["n"] == 2
    assert fast["vs_torch"]["embedding_cosine"] > 0.9999 and fast["vs_torch"]["mask_dice"]["box"] == 1.0
    assert report["backends"]["torch"]["speedup_vs_torch"] == {"encoder": 1.0, "box_click": 1.0}
    # whole-volume figures: propagation for every backend, the whole stack for all but the reference
    eager_volume, fast_volume = report["backends"]["torch"]["volume"], fast["volume"]
    assert "precompute" not in eager_volume and eager_volume["propagation_uncached"]["slices"] >= 1
    prop = fast_volume["propagation_uncached"]
    assert prop["slices"] >= 1 and prop["s_per_slice"] == pytest.approx(prop["s"] / prop["slices"], abs=0.01)
    stack = nib.load(str(sample_studies_dir / f"{report['data']['study']}.nii.gz")).shape[report["data"]["axis"]]
    assert fast_volume["precompute"]["slices"] == stack and fast_volume["precompute"]["s"] > 0
    table = "\n".join(backends_markdown(report))
    assert "| torch | " in table and "not measured (eager: minutes)" in table and f"({stack}, 1) |" in table


def test_cli_bench_rejects_an_unknown_backend_before_any_work(capsys):
    from samri.cli import main

    assert main(["bench", "--backends-only", "--backend", "tvm"]) == 2
    assert "backend='tvm'" in capsys.readouterr().err
    assert main(["bench", "--volume"]) == 2  # per backend only: not silently ignored
    assert "volume=True" in capsys.readouterr().err


def test_cli_bench_runs_serving_figures_before_the_backends(monkeypatch, tmp_path):
    """The serving figures' peak RSS must not include the backend runs (whole-volume figures hold a stack
    of embeddings), so `samri bench --backend ...` measures serving first."""
    from samri.bench import backends, inprocess
    from samri.cli import main

    order = []
    monkeypatch.setattr(inprocess, "run_benchmarks", lambda **k: order.append("serving") or {"serving": True})
    monkeypatch.setattr(backends, "backend_figures", lambda names, **k: order.append(("backends", k["volume_figures"]))
                        or {"backends": {"torch": backend_figures_stub("torch", "torch/fp32")}})
    out = tmp_path / "bench.json"
    assert main(["bench", "--backend", "torch", "--volume", "--json", str(out)]) == 0
    assert order == ["serving", ("backends", True)]
    report = json.loads(out.read_text())
    assert report["serving"] and list(report["backends"]) == ["torch"] and "backends" not in report["backends_run"]
