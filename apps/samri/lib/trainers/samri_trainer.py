"""The ``samri`` trainer: ``POST /train/samri`` fine-tunes SAMRI's mask decoder on finished labels.

How it runs: MONAI Label 0.8.5 answers ``POST /train/samri`` by starting
``python -m monailabel.interfaces.utils.app -m train -r <request JSON>``, a subprocess that builds
the app again (cheap, nothing loads) and calls this task; its log lines show up in
``GET /train/`` (``details``) and its return value in the last one (``Result: {...}``).
``?run_sync=true`` runs it inside the server process instead (useful for ``rollback``, which then
answers with the new live version). ``DELETE /train/`` (MONAI Label's stop) SIGKILLs the
subprocess; that is safe at any moment: the run works in a temp folder under
``<app>/model/train_runs`` and publishing is one atomic rename (`samri.train.store`), so the live
decoder and the datastore (never written here) stay as they were.

One run:

1. every datastore image with a ``final`` label becomes a `samri.train.stage1.Study`, its values
   named through the stored ``label_info`` (`studies.collect_studies`);
2. the network is loaded with the decoder this app serves (`DecoderSelector`: the store's live
   version, a pinned ``decoder_version`` or ``--conf decoder``; `load_model_with_decoder`, as
   the server loads it), so the run's
   ``metrics.baseline_val`` is that decoder on the same validation studies;
3. `samri.train.run.run_training`: stage 1 through the app's shared embedding cache, stage 2
   trains only the mask decoder;
4. `samri.train.store.DecoderStore.publish` of the best *trained* epoch into
   ``<app>/model/decoders``, gated on validation Dice with ``gate_margin`` (`samri.train.store.gate`);
   the infer tasks serve a published version on their next request.

While it runs, ``<app>/model/train_runs/last_run.json`` is updated (at most every 2 s, and at
each phase change and validation) with the phase (``stage1``, ``stage2``, ``validation``), epoch,
step, running loss and the latest validation figures; `stats` (``/info/`` ``train_stats``, what
3D Slicer's training panel polls) reports them in MONAI Label's keys. ``GET /train/`` shows the
subprocess's last 20 log lines: one per study in stage 1, one per ~10% of an epoch, one per epoch.
The result (also in ``/info/``) states the budget used (``budget``: slices, steps, validation
pairs) and ``seconds`` per phase.

Request options: see `options` (``max_epochs``, ``max_steps_per_epoch``, ``max_slices``,
``max_val_samples``, ``lr``, ``labels``, ``gate_margin``, ``rollback``).

Why a plain `TrainTask` and not MONAI Label's ``BasicTrainTask``: that class builds a MONAI
supervised trainer/evaluator over a datalist of image/label dictionaries, saves whole-network
checkpoints into the app's model path and validates with its own engine. SAMRI trains only the
mask decoder on cached slice embeddings with simulated prompts, validates per study against the
live decoder and publishes versioned decoder-only files through a gate; none of BasicTrainTask's
hooks would be used, and its checkpoint handling would fight the versioned store.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from monailabel.interfaces.tasks.train import TrainTask

from samri.config import config_dir
from samri.errors import SamriInputError
from samri.labels import load_label_names
from samri.train.config import TRAINING_YAML, TrainConfig, load_train_config

from ..http_errors import http_errors
from ..runtime import SamriRuntime
from ..runtime.models import load_model_with_decoder
from .options import TrainOptions, defaults, parse_train_options
from .records import ProgressRecorder, RunRecord, pid_alive, progress_stats, publish_lock, remove_stale_runs
from .studies import collect_studies

logger = logging.getLogger(__name__)

#: the trainer's name: ``POST /train/samri``.
TRAINER_NAME = "samri"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SamriTrainer(TrainTask):
    """Decoder fine-tuning on the datastore's ``final`` labels, published live through a gate.

    Args:
        runtime: the app's `SamriRuntime` (settings and decoder selection; its model is not used:
            training works on its own copy so a run never touches what is being served).
    """

    def __init__(self, *, runtime: SamriRuntime) -> None:
        super().__init__(f"SAMRI decoder fine-tuning ({runtime.settings.model}) on final labels; "
                         "publishes a new decoder version when its validation Dice beats the live one "
                         "(or is within gate_margin of it)")
        self.runtime = runtime
        self.settings = runtime.settings
        self._config_cache: tuple[tuple[int, int] | None, dict[str, Any]] | None = None

    @property
    def runs_dir(self) -> Path:
        """Temp run folders, the last run's record and the publish lock: ``<app>/model/train_runs``."""
        return self.settings.app_dir / "model" / "train_runs"

    @property
    def record(self) -> RunRecord:
        return RunRecord(self.runs_dir / "last_run.json")

    # --- what /info/ shows ------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Default request options (clients show and send them back).

        MONAI Label builds ``/info/`` on every infer request too, so the parsed ``training.yaml``
        is kept until the file's size or modification time changes (parsing took ~4 ms per click).
        """
        key = _file_stamp(config_dir() / TRAINING_YAML)
        if self._config_cache is not None and self._config_cache[0] == key:
            return dict(self._config_cache[1])
        try:
            options = defaults(load_train_config())
        except SamriInputError as exc:
            logger.error("training config: %s", exc)
            options = defaults(TrainConfig())
        self._config_cache = (key, options)
        return dict(options)

    def stats(self) -> dict[str, Any]:
        """Live decoder, published versions and the last run (cheap: reads two small JSON files)."""
        store = self.runtime.decoders.store()
        try:
            index = store.index()
        except (OSError, ValueError) as exc:
            logger.error("unreadable decoder index in %s: %s", store.root, exc)
            index = []
        live = self.runtime.decoders.live_version()
        by_version = {e.get("version"): e for e in index}
        out: dict[str, Any] = {
            "live": live, "pinned": self.settings.decoder_version, "is_training": False,
            "versions": [{k: e.get(k) for k in ("version", "val_dice", "baseline_val_dice", "published")}
                         for e in index[-10:]],
        }
        # 3D Slicer reads best_metric (a number), epoch, total_epochs and total_time (set = finished)
        best = by_version.get(live, {}).get("val_dice")
        if isinstance(best, (int, float)):
            out["best_metric"] = float(best)
        last = self.record.read()
        if last:
            if last.get("status") == "running" and not pid_alive(last.get("pid")):
                last["status"] = "killed"  # SIGKILLed by DELETE /train/ (or the machine went down)
            out["last_run"] = last
            out["is_training"] = last.get("status") == "running"
            out["epoch"] = last.get("epoch", 0)
            out["total_epochs"] = last.get("total_epochs") or (last.get("options") or {}).get("epochs", 1)
            if out["is_training"]:
                out.update(progress_stats(last))
            else:
                if last.get("total_time") is not None:
                    out["total_time"] = last["total_time"]
                measured = last.get("baseline_val_dice")  # the live decoder, measured by the last run
                if "best_metric" not in out and last.get("started_from") == live and isinstance(measured, (int, float)):
                    out["best_metric"] = float(measured)
            for key in ("budget", "seconds"):
                if key in last:
                    out[key] = last[key]
        return out

    # --- the task ---------------------------------------------------------------------------------
    def __call__(self, request: Mapping[str, Any], datastore) -> dict[str, Any]:
        with http_errors(f"train {TRAINER_NAME}"):
            cfg = load_train_config()
            options = parse_train_options(request, cfg)
            if options.rollback is not None:
                return self.rollback(options.rollback)
            return self.train(options, cfg, datastore)

    def check_request(self, request: Mapping[str, Any]) -> None:
        """Validate a ``POST /train/samri`` body before the server starts a job for it (422 naming the
        field): MONAI Label runs training in a subprocess, where a bad option would only fail later."""
        with http_errors(f"train {TRAINER_NAME}"):
            parse_train_options(request, load_train_config())

    def rollback(self, target: str) -> dict[str, Any]:
        """Make ``target`` (``vNNNN``, ``base`` or ``previous``) the live decoder; returns the new live entry."""
        store = self.runtime.decoders.store()
        with publish_lock(self.runs_dir):
            entry = store.rollback(None if target == "previous" else target)
        live = entry["version"] if entry else "base"
        out: dict[str, Any] = {"rollback": target, "live": live, "entry": entry}
        if self.settings.decoder is not None or self.settings.decoder_version:
            out["note"] = "this server keeps serving its --conf decoder/decoder_version"
        logger.info("decoder rollback to %s: live is now %s", target, live)
        return out

    def train(self, options: TrainOptions, cfg: TrainConfig, datastore) -> dict[str, Any]:
        """One full run (see the module docstring); returns its stats (also in ``/info/``)."""
        start = time.perf_counter()
        record = self.record
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_runs(self.runs_dir)
        recorder = ProgressRecorder(record, {"status": "running", "pid": os.getpid(), "started": _now(),
                                             "phase": "starting", "epoch": 0, "total_epochs": options.epochs,
                                             "options": options.summary()})
        recorder.flush()
        run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=self.runs_dir))
        (run_dir / "owner.pid").write_text(str(os.getpid()))
        try:
            result = self._train(options, options.apply(cfg), datastore, run_dir, recorder)
        except BaseException as exc:
            record.write({**recorder.data, "status": "error", "error": str(exc), "ended": _now(),
                          "total_time": round(time.perf_counter() - start, 1)})
            raise
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        result["total_time"] = round(time.perf_counter() - start, 1)
        record.write({**recorder.data, "status": "done", "phase": "done", "ended": _now(), **result})
        return result

    def _train(self, options: TrainOptions, cfg: TrainConfig, datastore, run_dir: Path,
               on_progress: ProgressRecorder | None = None) -> dict[str, Any]:
        from samri.config import load_registry
        from samri.inference.embeddings import EmbeddingCache
        from samri.model.backends import apply_backend
        from samri.train.run import run_training

        settings = self.settings
        studies, skipped = collect_studies(datastore, fallback_names=load_label_names(settings.studies, strict=False))
        if not studies:
            detail = "; ".join(f"{k}: {v}" for k, v in skipped.items())
            raise SamriInputError("studies", settings.studies, "no annotated study (no image has a usable "
                                  f"'final' label){': ' + detail if detail else ''}")
        registry = load_registry()
        choice = self.runtime.decoders.choose()
        # a private copy of the served network: a run never touches what is being served
        model, served = load_model_with_decoder(settings, choice, registry=registry)
        # stage 1 encodes with the served encoder: the same embeddings (and cache keys) as serving, so
        # slices the annotator already saw are free; the decoder it trains stays PyTorch
        apply_backend(model, settings.backend, settings.precision, export_dir=settings.backend_cache_dir,
                      parts=("encoder",))
        started_from = served["version"] or served["path"]
        cache = EmbeddingCache(cache_dir=settings.cache_dir, max_memory_bytes=settings.cache_memory_bytes)
        include = cfg.include_labels
        ignored = {s.study_id: sorted(set(s.label_names) - set(include)) for s in studies} if include else {}
        parent = os.getppid()
        logger.info("training on %d studies from decoder %s: %s", len(studies), started_from, options.summary())
        result = run_training(studies, model=model, out_dir=run_dir, window=registry.window, cache=cache,
                              **cfg.run_arguments(), progress=sys.stderr.isatty(),
                              stop_check=lambda: os.getppid() != parent,  # the server went away
                              on_progress=on_progress)
        store = self.runtime.decoders.store()
        with publish_lock(self.runs_dir):
            live_now = self.runtime.decoders.live_version()
            if choice.source == "store" and live_now != choice.version:
                publish = {"published": False, "version": None,
                           "reason": f"the live decoder changed during training ({choice.version} -> {live_now})"}
            else:
                publish = store.publish(result.checkpoint, margin=options.gate_margin)
                if not publish["published"] and result.priors_checkpoint is not None and choice.source == "store":
                    # the finished studies' shapes are data, not weights: they serve on the live decoder the
                    # run started from (a `--conf decoder` or pinned start is not the store's live one)
                    publish = store.publish_shape_priors(result.priors_checkpoint, refused=publish["reason"])
        live = self.runtime.decoders.live_version()
        logger.info("publish: %s (live decoder: %s)", publish, live)
        return {**publish, "live": live, "started_from": started_from,
                "val_dice": result.candidate.get("dice"), "baseline_val_dice": result.baseline.get("dice"),
                "val_score": result.candidate.get("score"), "baseline_val_score": result.baseline.get("score"),
                "best_epoch": result.candidate.get("epoch"), "epoch": len(result.history),
                "total_epochs": options.epochs,
                "history": [{k: h.get(k) for k in ("epoch", "steps", "train_loss", "loss", "dice", "score", "noc85_box",
                                                   "noc85_point")}
                            for h in result.history],
                "budget": result.budget, "seconds": result.seconds,
                "studies": result.stats.get("studies_used", []),
                "skipped": {**skipped, **result.stats.get("skipped", {})},
                "ignored_labels": {k: v for k, v in ignored.items() if v},
                "labels": {s.study_id: dict(s.label_names) for s in studies},
                "slices_encoded": result.stats.get("slices_encoded"), "options": options.summary()}


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of ``path``, or None when it does not exist."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns
