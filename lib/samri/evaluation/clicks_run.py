"""``samri evaluate --protocol clicks``: sessions of every model on identical pairs, and their outputs.

Files in the output folder (``--out``):

* ``run.json`` -- config and status (``running``, then ``complete``);
* ``sessions.jsonl`` -- one JSON line per (model, image, variant, structure, slice, first
  interaction), flushed as each ends: Dice and model seconds after every interaction and the
  clicks sent (voxel indices); ``--resume`` keeps the lines of an identical earlier run;
* ``summary.json`` -- written atomically at the end: the single-prompt schema's header (config,
  models_order, images, timing, machine) and ``results[model]["clicks:<first>"]`` =
  `samri.evaluation.clicks.aggregate_sessions` plus ``by_image`` and ``buckets``; contrast-shift
  variants apart under ``variants[variant][model]["clicks:<first>"]``;
* ``report.md`` with ``clicks_curves.png`` (mean Dice after each interaction, models side by
  side) and ``clicks_worst_<model>.png`` (the sessions with most interactions to 0.85, clicks drawn).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from samri.errors import SamriInputError
from samri.evaluation.backend_agreement import agreement_lines, backend_agreement
from samri.evaluation.clicks import TARGETS, aggregate_sessions, session_2d, session_3d, session_figures, target_key
from samri.evaluation.metrics import BUCKETS
from samri.evaluation.protocol import Case, EvalConfig, Pair, pair_rng, plan, run_info, variant_cases
from samri.evaluation.report import mark_running, start_run, write_outputs
from samri.geometry import in_plane_axes, take_slice
from samri.intensity import WindowSettings
from samri.io import write_text
from samri.volume import prepare_volume

logger = logging.getLogger(__name__)

KEY = ("model", "image", "variant", "structure", "slice", "first")


class SessionStore:
    """``sessions.jsonl`` appended line by line; on ``resume`` an identical run's lines are kept."""

    def __init__(self, out_dir: Path, *, run_config: Mapping, resume: bool = False) -> None:
        self.out = Path(out_dir)
        self.path = self.out / "sessions.jsonl"
        config, keep = start_run(self.out, run_config, self.path, resume)
        self._rows: list[dict] = []
        if keep:
            for line in self.path.read_text().splitlines():
                try:
                    self._rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by an interruption
                    continue
        self._done = {tuple(r[k] for k in KEY) for r in self._rows}
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self._rows))
        mark_running(self.out, config)
        self._file = open(self.path, "a", encoding="utf-8")

    def done(self, key: tuple) -> bool:
        return key in self._done

    def append(self, row: Mapping) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self._rows.append(dict(row))
        self._done.add(tuple(row[k] for k in KEY))

    def rows(self) -> list[dict]:
        return list(self._rows)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class WorstCases:
    """Per model, the sessions that needed most interactions to 0.85 (then lowest final Dice)."""

    def __init__(self, k: int = 4) -> None:
        self.k = k
        self._cases: dict[str, list[tuple]] = defaultdict(list)

    def offer(self, row: Mapping, fetch) -> None:
        if row["variant"]:
            return
        score = (row["noc"]["85"], -row["dice_curve"][-1])
        cases = self._cases[row["model"]]
        if len(cases) < self.k or score > cases[-1][0]:
            cases.append((score, dict(row), *fetch()))
            cases.sort(key=lambda t: t[0], reverse=True)
            del cases[self.k:]

    def cases(self, model: str) -> list[tuple]:
        return [c[1:] for c in self._cases.get(model, [])]


def _row(model: str, case: Case, pair: Pair, first: str, config: EvalConfig, session) -> dict:
    figures = session_figures(session.dice, session.seconds, human_seconds=config.human_seconds_per_click)
    return {"model": model, "image": case.name, "variant": case.variant, "structure": pair.structure,
            "label_value": pair.value, "mode": config.mode, "axis": config.axis, "slice": session.slice,
            "first": first, "gt_px": pair.size_px, "fraction": round(pair.fraction, 6),
            "bucket_samri": pair.bucket_samri, "bucket_fixed": pair.bucket_fixed,
            "dice_curve": [round(float(d), 5) for d in session.dice],
            "seconds_curve": [round(float(s), 4) for s in session.seconds],
            "box": session.box, "clicks": [[*c.point, c.label] for c in session.clicks], **figures}


def _sessions_of_case(model: str, runner, case: Case, pairs: Sequence[Pair], config: EvalConfig, store: SessionStore,
                      worst: WorstCases, window: WindowSettings, progress: bool) -> int:
    from tqdm.auto import tqdm

    axis = config.axis
    todo = [(p, first) for p in pairs for first in config.first
            if not store.done((model, case.name, case.variant, p.structure,
                               p.slice if config.mode == "2d" else _largest_slice(case, p, axis), first))]
    if not todo:
        return 0
    volume = prepare_volume(case.image, window)
    spacing = tuple(float(s) for s in case.image.spacing)
    needed: set[int] = set()
    for p, _ in todo:
        if config.mode == "2d":
            needed.add(p.slice)
        else:
            ks = np.flatnonzero(_areas(case.label == p.value, axis))
            needed |= set(range(max(int(ks[0]) - 2, 0), min(int(ks[-1]) + 3, volume.shape[axis])))
    runner.prefetch(volume, axis, sorted(needed))
    rows_, cols_ = in_plane_axes(axis)
    spacing_2d = (spacing[rows_], spacing[cols_])
    written = 0
    desc = f"{model} {case.name}{'~' + case.variant if case.variant else ''} clicks"
    for pair, first in tqdm(todo, desc=desc, unit="session", disable=not progress):
        rng = pair_rng(config.seed, case.name, pair.structure, pair.slice, first)
        if config.mode == "2d":
            gt = take_slice(case.label, axis, pair.slice) == pair.value
            session = session_2d(runner, volume, axis, pair.slice, gt, first=first, max_clicks=config.max_clicks,
                                 jitter=config.jitter, rng=rng, client=config.client, label=_label(config, pair))
        else:
            gt3d = case.label == pair.value
            session = session_3d(runner, volume, axis, gt3d, first=first, max_clicks=config.max_clicks,
                                 spacing=spacing, jitter=config.jitter, rng=rng, client=config.client,
                                 label=_label(config, pair))
            gt = take_slice(gt3d, axis, session.slice)
        row = _row(model, case, pair, first, config, session)
        store.append(row)
        worst.offer(row, lambda: (take_slice(volume.windowed, axis, session.slice), gt, session.final,  # noqa: B023
                                  spacing_2d))
        written += 1
    return written


def _label(config, pair: Pair) -> str | None:
    """The structure's name as the client sends it: Slicer sends its segment's name, OHIF none."""
    return pair.structure if config.client == "slicer" else None


def _areas(mask: np.ndarray, axis: int) -> np.ndarray:
    return mask.sum(axis=tuple(a for a in range(3) if a != axis))


def _largest_slice(case: Case, pair: Pair, axis: int) -> int:
    return int(np.argmax(_areas(case.label == pair.value, axis)))


def build_clicks_summary(rows: Sequence[Mapping], config: EvalConfig, info: Mapping) -> dict:
    """``summary.json``: ``results[model]["clicks:<first>"]`` on the originals, variants apart."""
    grouped: dict[tuple, list] = defaultdict(list)
    for r in rows:
        grouped[(r["variant"], r["model"], f"clicks:{r['first']}")].append(r)
    human = config.human_seconds_per_click
    results: dict[str, dict] = {}
    variants: dict[str, dict] = {}
    for (variant, model, key), group in grouped.items():
        stats = aggregate_sessions(group, human_seconds=human)
        by_image: dict[str, list] = defaultdict(list)
        by_bucket: dict[str, list] = defaultdict(list)
        by_structure: dict[str, list] = defaultdict(list)
        for r in group:
            by_image[r["image"]].append(r)
            by_bucket[r["bucket_samri"]].append(r)
            by_structure[r["structure"]].append(r)
        stats["by_image"] = {k: _brief(v, human) for k, v in by_image.items()}
        stats["buckets"] = {b: _brief(by_bucket.get(b, []), human) for b in BUCKETS}
        if variant:
            variants.setdefault(variant, {}).setdefault(model, {})[key] = stats
            continue
        stats["by_structure"] = {k: _brief(v, human) for k, v in sorted(by_structure.items())}
        results.setdefault(model, {})[key] = stats
    models = list(dict.fromkeys(r["model"] for r in rows))
    return {"schema": 1, "protocol": "clicks", "complete": True, "config": asdict(config), "models_order": models,
            "prompts": [f"clicks:{f}" for f in config.first],
            "n_pairs": len({(r["image"], r["structure"], r["slice"]) for r in rows if not r["variant"]}),
            "results": results, "variants": variants, "backend_agreement": backend_agreement(rows), **dict(info)}


def _brief(rows: Sequence[Mapping], human: float) -> dict:
    """n, Dice@1/@5, NoC@85 and the failure rate at 0.85 of a group of sessions."""
    if not rows:
        return {"n": 0}
    full = aggregate_sessions(rows, human_seconds=human)
    at = full["dice_at"]
    return {"n": full["n"], "dice_1": at[0], "dice_5": at[min(4, len(at) - 1)], "noc_85": full["noc"]["85"],
            "failure_85": full["failure_rate"]["85"]}


def evaluate_clicks(cases: Sequence[Case], runners: Mapping[str, Any], config: EvalConfig, out_dir: str | Path, *,
                    window: WindowSettings = WindowSettings(), resume: bool = False, progress: bool = True,
                    meta: Mapping | None = None) -> dict:
    """Run the clicks protocol for every runner on identical sessions; write the outputs.

    Args:
        runners: display name -> runner with ``prefetch`` and ``request`` (`samri.evaluation.protocol.SegmenterRunner`).
        config: an `EvalConfig` with ``protocol="clicks"`` (``first``, ``max_clicks``, ``mode``...).

    Returns:
        The summary written to ``out_dir/summary.json``.
    """
    if not runners:
        raise SamriInputError("model", [], "give at least one --model")
    pairs = plan(cases, config)
    by_image: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_image[p.image].append(p)
    start = time.perf_counter()
    out = Path(out_dir)
    store = SessionStore(out, run_config=asdict(config), resume=resume)
    worst = WorstCases()
    timing: dict[str, Any] = {}
    all_cases = [c for case in cases for c in [case, *variant_cases(case, config.variants, config.seed)]]
    try:
        for model, runner in runners.items():
            t0 = time.perf_counter()
            for case in all_cases:
                _sessions_of_case(model, runner, case, by_image.get(case.name, []), config, store, worst, window,
                                  progress)
            timing[model] = {"seconds": round(time.perf_counter() - t0, 1),
                             "encode_seconds": round(getattr(runner, "encode_seconds", 0.0), 1)}
    finally:
        store.close()
    info = run_info(all_cases, pairs, config, timing, start, meta)
    summary = build_clicks_summary(store.rows(), config, info)
    summary["figures"] = clicks_figures(out, summary, worst)
    write_outputs(out, render_clicks_markdown(summary), summary)
    return summary


def clicks_figures(out: Path, summary: Mapping, worst: WorstCases) -> dict:
    from samri.evaluation.figures import clicks_curves_figure, clicks_worst_figure

    figures: dict[str, Any] = {}
    if not summary["results"]:
        return figures
    figures["curves"] = clicks_curves_figure(out, summary)
    figures["worst"] = {}
    for model in summary["models_order"]:
        name = clicks_worst_figure(out, model, worst.cases(model))
        if name:
            figures["worst"][model] = name
    return figures


# --- Markdown -----------------------------------------------------------------------------------
def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _served_as(client: str) -> str:
    if client == "ohif":
        return ("each sent through `run_request` as OHIF sends it (points only: every click so far, no "
                "`client_id`), with the logits the server's click history finds for it.")
    if client == "ohif_no_history":
        return ("each sent through `run_request` as OHIF sends it (points only: every click so far, no "
                "`client_id`), with no previous logits (a server without click history).")
    return ("each sent through `run_request` with every click so far and the previous logits, as a Slicer "
            "client's next click is served.")


def render_clicks_markdown(summary: Mapping, fig_prefix: str = "", heading: str = "#") -> str:
    """The report of one clicks run; figure links get ``fig_prefix`` (a folder relative to the document)."""
    cfg, h = summary["config"], heading
    prefix = f"{fig_prefix.rstrip('/')}/" if fig_prefix else ""
    n_max = cfg["max_clicks"]
    keys = [target_key(t) for t in TARGETS]
    what = ("(image, structure, slice) sessions" if cfg["mode"] == "2d" else
            "(image, structure) sessions, first prompt on the largest slice")
    client = cfg.get("client", "slicer")
    lines = [f"{h} Clicks to an accurate mask: {cfg['mode'].upper()}, axis {cfg['axis']}"
             + {"ohif": ", OHIF's requests",
                "ohif_no_history": ", OHIF's requests without click history"}.get(client, "")
             + (", backends side by side" if summary.get("backend_agreement") else ""),
             "",
             f"First interaction {', '.join(cfg['first'])} (box jitter {cfg['jitter']:g} x longest side), then "
             f"corrective clicks at the deepest point of the largest error region, {n_max} interactions in all, "
             + _served_as(client) + f" {summary['n_pairs']} {what}, identical for every model; seed {cfg['seed']}. "
             f"NoC@t counts interactions to Dice >= t ({n_max} when never reached: a failure). Annotator seconds "
             f"to 0.85: {cfg['human_seconds_per_click']:g} s per interaction + measured model time.", "",
             "| image | variant | shape | spacing (mm) | structures |", "|---|---|---|---|---|"]
    for im in summary["images"]:
        lines.append(f"| {im['name']} | {im['variant'] or 'original'} | {'x'.join(map(str, im['shape']))} | "
                     f"{' x '.join(f'{s:g}' for s in im['spacing_mm'])} | {im['structures']} |")
    lines += ["", f"{h}# Results on the original images", "",
              "| model | first | n | Dice@1 | Dice@3 | Dice@5 | Dice@10 | " + " | ".join(f"NoC@{k}" for k in keys)
              + " | failures @85 | seconds to 0.85 (human + model) | model ms/click p50 |",
              "|---|---|---|---|---|---|---|" + "---|" * len(keys) + "---|---|---|"]
    for model, by_first in summary["results"].items():
        for key, s in by_first.items():
            at = s["dice_at"]
            dice_cells = " | ".join(_f(at[k - 1]) if k <= len(at) else "–" for k in (1, 3, 5, 10))
            secs = s["seconds_to_85"]
            lines.append(f"| {model} | {key.split(':', 1)[1]} | {s['n']} | {dice_cells} | "
                         + " | ".join(_f(s["noc"][k], 2) for k in keys)
                         + f" | {100 * s['failure_rate']['85']:.1f} % | {secs['human'] + secs['model']:.1f} "
                           f"({secs['human']:.1f} + {secs['model']:.2f}) | "
                           f"{s['model_ms_per_click'].get('p50', '–')} |")
    figs = summary.get("figures", {})
    if "curves" in figs:
        lines += ["", f"![Mean Dice after each interaction]({prefix}{figs['curves']})"]
    lines += ["", f"{h}# By object size (SAMRI tertiles): NoC@85 (n)", "",
              "| model | first | " + " | ".join(BUCKETS) + " |", "|---|---|" + "---|" * len(BUCKETS)]
    for model, by_first in summary["results"].items():
        for key, s in by_first.items():
            cells = [f"{_f(s['buckets'][b].get('noc_85'), 2)} ({s['buckets'][b]['n']})" for b in BUCKETS]
            lines.append(f"| {model} | {key.split(':', 1)[1]} | " + " | ".join(cells) + " |")
    lines += ["", *agreement_lines(summary, h), *_per_image_table(summary, h), *_structure_table(summary, h)]
    if figs.get("worst"):
        lines += [f"{h}# Worst sessions", "", "Most interactions to 0.85: green ground truth, red the final "
                  "prediction, yellow box and clicks (star positive, cross negative) on the first slice.", ""]
        lines += [f"![{m}: worst sessions]({prefix}{name})" for m, name in figs["worst"].items()] + [""]
    timing = summary.get("timing", {})
    if timing:
        lines += [f"{h}# Time", "", "| model | seconds | of which encoding |", "|---|---|---|"]
        lines += [f"| {m} | {t['seconds']} | {t['encode_seconds']} |" for m, t in timing.items() if isinstance(t, dict)]
        lines += ["", f"Total {timing.get('total_seconds')} s.", ""]
    return "\n".join(lines) + "\n"


def _columns(summary: Mapping) -> list[tuple[str, str]]:
    return [(m, k) for m, by_first in summary["results"].items() for k in by_first]


def _brief_cell(s: Mapping | None) -> str:
    if not s or not s.get("n"):
        return "–"
    return f"{_f(s['dice_1'], 2)} / {_f(s['noc_85'], 1)} ({s['n']})"


def _per_image_table(summary: Mapping, h: str) -> list[str]:
    columns = _columns(summary)
    sources = [("original", summary["results"]), *summary.get("variants", {}).items()]
    images = list(dict.fromkeys(im["name"] for im in summary["images"]))
    lines = [f"{h}# Per image and variant: Dice@1 / NoC@85 (n)", "",
             "| image | variant | " + " | ".join(f"{m} {k}" for m, k in columns) + " |",
             "|---|---" + "|---" * len(columns) + "|"]
    for image in images:
        for variant, table in sources:
            cells = [_brief_cell(table.get(m, {}).get(k, {}).get("by_image", {}).get(image)) for m, k in columns]
            if any(c != "–" for c in cells):
                lines.append(f"| {image} | {variant} | " + " | ".join(cells) + " |")
    return lines + [""]


def _structure_table(summary: Mapping, h: str) -> list[str]:
    columns = _columns(summary)
    names = sorted({s for m, k in columns for s in summary["results"][m][k].get("by_structure", {})})
    if not names:
        return []
    lines = [f"{h}# Per structure: Dice@1 / NoC@85 (n), original images", "",
             "| structure | " + " | ".join(f"{m} {k}" for m, k in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_brief_cell(summary["results"][m][k]["by_structure"].get(name))
                                               for m, k in columns) + " |")
    return lines + [""]
