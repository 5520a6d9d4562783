"""Command line of a training run, shared by ``samri train`` and ``python -m samri.train``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--studies", type=Path, required=True, help="MONAI Label studies folder (labels/final)")
    p.add_argument("--out", type=Path, required=True, help="run folder: decoder.pt, manifest.json")
    p.add_argument("--config", type=Path, default=None,
                   help="training YAML overlaid on configs/training.yaml (it needs only the keys that differ)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="0 = every sample")
    p.add_argument("--max-slices", type=int, default=None, help="stage-1 slice budget over all studies (0 = all)")
    p.add_argument("--max-val-samples", type=int, default=None, help="validation pairs")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--labels", default=None, help="comma list of label names to train on (default all)")
    p.add_argument("--publish", type=Path, default=None,
                   help="model folder to publish into (gated on validation Dice vs the live decoder)")
    p.add_argument("--model", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--decoder", default=None, help="start from this decoder-only checkpoint")
    p.add_argument("--cache-dir", type=Path, default=None)
    from samri.model.backends import BACKENDS, PRECISIONS

    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="what encodes the slices (stage 1); default: the registry entry's, as the server and "
                        "its trainer encode, so the embeddings and cache keys are the served ones. The decoder "
                        "being trained is PyTorch either way")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the encoder backend's precision; default: the registry entry's")


def command_line_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The training-config keys (YAML shape) the options given on the command line set."""
    out: dict[str, Any] = {key: value for key, value in (
        ("epochs", args.epochs), ("max_steps_per_epoch", args.max_steps_per_epoch), ("max_slices", args.max_slices),
        ("max_val_samples", args.max_val_samples)) if value is not None}
    if args.lr is not None:
        out["optimizer"] = {"lr": args.lr}
    if args.labels:
        out["include_labels"] = args.labels.split(",")
    return out


def train_from_args(args: argparse.Namespace) -> int:
    from samri.cli import default_cache_dir
    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache
    from samri.model.backends import apply_backend
    from samri.model.builders import load_model
    from samri.train.config import load_train_config
    from samri.train.run import dist_info, init_distributed, run_training
    from samri.train.stage1 import find_studies

    init_distributed()
    config = load_train_config(args.config, overrides=command_line_overrides(args), overrides_source="command line")
    registry = load_registry()
    model = load_model(registry.spec(args.model), checkpoint=args.checkpoint, decoder=args.decoder)
    apply_backend(model, args.backend, args.precision, parts=("encoder",))
    logger.info("stage 1 encodes with %s", model.backend_info)
    cache = EmbeddingCache(cache_dir=args.cache_dir or default_cache_dir())
    result = run_training(find_studies(args.studies), model=model, out_dir=args.out, window=registry.window,
                          cache=cache, **config.run_arguments())
    rank, _ = dist_info()
    if rank == 0:
        summary = {"checkpoint": str(result.checkpoint), "encoder": model.backend_info, "candidate": result.candidate,
                   "best": result.best, "baseline": result.baseline, "budget": result.budget,
                   "seconds": result.seconds}
        if args.publish:
            from samri.train.store import DecoderStore

            store = DecoderStore(args.publish, base_model=model.spec.base_name)
            summary["publish"] = store.publish(result.checkpoint, margin=config.gate_margin)
        print(json.dumps(summary, indent=1, default=str))
    return 0
