"""How close the bench's figures are to this CPU's limits: FLOPs per slice and per click, and matmul speed.

Issue 16 asks for every speed figure as a fraction of its physical limit. The limit of a figure is its FLOP
count (``torch.utils.flop_counter`` on the meta device: shapes only, nothing is computed) divided by the
speed of one large dense matrix product on the same threads, in each runtime and precision the bench
measures (PyTorch fp32 and bf16, OpenVINO fp32 and bf16). A figure's fraction is that limit's time over
the measured time: 1.0 runs at matmul speed, lower is slower. The measured times come from the JSON
files ``samri bench`` writes (``backends.<name>.encoder_s_per_slice.p50`` and ``cached_click_ms.box.p50``).

Run: ``make bench-limits`` (``python -m samri.bench.limits``), about a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

logger = logging.getLogger(__name__)

SECTION_TITLE = "## How close to the CPU's limits (FLOPs and matmul speed)"


def model_flops(name: str) -> dict[str, float]:
    """GFLOP of one encoder slice and one box click (prompt encoder + mask decoder) of registry model ``name``.

    The network is built with random weights and moved to the meta device, so a ViT-H costs its
    construction (seconds) and no compute.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from samri.config import load_registry
    from samri.model.builders import build_model

    model = build_model(load_registry().spec(name)).to("meta")
    side = model.input_size
    image = torch.empty(1, 3, side, side, device="meta")
    with FlopCounterMode(display=False) as counter:  # no torch.no_grad: the counter's module hooks need autograd
        embedding = model.image_encoder(image)
    encoder = counter.get_total_flops()
    box = torch.tensor([[side * 0.25, side * 0.25, side * 0.5, side * 0.5]], device="meta")
    with FlopCounterMode(display=False) as counter:
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    return {"encoder_gflop": encoder / 1e9, "box_click_gflop": counter.get_total_flops() / 1e9, "input_size": side}


def matmul_gflops(runtime: str, precision: str, *, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a ``size`` x ``size`` by ``size`` x ``size`` product in ``runtime`` (``torch`` or
    ``openvino``) at ``precision`` (``fp32`` or ``bf16``), the median of ``repeats`` after a warm-up."""
    import numpy as np

    from samri.errors import SamriInputError

    if precision not in ("fp32", "bf16"):
        raise SamriInputError("precision", precision, "must be fp32 or bf16")
    if runtime == "torch":
        import torch

        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)

        def run() -> None:
            torch.matmul(a, b)
    elif runtime == "openvino":
        import openvino as ov
        from openvino import opset13 as ops

        left = ops.parameter([size, size], ov.Type.f32)
        right = ops.constant(np.random.default_rng(0).standard_normal((size, size)).astype(np.float32))
        compiled = ov.Core().compile_model(
            ov.Model([ops.matmul(left, right, False, False)], [left]), "CPU",
            {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        data = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)

        def run() -> None:
            request.infer([data])
    else:
        raise SamriInputError("runtime", runtime, "must be torch or openvino")
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / float(np.median(times)) / 1e9


def backend_runtime(name: str, entry: Mapping[str, Any]) -> tuple[str, str]:
    """``(runtime, precision)`` a bench JSON's backend entry was served by (its ``serves``, e.g. ``openvino/bf16``)."""
    runtime, _, precision = str(entry.get("serves") or "torch/fp32").partition("/")
    return runtime, precision or "fp32"


def report_model(report: Mapping[str, Any]) -> str:
    """The registry name a bench report measured: ``model`` is a name (``"sam_vit_h (random weights)"``) in
    backend reports and a description with ``name`` in `samri bench`'s full report."""
    model = report.get("model", "")
    return str(model.get("name", "") if isinstance(model, Mapping) else model).split(" ")[0]


def fractions(flops: Mapping[str, Mapping[str, float]], speeds: Mapping[str, float],
              reports: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (bench report, backend): measured encoder and box-click times, their limits and fractions.

    Args:
        flops: model name -> `model_flops`.
        speeds: ``"<runtime> <precision>"`` -> matmul GFLOP/s (`matmul_gflops`).
        reports: ``samri bench`` JSON reports (each with ``model`` and ``backends``).
    """
    rows = []
    for report in reports:
        model = report_model(report)
        if model not in flops:
            continue
        for name, entry in (report.get("backends") or {}).items():
            runtime, precision = backend_runtime(name, entry)
            speed = speeds.get(f"{runtime} {precision}")
            encoder_s = (entry.get("encoder_s_per_slice") or {}).get("p50")
            click_ms = ((entry.get("cached_click_ms") or {}).get("box") or {}).get("p50")
            if not speed or encoder_s is None or click_ms is None:
                continue
            encoder_limit = flops[model]["encoder_gflop"] / speed
            click_limit_ms = 1000 * flops[model]["box_click_gflop"] / speed
            rows.append({"model": model, "backend": name, "runtime": f"{runtime} {precision}",
                         "matmul_gflops": speed,
                         "encoder_s": encoder_s, "encoder_limit_s": encoder_limit,
                         "encoder_fraction": encoder_limit / encoder_s,
                         "encoder_gflops": flops[model]["encoder_gflop"] / encoder_s,
                         "click_ms": click_ms, "click_limit_ms": click_limit_ms,
                         "click_fraction": click_limit_ms / click_ms})
    return rows


def markdown(report: Mapping[str, Any]) -> list[str]:
    """docs/BENCHMARKS.md's section for a limits report."""
    lines = [SECTION_TITLE, "",
             f"Generated by `make bench-limits` on {report['date']} ({report['cpu']}, {report['threads']} torch "
             "threads; "
             f"1-minute load average {report['load_average_1m']:.2f}). FLOPs from `torch.utils.flop_counter` (a "
             "multiply-add counts 2); matmul speed: a 2048 x 2048 product, median of 5. The measured times are the "
             "bench JSONs' (" + ", ".join(f"`{p}`" for p in report["reports"]) + "), each from its own run. "
             "Fraction = the time at matmul speed over the measured time.", "",
             "| model | GFLOP per encoder slice | GFLOP per box click |", "|---|---|---|"]
    lines += [f"| {m} | {f['encoder_gflop']:.1f} | {f['box_click_gflop']:.2f} |" for m, f in report["flops"].items()]
    lines += ["", "| runtime | dense matmul GFLOP/s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in report["matmul_gflops"].items()]
    lines += ["", "| model | backend (runtime) | encoder s / slice | at matmul speed | fraction | encoder GFLOP/s "
              "| box click ms | at matmul speed | fraction |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['backend']} ({r['runtime']}) | {r['encoder_s']:.3f} | {r['encoder_limit_s']:.3f} | "
              f"{r['encoder_fraction']:.2f} | {r['encoder_gflops']:.0f} | {r['click_ms']:.1f} | "
              f"{r['click_limit_ms']:.1f} | {r['click_fraction']:.2f} |" for r in report["rows"]]
    return lines


def run(reports: Iterable[Path], *, models: Iterable[str], runtimes: Iterable[str]) -> dict[str, Any]:
    """Count FLOPs, measure matmul speeds and compare them with the reports' figures (module docstring)."""
    import os
    import platform

    import torch

    from samri.model.backends import cpu_name

    flops = {m: model_flops(m) for m in models}
    speeds = {}
    for key in runtimes:
        runtime, precision = key.split()
        speeds[key] = matmul_gflops(runtime, precision)
        logger.info("matmul %s: %.0f GFLOP/s", key, speeds[key])
    paths = []
    for path in map(Path, reports):
        if path.is_file():
            paths.append(path)
        else:
            logger.warning("bench report %s not found: its figures are left out", path)
    rows = fractions(flops, speeds, [json.loads(p.read_text()) for p in paths])
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name() or platform.processor(),
            "threads": torch.get_num_threads(), "load_average_1m": os.getloadavg()[0],
            "reports": [str(p) for p in paths], "flops": flops, "matmul_gflops": speeds, "rows": rows}


def _main(argv: list[str] | None = None) -> None:
    from samri.bench.backends import update_section
    from samri.io import write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="*", type=Path, help="samri bench JSON files")
    parser.add_argument("--model", action="append", dest="models", help="registry models (default: the reports')")
    parser.add_argument("--runtime", action="append", dest="runtimes",
                        default=None, help="'torch fp32', 'torch bf16', 'openvino fp32', 'openvino bf16' (default all)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None, help="update this file's section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = args.models or sorted({report_model(json.loads(p.read_text())) for p in args.reports if p.is_file()})
    report = run(args.reports, models=models,
                 runtimes=args.runtimes or ("torch fp32", "torch bf16", "openvino fp32", "openvino bf16"))
    lines = markdown(report)
    print("\n".join(lines))
    if args.json:
        write_text(args.json, json.dumps(report, indent=1) + "\n")
    if args.markdown:
        update_section(args.markdown, lines, SECTION_TITLE)


if __name__ == "__main__":
    _main()
