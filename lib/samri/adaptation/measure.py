"""Clicks-protocol figures of one decoder on a set of studies: `samri.evaluation.clicks_run` as the
adaptation experiment uses it (one model, the middle slice of chosen structures, 2D, axis 2)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

__all__ = ["StudySet", "headline", "measure_clicks"]


@dataclass(frozen=True)
class StudySet:
    """Studies measured together: ``(image, label)`` paths and the structure names to prompt."""

    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    structures: tuple[str, ...]


def measure_clicks(studies: StudySet, *, model, cache, key: str, first: Sequence[str], max_clicks: int,
                   human_seconds: float, out_dir: Path, window, progress: bool = False,
                   click_fill: bool = True) -> dict[str, Any]:
    """Run the clicks protocol (`samri.evaluation.clicks_run.evaluate_clicks`) with ``model``.

    Args:
        model: a loaded `samri.model.builders.SamModel` (the decoder under test applied).
        cache: the shared `samri.inference.embeddings.EmbeddingCache` (slices encoded once per run).
        key: the model's name in the summary.
        click_fill: serve with `samri.inference.refine.fill_clicks` (the default), or without.
        out_dir: where ``summary.json``, ``sessions.jsonl`` and ``report.md`` go.

    Returns:
        ``summary["results"][key]``: per first interaction ``clicks:<first>`` the aggregate
        (``dice_at``, ``noc``, ``failure_rate``, ``seconds_to_85``) and ``timing``.
    """
    from samri.evaluation.clicks_run import evaluate_clicks
    from samri.evaluation.protocol import EvalConfig, SegmenterRunner
    from samri.evaluation.variants import load_case
    from samri.inference.refine import ClickFill
    from samri.inference.segmenter import Segmenter

    config = EvalConfig(mode="2d", axis=2, max_pairs=1, labels=tuple(studies.structures), protocol="clicks",
                        first=tuple(first), max_clicks=max_clicks, human_seconds_per_click=human_seconds).validate()
    cases = [load_case(image, label, wanted=config.labels) for image, label in zip(studies.images, studies.labels)]
    segmenter = Segmenter(model, cache, click_fill=ClickFill() if click_fill else None)
    runner = SegmenterRunner(segmenter, batch_size=4, progress=progress)
    summary = evaluate_clicks(cases, {key: runner}, config, out_dir, window=window, progress=progress,
                              meta={"models": {key: key}, "command": "samri adapt-sim"})
    return {**summary["results"][key], "timing": summary.get("timing", {}).get(key)}


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """``{first: {n, dice1, dice5, noc85, fail85, seconds85}}`` from `measure_clicks`'s result."""
    out = {}
    for name, s in result.items():
        if not name.startswith("clicks:"):
            continue
        curve = s["dice_at"]
        seconds = s.get("seconds_to_85") or {}
        out[name.split(":", 1)[1]] = {
            "n": s["n"], "dice1": curve[0], "dice5": curve[min(4, len(curve) - 1)], "dice_last": curve[-1],
            "noc85": s["noc"]["85"], "fail85": s["failure_rate"]["85"],
            "seconds85": round(float(seconds.get("human") or 0) + float(seconds.get("model") or 0), 2)}
    return out
