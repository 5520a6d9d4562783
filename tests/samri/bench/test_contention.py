"""samri.bench.contention: the busy second process of ``samri bench --contention``."""

from __future__ import annotations

import time

import psutil

from samri.bench.backends import CONTENTION_TITLE, SECTION_TITLE, backends_markdown, section_title
from samri.bench.contention import busy_process
from tests.helpers import backend_figures_stub


def test_busy_process_computes_while_the_block_runs_and_is_gone_after():
    with busy_process(threads=1, settle_s=0.5) as child:
        proc = psutil.Process(child.pid)
        proc.cpu_percent(None)
        time.sleep(1.0)
        assert proc.cpu_percent(None) > 30.0  # it really computes
        assert child.poll() is None
    assert child.poll() is not None


def test_contention_markdown_has_its_own_section():
    report = {"model": "samri_lite", "data": {"study": "s", "label": "l", "axis": 2, "slice": 3},
              "load_average_1m": {"start": 3.0, "end": 3.5},
              "backends": {"torch": backend_figures_stub("torch", "torch/fp32")}}
    lines = backends_markdown(report, "samri bench --contention", contention=True)
    assert lines[1] == CONTENTION_TITLE and SECTION_TITLE not in lines and "busy" in lines[3]


def test_other_models_get_their_own_sections():
    report = {"model": "sam_vit_b (random weights)", "default_model": False,
              "data": {"study": "s", "label": "l", "axis": 2, "slice": 3},
              "load_average_1m": {"start": 1.0, "end": 1.0},
              "backends": {"torch": backend_figures_stub("torch", "torch/fp32")}}
    assert section_title(report) == "## Inference backends: sam_vit_b (random weights)"
    assert section_title(report, contention=True).endswith("with a second process busy")
    assert section_title({**report, "default_model": True}) == SECTION_TITLE
    assert backends_markdown(report)[1] == section_title(report)
