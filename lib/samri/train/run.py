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
from typing import Any, Callable, Sequence

import numpy as np
import torch

from samri.inference.embeddings import EmbeddingCache
from samri.inference.shape_prior import ShapePriors, ShapePriorSettings
from samri.intensity import WindowSettings
from samri.model.checkpoints import save_decoder_checkpoint
from samri.train.config import TrainConfig, TrainSettings
from samri.train.stage1 import DataStats, Study, split_by_study, stage1, write_manifest
from samri.train.stage2 import DecoderTrainer, SampleSource

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of a run.

    Attributes:
        checkpoint: ``decoder.pt`` holding the ``candidate`` (None on non-zero ranks).
        best: validation of the best decoder overall, the starting one (epoch 0) included; the
            in-memory ``model.mask_decoder`` is left holding it.
        candidate: validation of the best *trained* epoch (epoch >= 1, at least one step), which
            is what ``decoder.pt`` holds and what the publish gate judges; epoch 0 (the starting
            decoder) only when no epoch took a step.
        budget: what the run used: slices, steps, validation pairs (see `run_training`).
        seconds: wall seconds of ``stage1``, ``stage2`` (optimiser steps), ``validation`` and ``total``.
        priors_checkpoint: with shape priors (``shape_prior_weight`` > 0), ``start_with_shape_priors.pt``: the
            *starting* decoder with the studies' shape priors, which a store publishes when the gate refuses
            the trained one (`samri.train.store.DecoderStore.publish_shape_priors`); else None.
    """

    checkpoint: Path | None
    best: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    candidate: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    priors_checkpoint: Path | None = None


#: a progress callback: gets one event dict (``phase`` plus counters), must return fast.
ProgressFn = Callable[[dict[str, Any]], None]
#: prompt modes every validation pass scores (each validation pair is decoded once per mode).
VAL_MODES = ("box", "box+point", "point")


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
                 cache: EmbeddingCache, min_pixels: int = TrainConfig.min_pixels,
                 axes: Sequence[int] = TrainConfig.axes, val_fraction: float = TrainConfig.val_fraction,
                 include_labels: Sequence[str] | None = None, progress: bool = True,
                 stop_check: Callable[[], bool] | None = None, val_studies: Sequence[str] | None = None,
                 on_progress: ProgressFn | None = None) -> TrainResult:
    """Stage 1 then stage 2; writes ``out_dir/decoder.pt`` (the best trained epoch) on rank 0.

    Budget: stage 1 encodes at most ``settings.max_slices`` new slices (labelled slices already
    cached are used too), an epoch takes at most ``settings.max_steps_per_epoch`` steps of
    ``settings.batch_size`` samples, and every validation (the starting decoder, then each epoch)
    scores at most ``settings.max_val_samples`` pairs with each of `VAL_MODES`. None = unbounded.
    ``TrainResult.budget`` and ``.seconds`` say what was used.

    Args:
        model: a `samri.model.builders.SamModel`; only ``model.mask_decoder`` is trained.
        progress: tqdm bars (stage 1 and epochs) on rank 0; without them, log lines every ~10% of an epoch.
        stop_check: optional callable returning True to stop early (MONAI Label's stop request).
        val_studies: validate on these study ids instead of a random ``val_fraction`` split.
        on_progress: rank 0 calls it with events ``{"phase": "stage1" | "stage2" | "validation", ...}``:
            stage-1 counters (see `samri.train.stage1.stage1`), every step ``epoch``, ``total_epochs``,
            ``step``, ``total_steps``, ``loss`` (the epoch's running mean), and validation
            ``pairs_done``/``pairs_total`` then ``val`` (its figures) with ``best``.
    """
    rank, world = dist_info()
    emit = on_progress if rank == 0 and on_progress is not None else (lambda event: None)
    torch.manual_seed(settings.seed)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    seconds = {"stage1": 0.0, "stage2": 0.0, "validation": 0.0}
    indices, stats = stage1(studies, model, cache, window=window, min_pixels=min_pixels, axes=axes,
                            include_labels=include_labels, shard=(rank, world), progress=progress and rank == 0,
                            max_slices=settings.max_slices, on_progress=emit)
    if world > 1:
        torch.distributed.barrier()  # every rank's slices are on the shared disk cache now
    seconds["stage1"] = time.perf_counter() - start
    train_idx, val_idx = split_by_study(indices, val_fraction, settings.seed, val_studies)
    train_samples = [s for i in train_idx for s in i.samples]
    rng_val = np.random.default_rng(settings.seed)
    val_samples = [s for i in val_idx for s in i.samples]
    if len(val_samples) > settings.max_val_samples:
        val_samples = [val_samples[k] for k in sorted(rng_val.choice(len(val_samples), settings.max_val_samples,
                                                                     replace=False))]
    if rank == 0:
        write_manifest(out_dir / "manifest.json", indices, stats)
    source = SampleSource(indices, cache, model.cache_key(), model.input_size, window=window)
    decoder = _trainable_decoder(model, world)
    trainer = DecoderTrainer(model=model, source=source, settings=settings, decoder=decoder)
    n_steps = _steps_per_epoch(len(train_samples) // world if world > 1 else len(train_samples), settings)
    budget = {"max_slices": settings.max_slices, "slices_labelled": stats.slices_labelled,
              "slices_used": stats.slices_used, "slices_encoded": stats.slices_encoded,
              "slices_cached": stats.slices_used - stats.slices_encoded if world == 1 else None,
              "train_samples": len(train_samples), "batch_size": settings.batch_size,
              "max_steps_per_epoch": settings.max_steps_per_epoch, "steps_per_epoch": n_steps,
              "epochs": settings.epochs, "steps": 0, "val_pairs": len(val_samples),
              "val_prompts": len(val_samples) * len(VAL_MODES), "validations": 0}

    val_priors = validation_shape_priors(train_idx, val_idx, settings, axes=axes, include_labels=include_labels,
                                         window=window)
    budget["val_shape_priors"] = 0 if val_priors is None else len(val_priors)
    if val_priors is not None:
        logger.info("validating named sessions with %d sections of %d structures from the training studies",
                    len(val_priors), len(val_priors.names))

    def validate(epoch: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        if rank == 0:
            logger.info("validating %s on %d pairs x %d prompt modes", f"epoch {epoch}" if epoch else
                        "the starting decoder", len(val_samples), len(VAL_MODES))
        emit({"phase": "validation", "epoch": epoch, "total_epochs": settings.epochs, "pairs_done": 0,
              "pairs_total": len(val_samples) * len(VAL_MODES)})
        val = trainer.validate(val_samples, VAL_MODES, on_batch=lambda done, total: emit(
            {"phase": "validation", "epoch": epoch, "total_epochs": settings.epochs, "pairs_done": done,
             "pairs_total": total}))
        if settings.validation_clicks:
            val.update(trainer.validate_clicks(val_samples, max_clicks=settings.validation_clicks,
                                               shape_priors=val_priors, on_sample=lambda done, total: emit(
                {"phase": "validation", "epoch": epoch, "total_epochs": settings.epochs, "clicks_done": done,
                 "clicks_total": total})))
        val["score"] = selection_score(val)
        seconds["validation"] += time.perf_counter() - t0
        budget["validations"] += 1
        return val

    baseline = validate(0)
    logger.info("stage 1: %d studies, %d samples, %d of %d labelled slices used, %d encoded (%.1f s); "
                "baseline val %s", len(indices), len(train_samples) + len(val_samples), stats.slices_used,
                stats.slices_labelled, stats.slices_encoded, seconds["stage1"], baseline)
    initial = _decoder_state(model)
    history, best, best_state = [], dict(baseline, epoch=0), initial
    candidate, candidate_state = None, None
    emit({"phase": "validation", "epoch": 0, "total_epochs": settings.epochs, "val": baseline, "best": best})
    rng = np.random.default_rng(settings.seed + 1)
    for epoch in range(1, settings.epochs + 1):
        order = _epoch_order(len(train_samples), rng, rank, world)
        steps = list(range(0, len(order), settings.batch_size))[:n_steps]
        bar = _bar(steps, f"epoch {epoch}/{settings.epochs}", progress and rank == 0)
        losses: list[float] = []
        t0 = time.perf_counter()
        for step_start in bar:
            if stop_check is not None and stop_check():
                logger.info("stop requested: ending training after epoch %d", epoch - 1)
                break
            batch = [train_samples[k] for k in order[step_start:step_start + settings.batch_size]]
            losses.append(trainer.step(batch, np.random.default_rng(rng.integers(1 << 31)))["loss"])
            budget["steps"] += 1
            emit({"phase": "stage2", "epoch": epoch, "total_epochs": settings.epochs, "step": len(losses),
                  "total_steps": len(steps), "loss": float(np.mean(losses))})
            if not progress and rank == 0 and len(losses) % max(1, len(steps) // 10) == 0:
                logger.info("epoch %d/%d: step %d/%d, loss %.4f", epoch, settings.epochs, len(losses), len(steps),
                            float(np.mean(losses)))
        seconds["stage2"] += time.perf_counter() - t0
        val = validate(epoch)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None,
                  "steps": len(losses), **val}
        history.append(record)
        logger.info("epoch %d: %s", epoch, record)
        new_candidate = bool(losses) and (candidate is None or val["score"] > candidate["score"])
        if new_candidate or val["score"] > best["score"]:
            state = _decoder_state(model)
            if new_candidate:
                candidate, candidate_state = dict(val, epoch=epoch), state
            if val["score"] > best["score"]:
                best, best_state = dict(val, epoch=epoch), state
        emit({"phase": "validation", "epoch": epoch, "total_epochs": settings.epochs, "val": val, "best": best})
        if stop_check is not None and stop_check():
            break
    if candidate is None:  # no epoch took a step: the file holds the starting decoder (the gate refuses it)
        candidate, candidate_state = dict(baseline, epoch=0), initial
    elif settings.validation_clicks and point_prompt_mode(candidate) == "single":
        candidate = choose_lone_point_threshold(trainer, model, candidate, candidate_state, val_samples,
                                                max_clicks=settings.validation_clicks)
        seconds["validation"] += candidate["lone_point_threshold_choice"]["seconds"]
    seconds = {k: round(v, 1) for k, v in seconds.items()}
    seconds["total"] = round(time.perf_counter() - start, 1)
    path = priors_path = None
    if rank == 0:
        priors = None
        if settings.shape_prior_weight > 0:
            t0 = time.perf_counter()
            priors = study_shape_priors(studies, axes=axes, include_labels=include_labels,
                                        settings=shape_prior_settings(settings), window=window)
            seconds["shape_priors"] = round(time.perf_counter() - t0, 1)
            logger.info("shape priors: %d sections of %d structures (%.1f s)", len(priors), len(priors.names),
                        seconds["shape_priors"])
        path = _save(model, out_dir, candidate_state, settings, stats, train_idx, val_idx, budget, seconds,
                     min_pixels=min_pixels, axes=axes, world=world, priors=priors,
                     metrics={"val": candidate, "baseline_val": baseline, "best_overall": best, "history": history})
        if priors is not None:  # the starting decoder with today's shapes, in case the gate refuses the trained one
            priors_path = _save(model, out_dir, initial, settings, stats, train_idx, val_idx, budget, seconds,
                                min_pixels=min_pixels, axes=axes, world=world, priors=priors,
                                name="start_with_shape_priors.pt",
                                metrics={"val": dict(baseline, epoch=0), "baseline_val": baseline, "best_overall": best,
                                         "history": history})
    model.mask_decoder.load_state_dict(best_state)
    return TrainResult(checkpoint=path, best=best, history=history, stats=stats.to_dict(), baseline=baseline,
                       candidate=candidate, budget=budget, seconds=seconds,
                       priors_checkpoint=priors_path)


def choose_lone_point_threshold(trainer: DecoderTrainer, model, candidate: dict[str, Any],
                                state: dict[str, torch.Tensor], val_samples, *, max_clicks: int) -> dict[str, Any]:
    """Pick the candidate decoder's ``lone_point_threshold`` on the validation pairs: 0, the registry's
    value and the one it trained under, by mean Dice of the first-point clicks sessions (a tie keeps the
    one it trained under). A decoder fine-tuned on finished studies may no longer spill around a lone
    point, and then the shift only shrinks its answer (docs/ADAPTATION.md).

    Returns ``candidate`` with ``clicks_point``, ``noc85_point``, ``clicks_score`` and ``score`` of the
    chosen threshold, and ``lone_point_threshold_choice`` ``{"chosen", "mean_dice": {threshold: ...},
    "seconds"}``; ``model`` keeps the threshold it had.
    """
    t0 = time.perf_counter()
    served = float(getattr(model, "lone_point_threshold", 0.0) or 0.0)
    options = sorted({0.0, served, float(getattr(model.spec, "lone_point_threshold", 0.0) or 0.0)})
    results = {served: {k: candidate[k] for k in ("clicks_point", "noc85_point") if k in candidate}}
    if "clicks_point" not in candidate or len(options) == 1:
        return dict(candidate, lone_point_threshold_choice={"chosen": served, "mean_dice": {}, "seconds": 0.0})
    model.mask_decoder.load_state_dict(state)
    try:
        for threshold in options:
            if threshold != served:
                model.lone_point_threshold = threshold
                results[threshold] = trainer.validate_clicks(val_samples, firsts=("point",), max_clicks=max_clicks)
    finally:
        model.lone_point_threshold = served
    means = {t: float(np.mean(r["clicks_point"])) if r.get("clicks_point") else 0.0 for t, r in results.items()}
    chosen = max(sorted(means), key=lambda t: (means[t], t == served))
    out = dict(candidate, clicks_point=results[chosen]["clicks_point"], noc85_point=results[chosen]["noc85_point"])
    if "clicks_box" in out and out["clicks_box"]:
        out["clicks_score"] = float(np.mean([np.mean(out["clicks_box"]), means[chosen]]))
    out["score"] = selection_score(out)
    out["lone_point_threshold_choice"] = {"chosen": chosen,
                                          "mean_dice": {str(t): round(m, 4) for t, m in sorted(means.items())},
                                          "seconds": round(time.perf_counter() - t0, 1)}
    logger.info("lone point threshold %s (mean first-point Dice by threshold: %s)", chosen,
                out["lone_point_threshold_choice"]["mean_dice"])
    return out


def selection_score(val: dict[str, Any]) -> float:
    """What picks the epoch and gates publishing: the clicks protocol's mean Dice over its curves
    (first box and first point, interactions 1..``validation_clicks``) when it ran, else box Dice."""
    return float(val["clicks_score"]) if "clicks_score" in val else float(val.get("dice", 0.0))


def validation_shape_priors(train_idx: Sequence, val_idx: Sequence, settings: TrainSettings, *,
                            axes: Sequence[int], include_labels: Sequence[str] | None,
                            window: WindowSettings | None = None) -> ShapePriors | None:
    """The shapes the clicks validation serves its named sessions with (box or click first), so that the epoch
    choice and the gate judge what the app will serve (the trained decoder with the finished studies' shapes):
    the sections of the training studies only, never of a validation study (its own sections would answer its
    sessions). None without ``shape_prior_weight``, without ``validation_clicks``, or when no training study is
    apart from the validation ones (one finished study serves as both: validated without shapes, as before)."""
    if settings.shape_prior_weight <= 0 or not settings.validation_clicks:
        return None
    val_ids = {i.study.study_id for i in val_idx}
    apart = [i.study for i in train_idx if i.study.study_id not in val_ids]
    if not apart:
        return None
    return study_shape_priors(apart, axes=axes, include_labels=include_labels, settings=shape_prior_settings(settings),
                              window=window)


def shape_prior_settings(settings: TrainSettings) -> ShapePriorSettings:
    """The `ShapePriorSettings` a decoder file's shapes are collected and served with (``shape_prior`` of the
    training config)."""
    return ShapePriorSettings(weight=settings.shape_prior_weight, neighbours=settings.shape_prior_neighbours,
                              patch=settings.shape_prior_patch, candidates=settings.shape_prior_candidates,
                              matched=settings.shape_prior_matched,
                              min_correlation=settings.shape_prior_min_correlation,
                              click_penalty=settings.shape_prior_click_penalty)


def study_shape_priors(studies: Sequence[Study], *, axes: Sequence[int], include_labels: Sequence[str] | None,
                       settings: ShapePriorSettings, window: WindowSettings | None = None) -> ShapePriors:
    """The sections of every named structure of the finished ``studies`` (`ShapePriors.from_labels`), only
    those of ``include_labels`` when given; with ``window`` (the served model's) and ``settings.patch`` each keeps
    the windowed image inside its box too, one study's image in memory at a time."""
    from samri.volume import load_image, prepare_volume

    def labels():
        for study in studies:
            label = load_image(study.label, "label")
            names = {n: v for n, v in study.label_names.items() if not include_labels or n in include_labels}
            image = None
            if window is not None and settings.patch:
                image = prepare_volume(load_image(study.image, "image"), window).windowed
            yield np.rint(np.asarray(label.array)).astype(np.int32), names, label.spacing, image

    return ShapePriors.from_labels(labels(), axes=axes, settings=settings)


def _steps_per_epoch(n_samples: int, settings: TrainSettings) -> int:
    steps = -(-n_samples // settings.batch_size)
    return min(steps, int(settings.max_steps_per_epoch)) if settings.max_steps_per_epoch else steps


def _save(model, out_dir: Path, state: dict[str, torch.Tensor], settings: TrainSettings, stats: DataStats,
          train_idx, val_idx, budget: dict[str, Any], seconds: dict[str, float], *, min_pixels: int,
          axes: Sequence[int], world: int, metrics: dict[str, Any], priors: ShapePriors | None = None,
          name: str = "decoder.pt") -> Path:
    """``out_dir/<name>``: the decoder ``state`` with the run's metadata and ``priors`` (rank 0 only)."""
    model.mask_decoder.load_state_dict(state)
    now = datetime.now(timezone.utc)
    train_samples = sum(len(i.samples) for i in train_idx)
    metadata = {"created": now.isoformat(timespec="seconds"), "version": now.strftime("%Y%m%dT%H%M%SZ"),
                "training_data": {"studies": stats.studies_used, "skipped": stats.skipped,
                                  "train_studies": [i.study.study_id for i in train_idx],
                                  "val_studies": [i.study.study_id for i in val_idx],
                                  "train_samples": train_samples, "val_samples": budget["val_pairs"]},
                "metrics": metrics,
                "settings": {"lr": settings.lr, "epochs": settings.epochs, "batch_size": settings.batch_size,
                             "min_pixels": min_pixels, "axes": list(axes), "world_size": world},
                "budget": budget, "point_prompts": point_prompt_mode(metrics["val"]),
                "seconds": seconds["total"], "stage1_seconds": seconds["stage1"], "phase_seconds": seconds}
    if metadata["point_prompts"] == "single":  # the threshold a lone first point is served with
        choice = metrics["val"].get("lone_point_threshold_choice", {})
        metadata["lone_point_threshold"] = float(choice.get("chosen", getattr(model, "lone_point_threshold", 0.0)
                                                            or 0.0))
    if priors is not None:
        metadata["shape_priors"] = {"weight": priors.settings.weight, "structures": len(priors.names),
                                    "sections": len(priors)}
    return save_decoder_checkpoint(out_dir / name, mask_decoder=model.mask_decoder,
                                   base_model=model.spec.base_name, preprocessing=model.preprocessing.to_dict(),
                                   metadata=metadata, shape_priors=None if priors is None else priors.to_payload())


def point_prompt_mode(val: dict[str, Any]) -> str:
    """Serve points-only clicks on the single-mask output our trainer trains (``"single"``) if the
    decoder learned them (validation Dice of one interior point at least half the box Dice);
    otherwise keep the box search around the points."""
    return "single" if val.get("dice_point", 0.0) >= 0.5 * val.get("dice_box", 0.0) else "box_search"


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
