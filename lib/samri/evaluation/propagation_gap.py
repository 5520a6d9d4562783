"""Where a first box's 3D Dice is lost: each slice's answer, or the propagation that boxes and stops it.

The 3D clicks sessions (`samri.evaluation.clicks.session_3d`) start with the structure's tight box on its
largest slice; 3D propagation then prompts every other slice with the box of the previous slice's mask
and stops where its rules say the object ended. For each such session of a clicks run, the same model
answers the same first box three ways, each on the served code path (`Segmenter.propagate` and
`Segmenter.predict_slice`, with the server's slice budget):

- ``served``: the session's own first request (`samri.evaluation.clicks.client_params`, a box on one
  slice) through `samri.inference.request.run_request`; the user's box also bounds every propagated box
  in-plane. Its 3D Dice is the run's Dice@1.
- ``extent``: the same propagation bounded to the slices the structure spans: a stop rule that knows
  where the structure ends. What it gains over ``served`` is lost past the structure's ends.
- ``true_boxes``: every slice the structure spans prompted with its own tight box: propagation that
  knows each slice's box and extent. What it still misses is the decoder's answer to a box.
- ``slicer_roi``: what 3D Slicer sends when the annotator places its ROI around the structure in 3D (the
  structure's tight 3D box as ``roi``, no click), through `samri.inference.request.run_request`: the ROI's
  middle slice is prompted with the ROI's in-plane box and its slice range bounds propagation.

So ``true_boxes - served`` is what propagation costs, and ``1 - true_boxes`` what each slice's answer
costs. ``python -m samri.evaluation.propagation_gap RUN_DIR --image I --label L ...`` writes
``propagation_gap.json`` and ``.md`` into the run folder (`make evaluate` runs it on the 3D run).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from samri.errors import SamriInputError
from samri.evaluation.metrics import dice
from samri.geometry import put_slice, slice_boxes, take_slice
from samri.io import write_json, write_text

logger = logging.getLogger(__name__)

WAYS = ("served", "extent", "true_boxes", "slicer_roi")
#: the server's default 3D slice budget (`--conf max_slices_3d`), as `samri evaluate` runs the 3D sessions
DEFAULT_MAX_SLICES = 96


def session_gap(segmenter, volume, truth: np.ndarray, *, axis: int, index: int,
                max_slices: int | None = DEFAULT_MAX_SLICES) -> dict[str, float]:
    """3D Dice of one first box on slice ``index`` answered the three `WAYS`.

    Args:
        segmenter: a `samri.inference.segmenter.Segmenter` (or anything with its ``propagate`` and
            ``predict_slice``).
        volume: the `samri.volume.PreparedVolume` of the image.
        truth: ``(X, Y, Z)`` bool, the structure.
        axis, index: the slicing axis and the slice of the first box (the session's ``slice``).
        max_slices: the 3D slice budget (None: none).

    Returns:
        ``{"served": Dice, "extent": Dice, "true_boxes": Dice, "slicer_roi": Dice, "seed_slice": 2D Dice on
        slice index}``.
    """
    from samri.evaluation.clicks import client_params
    from samri.inference.prompts import SlicePrompt
    from samri.inference.request import run_request
    from samri.inference.segmenter import PropagationBudget

    truth = np.asarray(truth, dtype=bool)
    boxes = slice_boxes(truth, axis)
    if int(index) not in boxes:
        raise SamriInputError("slice", int(index), "the structure is not on the session's slice")
    box = boxes[int(index)]
    ends = (min(boxes), max(boxes))
    budget = PropagationBudget(max_slices=max_slices)
    served = run_request(segmenter, volume, client_params(axis, int(index), box, []), mode="3d", axis=axis,
                         budget=budget)  # the session's own first request
    extent = segmenter.propagate(volume, axis, {int(index): SlicePrompt(box=box.copy())}, bounds=ends,
                                 roi_box=box.copy(), budget=budget)
    out = {way: dice(np.asarray(result.mask, dtype=bool), truth) for way, result in (("served", served),
                                                                                      ("extent", extent))}
    per_slice = np.zeros_like(truth)
    for k, slice_box in boxes.items():
        put_slice(per_slice, axis, k, segmenter.predict_slice(volume, axis, k, SlicePrompt(box=slice_box)).mask)
    out["true_boxes"] = dice(per_slice, truth)
    out["seed_slice"] = dice(take_slice(per_slice, axis, int(index)), take_slice(truth, axis, int(index)))
    voxels = np.argwhere(truth)
    roi = [int(v) for pair in zip(voxels.min(axis=0), voxels.max(axis=0)) for v in pair]  # [i0, i1, ..., k1]
    slicer_roi = run_request(segmenter, volume, {"roi": roi}, mode="3d", axis=axis, budget=budget)
    out["slicer_roi"] = dice(np.asarray(slicer_roi.mask, dtype=bool), truth)
    return out


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean of each way (and the seed slice and the run's own Dice@1) over ``rows``, overall and per atlas
    (structure-name prefix: ``jhu``, ``ho``)."""
    keys = (*WAYS, "seed_slice", "run_dice_1")
    out: dict[str, Any] = {"n": len(rows), **{k: _mean(rows, k) for k in keys}}
    atlases: dict[str, list] = {}
    for r in rows:
        atlases.setdefault(str(r["structure"]).split("_")[0], []).append(r)
    out["by_atlas"] = {a: {"n": len(m), **{k: _mean(m, k) for k in keys}} for a, m in sorted(atlases.items())}
    return out


def measure_run(run_dir: str | Path, image_paths: Sequence[str | Path], label_paths: Sequence[str | Path], *,
                segmenter, model: str | None = None, window=None,
                max_slices: int | None = DEFAULT_MAX_SLICES) -> dict[str, Any]:
    """`session_gap` for every first-box 3D session of ``model`` in a clicks run.

    Args:
        run_dir: a ``samri evaluate --protocol clicks --mode 3d`` output folder (``sessions.jsonl``).
        image_paths, label_paths: the run's images and label maps (matched by file stem).
        segmenter: the model's `Segmenter`, served as in the run.
        model: whose sessions (default: the run's ``samri_lite`` if present, else its first model).
        window: the registry's `WindowSettings` (default: the registry's).

    Returns:
        ``{"run", "model", "max_slices", "sessions": [rows], "summary": summarise(rows)}``.
    """
    from samri.evaluation.variants import image_id
    from samri.volume import load_image, prepare_volume

    lines = Path(run_dir, "sessions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    rows = [r for r in rows if r.get("mode") == "3d" and r.get("first") == "box"]
    if not rows:
        raise SamriInputError("run_dir", str(run_dir), "has no 3D sessions with a first box (sessions.jsonl)")
    models = list(dict.fromkeys(r["model"] for r in rows))
    model = model or ("samri_lite" if "samri_lite" in models else models[0])
    rows = [r for r in rows if r["model"] == model]
    if not rows:
        raise SamriInputError("model", model, f"no 3D box sessions of this model in the run ({models})")
    if window is None:
        from samri.config import load_registry

        window = load_registry().window
    images = {image_id(p): Path(p) for p in image_paths}
    labels = {image_id(p): Path(p) for p in label_paths}
    out_rows = []
    for name in dict.fromkeys(r["image"] for r in rows):
        for field, given in (("image", images), ("label", labels)):
            if name not in given:
                raise SamriInputError(field, name, f"the run's image; none of the given files is named so "
                                                   f"({sorted(given)})")
        volume = prepare_volume(load_image(images[name], "image"), window)
        label_map = np.rint(np.asarray(load_image(labels[name], "label").array)).astype(np.int64)
        for r in (r for r in rows if r["image"] == name):
            gap = session_gap(segmenter, volume, label_map == int(r["label_value"]), axis=int(r["axis"]),
                              index=int(r["slice"]), max_slices=max_slices)
            out_rows.append({"image": name, "structure": r["structure"], "slice": int(r["slice"]),
                             "run_dice_1": float(r["dice_curve"][0]), **{k: round(v, 5) for k, v in gap.items()}})
            logger.info("%s %s: served %.3f extent %.3f true boxes %.3f Slicer ROI %.3f", name, r["structure"],
                        gap["served"], gap["extent"], gap["true_boxes"], gap["slicer_roi"])
    return {"run": str(run_dir), "model": model, "max_slices": max_slices, "sessions": out_rows,
            "summary": summarise(out_rows)}


def markdown(report: Mapping[str, Any]) -> str:
    """A table of 3D Dice@1 per way, overall and per atlas."""
    head = ("| sessions | n | run's Dice@1 | served | extent known | every slice's box known | "
            "seed slice (2D) | Slicer 3D ROI, no click |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    summary = report["summary"]
    groups = [("all", summary), *summary["by_atlas"].items()]
    for name, s in groups:
        lines.append(f"| {name} | {s['n']} | {s['run_dice_1']:.3f} | {s['served']:.3f} | {s['extent']:.3f} | "
                     f"{s['true_boxes']:.3f} | {s['seed_slice']:.3f} | {s['slicer_roi']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samri.evaluation.propagation_gap",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a samri evaluate --protocol clicks --mode 3d output folder")
    parser.add_argument("--image", action="append", required=True, help="each image of the run (repeat)")
    parser.add_argument("--label", action="append", required=True, help="its label map (repeat, same order)")
    parser.add_argument("--model", help="registry name whose sessions are replayed (default: samri_lite)")
    parser.add_argument("--cache-dir", help="embedding cache folder (as samri evaluate's --cache-dir)")
    parser.add_argument("--max-slices-3d", type=int, default=DEFAULT_MAX_SLICES,
                        help="3D slice budget, as the run's (0 = none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(args.image) != len(args.label):
        raise SamriInputError("label", args.label, f"give one --label per --image ({len(args.image)} images)")
    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache
    from samri.inference.segmenter import Segmenter
    from samri.model.backends import apply_backend
    from samri.model.builders import load_model

    registry = load_registry()
    name = args.model or "samri_lite"
    if name not in registry.models:
        raise SamriInputError("model", name, f"not in the registry ({sorted(registry.models)})")
    model = load_model(registry.models[name])
    apply_backend(model, None, None)  # the registry entry's backend, as samri evaluate serves it
    segmenter = Segmenter(model, EmbeddingCache(cache_dir=args.cache_dir, max_memory_bytes=1 << 30))
    report = measure_run(args.run_dir, args.image, args.label, segmenter=segmenter, model=name,
                         window=registry.window, max_slices=args.max_slices_3d or None)
    out = Path(args.run_dir) / "propagation_gap.json"
    write_json(out, report)
    table = markdown(report)
    write_text(out.with_suffix(".md"), table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
