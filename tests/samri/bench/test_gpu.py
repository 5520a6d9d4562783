"""samri.bench.gpu (`samri bench --device cuda`): device checks, the report run on the CPU, its docs section."""

from __future__ import annotations

import json

import pytest
import torch

from samri.bench.backends import update_section
from samri.bench.gpu import SECTION_TITLE, check_cuda, cuda_figures, cuda_markdown, synced_ms
from samri.errors import SamriInputError


def test_check_cuda_names_the_field_when_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SamriInputError, match="device='cuda'"):
        check_cuda("cuda")
    with pytest.raises(SamriInputError, match="device='gpu0'"):
        check_cuda("gpu0")
    assert check_cuda("cpu").type == "cpu"


def test_cli_bench_device_errors_before_any_work(monkeypatch, capsys):
    from samri.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--device", "cuda"]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err
    assert main(["bench", "--device", "cuda", "--backend", "auto"]) == 2  # not silently ignored
    assert "drop --backend" in capsys.readouterr().err


def test_synced_ms_counts_repeats_after_warmup():
    calls = []
    ms = synced_ms(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=2)
    assert len(ms) == 3 and len(calls) == 5 and all(m >= 0 for m in ms)


@pytest.mark.slow
def test_cuda_figures_run_on_the_cpu_and_render(sample_studies_dir, tmp_path):
    """The same code path as on a GPU (the device is a parameter), kept small: one batch size, no
    ViT-B, no training step; the whole-stack figure on a cut-down run would take minutes here."""
    report = cuda_figures(device="cpu", studies=sample_studies_dir, repeats=2, batches=(1,), vit_b=False,
                          stack=False, train=False)
    assert report["machine"]["device"] == "cpu" and report["model"]["serves"]["backend"] in ("torch", "openvino")
    assert report["encoder_ms_per_slice"]["n"] == 2 and report["encoder_ms_per_slice"]["p50"] > 0
    assert set(report["cached_click_ms"]) == {"box", "box_point", "points_only", "refinement"}
    fp32 = report["encoder_throughput"]["fp32"]["1"]
    # slices/s is rounded to 0.1, ms per batch to 0.01
    assert fp32["slices_per_s"] == pytest.approx(1000.0 / fp32["ms_per_batch"], rel=0.01, abs=0.051)
    assert report["propagation_3d"]["slices"] >= 1
    # against the CPU eager model: a served backend on this CPU agrees within the equivalence tests' limits
    assert report["vs_cpu_eager"]["embedding_cosine"] > 0.99
    assert min(report["vs_cpu_eager"]["mask_dice"].values()) > 0.9
    lines = cuda_markdown(report, "samri bench --device cpu")
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# SAMRI benchmarks\n")
    update_section(doc, lines, SECTION_TITLE)
    update_section(doc, lines, SECTION_TITLE)
    text = doc.read_text()
    assert text.count(SECTION_TITLE) == 1 and "| cached click, box, ms |" in text
    assert "| samri_lite | fp32 (served) |" in text


def test_recorded_gpu_section_matches_its_json():
    """docs/BENCHMARKS.md's GPU section is the render of docs/bench-cuda.json (regenerated together)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    report = json.loads((root / "docs" / "bench-cuda.json").read_text())
    section = "\n".join(cuda_markdown(report, report["command"])).strip()
    assert section in (root / "docs" / "BENCHMARKS.md").read_text()
    assert report["machine"]["gpu"] and report["model"]["serves"]["backend"] == "torch"
