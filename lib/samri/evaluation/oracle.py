"""Oracles of the clicks protocol: what a box and each kind of corrective click can buy at best.

The clicks protocol's 2D sessions (`samri.annotator.slice_session`: same first interaction, same
corrective clicks at the deepest point of the largest error) are replayed with a "model" that
knows the ground truth in a limited, stated way, so the figures say where a target is out of reach
whatever the decoder does:

- First interaction. ``box``: every pixel of the structure's *tissue family* inside the box (for
  an atlas of touching areas, e.g. Harvard-Oxford cortex or JHU tracts: the union of that atlas's
  labels), a perfect tissue classifier that cannot see the borders between areas of one tissue.
  ``point``: the largest disk around the click that fits in the structure (what local evidence
  certifies).
- Each corrective click. ``local``: the click flips the largest disk around it that fits in the
  error region it lands in (a perfect local edit that does not know the region's shape).
  ``region``: the click flips that whole connected error region (an annotator's click read as
  "this whole blob is wrong": the best any click rule can do).

``python -m samri.evaluation.oracle RUN_DIR --label L ...`` replays the 2D sessions of a
``samri evaluate --protocol clicks`` run (its ``sessions.jsonl``) and writes the oracles' figures
beside the run's models (`aggregate_sessions`), as JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from samri.annotator import depth_map, slice_session
from samri.errors import SamriInputError
from samri.geometry import box_mask
from samri.inference.prompts import SlicePrompt

logger = logging.getLogger(__name__)

CLICK_RULES = ("local", "region")
FIRSTS = ("box", "point")


def inscribed_disk(region: np.ndarray, point: Sequence[float]) -> np.ndarray:
    """The pixels of ``region`` (``(H, W)`` bool) closer to ``point`` ``(r, c)`` than the nearest pixel
    outside it: the largest disk around the point inside the region (the point alone at least)."""
    region = np.asarray(region, dtype=bool)
    r, c = (int(round(float(v))) for v in point)
    if not region[r, c]:
        return np.zeros_like(region)
    radius = float(depth_map(region)[r, c])
    rows, cols = np.ogrid[:region.shape[0], :region.shape[1]]
    return region & ((rows - r) ** 2 + (cols - c) ** 2 < radius ** 2)


def connected_part(region: np.ndarray, point: Sequence[float]) -> np.ndarray:
    """The 8-connected component of ``region`` that holds ``point`` (empty when it is outside)."""
    r, c = (int(round(float(v))) for v in point)
    labels, _ = ndimage.label(np.asarray(region, dtype=bool), structure=np.ones((3, 3), dtype=bool))
    return labels == labels[r, c] if labels[r, c] else np.zeros(region.shape, dtype=bool)


class SliceOracle:
    """``decode(prompt) -> (mask, None)`` for `slice_session`: answers from the truth as the module says.

    Args:
        truth: the structure on the session's slice, ``(H, W)`` bool.
        family: its tissue family on that slice (``(H, W)`` bool; it holds ``truth``).
        click_rule: ``"local"`` or ``"region"``.
    """

    def __init__(self, *, truth: np.ndarray, family: np.ndarray, click_rule: str) -> None:
        if click_rule not in CLICK_RULES:
            raise SamriInputError("click_rule", click_rule, f"must be one of {list(CLICK_RULES)}")
        self.truth = np.asarray(truth, dtype=bool)
        self.family = np.asarray(family, dtype=bool) | self.truth
        self.click_rule = click_rule

    def first(self, prompt: SlicePrompt) -> np.ndarray:
        """The answer to the first interaction: family inside the box, or the first point's disk."""
        if prompt.box is not None:
            return self.family & box_mask(prompt.box, self.truth.shape)
        return inscribed_disk(self.truth, prompt.points[0])

    def click(self, mask: np.ndarray, point: Sequence[float]) -> np.ndarray:
        """``mask`` after a corrective click at ``point`` (its label is where the truth says)."""
        error = mask != self.truth
        flip = inscribed_disk(error, point) if self.click_rule == "local" else connected_part(error, point)
        out = mask.copy()
        out[flip] = self.truth[flip]
        return out

    def __call__(self, prompt: SlicePrompt) -> tuple[np.ndarray, None]:
        """Replay the prompt's interactions in order (box or first point, then every later click)."""
        mask = self.first(prompt)
        start = 0 if prompt.box is not None else 1
        for point in np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)[start:]:
            mask = self.click(mask, point)
        return mask, None


def family_of(value: int) -> tuple[int, int]:
    """The ``[low, high]`` label values of ``value``'s atlas in a `samri cohort` label map: JHU tracts
    below `CohortRecipe.ho_offset`, Harvard-Oxford areas from it up (`samri.cohorts`)."""
    from samri.cohorts import CohortRecipe

    offset = CohortRecipe().ho_offset
    return (1, offset - 1) if int(value) < offset else (offset, np.iinfo(np.int32).max)


def oracle_session(labels_slice: np.ndarray, value: int, *, first: str, click_rule: str,
                   max_clicks: int) -> list[float]:
    """Dice after each interaction of one oracle session on a ``(H, W)`` label slice."""
    low, high = family_of(value)
    oracle = SliceOracle(truth=labels_slice == value, family=(labels_slice >= low) & (labels_slice <= high),
                         click_rule=click_rule)
    return slice_session(oracle, labels_slice == value, first=first, max_clicks=max_clicks)


def replay_run(run_dir: str | Path, label_paths: Sequence[str | Path], *, model: str | None = None,
               click_rules: Sequence[str] = CLICK_RULES) -> dict[str, Any]:
    """Oracle figures on the 2D sessions of a clicks run, with the run's own models beside them.

    Args:
        run_dir: a ``samri evaluate --protocol clicks --mode 2d`` output folder (``sessions.jsonl``).
        label_paths: the label maps of its images (matched by file stem: ``<image>.nii.gz``).
        model: whose sessions define the pairs (default: the first model in the file).

    Returns:
        ``{"sessions": n, "max_clicks": N, "results": {name: {"clicks:<first>": aggregate_sessions(...)}}}``
        where ``name`` is each model of the run and ``oracle_<rule>``.
    """
    from samri.evaluation.variants import image_id
    from samri.geometry import take_slice
    from samri.volume import load_image

    rows = [json.loads(line) for line in Path(run_dir, "sessions.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("mode") == "2d"]
    if not rows:
        raise SamriInputError("run_dir", str(run_dir), "has no 2D clicks sessions (sessions.jsonl)")
    model = model or rows[0]["model"]
    by_stem = {image_id(p): Path(p) for p in label_paths}
    max_clicks = len(rows[0]["dice_curve"])
    results: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        for first in FIRSTS:
            mine = [r for r in rows if r["model"] == name and r["first"] == first]
            if mine:
                results.setdefault(name, {})[f"clicks:{first}"] = _with_groups(mine)
    volumes: dict[str, np.ndarray] = {}
    for first in FIRSTS:
        pairs = [r for r in rows if r["model"] == model and r["first"] == first]
        for rule in click_rules:
            oracle_rows = []
            for r in pairs:
                if r["image"] not in by_stem:
                    raise SamriInputError("label", r["image"], f"no label map given for this image ({sorted(by_stem)})")
                if r["image"] not in volumes:
                    volumes[r["image"]] = np.rint(np.asarray(load_image(by_stem[r["image"]], "label").array))
                labels_slice = take_slice(volumes[r["image"]], int(r["axis"]), int(r["slice"]))
                curve = oracle_session(labels_slice, int(r["label_value"]), first=first, click_rule=rule,
                                       max_clicks=max_clicks)
                oracle_rows.append({"dice_curve": curve, "seconds_curve": [0.0] * max_clicks,
                                    "image": r["image"], "structure": r["structure"]})
            if oracle_rows:
                results.setdefault(f"oracle_{rule}", {})[f"clicks:{first}"] = _with_groups(oracle_rows)
                logger.info("oracle_%s, first %s: %d sessions, Dice@1 %.3f", rule, first, len(oracle_rows),
                            results[f"oracle_{rule}"][f"clicks:{first}"]["dice_at"][0])
    return {"run": str(run_dir), "pairs_from": model, "sessions": len({(r["image"], r["structure"], r["slice"])
                                                                       for r in rows}),
            "max_clicks": max_clicks, "results": results}


def _with_groups(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`aggregate_sessions` of ``rows``, with ``by_atlas`` (structure-name prefix: ``jhu``, ``ho``) and
    ``by_image`` breakdowns."""
    from samri.evaluation.clicks import aggregate_sessions

    out = aggregate_sessions(rows)
    groupings = (("by_atlas", lambda r: str(r["structure"]).split("_")[0]), ("by_image", lambda r: r["image"]))
    for key, group_of in groupings:
        groups: dict[str, list] = {}
        for r in rows:
            groups.setdefault(group_of(r), []).append(r)
        out[key] = {g: aggregate_sessions(members) for g, members in sorted(groups.items())}
    return out


def markdown(report: Mapping[str, Any], at: Sequence[int] = (1, 3, 5, 10)) -> str:
    """A table: per first interaction and model/oracle, Dice after ``at`` interactions, NoC@85, failures@85."""
    at = [k for k in at if k <= report["max_clicks"]]
    head = ("| first | model | " + " | ".join(f"Dice@{k}" for k in at) + " | NoC@85 | failures @85 |\n"
            "|---|---|" + "---|" * (len(at) + 2))
    lines = [head]
    for first in FIRSTS:
        for name, figures in report["results"].items():
            agg = figures.get(f"clicks:{first}")
            if not agg or not agg.get("n"):
                continue
            dice_at = " | ".join(f"{agg['dice_at'][k - 1]:.3f}" for k in at)
            lines.append(f"| {first} | {name} | {dice_at} | {agg['noc']['85']:.2f} | "
                         f"{100 * agg['failure_rate']['85']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samri.evaluation.oracle", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a samri evaluate --protocol clicks --mode 2d output folder")
    parser.add_argument("--label", action="append", required=True, help="label map of each image (repeat)")
    parser.add_argument("--model", help="whose sessions define the pairs (default: the run's first model)")
    parser.add_argument("--out", help="write the JSON here (default: <run_dir>/oracle.json) and a .md beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = replay_run(args.run_dir, args.label, model=args.model)
    out = Path(args.out or Path(args.run_dir) / "oracle.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    out.with_suffix(".md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
