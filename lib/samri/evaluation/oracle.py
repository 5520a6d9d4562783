"""Oracles of the clicks protocol: what a box and each kind of corrective click can buy at best.

The clicks protocol's 2D sessions (`samri.annotator.slice_session`: same first interaction, same
corrective clicks at the deepest point of the largest error) are replayed with a "model" that
knows the ground truth in a limited, stated way, so the figures say where a target is out of reach
whatever the decoder does:

- First interaction. ``box``: every pixel of the structure's *tissue family* inside the box (for
  an atlas of touching areas, e.g. Harvard-Oxford cortex or JHU tracts: the union of that atlas's
  labels), a perfect tissue classifier that cannot see the borders between areas of one tissue.
  With the image (``--image``), a second box oracle, ``band``: the pixels inside the box whose
  windowed intensity lies in the one interval that fits the structure best (`best_intensity_band`),
  the best that a pair of intensity thresholds inside the box can do. ``point``: the largest disk
  around the click that fits in the structure (what local evidence certifies).
- Each corrective click. ``local``: the click flips the largest disk around it that fits in the
  error region it lands in (a perfect local edit that does not know the region's shape).
  ``region``: the click flips that whole connected error region (an annotator's click read as
  "this whole blob is wrong": the best any click rule can do).

3D sessions (`samri.evaluation.clicks.session_3d`: first interaction on the structure's largest slice,
clicks at the deepest voxel of the largest 3D error) are replayed the same way by `VolumeOracle`: the
first box's answer is the family inside the structure's own box on *every* slice it spans (perfect
propagation, on top of the perfect tissue classifier), a point's is the largest ball inside the
structure, and a click flips its ball (``local``, mm metric) or its whole 3D error region (``region``).

``python -m samri.evaluation.oracle RUN_DIR --label L ...`` replays the 2D sessions of a
``samri evaluate --protocol clicks`` run (its ``sessions.jsonl``; a 3D run's 3D sessions) and writes the
oracles' figures beside the run's models (`aggregate_sessions`), as JSON and a markdown table.
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
#: what a first box's oracle answer is: the tissue family in the box, or the best intensity band in it
BOX_ANSWERS = ("family", "band")


def inscribed_disk(region: np.ndarray, point: Sequence[float], spacing: Sequence[float] | None = None) -> np.ndarray:
    """The pixels of ``region`` (``(H, W)`` or ``(X, Y, Z)`` bool) closer to ``point`` (``(r, c)`` or
    ``(i, j, k)``) than the nearest pixel outside it: the largest disk (ball in 3D, in the metric of
    ``spacing``) around the point inside the region (the point alone at least)."""
    region = np.asarray(region, dtype=bool)
    at = tuple(int(round(float(v))) for v in point)
    if not region[at]:
        return np.zeros_like(region)
    radius = float(depth_map(region, spacing)[at])
    steps = np.ones(region.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    grids = np.ogrid[tuple(slice(0, n) for n in region.shape)]
    distance2 = sum(((g - a) * step) ** 2 for g, a, step in zip(grids, at, steps))
    return region & (distance2 < radius ** 2)


def connected_part(region: np.ndarray, point: Sequence[float]) -> np.ndarray:
    """The fully connected (8 in 2D, 26 in 3D) component of ``region`` that holds ``point`` (empty when
    it is outside)."""
    region = np.asarray(region, dtype=bool)
    at = tuple(int(round(float(v))) for v in point)
    labels, _ = ndimage.label(region, structure=np.ones((3,) * region.ndim, dtype=bool))
    return labels == labels[at] if labels[at] else np.zeros(region.shape, dtype=bool)


def fixed_by_click(mask: np.ndarray, truth: np.ndarray, point: Sequence[float], click_rule: str,
                   spacing: Sequence[float] | None = None) -> np.ndarray:
    """``mask`` after a corrective click at ``point``: its disk (``local``) or its whole connected error
    region (``region``) takes the truth's value (2D or 3D)."""
    error = mask != truth
    flip = inscribed_disk(error, point, spacing) if click_rule == "local" else connected_part(error, point)
    out = mask.copy()
    out[flip] = truth[flip]
    return out


def best_intensity_band(intensity: np.ndarray, truth: np.ndarray, region: np.ndarray, *,
                        bins: int = 64) -> np.ndarray:
    """The pixels of ``region`` whose intensity lies in the interval ``[lo, hi]`` that gives the highest
    Dice with ``truth``: what a rule that reads only intensity inside ``region`` can do at best.

    Args:
        intensity: ``(H, W)`` (or any shape) windowed image.
        truth, region: bool, same shape; the truth may reach outside the region (it counts in the Dice).
        bins: intervals are searched on this many equal-width intensity bins over the region's range.

    Returns:
        bool mask inside ``region`` (empty when the region holds no truth).
    """
    region = np.asarray(region, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if not (region & truth).any():
        return np.zeros_like(region)
    values = np.asarray(intensity, dtype=np.float64)[region]
    lo, hi = float(values.min()), float(values.max())
    index = np.zeros(values.shape, dtype=np.int64) if hi <= lo else \
        np.minimum(((values - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    every = np.concatenate([[0], np.cumsum(np.bincount(index, minlength=bins))])
    inside = np.concatenate([[0], np.cumsum(np.bincount(index[truth[region]], minlength=bins))])
    start, stop = np.triu_indices(bins)  # the interval of bins start..stop, inclusive
    hits = inside[stop + 1] - inside[start]
    taken = every[stop + 1] - every[start]
    best = int(np.argmax(2.0 * hits / (taken + truth.sum())))
    out = np.zeros_like(region)
    out[region] = (index >= start[best]) & (index <= stop[best])
    return out


def _check_rule(click_rule: str) -> str:
    if click_rule not in CLICK_RULES:
        raise SamriInputError("click_rule", click_rule, f"must be one of {list(CLICK_RULES)}")
    return click_rule


class SliceOracle:
    """``decode(prompt) -> (mask, None)`` for `slice_session`: answers from the truth as the module says.

    Args:
        truth: the structure on the session's slice, ``(H, W)`` bool.
        family: its tissue family on that slice (``(H, W)`` bool; it holds ``truth``).
        click_rule: ``"local"`` or ``"region"``.
        box_answer: ``"family"`` (the family inside the box) or ``"band"`` (`best_intensity_band` inside it).
        image: the ``(H, W)`` windowed slice; needed for ``"band"``.
    """

    def __init__(self, *, truth: np.ndarray, family: np.ndarray, click_rule: str, box_answer: str = "family",
                 image: np.ndarray | None = None) -> None:
        self.truth = np.asarray(truth, dtype=bool)
        self.family = np.asarray(family, dtype=bool) | self.truth
        self.click_rule = _check_rule(click_rule)
        if box_answer not in BOX_ANSWERS:
            raise SamriInputError("box_answer", box_answer, f"must be one of {list(BOX_ANSWERS)}")
        if box_answer == "band" and image is None:
            raise SamriInputError("image", None, "the band oracle reads the image's intensities")
        self.box_answer = box_answer
        self.image = image

    def first(self, prompt: SlicePrompt) -> np.ndarray:
        """The answer to the first interaction: family (or best intensity band) inside the box, or the
        first point's disk."""
        if prompt.box is not None:
            inside = box_mask(prompt.box, self.truth.shape)
            if self.box_answer == "band":
                return best_intensity_band(self.image, self.truth, inside)
            return self.family & inside
        return inscribed_disk(self.truth, prompt.points[0])

    def click(self, mask: np.ndarray, point: Sequence[float]) -> np.ndarray:
        """``mask`` after a corrective click at ``point`` (its label is where the truth says)."""
        return fixed_by_click(mask, self.truth, point, self.click_rule)

    def __call__(self, prompt: SlicePrompt) -> tuple[np.ndarray, None]:
        """Replay the prompt's interactions in order (box or first point, then every later click)."""
        mask = self.first(prompt)
        start = 0 if prompt.box is not None else 1
        for point in np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)[start:]:
            mask = self.click(mask, point)
        return mask, None


class VolumeOracle:
    """A `samri.evaluation.clicks.RequestRunner` for `session_3d` that answers from the truth in 3D.

    First box: the tissue family inside the structure's own tight box on *every* slice it spans (a
    perfect tissue classifier with perfect propagation: it knows each slice's extent, which one box does
    not tell). First point: the largest ball (mm) around it inside the structure. Each later click: its
    ball inside its 3D error region (``local``) or that whole region (``region``), in the order sent.

    Args:
        truth, family: ``(X, Y, Z)`` bool; ``family`` holds ``truth``.
        axis: the slicing axis of the session's box.
        spacing: voxel size in mm, ``(3,)``.
    """

    def __init__(self, *, truth: np.ndarray, family: np.ndarray, click_rule: str, axis: int,
                 spacing: Sequence[float]) -> None:
        self.truth = np.asarray(truth, dtype=bool)
        self.family = np.asarray(family, dtype=bool) | self.truth
        self.click_rule = _check_rule(click_rule)
        self.axis = int(axis)
        self.spacing = tuple(float(v) for v in spacing)
        self.mask: np.ndarray | None = None
        self.seen: set[tuple[tuple[int, ...], int]] = set()

    def first_box(self) -> np.ndarray:
        """``(X, Y, Z)`` bool: the family inside the truth's tight box on each slice the truth spans."""
        from samri.geometry import put_slice, slice_boxes, take_slice

        out = np.zeros_like(self.truth)
        for k, box in slice_boxes(self.truth, self.axis).items():
            family = take_slice(self.family, self.axis, k)
            put_slice(out, self.axis, k, family & box_mask(box, family.shape))
        return out

    def request(self, volume, params: Mapping[str, Any], *, mode: str, axis: int,
                previous_logits: Mapping[int, Any], previous_run: Any = None) -> Any:
        """The mask after every interaction in ``params`` (``roi``, ``foreground``, ``background``); each
        click not answered before is applied once, in the order the session added them."""
        from types import SimpleNamespace

        clicks = [(tuple(int(v) for v in p), 1) for p in params.get("foreground", [])] + \
                 [(tuple(int(v) for v in p), 0) for p in params.get("background", [])]
        new = [c for c in clicks if c not in self.seen]
        if self.mask is None:
            if "roi" in params:
                self.mask = self.first_box()
            else:
                self.mask = inscribed_disk(self.truth, new[0][0], self.spacing)
                self.seen.add(new.pop(0))
        for click in new:
            self.mask = fixed_by_click(self.mask, self.truth, click[0], self.click_rule, self.spacing)
            self.seen.add(click)
        return SimpleNamespace(mask=self.mask, slices={}, memo=None)


def family_of(value: int) -> tuple[int, int]:
    """The ``[low, high]`` label values of ``value``'s atlas in a `samri cohort` label map: JHU tracts
    below `CohortRecipe.ho_offset`, Harvard-Oxford areas from it up (`samri.cohorts`)."""
    from samri.cohorts import CohortRecipe

    offset = CohortRecipe().ho_offset
    return (1, offset - 1) if int(value) < offset else (offset, np.iinfo(np.int32).max)


def oracle_session(labels_slice: np.ndarray, value: int, *, first: str, click_rule: str,
                   max_clicks: int, box_answer: str = "family", image_slice: np.ndarray | None = None) -> list[float]:
    """Dice after each interaction of one oracle session on a ``(H, W)`` label slice (``image_slice``: the
    ``(H, W)`` windowed slice, for ``box_answer="band"``)."""
    low, high = family_of(value)
    oracle = SliceOracle(truth=labels_slice == value, family=(labels_slice >= low) & (labels_slice <= high),
                         click_rule=click_rule, box_answer=box_answer, image=image_slice)
    return slice_session(oracle, labels_slice == value, first=first, max_clicks=max_clicks)


def oracle_session_3d(labels: np.ndarray, value: int, *, axis: int, index: int, first: str, click_rule: str,
                      max_clicks: int, spacing: Sequence[float]) -> list[float]:
    """3D Dice after each interaction of one oracle session (`samri.evaluation.clicks.session_3d`, first
    interaction on slice ``index``) on an ``(X, Y, Z)`` label map. Every answer lies inside the
    structure's bounding box, so the session runs on that box (plus one voxel): same Dice, less work."""
    from samri.evaluation.clicks import session_3d

    truth = labels == value
    lo = np.maximum(np.argwhere(truth).min(axis=0) - 1, 0)
    hi = np.argwhere(truth).max(axis=0) + 2
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    low, high = family_of(value)
    oracle = VolumeOracle(truth=truth[crop], family=(labels[crop] >= low) & (labels[crop] <= high),
                          click_rule=click_rule, axis=axis, spacing=spacing)
    session = session_3d(oracle, None, axis, truth[crop], first=first, max_clicks=max_clicks, spacing=spacing,
                         index=int(index) - int(lo[axis]))
    return session.dice


def replay_run(run_dir: str | Path, label_paths: Sequence[str | Path], *, model: str | None = None,
               click_rules: Sequence[str] = CLICK_RULES,
               image_paths: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Oracle figures on the 2D sessions of a clicks run, with the run's own models beside them.

    Args:
        run_dir: a ``samri evaluate --protocol clicks`` output folder (``sessions.jsonl``): its 2D sessions,
            or with none, its 3D sessions (`oracle_session_3d`).
        label_paths: the label maps of its images (matched by file stem: ``<image>.nii.gz``).
        model: whose sessions define the pairs (default: the first model in the file).
        image_paths: the run's images (matched by stem), windowed as the registry windows them: with them
            a 2D run's box sessions are also replayed with the ``band`` box answer (``oracle_band_<rule>``).

    Returns:
        ``{"sessions": n, "max_clicks": N, "results": {name: {"clicks:<first>": aggregate_sessions(...)}}}``
        where ``name`` is each model of the run, ``oracle_<rule>`` and ``oracle_band_<rule>``.
    """
    from samri.evaluation.variants import image_id
    from samri.geometry import take_slice
    from samri.volume import load_image

    rows = [json.loads(line) for line in Path(run_dir, "sessions.jsonl").read_text().splitlines() if line.strip()]
    mode = "2d" if any(r.get("mode") == "2d" for r in rows) else "3d"
    rows = [r for r in rows if r.get("mode") == mode]
    if not rows:
        raise SamriInputError("run_dir", str(run_dir), "has no clicks sessions (sessions.jsonl)")
    model = model or rows[0]["model"]
    by_stem = {image_id(p): Path(p) for p in label_paths}
    max_clicks = len(rows[0]["dice_curve"])
    results: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        for first in FIRSTS:
            mine = [r for r in rows if r["model"] == name and r["first"] == first]
            if mine:
                results.setdefault(name, {})[f"clicks:{first}"] = _with_groups(mine)
    images = {image_id(p): Path(p) for p in image_paths}
    volumes: dict[str, tuple[np.ndarray, tuple[float, float, float]]] = {}
    windowed: dict[str, np.ndarray] = {}
    box_answers = ("family", "band") if images and mode == "2d" else ("family",)
    for first in FIRSTS:
        pairs = [r for r in rows if r["model"] == model and r["first"] == first]
        for box_answer in box_answers if first == "box" else ("family",):
            for rule in click_rules:
                oracle_rows = []
                for r in pairs:
                    if r["image"] not in by_stem:
                        raise SamriInputError("label", r["image"],
                                              f"no label map given for this image ({sorted(by_stem)})")
                    if r["image"] not in volumes:
                        image = load_image(by_stem[r["image"]], "label")
                        volumes[r["image"]] = (np.rint(np.asarray(image.array)), image.spacing)
                    labels, spacing = volumes[r["image"]]
                    axis, index = int(r["axis"]), int(r["slice"])
                    if mode == "3d":
                        curve = oracle_session_3d(labels, int(r["label_value"]), axis=axis, index=index, first=first,
                                                  click_rule=rule, max_clicks=max_clicks, spacing=spacing)
                    else:
                        image_slice = None
                        if box_answer == "band":
                            image_slice = take_slice(_windowed(images, r["image"], windowed), axis, index)
                        curve = oracle_session(take_slice(labels, axis, index), int(r["label_value"]), first=first,
                                               click_rule=rule, max_clicks=max_clicks, box_answer=box_answer,
                                               image_slice=image_slice)
                    oracle_rows.append({"dice_curve": curve, "seconds_curve": [0.0] * max_clicks,
                                        "image": r["image"], "structure": r["structure"]})
                if oracle_rows:
                    name = f"oracle_{rule}" if box_answer == "family" else f"oracle_band_{rule}"
                    results.setdefault(name, {})[f"clicks:{first}"] = _with_groups(oracle_rows)
                    logger.info("%s, first %s: %d sessions, Dice@1 %.3f", name, first, len(oracle_rows),
                                results[name][f"clicks:{first}"]["dice_at"][0])
    return {"run": str(run_dir), "pairs_from": model, "sessions": len({(r["image"], r["structure"], r["slice"])
                                                                       for r in rows}),
            "max_clicks": max_clicks, "results": results}


def _windowed(images: Mapping[str, Path], stem: str, done: dict[str, np.ndarray]) -> np.ndarray:
    """The image ``stem`` windowed as served (the registry's window), read once."""
    from samri.config import load_registry
    from samri.volume import load_image, prepare_volume

    if stem not in images:
        raise SamriInputError("image", stem, f"no image given for this session ({sorted(images)})")
    if stem not in done:
        done[stem] = prepare_volume(load_image(images[stem], "image"), load_registry().window).windowed
    return done[stem]


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
    parser.add_argument("run_dir", help="a samri evaluate --protocol clicks output folder (2d or 3d)")
    parser.add_argument("--label", action="append", required=True, help="label map of each image (repeat)")
    parser.add_argument("--image", action="append", default=[],
                        help="image of each session (repeat; 2D runs): adds the intensity-band box oracle")
    parser.add_argument("--model", help="whose sessions define the pairs (default: the run's first model)")
    parser.add_argument("--out", help="write the JSON here (default: <run_dir>/oracle.json) and a .md beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = replay_run(args.run_dir, args.label, model=args.model, image_paths=args.image)
    out = Path(args.out or Path(args.run_dir) / "oracle.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    out.with_suffix(".md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
