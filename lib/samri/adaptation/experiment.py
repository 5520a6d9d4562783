"""``samri adapt-sim``: annotators finish studies of a new domain, the server trains, clicks fall.

One run (all under ``--out``):

1. a copy of the app (``app/``, its own decoder store, starting from the shipped decoder) and a
   datastore (``studies/``) holding the cohort's ``annotate`` images without labels; a real
   ``monailabel start_server`` on them, its embedding cache in ``cache/`` (shared with this process);
2. round 0: the live decoder measured with the clicks protocol on the cohort's held-out (``test``)
   studies and on the original domain (EVALUATION.md's test split);
3. for each round target K (e.g. 1, 3, 5): the simulated annotator finishes the next studies
   until K are done: clicks sessions with the decoder live at that moment on the middle slice of
   seeded structures (their clicks are the study's counted effort, `samri.evaluation.clicks`), then
   the finished label goes to ``PUT /datastore/label`` with its ``label_info``; ``POST /train/samri``
   (the round's body from the config) runs and the gate decides; the live decoder is measured again.

``summary.json`` (atomically rewritten after every round) holds the config, the studies, per round
the effort, the training result (published, version, budget, seconds per phase, wall time) and the
held-out / original figures; each measurement's own ``summary.json``/``report.md`` is under
``rounds/``. `samri.adaptation.report` turns it into docs/ADAPTATION.md.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from samri.adaptation.client import live_decoder, put_final_label, train_and_wait
from samri.adaptation.config import AdaptConfig
from samri.adaptation.measure import StudySet, headline, measure_clicks
from samri.errors import SamriInputError
from samri.io import write_text

logger = logging.getLogger(__name__)

__all__ = ["cohort_splits", "heldout_structures", "pick_structures", "run_adaptation", "study_paths"]


def cohort_splits(cohort: Path) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """``(annotate ids, test ids, {id: {name: value}})`` of a `samri cohort` folder, ids in order.

    Raises:
        SamriInputError: no ``cohort.json``, or a subject in both splits.
    """
    from samri.labels import load_label_names

    path = cohort / "cohort.json"
    if not path.is_file():
        raise SamriInputError("cohort", str(cohort), "no cohort.json: write it with `samri cohort` (make adapt-cohort)")
    subjects = json.loads(path.read_text())["subjects"]
    annotate = sorted(s for s, v in subjects.items() if v["split"] == "annotate")
    test = sorted(s for s, v in subjects.items() if v["split"] == "test")
    if set(annotate) & set(test):  # pragma: no cover - plan_subjects guarantees it
        raise SamriInputError("cohort", str(cohort), "a subject is in both splits")
    return annotate, test, load_label_names(cohort)


def pick_structures(names: list[dict[str, int]], count: int, seed: int) -> tuple[str, ...]:
    """``count`` structure names present in every mapping of ``names``, seeded, sorted."""
    common = sorted(set.intersection(*(set(n) for n in names))) if names else []
    if not common:
        raise SamriInputError("structures", count, "no structure is present in every study")
    chosen = np.random.default_rng(seed).choice(len(common), size=min(count, len(common)), replace=False)
    return tuple(sorted(common[int(i)] for i in chosen))


def heldout_structures(cfg: AdaptConfig, test: list[str], names: dict[str, dict[str, int]]) -> tuple[str, ...]:
    """The seeded structures measured on every held-out study: ``cfg.heldout_structures`` of those present
    in all of ``test`` (``names``: `cohort_splits`'s ``{id: {name: value}}``)."""
    return pick_structures([names[s] for s in test], cfg.heldout_structures, cfg.seed)


def study_paths(folder: Path, ids: list[str]) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """``(image paths, final label paths)`` of studies ``ids`` in a MONAI Label studies folder."""
    return (tuple(folder / f"{s}.nii.gz" for s in ids),
            tuple(folder / "labels" / "final" / f"{s}.nii.gz" for s in ids))


class _Measurer:
    """Loads the live decoder of the app copy and measures study sets with the shared cache."""

    def __init__(self, cfg: AdaptConfig, app_dir: Path, cache, out: Path, progress: bool) -> None:
        from samri.config import load_registry

        self.cfg, self.app_dir, self.cache, self.out, self.progress = cfg, app_dir, cache, out, progress
        self.registry = load_registry()
        self.spec = self.registry.spec(cfg.model)
        self._loaded: tuple[str, Any] | None = None

    def model(self) -> tuple[str, Any]:
        from samri.model.builders import load_model

        version, path = live_decoder(self.app_dir)
        if self._loaded is None or self._loaded[0] != version:
            self._loaded = (version, load_model(self.spec, decoder=path))  # None: the registry's decoder
        return self._loaded

    def measure(self, studies: StudySet, name: str, first, max_clicks: int) -> dict[str, Any]:
        version, model = self.model()
        start = time.perf_counter()
        result = measure_clicks(studies, model=model, cache=self.cache, key=f"{self.cfg.model}@{version}",
                                first=first, max_clicks=max_clicks, human_seconds=self.cfg.human_seconds,
                                out_dir=self.out / name, window=self.registry.window, progress=self.progress)
        return {"decoder": version, "headline": headline(result), "seconds": round(time.perf_counter() - start, 1),
                "dice_at": {k.split(":", 1)[1]: v["dice_at"] for k, v in result.items() if k.startswith("clicks:")}}


def _write(out: Path, record: Mapping[str, Any]) -> None:
    write_text(out / "summary.json", json.dumps(record, indent=1) + "\n")


def run_adaptation(cfg: AdaptConfig, out_dir: str | Path, *, app_dir: Path | None = None,
                   server_env: Mapping[str, str] | None = None, progress: bool = True,
                   on_round: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run the experiment described in the module docstring; returns what ``summary.json`` holds.

    Args:
        cfg: `AdaptConfig` (``configs/adaptation.yaml``).
        out_dir: emptied of an earlier run's app, datastore and rounds (the embedding cache is kept).
        app_dir: the app to copy (default: this checkout's ``apps/samri``).
        server_env: extra environment of the server (tests pass ``SAMRI_CONFIG_DIR``).

    Raises:
        SamriInputError: a cohort with fewer ``annotate`` studies than the last round needs, or
            without ``test`` studies; an original-domain study that does not exist.
    """
    from samri.inference.embeddings import EmbeddingCache
    from samri.testing.server import APP_DIR, copy_app, start_server

    cohort, out = Path(cfg.cohort), Path(out_dir)
    annotate, test, names = cohort_splits(cohort)
    if len(annotate) < cfg.rounds[-1]:
        raise SamriInputError("rounds", list(cfg.rounds), f"the cohort has {len(annotate)} annotate studies")
    if not test:
        raise SamriInputError("cohort", str(cohort), "has no test (held-out) studies")
    heldout = StudySet(*study_paths(cohort, test), heldout_structures(cfg, test, names))
    original = None
    if cfg.original_images:
        original = StudySet(*study_paths(Path(cfg.original_studies), list(cfg.original_images)), cfg.original_labels)
        missing = [str(p) for p in original.images + original.labels if not p.is_file()]
        if missing:
            raise SamriInputError("original_images", missing[:3], "not found (make test-split)")
    for sub in ("app", "studies", "rounds"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "studies").mkdir(parents=True)
    for sid in annotate[: cfg.rounds[-1]]:
        shutil.copyfile(cohort / f"{sid}.nii.gz", out / "studies" / f"{sid}.nii.gz")
    app = copy_app(app_dir or APP_DIR, out / "app")
    cache = EmbeddingCache(cache_dir=out / "cache", max_memory_bytes=1 << 30)
    measurer = _Measurer(cfg, app, cache, out / "rounds", progress)
    record: dict[str, Any] = {"config": cfg.as_dict(), "annotate": annotate[: cfg.rounds[-1]], "heldout": test,
                              "heldout_structures": list(heldout.structures), "rounds": []}

    def measure_round(k: int) -> dict[str, Any]:
        r = {"heldout": measurer.measure(heldout, f"k{k}_heldout", cfg.eval_first, cfg.eval_max_clicks)}
        if original is not None and (k in (0, cfg.rounds[-1]) or cfg.original_every_round):
            r["original"] = measurer.measure(original, f"k{k}_original", cfg.eval_first, cfg.eval_max_clicks)
        return r

    # scoring jobs (active learning) would compete with the measurements for the 2 cores
    env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false", **(server_env or {})}
    server = start_server(app_dir=app, studies=out / "studies", log_path=out / "server.log", env=env,
                          conf={"precompute": "false", "cache_dir": str(out / "cache"), "model": cfg.model})
    try:
        record["rounds"].append({"studies": 0, **measure_round(0)})
        _write(out, record)
        done: list[dict[str, Any]] = []
        for target in cfg.rounds:
            while len(done) < target:
                sid = annotate[len(done)]
                structures = pick_structures([names[sid]], cfg.annotate_structures, cfg.seed + len(done) + 1)
                effort = measurer.measure(StudySet(*study_paths(cohort, [sid]), structures), f"annotate_{sid}",
                                          (cfg.annotate_first,), cfg.annotate_max_clicks)
                put_final_label(server.base_url, sid, study_paths(cohort, [sid])[1][0], names[sid])
                done.append({"study": sid, **effort})
                logger.info("finished %s with decoder %s: %s", sid, effort["decoder"], effort["headline"])
            logger.info("round K=%d: POST /train/samri %s", target, dict(cfg.train))
            training = train_and_wait(server.base_url, cfg.train)
            logger.info("round K=%d: published=%s live=%s in %.0f s", target, training.get("published"),
                        training.get("live"), training["wall_seconds"])
            entry = {"studies": target, "annotated": done[len(done) - (target - (record["rounds"][-1]["studies"])):],
                     "training": training, **measure_round(target)}
            record["rounds"].append(entry)
            _write(out, record)
            if on_round:
                on_round(entry)
    finally:
        server.stop()
    return record
