"""PNG figures of an evaluation run (matplotlib, Agg backend; small files).

* ``dice_boxplot.png``: Dice per model (columns) and size bucket, one box per prompt type; top row
  SAMRI tertile buckets, bottom row fixed-threshold buckets.
* ``variants.png``: Dice per contrast-shift variant, one box per prompt type, per model.
* ``overlays_<model>.png``: best (top) and worst (bottom) pairs: ground truth green, prediction
  red, prompt yellow, cropped around the object. Slices are drawn with the first in-plane voxel
  axis to the right and the second upwards (axial RAS files: neurological view).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from samri.evaluation.metrics import BUCKETS

PROMPT_COLORS = {"box": "#4c72b0", "point": "#dd8452", "box+point": "#55a868"}
DPI = 80


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path.name


def _grouped_boxes(ax, groups: Sequence[str], prompts: Sequence[str], values: Mapping[tuple[str, str], list[float]]):
    width = 0.8 / max(len(prompts), 1)
    for j, prompt in enumerate(prompts):
        data = [values.get((g, prompt), []) for g in groups]
        pos = [i + (j - (len(prompts) - 1) / 2) * width for i in range(len(groups))]
        keep = [(p, d) for p, d in zip(pos, data) if d]
        if keep:
            bp = ax.boxplot([d for _, d in keep], positions=[p for p, _ in keep], widths=width * 0.85,
                            patch_artist=True, showfliers=True, flierprops={"markersize": 2})
            for box in bp["boxes"]:
                box.set_facecolor(PROMPT_COLORS.get(prompt, "#999999"))
                box.set_alpha(0.8)
        ax.plot([], [], "s", color=PROMPT_COLORS.get(prompt, "#999999"), label=prompt)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)


def boxplot_figure(out: Path, rows: Sequence[Mapping], models: Sequence[str], prompts: Sequence[str]) -> str:
    plt = _plt()
    fig, axes = plt.subplots(2, len(models), figsize=(3.6 * len(models) + 0.6, 5.6), squeeze=False, sharey=True)
    for c, model in enumerate(models):
        for r, (column, title) in enumerate((("bucket_samri", "SAMRI tertiles"), ("bucket_fixed", "fixed thresholds"))):
            values: dict[tuple[str, str], list[float]] = {}
            for row in rows:
                if row["model"] == model and not row["variant"]:
                    values.setdefault((row[column], row["prompt"]), []).append(row["dice"])
                    values.setdefault(("all", row["prompt"]), []).append(row["dice"])
            ax = axes[r, c]
            _grouped_boxes(ax, ["all", *BUCKETS], prompts, values)
            ax.set_title(f"{model}\n{title}" if r == 0 else title, fontsize=9)
            if c == 0:
                ax.set_ylabel("Dice")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize=8, loc="upper center", ncol=len(prompts),
               bbox_to_anchor=(0.5, 1.04))
    fig.tight_layout()
    return _save(fig, out / "dice_boxplot.png")


def variants_figure(out: Path, rows: Sequence[Mapping], models: Sequence[str], prompts: Sequence[str]) -> str:
    plt = _plt()
    variants = ["original", *dict.fromkeys(r["variant"] for r in rows if r["variant"])]
    fig, axes = plt.subplots(1, len(models), figsize=(1.0 * len(variants) * len(models) + 1.6, 3.2),
                             squeeze=False, sharey=True)
    for c, model in enumerate(models):
        values: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            if row["model"] == model:
                values.setdefault((row["variant"] or "original", row["prompt"]), []).append(row["dice"])
        ax = axes[0, c]
        _grouped_boxes(ax, variants, prompts, values)
        ax.set_title(model, fontsize=9)
        if c == 0:
            ax.set_ylabel("Dice")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize=8, loc="upper center", ncol=len(prompts),
               bbox_to_anchor=(0.5, 1.08))
    fig.tight_layout()
    return _save(fig, out / "variants.png")


def _crop(masks: Sequence[np.ndarray], box: np.ndarray | None, shape: tuple[int, int], margin: int = 12):
    union = np.zeros(shape, dtype=bool)
    for m in masks:
        union |= m
    pts = np.argwhere(union)
    if box is not None:
        pts = np.vstack([pts, [[box[0], box[1]], [box[2], box[3]]]])
    lo = np.maximum(pts.min(axis=0).astype(int) - margin, 0)
    hi = np.minimum(pts.max(axis=0).astype(int) + margin + 1, shape)
    side = max(hi - lo)  # square crop, so tiles line up
    lo = np.clip(((lo + hi) // 2) - side // 2, 0, np.maximum(np.array(shape) - side, 0))
    hi = np.minimum(lo + side, shape)
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), lo


def _draw_case(ax, case: tuple) -> None:
    row, image, gt, pred, prompt, spacing = case
    rs, cs, lo = _crop([gt, pred], prompt.box, gt.shape)
    ax.imshow(image[rs, cs].T, cmap="gray", origin="lower", interpolation="nearest",
              aspect=float(spacing[1]) / float(spacing[0]))  # x: slice rows, y: slice columns, in mm
    for mask, color in ((gt, "#2ca02c"), (pred, "#d62728")):
        crop = mask[rs, cs].T.astype(float)
        if crop.any() and crop.min() < 1:
            ax.contour(crop, levels=[0.5], colors=color, linewidths=1.2)
    if prompt.box is not None:
        r0, c0, r1, c1 = prompt.box - np.array([lo[0], lo[1], lo[0], lo[1]])
        ax.add_patch(_plt().Rectangle((r0 - 0.5, c0 - 0.5), r1 - r0 + 1, c1 - c0 + 1, fill=False,
                                      edgecolor="#f0e442", linewidth=1.0))
    for r, c in prompt.points:
        ax.plot(r - lo[0], c - lo[1], "*", color="#f0e442", markersize=8, markeredgecolor="black", markeredgewidth=0.4)
    variant = f"~{row['variant']}" if row["variant"] else ""
    ax.set_title(f"{row['structure']} ({row['image']}{variant})\nslice {row['slice']}, {row['prompt']}: "
                 f"Dice {row['dice']:.2f}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def overlays_figure(out: Path, model: str, best: Sequence[tuple], worst: Sequence[tuple]) -> str | None:
    k = max(len(best), len(worst))
    if k == 0:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, k, figsize=(2.3 * k, 5.4), squeeze=False)
    for r, cases in enumerate((best, worst)):
        for c in range(k):
            if c < len(cases):
                _draw_case(axes[r, c], cases[c])
            else:
                axes[r, c].axis("off")
    fig.tight_layout(h_pad=1.8)
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", model)
    return _save(fig, out / f"overlays_{safe}.png")


def make_figures(out: Path, rows: Sequence[Mapping], summary: Mapping, showcase) -> dict:
    """Draw every figure; returns ``{"boxplot": name, "variants": name, "overlays": {model: name}}``."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    prompts = list(summary.get("prompts", []))
    figures: dict = {}
    if not rows:
        return figures
    figures["boxplot"] = boxplot_figure(out, rows, models, prompts)
    if any(r["variant"] for r in rows):
        figures["variants"] = variants_figure(out, rows, models, prompts)
    overlays = {}
    for model in models:
        if model in showcase.models():
            name = overlays_figure(out, model, *showcase.cases(model))
            if name:
                overlays[model] = name
    figures["overlays"] = overlays
    return figures


# --- the clicks protocol ------------------------------------------------------------------------
MODEL_STYLES = ("-", "--", "-.", ":")


def clicks_curves_figure(out: Path, summary: Mapping) -> str:
    """``clicks_curves.png``: mean Dice after each interaction, one panel per first interaction."""
    plt = _plt()
    firsts = list(dict.fromkeys(k for by_first in summary["results"].values() for k in by_first))
    fig, axes = plt.subplots(1, len(firsts), figsize=(4.2 * len(firsts), 3.2), squeeze=False)
    for ax, key in zip(axes[0], firsts):
        for n, (model, by_first) in enumerate(summary["results"].items()):
            s = by_first.get(key)
            if not s or not s.get("n"):
                continue
            clicks = np.arange(1, len(s["dice_at"]) + 1)
            ax.plot(clicks, s["dice_at"], MODEL_STYLES[n % len(MODEL_STYLES)], marker="o", markersize=3,
                    label=f"{model} (NoC@85 {s['noc']['85']:.2f})")
        for t in (0.80, 0.85, 0.90):
            ax.axhline(t, color="#999999", linewidth=0.6, alpha=0.6)
        ax.set_title(f"first interaction: {key.split(':', 1)[1]}", fontsize=9)
        ax.set_xlabel("interactions")
        ax.set_ylabel("mean Dice")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, out / "clicks_curves.png")


def _draw_session(ax, case: tuple) -> None:
    row, image, gt, pred, spacing = case
    pred = np.zeros_like(gt) if pred is None else pred
    box = None if row["box"] is None else np.asarray(row["box"], dtype=np.float64)
    rs, cs, lo = _crop([gt, pred], box, gt.shape)
    ax.imshow(image[rs, cs].T, cmap="gray", origin="lower", interpolation="nearest",
              aspect=float(spacing[1]) / float(spacing[0]))
    for mask, color in ((gt, "#2ca02c"), (pred, "#d62728")):
        crop = mask[rs, cs].T.astype(float)
        if crop.any() and crop.min() < 1:
            ax.contour(crop, levels=[0.5], colors=color, linewidths=1.2)
    if box is not None:
        r0, c0, r1, c1 = box - np.array([lo[0], lo[1], lo[0], lo[1]])
        ax.add_patch(_plt().Rectangle((r0 - 0.5, c0 - 0.5), r1 - r0 + 1, c1 - c0 + 1, fill=False,
                                      edgecolor="#f0e442", linewidth=1.0))
    axis = int(row["axis"])
    in_plane = [a for a in range(3) if a != axis]
    for point in row["clicks"]:
        ijk, label = point[:3], point[3]
        if ijk[axis] != row["slice"]:
            continue  # 3D: a click on another slice
        r, c = ijk[in_plane[0]] - lo[0], ijk[in_plane[1]] - lo[1]
        ax.plot(r, c, "*" if label else "x", color="#f0e442", markersize=7, markeredgecolor="black",
                markeredgewidth=0.4)
    ax.set_title(f"{row['structure']} ({row['image']})\nslice {row['slice']}, {row['first']}: NoC@85 "
                 f"{row['noc']['85']}, Dice {row['dice_curve'][-1]:.2f}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def clicks_worst_figure(out: Path, model: str, cases: Sequence[tuple]) -> str | None:
    """``clicks_worst_<model>.png``: the sessions with most interactions to 0.85, clicks drawn."""
    if not cases:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(cases), figsize=(2.4 * len(cases), 2.9), squeeze=False)
    for ax, case in zip(axes[0], cases):
        _draw_session(ax, case)
    fig.tight_layout()
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", model)
    return _save(fig, out / f"clicks_worst_{safe}.png")
