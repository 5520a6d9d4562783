"""Render ``samri al-sim`` results: one figure (held-out Dice vs annotated studies per strategy),
a CSV and a markdown table, plus the raw JSON. Files are written atomically."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Mapping

from samri.io import write_bytes, write_text

logger = logging.getLogger(__name__)


def encoder_text(record: Mapping[str, Any]) -> str:
    """The image encoder's backend as a `run_simulation` or `run_effort` record names it (a record from
    before it was kept: PyTorch eager)."""
    info = record.get("encoder")
    if not info:
        return "PyTorch eager fp32 (not recorded: a run from before the served encoder)"
    return f"{info.get('backend', 'torch')} {info.get('precision', 'fp32')} (the served backend; the decoder PyTorch)"


def table_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (strategy, number of annotated studies): the study added and the held-out Dice."""
    rows = []
    for strategy, curve in results["curves"].items():
        for point in curve:
            rows.append({"strategy": strategy, "annotated": point["annotated"], "added": point["study"],
                         "dice": round(point["mean"], 4),
                         **{f"dice_{k}": round(v, 4) for k, v in point.items()
                            if k not in ("annotated", "study", "mean", "best_epoch", "train_dice")
                            and isinstance(v, float)}})
    return rows


def markdown_table(results: Mapping[str, Any]) -> str:
    """Mean held-out Dice: strategies as rows, number of annotated studies as columns (+ area under curve)."""
    curves = results["curves"]
    counts = sorted({p["annotated"] for c in curves.values() for p in c})
    head = "| strategy | " + " | ".join(f"{n} annotated" for n in counts) + " | mean over rounds |"
    lines = [head, "|" + "---|" * (len(counts) + 2)]
    for strategy, curve in curves.items():
        by_n = {p["annotated"]: p["mean"] for p in curve}
        after = [by_n[n] for n in counts if n > 1 and n in by_n]
        mean = sum(after) / len(after) if after else float("nan")
        lines.append(f"| {strategy} | " + " | ".join(f"{by_n[n]:.4f}" if n in by_n else "" for n in counts)
                     + f" | {mean:.4f} |")
    lines.append(f"| (base decoder, no fine-tuning) | {results['base_dice']['mean']:.4f} |"
                 + " |" * len(counts))
    picks = ["", "| strategy | studies picked, in order |", "|---|---|"]
    for strategy, chosen in results["picks"].items():
        picks.append(f"| {strategy} | " + ", ".join(f"`{p['study']}`" for p in chosen) + " |")
    return "\n".join(lines + picks) + "\n"


def plot(results: Mapping[str, Any], path: Path) -> None:
    """Dice vs annotated studies, one line per strategy, the base decoder dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = {"random": "o", "first": "v", "samri_uncertainty": "s", "samri_novelty": "^", "samri_combined": "D"}
    for strategy, curve in results["curves"].items():
        xs = [p["annotated"] for p in curve]
        ys = [p["mean"] for p in curve]
        style = "--" if strategy in ("random", "first") else "-"
        ax.plot(xs, ys, style, marker=markers.get(strategy, "o"), label=strategy)
    ax.axhline(results["base_dice"]["mean"], color="grey", linestyle=":", label="base decoder (no fine-tuning)")
    ax.set_xlabel("annotated studies")
    ax.set_ylabel("held-out Dice (box prompts, mean)")
    ax.set_title("Simulated annotation loop: LiteMedSAM decoder fine-tuning")
    ax.set_xticks(sorted({p["annotated"] for c in results["curves"].values() for p in c}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def write_report(results: Mapping[str, Any], out_dir: str | Path, *, command: str | None = None) -> dict[str, Path]:
    """Write ``al_sim.json``, ``al_sim.csv``, ``al_sim.png`` and ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "al_sim.json", "csv": out / "al_sim.csv", "png": out / "al_sim.png", "md": out / "report.md"}
    write_text(paths["json"], json.dumps({**results, "command": command}, indent=1, default=str) + "\n")
    rows = table_rows(results)
    buf = io.StringIO()
    first = ["strategy", "annotated", "added", "dice"]
    fields = first + sorted({k for r in rows for k in r} - set(first))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(paths["csv"], buf.getvalue())
    plot(results, paths["png"])
    cfg = results.get("config", {})
    text = ["# Simulated annotation loop (`samri al-sim`)", "",
            f"Command: `{command}`" if command else "", "",
            f"Wall time {results.get('seconds')} s (train {results['timings']['train']} s, scoring "
            f"{results['timings']['score']} s, evaluation {results['timings']['eval']} s).", "",
            f"Model `{cfg.get('model')}`; {len([p for p in results['pool'] if not p['held_out']])} pool studies, "
            f"{len([p for p in results['pool'] if p['held_out']])} held out; start `{cfg.get('start')}`; "
            f"{cfg.get('epochs')} epochs x {cfg.get('steps_per_epoch')} steps of batch {cfg.get('batch_size')} "
            f"per round. Image encoder: {encoder_text(results)}.",
            "", "![Dice vs annotated studies](al_sim.png)", "", markdown_table(results), "", "Studies:", ""]
    text += [f"- `{p['id']}`: {p['variant']}{' (held out)' if p['held_out'] else ''}, {p['structures']} structures"
             for p in results["pool"]]
    write_text(paths["md"], "\n".join(text) + "\n")
    return paths
