"""``samri evaluate``: SAMRI's evaluation protocol for one or more models on labelled MRI.

Registered in `samri.cli` with ``add_evaluate_parser(sub)``. Every input is checked before a
model is loaded or a slice encoded; bad input raises `samri.errors.SamriInputError`, which the
main CLI turns into exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path
from typing import Any

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

EPILOG = """\
models: --model NAME[@DECODER] may be repeated; each is evaluated on the same pairs and prompts.
  NAME is a registry name (`samri models`); @DECODER applies a decoder-only checkpoint published by
  the SAMRI trainer, e.g. --model litemedsam --model litemedsam@runs/decoder.pt compares LiteMedSAM
  with and without a fine-tuned decoder (reported as `litemedsam` and `litemedsam@decoder`).
  --checkpoint/--decoder given once apply to every model; given once per --model, in order.
structures: names from --label-names (JSON {name: value} or {image id: {name: value}}), else from a
  label_names.json next to the image (`samri sample-data` layout), else label_<value>.
outputs in --out: pairs.csv (row by row), summary.json (atomically, at the end), report.md + PNGs.
example:
  samri evaluate --image data/studies/colin27_t1.nii.gz \\
      --label data/studies/labels/final/colin27_t1.nii.gz --labels Putamen_L,Thalamus_L \\
      --model litemedsam --prompts box,point,box+point --slice-step 4 --variant bias --out runs/eval
"""


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("evaluate", help="SAMRI evaluation: Dice/HD95/NSD in mm, 2D or 3D, several models",
                              description=__doc__.split("\n\n")[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", action="append", type=Path, required=True, help="image (repeat, paired with --label)")
    p.add_argument("--label", action="append", type=Path, required=True, help="ground truth on the image's grid")
    p.add_argument("--model", action="append", default=None, help="NAME[@DECODER] (repeat); default: the registry's")
    p.add_argument("--checkpoint", action="append", default=None, help="full checkpoint (once, or once per --model)")
    p.add_argument("--decoder", action="append", default=None, help="decoder-only checkpoint (once, or per --model)")
    p.add_argument("--backend", action="append", default=None,
                   help="inference backend, torch | openvino[:fp32|bf16] | auto (repeat: every model runs with "
                        "each, results keyed MODEL[BACKEND]); default: the registry entry's")
    p.add_argument("--prompts", default="box,point,box+point", help="comma list of box, point, box+point")
    p.add_argument("--axis", type=int, choices=[0, 1, 2], default=2, help="slicing axis of the voxel grid")
    p.add_argument("--mode", choices=["2d", "3d"], default="2d", help="2d: every slice; 3d: one prompt + propagation")
    p.add_argument("--protocol", choices=["single", "clicks"], default="single",
                   help="single: one prompt per pair (Dice/HD95/NSD); clicks: first interaction + corrective "
                        "clicks through the server's request path (NoC@80/85/90, Dice after each click)")
    p.add_argument("--first", default="box,point", help="clicks: first interactions, comma list of box, point")
    p.add_argument("--max-clicks", type=int, default=20, help="clicks: interactions per session, the first included")
    p.add_argument("--client", choices=["slicer", "ohif", "ohif_no_history"], default="slicer",
                   help="clicks: slicer sends a client_id (each click refines the previous logits); ohif sends "
                        "points only and no client_id (the server's click history finds the logits); "
                        "ohif_no_history: no logits at all. ohif* need --first point")
    p.add_argument("--human-seconds", type=float, default=2.0, help="clicks: annotator seconds per interaction")
    p.add_argument("--max-slices-3d", type=int, default=96,
                   help="3d requests: slice budget, as the server's --conf max_slices_3d (0 = none)")
    p.add_argument("--propagation", action="append", default=[], metavar="KEY=VALUE",
                   help="3d: override a PropagationSettings field for every model (repeat), e.g. chain_logits=true")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--labels", default=None, help="comma list of structure names or values to evaluate")
    p.add_argument("--label-names", type=Path, default=None, help="JSON with structure names (see below)")
    p.add_argument("--min-size", type=int, default=30, help="smallest object area in a slice, pixels (SAMRI: 30)")
    p.add_argument("--slice-step", type=int, default=1, help="2d: only slices whose index is a multiple of this")
    p.add_argument("--max-pairs", type=int, default=None, help="2d: at most this many slices per structure and image")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="box edge jitter, fraction of the longest side (SAMRI ~0.04)")
    p.add_argument("--variant", action="append", default=[],
                   help="contrast-shift variant NAME[:STRENGTH]: bias, inverted, noise, rician, lowres (repeat)")
    p.add_argument("--seed", type=int, default=0, help="seed of jitter and variants")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="surface Dice tolerance, mm")
    p.add_argument("--resume", action="store_true", help="keep the rows of an interrupted run in --out")
    p.add_argument("--cache-dir", type=Path, default=None, help="keep embeddings on disk here (default: memory only)")
    p.add_argument("--batch-size", type=int, default=4, help="slices per encoder batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)
    return p


def _per_model(values: list[str] | None, n: int, field: str) -> list[str | None]:
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise SamriInputError(field, values, f"give it once (all models) or once per --model ({n})")
    return list(values)


def parse_models(args: argparse.Namespace, registry) -> list[dict]:
    """``[{key, spec, checkpoint, decoder}]`` from ``--model NAME[@DECODER]``, checked against the registry."""
    entries = args.model or [registry.default_model]
    checkpoints = _per_model(args.checkpoint, len(entries), "checkpoint")
    decoders = _per_model(args.decoder, len(entries), "decoder")
    out, seen = [], set()
    for text, checkpoint, decoder in zip(entries, checkpoints, decoders):
        name, _, own_decoder = str(text).partition("@")
        spec = registry.spec(name)  # SamriInputError("model", ...) for an unknown name
        decoder = own_decoder or decoder
        for field, path in (("checkpoint", checkpoint), ("decoder", decoder)):
            if path and not Path(path).expanduser().is_file():
                raise SamriInputError(field, path, "file not found")
        key = f"{name}@{Path(decoder).stem}" if decoder else name
        if checkpoint and args.checkpoint and len(args.checkpoint) > 1:
            key += f"#{Path(checkpoint).stem}"
        if key in seen:
            raise SamriInputError("model", text, "given twice")
        seen.add(key)
        out.append({"key": key, "spec": spec, "checkpoint": checkpoint, "decoder": decoder})
    return out


def parse_backends(values: list[str] | None) -> list[tuple[str, str, str] | None]:
    """``--backend`` values as `samri.bench.backends.parse_backend` tuples; ``[None]`` (the registry's) if none."""
    if not values:
        return [None]
    from samri.bench.backends import parse_backend

    parsed = [parse_backend(v) for v in values]
    names = [p[0] for p in parsed]
    if len(set(names)) != len(names):
        raise SamriInputError("backend", values, "a backend is given twice")
    return parsed


def read_label_names(path: Path | None) -> dict | None:
    if path is None:
        return None
    if not path.is_file():
        raise SamriInputError("label-names", str(path), "file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SamriInputError("label-names", str(path), f"invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SamriInputError("label-names", str(path), "must be a JSON object")
    return data


def _names_for(table: dict | None, image: Path) -> dict[str, int] | None:
    from samri.evaluation.protocol import image_id

    if table is None:
        return None
    per_image = table.get(image_id(image))
    chosen = per_image if isinstance(per_image, dict) else table
    try:
        return {str(k): int(v) for k, v in chosen.items() if not isinstance(v, dict)}
    except (TypeError, ValueError) as exc:
        raise SamriInputError("label-names", chosen, "values must be integer label values") from exc


def build_config(args: argparse.Namespace):
    from samri.evaluation.protocol import EvalConfig

    prompts = tuple(p.strip() for p in (args.prompts or "").split(",") if p.strip())
    labels = tuple(s.strip() for s in args.labels.split(",") if s.strip()) if args.labels else None
    if args.labels is not None and not labels:
        raise SamriInputError("labels", args.labels, "give at least one structure name")
    if args.batch_size < 1:
        raise SamriInputError("batch-size", args.batch_size, "must be at least 1")
    first = tuple(f.strip() for f in (args.first or "").split(",") if f.strip())
    return EvalConfig(prompts=prompts, mode=args.mode, axis=args.axis, min_size=args.min_size, jitter=args.jitter,
                      seed=args.seed, slice_step=args.slice_step, max_pairs=args.max_pairs,
                      nsd_tolerance_mm=args.nsd_tolerance, labels=labels, variants=tuple(args.variant),
                      protocol=args.protocol, first=first, max_clicks=args.max_clicks,
                      human_seconds_per_click=args.human_seconds, client=args.client).validate()


def parse_propagation(values: list[str] | None):
    """``KEY=VALUE`` overrides -> `samri.inference.propagation.PropagationSettings` (defaults when none).

    Raises:
        SamriInputError: ``propagation`` naming the item for a malformed item, unknown key or bad value.
    """
    from dataclasses import fields, replace

    from samri.inference.propagation import PropagationSettings

    settings = PropagationSettings()
    types = {f.name: type(getattr(settings, f.name)) for f in fields(settings)}
    changes = {}
    for item in values or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in types:
            raise SamriInputError("propagation", item, f"want KEY=VALUE with KEY one of {sorted(types)}")
        kind = types[key]
        try:
            if kind is bool:
                if text.strip().lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                changes[key] = text.strip().lower() in ("true", "1")
            else:
                changes[key] = kind(text)
        except ValueError as exc:
            raise SamriInputError("propagation", item, f"{key} must be a {kind.__name__}") from exc
    return replace(settings, **changes)


def command_line(args: argparse.Namespace) -> str:
    """The run as one ``samri evaluate`` command (recorded in summary.json and the report)."""
    words = ["samri", "evaluate"]
    for image, label in zip(args.image, args.label):
        words += ["--image", str(image), "--label", str(label)]
    for flag in ("model", "checkpoint", "decoder", "backend", "variant", "propagation"):
        for value in getattr(args, flag) or []:
            words += [f"--{flag}", str(value)]
    words += ["--prompts", args.prompts, "--mode", args.mode, "--axis", str(args.axis)]
    if args.protocol == "clicks":
        words += ["--protocol", "clicks", "--first", args.first, "--max-clicks", str(args.max_clicks)]
        if args.client != "slicer":
            words += ["--client", args.client]
    for flag in ("labels", "label_names", "min_size", "slice_step", "max_pairs", "jitter", "seed", "nsd_tolerance"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(words + ["--out", str(args.out)])


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Validate everything, load images and models, run, print the headline table; 0 on success."""
    from samri.config import load_registry
    from samri.evaluation.protocol import SegmenterRunner, evaluate, load_case, plan
    from samri.evaluation.report import machine_info
    from samri.inference.embeddings import EmbeddingCache
    from samri.inference.segmenter import PropagationBudget, Segmenter
    from samri.model.backends import apply_backend
    from samri.model.builders import load_model

    config = build_config(args)
    if args.max_slices_3d < 0:
        raise SamriInputError("max-slices-3d", args.max_slices_3d, "must be >= 0 (0 = no budget)")
    registry = load_registry()
    models = parse_models(args, registry)
    if len(args.image) != len(args.label):
        raise SamriInputError("label", [str(p) for p in args.label],
                              f"give one --label per --image ({len(args.image)} images, {len(args.label)} labels)")
    names = read_label_names(args.label_names)
    cases = [load_case(image, label, names=_names_for(names, image), wanted=config.labels)
             for image, label in zip(args.image, args.label)]
    plan(cases, config)  # every input error surfaces here, before a model is loaded
    backends = parse_backends(args.backend)
    propagation = parse_propagation(getattr(args, "propagation", None))
    cache = EmbeddingCache(cache_dir=args.cache_dir, max_memory_bytes=1 << 30)
    runners, described = {}, {}
    for m in models:
        for backend in backends:
            model = load_model(m["spec"], checkpoint=m["checkpoint"], decoder=m["decoder"])
            apply_backend(model, *(backend[1:] if backend else (None, None)))  # None: the registry entry's
            key = m["key"] if args.backend is None else f"{m['key']}[{backend[0]}]"
            runners[key] = SegmenterRunner(Segmenter(model, cache, propagation=propagation), batch_size=args.batch_size,
                                           progress=not args.no_progress,
                                           budget_3d=PropagationBudget(max_slices=args.max_slices_3d or None))
            decoder = m["decoder"] or getattr(m["spec"], "decoder", None)  # the registry's default decoder
            served = getattr(model, "backend_info", {}) or {"backend": "torch", "precision": "fp32"}
            described[key] = (f"{m['spec'].description or m['spec'].name}; "
                              f"weights {m['checkpoint'] or m['spec'].checkpoint}"
                              + (f"; decoder {decoder}" if decoder else "")
                              + f"; served by {served['backend']} {served['precision']}")
    meta = {"models": described, "command": command_line(args), "machine": machine_info()}
    if config.protocol == "clicks":
        from samri.evaluation.clicks_run import evaluate_clicks

        summary = evaluate_clicks(cases, runners, config, args.out, window=registry.window, resume=args.resume,
                                  progress=not args.no_progress, meta=meta)
        for model, by_first in summary["results"].items():
            for key, s in by_first.items():
                print(f"{model:24s} {key:12s} n={s['n']:5d} dice@1={s['dice_at'][0]} dice@5="
                      f"{s['dice_at'][min(4, len(s['dice_at']) - 1)]} noc85={s['noc']['85']} "
                      f"fail85={s['failure_rate']['85']} seconds85={s['seconds_to_85']}")
        print(f"wrote {args.out / 'summary.json'}, {args.out / 'sessions.jsonl'}, {args.out / 'report.md'}")
        return 0
    summary = evaluate(cases, runners, config, args.out, window=registry.window, resume=args.resume,
                       progress=not args.no_progress, meta=meta)
    for model, by_prompt in summary["results"].items():
        for prompt, s in by_prompt.items():
            buckets = " ".join(f"{b}={s['buckets'][b]['mean_dice']}" for b in ("small", "medium", "large"))
            print(f"{model:24s} {prompt:10s} n={s['n']:5d} dice={s['mean_dice']} hd95={s['hd95_mm']}mm "
                  f"nsd={s['nsd']} [{buckets}]")
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'pairs.csv'}, {args.out / 'report.md'}")
    return 0
