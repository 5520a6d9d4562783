"""Outputs of ``samri evaluate``: incremental pairs, atomic summary, Markdown report.

Files in the output folder:

* ``run.json`` -- the run's config and status (``running`` until the end, then ``complete``);
* ``pairs.csv`` -- one row per (model, image, variant, structure, slice, prompt), appended and
  flushed as each is scored, so an interrupted run keeps its work (``--resume`` skips those rows);
* ``summary.json`` -- written once at the very end (temporary file + ``os.replace``); a stale one
  is deleted when a run starts, so a summary on disk always belongs to a finished run;
* ``report.md`` and its PNG figures (`samri.evaluation.figures`).

``python -m samri.evaluation.report --doc docs/EVALUATION.md --command "..." RUN_DIR [RUN_DIR ...]`` joins
finished runs into one document (used by ``make evaluate``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from samri.errors import SamriInputError
from samri.evaluation.metrics import BUCKETS, aggregate, aggregate_with_buckets
from samri.io import write_text

COLUMNS = ("model", "image", "variant", "structure", "label_value", "mode", "axis", "slice", "prompt", "gt_px",
           "gt_size_mm", "fraction", "bucket_samri", "bucket_fixed", "pred_px", "dice", "hd95_mm", "nsd",
           "pred_empty", "seconds")
KEY = ("model", "image", "variant", "structure", "slice", "prompt")
_INT = {"label_value", "axis", "slice", "gt_px", "pred_px"}
_FLOAT = {"gt_size_mm", "fraction", "dice", "hd95_mm", "nsd", "seconds"}
SCHEMA_VERSION = 1


def _parse_row(raw: Mapping[str, str]) -> dict | None:
    try:
        row: dict[str, Any] = {k: raw[k] for k in COLUMNS}
        for k in _INT:
            row[k] = int(row[k])
        for k in _FLOAT:
            row[k] = float(row[k]) if row[k] not in ("", "nan") else float("nan")
        row["pred_empty"] = row["pred_empty"] == "True"
        return row
    except (KeyError, TypeError, ValueError):  # a line cut short by an interruption
        return None


def start_run(out: Path, run_config: Mapping, data_file: Path, resume: bool) -> tuple[dict, bool]:
    """Prepare a run folder: stale outputs removed; returns (JSON config, keep the rows in ``data_file``).

    Rows are kept only on ``resume`` with an identical earlier config (else `SamriInputError`).
    """
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "report.md"):
        (out / stale).unlink(missing_ok=True)
    run_path = out / "run.json"
    config = json.loads(json.dumps(run_config))
    keep = resume and data_file.is_file() and run_path.is_file()
    if keep and json.loads(run_path.read_text()).get("config") != config:
        raise SamriInputError("resume", str(out), "the folder holds a run with other settings; "
                              "use a new --out or drop --resume")
    return config, keep


def mark_running(out: Path, config: Mapping) -> None:
    write_text(out / "run.json", json.dumps({"config": config, "status": "running", "started": time.time()}, indent=2))


def write_outputs(out: Path, markdown: str, summary: Mapping) -> None:
    """``report.md``, then ``summary.json`` (last: its presence means a finished run), then ``run.json`` complete."""
    write_text(out / "report.md", markdown)
    write_text(out / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    run_path = out / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    write_text(run_path, json.dumps({**run, "status": "complete", "finished": time.time()}, indent=2))


class PairStore:
    """``pairs.csv`` written row by row; on ``resume`` the rows of an identical earlier run are kept."""

    def __init__(self, out_dir: str | Path, *, run_config: Mapping, resume: bool = False) -> None:
        self.out = Path(out_dir)
        self.csv_path = self.out / "pairs.csv"
        config, keep = start_run(self.out, run_config, self.csv_path, resume)
        self._rows: list[dict] = []
        if keep:
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                self._rows = [r for r in map(_parse_row, csv.DictReader(f)) if r is not None]
        self._done = {tuple(r[k] for k in KEY) for r in self._rows}
        write_text(self.csv_path, self._csv_text(self._rows))  # header + kept rows (drops a cut line)
        mark_running(self.out, config)
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)

    @staticmethod
    def _csv_text(rows: Sequence[Mapping]) -> str:
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def done(self, model: str, image: str, variant: str, structure: str, index: int, prompt: str) -> bool:
        return (model, image, variant, structure, int(index), prompt) in self._done

    def append(self, row: Mapping) -> None:
        self._writer.writerow({k: row[k] for k in COLUMNS})
        self._file.flush()
        self._rows.append(dict(row))
        self._done.add(tuple(row[k] for k in KEY))

    def rows(self) -> list[dict]:
        return list(self._rows)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class Showcase:
    """Best and worst scored pairs per model (one per structure), with the slices to draw them."""

    def __init__(self) -> None:
        self._best: dict[str, dict[str, tuple]] = defaultdict(dict)
        self._worst: dict[str, dict[str, tuple]] = defaultdict(dict)

    def offer(self, row: Mapping, fetch: Callable[[], tuple]) -> None:
        """Keep ``row`` if it is its structure's best or worst so far; ``fetch`` gives (image, gt, pred, prompt)."""
        if row["variant"]:
            return
        key = f"{row['image']}/{row['structure']}"
        for table, better in ((self._best[row["model"]], np.greater), (self._worst[row["model"]], np.less)):
            if key not in table or better(row["dice"], table[key][0]["dice"]):
                table[key] = (dict(row), *fetch())

    def cases(self, model: str, k: int = 3) -> tuple[list[tuple], list[tuple]]:
        best = sorted(self._best[model].values(), key=lambda t: -t[0]["dice"])[:k]
        worst = sorted(self._worst[model].values(), key=lambda t: t[0]["dice"])[:k]
        return best, worst

    def models(self) -> list[str]:
        return list(self._best)


def machine_info() -> dict:
    """Where the numbers were measured: CPU, cores, threads, library versions."""
    import torch

    from samri.model.backends import cpu_name

    cpu = cpu_name()
    try:
        import monai

        monai_version = monai.__version__
    except ImportError:  # pragma: no cover
        monai_version = "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "monai": monai_version,
            "platform": platform.platform(), "load_average_1min": round(os.getloadavg()[0], 2)}


# --- summary ------------------------------------------------------------------------------------
def build_summary(rows: Sequence[Mapping], config, info: Mapping) -> dict:
    """``summary.json`` content: ``results[model][prompt]`` for the original images, variants apart."""
    from dataclasses import asdict

    grouped: dict[tuple, list] = defaultdict(list)
    for r in rows:
        grouped[(r["variant"], r["model"], r["prompt"])].append(r)
    models = list(dict.fromkeys(r["model"] for r in rows))
    prompts = [p for p in config.prompts if any(r["prompt"] == p for r in rows)]
    results: dict[str, dict] = {}
    variants: dict[str, dict] = {}
    for (variant, model, prompt), group in grouped.items():
        stats = aggregate_with_buckets(group)
        by_image: dict[str, list] = defaultdict(list)
        for r in group:
            by_image[r["image"]].append(r)
        stats["by_image"] = {k: aggregate(v) for k, v in by_image.items()}
        if variant:
            variants.setdefault(variant, {}).setdefault(model, {})[prompt] = stats
            continue
        by_structure: dict[str, list] = defaultdict(list)
        for r in group:
            by_structure[r["structure"]].append(r)
        stats["by_structure"] = {k: aggregate(v) for k, v in sorted(by_structure.items())}
        results.setdefault(model, {})[prompt] = stats
    return {"schema": SCHEMA_VERSION, "complete": True, "config": asdict(config), "models_order": models,
            "prompts": prompts, "n_pairs": len({(r["image"], r["structure"], r["slice"]) for r in rows}),
            "results": results, "variants": variants, **dict(info)}


def finish(out_dir: str | Path, rows: Sequence[Mapping], config, info: Mapping, showcase: Showcase) -> dict:
    """Write figures, ``report.md``, then ``summary.json`` (atomic, last) and mark ``run.json`` complete."""
    from samri.evaluation.figures import make_figures

    out = Path(out_dir)
    summary = build_summary(rows, config, info)
    summary["figures"] = make_figures(out, rows, summary, showcase)
    write_outputs(out, render_markdown(summary), summary)
    return summary


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return str(obj)


# --- Markdown -----------------------------------------------------------------------------------
def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _cell(stats: Mapping | None) -> str:
    if not stats or not stats.get("n"):
        return "–"
    return f"{_f(stats['mean_dice'])} ({stats['n']})"


def render_markdown(summary: Mapping, fig_prefix: str = "", heading: str = "#") -> str:
    """The report of one run; figure links get ``fig_prefix`` (a folder relative to the document)."""
    cfg, h = summary["config"], heading
    prefix = f"{fig_prefix.rstrip('/')}/" if fig_prefix else ""
    fixed = summary["bucket_cutoffs"]["fixed"]
    tert = summary["bucket_cutoffs"]["samri"]
    unit = "slice area" if cfg["mode"] == "2d" else "image volume"
    lines = [f"{h} SAMRI evaluation: {cfg['mode'].upper()} mode, axis {cfg['axis']}", "",
             f"Prompts {', '.join(cfg['prompts'])}; min size {cfg['min_size']} px; box jitter "
             f"{cfg['jitter']:g} x longest side; NSD tolerance {cfg['nsd_tolerance_mm']:g} mm; seed {cfg['seed']}"
             + (f"; slice step {cfg['slice_step']}, at most {cfg['max_pairs']} slices per structure"
                if cfg['mode'] == "2d" else "")
             + f". {summary['n_pairs']} " + ("(image, structure, slice) pairs" if cfg["mode"] == "2d" else
                                              "(image, structure) pairs, each prompted on one slice")
             + ", identical for every model and variant.", "",
             "| image | variant | shape | spacing (mm) | structures |", "|---|---|---|---|---|"]
    for im in summary["images"]:
        lines.append(f"| {im['name']} | {im['variant'] or 'original'} | {'x'.join(map(str, im['shape']))} | "
                     f"{' x '.join(f'{s:g}' for s in im['spacing_mm'])} | {im['structures']} |")
    lines += ["", f"{h}# Results on the original images", "",
              "| model | prompt | n | mean Dice | median Dice | HD95 (mm) | NSD | empty predictions |",
              "|---|---|---|---|---|---|---|---|"]
    for model, by_prompt in summary["results"].items():
        for prompt, s in by_prompt.items():
            lines.append(f"| {model} | {prompt} | {s['n']} | {_f(s['mean_dice'])} | {_f(s['median_dice'])} | "
                         f"{_f(s['hd95_mm'], 2)} | {_f(s['nsd'])} | {s['n_empty_pred']} |")
    lines += ["", "HD95 averages pairs with a non-empty prediction. Dice by object size, mean (n):", ""]
    for key, title in (("buckets", f"SAMRI tertiles of the object's share of the {unit} (cut at "
                                   f"{100 * tert[0]:.3g} % and {100 * tert[1]:.3g} %, this run's pairs)"),
                       ("buckets_fixed", f"fixed thresholds: small < {100 * fixed[0]:g} %, medium < "
                                         f"{100 * fixed[1]:g} %, large otherwise (comparable across runs)")):
        lines += [f"*{title}*", "", "| model | prompt | " + " | ".join(BUCKETS) + " |", "|---|---|---|---|---|"]
        for model, by_prompt in summary["results"].items():
            for prompt, s in by_prompt.items():
                lines.append(f"| {model} | {prompt} | " + " | ".join(_cell(s[key][b]) for b in BUCKETS) + " |")
        lines.append("")
    figs = summary.get("figures", {})
    if "boxplot" in figs:
        lines += [f"![Dice by model, prompt and size bucket]({prefix}{figs['boxplot']})", ""]
    if summary.get("variants"):
        names = list(summary["variants"])
        lines += [f"{h}# Contrast-shift variants (mean Dice (n), same pairs and prompts)", "",
                  "| model | prompt | original | " + " | ".join(names) + " |",
                  "|---|---|---" + "|---" * len(names) + "|"]
        for model, by_prompt in summary["results"].items():
            for prompt, s in by_prompt.items():
                cells = [_cell(summary["variants"][v].get(model, {}).get(prompt)) for v in names]
                lines.append(f"| {model} | {prompt} | {_cell(s)} | " + " | ".join(cells) + " |")
        lines.append("")
        if "variants" in figs:
            lines += [f"![Dice per contrast-shift variant]({prefix}{figs['variants']})", ""]
    lines += _image_table(summary, h) + _structure_table(summary, h)
    overlays = figs.get("overlays", {})
    if overlays:
        lines += [f"{h}# Best and worst cases", "", "Green: ground truth; red: prediction; yellow: the prompt "
                  "(box, point). Top row best, bottom row worst (one case per structure).", ""]
        lines += [f"![{model}: best and worst cases]({prefix}{name})" for model, name in overlays.items()] + [""]
    timing = summary.get("timing", {})
    if timing:
        lines += [f"{h}# Time", "", "| model | seconds | of which encoding |", "|---|---|---|"]
        lines += [f"| {m} | {t['seconds']} | {t['encode_seconds']} |" for m, t in timing.items() if isinstance(t, dict)]
        lines += ["", f"Total {timing.get('total_seconds')} s.", ""]
    return "\n".join(lines) + "\n"


def _image_table(summary: Mapping, h: str) -> list[str]:
    columns = [(m, p) for m, by_prompt in summary["results"].items() for p in by_prompt]
    sources = [("original", summary["results"]), *summary.get("variants", {}).items()]
    images = list(dict.fromkeys(im["name"] for im in summary["images"]))
    lines = [f"{h}# Per image and variant (mean Dice (n))", "",
             "| image | variant | " + " | ".join(f"{m} {p}" for m, p in columns) + " |",
             "|---|---" + "|---" * len(columns) + "|"]
    for image in images:
        for variant, table in sources:
            cells = [_cell(table.get(m, {}).get(p, {}).get("by_image", {}).get(image)) for m, p in columns]
            lines.append(f"| {image} | {variant} | " + " | ".join(cells) + " |")
    return lines + [""]


def _structure_table(summary: Mapping, h: str) -> list[str]:
    columns = [(m, p) for m, by_prompt in summary["results"].items() for p in by_prompt]
    names = sorted({s for m, p in columns for s in summary["results"][m][p]["by_structure"]})
    if not names:
        return []
    lines = [f"{h}# Per structure (mean Dice (n), original images)", "",
             "| structure | " + " | ".join(f"{m} {p}" for m, p in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_cell(summary["results"][m][p]["by_structure"].get(name))
                                               for m, p in columns) + " |")
    return lines + [""]


def _run_command(run_dir) -> str:
    """The ``command`` a run recorded in its ``summary.json``."""
    return json.loads((Path(run_dir) / "summary.json").read_text()).get("command", "?")


def compose(run_dirs: Sequence[str | Path], doc: str | Path, *, command: str, title: str = "SAMRI evaluation",
            preamble: str = "") -> Path:
    """Join finished runs' reports into one document stating machine, models, data and command."""
    doc = Path(doc)
    parts, first = [], None
    for run in map(Path, run_dirs):
        path = run / "summary.json"
        if not path.is_file():
            raise SamriInputError("run", str(run), "has no summary.json (unfinished run?)")
        summary = json.loads(path.read_text())
        first = first or summary
        render = render_markdown
        if summary.get("protocol") == "clicks":
            from samri.evaluation.clicks_run import render_clicks_markdown as render
        parts.append(render(summary, os.path.relpath(run, doc.parent), heading="##"))
    m = (first or {}).get("machine", {})
    models = (first or {}).get("models", {})
    header = [f"# {title}", "", f"Generated by `{command}` on {time.strftime('%Y-%m-%d')}. Do not edit by hand.", "",
              f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
              f"torch threads {m.get('torch_threads', '?')}, "
              f"GPU {m.get('gpu') or 'none'}; Python {m.get('python', '?')}, torch {m.get('torch', '?')}, "
              f"MONAI {m.get('monai', '?')}; 1-minute load average {m.get('load_average_1min', '?')} "
              "when the first run started "
              "(other jobs on the machine slow the timings, not the scores).",
              "- Models: " + "; ".join(f"`{k}` ({v})" for k, v in models.items()) + ".",
              "- Commands of the runs: " + "; ".join(f"`{_run_command(r)}`" for r in run_dirs) + ".", ""]
    if preamble.strip():
        header += [preamble.strip(), ""]
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_text(doc, "\n".join(header) + "\n" + "\n".join(parts))
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samri.evaluation.report", description=compose.__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of finished `samri evaluate` runs")
    parser.add_argument("--doc", type=Path, required=True, help="document to write (e.g. docs/EVALUATION.md)")
    parser.add_argument("--command", required=True, help="the command that regenerates the document")
    parser.add_argument("--title", default="SAMRI evaluation")
    parser.add_argument("--preamble", type=Path, default=None, help="Markdown file inserted after the header")
    args = parser.parse_args(argv)
    preamble = args.preamble.read_text() if args.preamble else ""
    doc = compose(args.runs, args.doc, command=args.command, title=args.title, preamble=preamble)
    print(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
