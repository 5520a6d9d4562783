"""How a decoder answers each corrective click, before and after serving's merge and fill.

The clicks protocol (`samri.evaluation.clicks`) reports the Dice of what is served. That hides
where a weak correction comes from: the decoder's own answer to the click, or the serving rules
that then keep it local (`samri.inference.refine.local_merge`) and make every click hold
(`samri.inference.refine.fill_clicks`). This replays the protocol's 2D sessions (first box or
first point, then the protocol annotator's corrective clicks, each sent with the box, every click
so far and the previous served logits) and, at every corrective click, decodes the same prompt
twice: as served (`Segmenter.predict_slice`) and raw (the decoder alone: no merge, fill or box clip). It
reports the Dice change each gives, per click sign, and the pixels the raw answer removes from
the object and from the false positive.

    python -m samri.evaluation.click_response --image IMG --label LBL --labels A,B --model samri_lite \
        --max-pairs 2 --max-clicks 6 --out runs/click-response.json

Frames: masks ``(H, W)`` bool slice pixels; clicks ``(r, c)``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from samri.annotator import slice_session
from samri.evaluation.metrics import dice
from samri.inference.prompts import SlicePrompt

SIGNS = {1: "positive", 0: "negative"}
#: a Dice change smaller than this is counted as no change
CHANGED = 0.005


@dataclass
class ClickRecord:
    """One corrective click: its sign, its index in the session (1 = the first correction) and
    the Dice of the previous served mask, of the raw decoder answer and of the served answer."""

    label: int
    index: int
    before: float
    raw: float
    served: float
    raw_object_removed: int
    raw_extra_removed: int
    raw_object_added: int
    raw_extra_added: int
    raw_follows: bool


@dataclass
class ResponseSummary:
    """Per click sign: count, mean Dice change of the raw and served answers, how often each is
    worse / better by more than `CHANGED`, and the raw answer's mean pixel changes."""

    records: list[ClickRecord] = field(default_factory=list)

    def by_sign(self) -> dict[str, dict[str, Any]]:
        out = {}
        for label, name in SIGNS.items():
            rows = [r for r in self.records if r.label == label]
            if not rows:
                continue
            entry: dict[str, Any] = {"n": len(rows), "raw_follows": _share(r.raw_follows for r in rows)}
            for key in ("raw", "served"):
                delta = np.array([getattr(r, key) - r.before for r in rows])
                entry[key] = {"dice_change": round(float(delta.mean()), 4),
                              "worse": int((delta < -CHANGED).sum()), "better": int((delta > CHANGED).sum())}
            first = [r for r in rows if r.index == 1]
            if first:
                entry["first_correction"] = {"n": len(first), **{
                    f"{key}_dice_change": round(float(np.mean([getattr(r, key) - r.before for r in first])), 4)
                    for key in ("raw", "served")}}
            entry["raw_pixels"] = {key: round(float(np.mean([getattr(r, f"raw_{key}") for r in rows])), 1)
                                   for key in ("object_removed", "extra_removed", "object_added", "extra_added")}
            out[name] = entry
        return out


def _share(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 3) if flags else 0.0


def session_response(served, raw, volume, axis: int, index: int, truth: np.ndarray, *, first: str,
                     max_clicks: int) -> list[ClickRecord]:
    """One protocol session on slice ``index`` (`samri.annotator.slice_session`, the protocol's own
    annotator); a `ClickRecord` per corrective click.

    Args:
        served: a `samri.inference.segmenter.Segmenter` as the app serves (merge and fill on); the
            session goes on with its answers.
        raw: the same model with ``click_merge="global"``, ``click_fill=None`` and ``box_clip=False``.
        truth: ``(H, W)`` bool ground truth of the slice.
        max_clicks: interactions, the first included (so ``max_clicks - 1`` corrections at most).
    """
    truth = np.asarray(truth, dtype=bool)
    geom = raw.slice_geometry(volume, axis)
    embedding = raw.embedding(volume, axis, index)
    records: list[ClickRecord] = []
    previous: list[np.ndarray] = []

    def decode(prompt: SlicePrompt) -> tuple[np.ndarray, Any]:
        answer = served.predict_slice(volume, axis, index, prompt)
        if prompt.mask_logits is not None:  # a correction: its click is the prompt's last point
            bare = raw.decode(embedding, geom, prompt).mask
            records.append(_record(len(records) + 1, prompt, previous[-1], bare, answer.mask, truth))
        previous.append(answer.mask)
        return answer.mask, answer.low_res_logits

    slice_session(decode, truth, first=first, max_clicks=max_clicks)
    return records


def _record(index: int, prompt: SlicePrompt, before: np.ndarray, bare: np.ndarray, served: np.ndarray,
            truth: np.ndarray) -> ClickRecord:
    """The `ClickRecord` of the correction ``prompt`` ends with; masks ``(H, W)`` bool."""
    label = int(prompt.labels[-1])
    r, c = np.clip(np.round(prompt.points[-1]).astype(int), 0, np.array(truth.shape) - 1)
    return ClickRecord(label=label, index=index, before=dice(before, truth), raw=dice(bare, truth),
                       served=dice(served, truth),
                       raw_object_removed=int((before & ~bare & truth).sum()),
                       raw_extra_removed=int((before & ~bare & ~truth).sum()),
                       raw_object_added=int((~before & bare & truth).sum()),
                       raw_extra_added=int((~before & bare & ~truth).sum()),
                       raw_follows=bool(bare[r, c] == bool(label)))


def click_response(model, cache, cases: Sequence, config, window, *, progress: bool = False) -> dict[str, Any]:
    """The protocol's 2D sessions of ``cases`` (`samri.evaluation.protocol.enumerate_pairs` with
    ``config``), each first interaction of ``config.first``; ``{first: ResponseSummary.by_sign()}``."""
    from tqdm.auto import tqdm

    from samri.evaluation.protocol import enumerate_pairs
    from samri.geometry import take_slice
    from samri.inference.segmenter import Segmenter
    from samri.volume import prepare_volume

    served = Segmenter(model, cache)
    raw = Segmenter(model, cache, click_merge="global", click_fill=None, box_clip=False)
    pairs = enumerate_pairs(cases, config)
    summaries = {first: ResponseSummary() for first in config.first}
    for case in cases:
        volume = prepare_volume(case.image, window)
        mine = [p for p in pairs if p.image == case.name]
        for pair in tqdm(mine, desc=f"{case.name} click response", unit="slice", disable=not progress):
            truth = take_slice(case.label, config.axis, pair.slice) == pair.value
            for first in config.first:
                summaries[first].records += session_response(served, raw, volume, config.axis, pair.slice, truth,
                                                             first=first, max_clicks=config.max_clicks)
    return {first: {"sessions": len(pairs), **s.by_sign()} for first, s in summaries.items()}


def render_markdown(result: dict[str, Any]) -> str:
    """One table row per (first interaction, click sign)."""
    lines = ["| first | click | n | raw decoder: Dice change (worse / better) | served: Dice change (worse / better) "
             "| first correction raw / served | raw answer removes object / extra px | raw follows the click |",
             "|---|---|---|---|---|---|---|---|"]
    for first, entry in result.items():
        for sign in SIGNS.values():
            s = entry.get(sign)
            if not s:
                continue
            fc = s.get("first_correction", {})
            first_cell = f"{fc['raw_dice_change']:+.3f} / {fc['served_dice_change']:+.3f} (n {fc['n']})" if fc else "-"
            lines.append(f"| {first} | {sign} | {s['n']} | {s['raw']['dice_change']:+.3f} ({s['raw']['worse']} / "
                         f"{s['raw']['better']}) | {s['served']['dice_change']:+.3f} ({s['served']['worse']} / "
                         f"{s['served']['better']}) | "
                         + first_cell + f" | {s['raw_pixels']['object_removed']} / {s['raw_pixels']['extra_removed']} "
                         f"| {s['raw_follows']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from samri.config import load_registry
    from samri.evaluation.protocol import EvalConfig
    from samri.evaluation.variants import load_case
    from samri.inference.embeddings import EmbeddingCache
    from samri.io import write_json, write_text
    from samri.model.backends import apply_backend
    from samri.model.builders import load_model

    p = argparse.ArgumentParser(prog="python -m samri.evaluation.click_response", description=__doc__.split("\n")[0])
    p.add_argument("--image", action="append", required=True, type=Path, help="image (repeat, paired with --label)")
    p.add_argument("--label", action="append", required=True, type=Path)
    p.add_argument("--labels", required=True, help="comma list of structure names")
    p.add_argument("--model", default=None, help="registry name (default: the registry's)")
    p.add_argument("--decoder", default=None, help="decoder-only checkpoint to apply")
    p.add_argument("--first", default="box,point")
    p.add_argument("--max-pairs", type=int, default=2)
    p.add_argument("--max-clicks", type=int, default=6)
    p.add_argument("--axis", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True, help="JSON file (a .md beside it)")
    args = p.parse_args(argv)
    if len(args.image) != len(args.label):
        p.error("give one --label per --image")
    config = EvalConfig(mode="2d", axis=args.axis, max_pairs=args.max_pairs, labels=tuple(args.labels.split(",")),
                        protocol="clicks", first=tuple(args.first.split(",")), max_clicks=args.max_clicks).validate()
    registry = load_registry()
    model = load_model(registry.spec(args.model or registry.default_model), decoder=args.decoder)
    apply_backend(model)
    cases = [load_case(i, lb, wanted=config.labels) for i, lb in zip(args.image, args.label)]
    result = click_response(model, EmbeddingCache(cache_dir=args.cache_dir), cases, config, registry.window,
                            progress=True)
    info = getattr(model, "decoder_info", None) or {}
    served = getattr(model, "backend_info", None) or {}
    out = {"model": args.model or registry.default_model,
           "decoder": {"file": Path(info["path"]).name, "version": info.get("version"),
                       "recipe_config": info.get("recipe_config")} if info else None,
           "backend": {k: served[k] for k in ("backend", "precision") if k in served},
           "images": [str(i) for i in args.image],
           "labels": list(config.labels), "max_pairs": args.max_pairs, "max_clicks": args.max_clicks,
           "results": result}
    write_json(args.out, out)
    write_text(args.out.with_suffix(".md"), render_markdown(result))
    print(render_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
