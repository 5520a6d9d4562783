"""A full training run (stage 1 + stage 2), single-process or under ``torchrun`` (DDP).

Used by ``samri train``, ``python -m samri.train`` (torchrun) and the MONAI Label trainer.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from samri.checkpoints import save_decoder_checkpoint
from samri.embeddings import EmbeddingCache
from samri.train.data import DataStats, Study, split_by_study, stage1, write_manifest
from samri.train.stage2 import DecoderTrainer, SampleSource, TrainSettings

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of a run: the best decoder file (None on non-zero ranks) and its metrics."""

    checkpoint: Path | None
    best: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (1 process without torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); False if not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return torch.distributed.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def _epoch_order(n: int, rng: np.random.Generator, rank: int, world: int) -> list[int]:
    order = rng.permutation(n).tolist()  # same seed on every rank -> same permutation
    per_rank = len(order) // world if world > 1 else len(order)
    return order[rank::world][:per_rank]


def run_training(studies: Sequence[Study], *, model, out_dir: str | Path, settings: TrainSettings, window,
                 cache: EmbeddingCache, min_pixels: int = 30, axes: Sequence[int] = (2,),
                 val_fraction: float = 0.25, include_labels: Sequence[str] | None = None,
                 progress: bool = True, stop_check=None, val_studies: Sequence[str] | None = None) -> TrainResult:
    """Stage 1 then stage 2; writes ``out_dir/decoder.pt`` (best validation Dice) on rank 0.

    Args:
        model: a `samri.models.SamModel`; only ``model.mask_decoder`` is trained.
        stop_check: optional callable returning True to stop early (MONAI Label's stop request).
        val_studies: validate on these study ids instead of a random ``val_fraction`` split.
    """
    rank, world = dist_info()
    torch.manual_seed(settings.seed)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    indices, stats = stage1(studies, model, cache, window=window, min_pixels=min_pixels, axes=axes,
                            include_labels=include_labels, shard=(rank, world), progress=progress and rank == 0)
    if world > 1:
        torch.distributed.barrier()  # every rank's slices are on the shared disk cache now
    stage1_s = time.perf_counter() - start
    train_idx, val_idx = split_by_study(indices, val_fraction, settings.seed, val_studies)
    train_samples = [s for i in train_idx for s in i.samples]
    rng_val = np.random.default_rng(settings.seed)
    val_samples = [s for i in val_idx for s in i.samples]
    if len(val_samples) > settings.max_val_samples:
        val_samples = [val_samples[k] for k in sorted(rng_val.choice(len(val_samples), settings.max_val_samples,
                                                                     replace=False))]
    if rank == 0:
        write_manifest(out_dir / "manifest.json", indices, stats)
    source = SampleSource(indices, cache, model.cache_key(), model.input_size)
    decoder = _trainable_decoder(model, world)
    trainer = DecoderTrainer(model=model, source=source, settings=settings, decoder=decoder)
    baseline = trainer.validate(val_samples)
    logger.info("stage 1: %d studies, %d samples, %d slices encoded (%.1f s); baseline val %s",
                len(indices), len(train_samples) + len(val_samples), stats.slices_encoded, stage1_s, baseline)
    history, best, best_state = [], dict(baseline, epoch=0), _decoder_state(model)
    rng = np.random.default_rng(settings.seed + 1)
    for epoch in range(1, settings.epochs + 1):
        order = _epoch_order(len(train_samples), rng, rank, world)
        steps = range(0, len(order), settings.batch_size)
        if settings.max_steps_per_epoch:
            steps = list(steps)[: int(settings.max_steps_per_epoch)]
        bar = _bar(steps, f"epoch {epoch}/{settings.epochs}", progress and rank == 0)
        losses = []
        for step_start in bar:
            if stop_check is not None and stop_check():
                logger.info("stop requested: ending training after epoch %d", epoch - 1)
                break
            batch = [train_samples[k] for k in order[step_start:step_start + settings.batch_size]]
            losses.append(trainer.step(batch, np.random.default_rng(rng.integers(1 << 31)))["loss"])
        val = trainer.validate(val_samples)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, **val}
        history.append(record)
        logger.info("epoch %d: %s", epoch, record)
        if val["dice"] > best["dice"]:
            best, best_state = dict(val, epoch=epoch), _decoder_state(model)
        if stop_check is not None and stop_check():
            break
    path = None
    if rank == 0:
        model.mask_decoder.load_state_dict(best_state)
        metadata = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "version": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
                    "training_data": {"studies": stats.studies_used, "skipped": stats.skipped,
                                      "train_studies": [i.study.study_id for i in train_idx],
                                      "val_studies": [i.study.study_id for i in val_idx],
                                      "train_samples": len(train_samples), "val_samples": len(val_samples)},
                    "metrics": {"val": best, "baseline_val": baseline, "history": history},
                    "settings": {"lr": settings.lr, "epochs": settings.epochs, "batch_size": settings.batch_size,
                                 "min_pixels": min_pixels, "axes": list(axes), "world_size": world},
                    "point_prompts": point_prompt_mode(best), "seconds": round(time.perf_counter() - start, 1),
                    "stage1_seconds": round(stage1_s, 1)}
        path = save_decoder_checkpoint(out_dir / "decoder.pt", mask_decoder=model.mask_decoder,
                                       base_model=model.spec.base_name, preprocessing=model.preprocessing.to_dict(),
                                       metadata=metadata)
    return TrainResult(checkpoint=path, best=best, history=history, stats=stats.to_dict(), baseline=baseline)


def point_prompt_mode(val: dict[str, Any]) -> str:
    """Serve points-only clicks natively only if the decoder learned them (validation Dice of one
    interior point at least half the box Dice); otherwise keep the box search around the points."""
    return "native" if val.get("dice_point", 0.0) >= 0.5 * val.get("dice_box", 0.0) else "box_search"


def _trainable_decoder(model, world: int) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.mask_decoder.parameters():
        p.requires_grad_(True)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model.mask_decoder)
    return model.mask_decoder


def _decoder_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.mask_decoder.state_dict().items()}


def _bar(items, desc: str, show: bool):
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="step")
