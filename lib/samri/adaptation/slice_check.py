"""Does the scorer's per-slice uncertainty point an annotator at the slices the model gets wrong?

For each slice of a study: the active-learning scorer's uncertainty
(`samri.activelearning.uncertainty.study_uncertainty`, no annotator prompt, the value
`samri_uncertainty` reports per slice in ``details.top_slices``) and the slice's real quality: the
mean Dice of a tight ground-truth box prompt for every structure of at least ``min_pixels`` pixels on
it (the decoder under test, the cached embedding). The Spearman rank correlation between uncertainty
and ``1 - Dice`` over all slices says whether the slices ranked most uncertain are the worst ones.
``python -m samri.adaptation.slice_check`` runs it on the held-out slices of an ``adapt-sim`` round.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from samri.geometry import take_slice

logger = logging.getLogger(__name__)

__all__ = ["slice_box_dice", "spearman", "uncertainty_vs_dice"]


def slice_box_dice(segmenter, volume, label: np.ndarray, index: int, *, axis: int = 2,
                   min_pixels: int = 30) -> float | None:
    """Mean Dice of a tight box per structure on slice ``index`` (None when no structure is big enough).

    Args:
        label: ``(X, Y, Z)`` integer ground truth on the volume's grid.
    """
    from samri.inference.prompts import SlicePrompt
    from samri.inference.propagation import mask_box

    gt_slice = take_slice(label, axis, index)
    values, counts = np.unique(gt_slice[gt_slice > 0], return_counts=True)
    scores = []
    for value in values[counts >= min_pixels]:
        gt = gt_slice == value
        pred = segmenter.predict_slice(volume, axis, index, SlicePrompt(box=mask_box(gt))).mask
        scores.append(2.0 * np.logical_and(pred, gt).sum() / (pred.sum() + gt.sum()))
    return float(np.mean(scores)) if scores else None


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho (`scipy.stats.spearmanr`); NaN with fewer than 3 values."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 else float("nan")


#: the parts of the scorer's per-slice value, each oriented so that higher = less sure
COMPONENTS = ("1-iou", "1-stability", "1-agreement", "fill")


def _components(s) -> dict[str, float]:
    return {"1-iou": 1.0 - s.iou, "1-stability": 1.0 - s.stability, "1-agreement": 1.0 - s.agreement,
            "fill": s.fill}


def uncertainty_vs_dice(segmenter, studies: Sequence[tuple[Any, np.ndarray, Sequence[int]]], settings, *,
                        axis: int = 2) -> dict[str, Any]:
    """Per-slice uncertainty against per-slice box Dice over ``studies``.

    Args:
        studies: ``(prepared volume, label array, slice indices)`` per study.
        settings: `samri.activelearning.config.UncertaintySettings` (the scorer's).

    Returns:
        ``{"rho": Spearman(uncertainty, 1 - Dice), "component_rho": the same for each of `COMPONENTS`,
        "slices": n, "rows": [{study, slice, uncertainty, dice, <components>}],
        "worst_decile_dice", "best_decile_dice"}``: mean Dice of the 10 % most / least uncertain slices.
    """
    from samri.activelearning.uncertainty import study_uncertainty

    rows = []
    for k, (volume, label, indices) in enumerate(studies):
        scored = study_uncertainty(segmenter, volume, sorted(indices), settings, axis=axis)
        for s in scored.slices:
            dice = slice_box_dice(segmenter, volume, label, s.index, axis=axis)
            if dice is not None:
                rows.append({"study": k, "slice": s.index, "uncertainty": round(s.value, 4), "dice": round(dice, 4),
                             **{name: round(value, 4) for name, value in _components(s).items()}})
    unc = np.array([r["uncertainty"] for r in rows])
    dice = np.array([r["dice"] for r in rows])
    order = np.argsort(-unc)
    tenth = max(1, len(rows) // 10)
    parts = {name: round(spearman([r[name] for r in rows], 1.0 - dice), 3) for name in COMPONENTS} if rows else {}
    return {"rho": round(spearman(unc, 1.0 - dice), 3), "component_rho": parts, "slices": len(rows), "rows": rows,
            "worst_decile_dice": round(float(dice[order[:tenth]].mean()), 3) if rows else None,
            "best_decile_dice": round(float(dice[order[-tenth:]].mean()), 3) if rows else None}


def main(argv: Sequence[str] | None = None) -> int:
    """Held-out slices of one ``adapt-sim`` round (those its clicks sessions used: already encoded)."""
    from samri.activelearning.config import load_al_config
    from samri.adaptation.client import live_decoder
    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache
    from samri.inference.segmenter import Segmenter
    from samri.io import write_text
    from samri.model.builders import load_model
    from samri.volume import load_image, prepare_volume

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="adapt-sim output folder")
    p.add_argument("--round", type=int, default=0, help="finished-study count whose held-out sessions give the slices")
    p.add_argument("--decoder", default="live", help="'live' (the run's live decoder), 'base', or a decoder file")
    p.add_argument("--split", choices=["test", "annotate"], default="test",
                   help="test: the held-out studies (slices of round --round's sessions); annotate: the finished "
                        "studies (slices of their annotation sessions), where a choice may be made")
    args = p.parse_args(argv)
    record = json.loads((args.run / "summary.json").read_text())
    cohort = Path(record["config"]["cohort"])
    registry = load_registry()
    if args.decoder == "live":
        decoder = live_decoder(args.run / "app")[1]
    else:
        decoder = None if args.decoder == "base" else Path(args.decoder)
    model = load_model(registry.spec(record["config"]["model"]), decoder=decoder)
    segmenter = Segmenter(model, EmbeddingCache(cache_dir=args.run / "cache", max_memory_bytes=1 << 30))
    if args.split == "test":
        folders, ids = [args.run / "rounds" / f"k{args.round}_heldout"], list(record["heldout"])
    else:
        folders = sorted((args.run / "rounds").glob("annotate_*"))
        ids = [f.name.removeprefix("annotate_") for f in folders]
    sessions = [json.loads(line) for f in folders for line in (f / "sessions.jsonl").read_text().splitlines()]
    studies = []
    for sid in ids:
        volume = prepare_volume(load_image(cohort / f"{sid}.nii.gz"), registry.window)
        label = np.rint(np.asarray(load_image(cohort / "labels" / "final" / f"{sid}.nii.gz").array)).astype(np.int32)
        studies.append((volume, label, sorted({r["slice"] for r in sessions if r["image"] == sid})))
    result = uncertainty_vs_dice(segmenter, studies, load_al_config().uncertainty)
    suffix = "" if args.split == "test" else "_annotate"
    out = args.run / f"slice_check_k{args.round}_{Path(str(args.decoder)).stem}{suffix}.json"
    write_text(out, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), f"-> {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
