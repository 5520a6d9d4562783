"""``samri al-sim``: a simulated annotation loop comparing active-learning strategies.

From one labelled study, each strategy repeatedly picks the next pool study, "annotates" it with
its ground truth, fine-tunes the mask decoder with the trainer (`samri.train.run.run_training`,
continuing from the previous round's decoder as the app's trainer does) and measures box-prompt
Dice on held-out studies. Strategies: MONAI Label's own ``random`` (and ``first``) classes, and
SAMRI's ``samri_uncertainty``, ``samri_novelty`` and ``samri_combined`` computed with the same
library code the app's scoring jobs use (`samri.activelearning.scorer`). The first round (the start
study) is trained once and shared by every strategy. Settings: the ``simulation`` section of
``configs/activelearning.yaml``; the pool: `samri.activelearning.sim.pool`. Results: `samri.activelearning.sim.report`.
"""

from __future__ import annotations

import copy
import logging
import random
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from samri.activelearning.sim.pool import SimStudy, build_pool
from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

STRATEGIES = ("random", "first", "samri_uncertainty", "samri_novelty", "samri_combined")


@dataclass(frozen=True)
class SimConfig:
    """Settings of one simulation (YAML ``simulation`` section; see configs/activelearning.yaml)."""

    studies: str = "data/studies"
    pool: Mapping[str, Sequence[str]] = field(default_factory=dict)
    held_out: Mapping[str, Sequence[str]] = field(default_factory=dict)
    start: str = ""
    labels: tuple[str, ...] = ()
    z_step: int = 12
    strategies: tuple[str, ...] = ("random", "samri_uncertainty", "samri_novelty", "samri_combined")
    rounds: int = 3
    model: str = "litemedsam"
    epochs: int = 1
    steps_per_epoch: int = 8
    batch_size: int = 4
    lr: float = 1e-4
    max_val_samples: int = 8
    eval_pairs: int = 24
    eval_jitter: float = 0.04
    score_slices: int = 3
    seed: int = 0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **overrides: Any) -> "SimConfig":
        cfg = cls(**section_fields(cls, "simulation", data, overrides, lists=("labels", "strategies")))
        bad = [s for s in cfg.strategies if s not in STRATEGIES]
        if bad:
            raise SamriInputError("simulation.strategies", bad, f"unknown; known: {list(STRATEGIES)}")
        if not cfg.pool or not cfg.held_out:
            raise SamriInputError("simulation.pool", dict(cfg.pool), "needs pool and held_out variants per source")
        for key in ("rounds", "epochs", "steps_per_epoch", "batch_size", "z_step", "eval_pairs", "score_slices"):
            if int(getattr(cfg, key)) < 1:
                raise SamriInputError(f"simulation.{key}", getattr(cfg, key), "must be >= 1")
        return cfg


def section_fields(cls: type, section: str, data: Mapping[str, Any] | None, overrides: Mapping[str, Any],
                   *, lists: Sequence[str] = ()) -> dict[str, Any]:
    """A YAML section's keys with the non-None ``overrides`` on top, checked against dataclass ``cls``;
    the ``lists`` keys accept a comma string (command line) or a sequence and become tuples.

    Raises:
        SamriInputError: ``section`` naming the unknown keys.
    """
    merged = {**dict(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(merged) - set(cls.__dataclass_fields__))
    if unknown:
        raise SamriInputError(section, unknown, f"unknown keys; known: {sorted(cls.__dataclass_fields__)}")
    for key in lists:
        if key in merged:
            value = merged[key]
            merged[key] = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    return merged


def load_sim_config(path: str | Path | None = None, **overrides: Any) -> SimConfig:
    """The ``simulation`` section of ``activelearning.yaml`` (default: the config dir's), with overrides."""
    from samri.config import config_dir, read_yaml

    p = Path(path) if path else config_dir() / "activelearning.yaml"
    data = read_yaml(p, field="activelearning config") or {}
    return SimConfig.from_mapping(data.get("simulation"), **overrides)


class PoolDatastore:
    """The two datastore calls MONAI Label's ``Random``/``First`` strategies make, over the simulated pool."""

    def __init__(self, unlabelled: Sequence[str]) -> None:
        self.unlabelled = list(unlabelled)

    def get_unlabeled_images(self, label_tag=None, labels=None) -> list[str]:
        return list(self.unlabelled)

    def get_image_info(self, image_id: str) -> dict:
        return {}


@dataclass
class Simulation:
    """Model, cache and studies of one run (see `run_simulation`)."""

    config: SimConfig
    studies: list[SimStudy]
    segmenter: Any
    window: Any
    work_dir: Path
    base_state: dict = field(default_factory=dict)
    descriptors: dict = field(default_factory=dict)
    timings: dict = field(default_factory=lambda: {"train": 0.0, "score": 0.0, "eval": 0.0})

    @property
    def pool(self) -> list[SimStudy]:
        return [s for s in self.studies if not s.held_out]

    @property
    def held_out(self) -> list[SimStudy]:
        return [s for s in self.studies if s.held_out]

    def by_id(self, study_id: str) -> SimStudy:
        return next(s for s in self.studies if s.study_id == study_id)

    # --- training and evaluation ------------------------------------------------------------------
    def train(self, labelled: Sequence[str]) -> dict:
        """Fine-tune the current decoder on ``labelled`` (train = validation: no study is spared)."""
        from samri.train.run import run_training
        from samri.train.stage1 import Study
        from samri.train.stage2 import TrainSettings

        c = self.config
        settings = TrainSettings(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size,
                                 max_steps_per_epoch=c.steps_per_epoch,
                                 max_val_samples=c.max_val_samples, seed=c.seed)
        studies = [Study(s.study_id, s.image, s.label, s.label_names) for s in map(self.by_id, labelled)]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.work_dir) as run_dir:
            result = run_training(studies, model=self.segmenter.model, out_dir=run_dir, settings=settings,
                                  window=self.window, cache=self.segmenter.cache, val_fraction=0.0,
                                  include_labels=list(c.labels) or None, progress=False)
        for p in self.segmenter.model.mask_decoder.parameters():
            p.requires_grad_(False)
        self.timings["train"] += time.perf_counter() - start
        return {"best_epoch": result.best.get("epoch"), "train_dice": result.best.get("dice")}

    def evaluate(self) -> dict[str, float]:
        """Mean box-prompt Dice on each held-out study and over all (the pairs are fixed by the seed)."""
        start = time.perf_counter()
        out = {s.study_id: float(np.mean([d for d in self._dices(s)])) for s in self.held_out}
        out["mean"] = float(np.mean(list(out.values())))
        self.timings["eval"] += time.perf_counter() - start
        return out

    def _dices(self, study: SimStudy) -> list[float]:
        from samri.annotator import simulate_prompt
        from samri.geometry import SliceGeometry
        from samri.inference.embeddings import get_embeddings
        from samri.volume import load_image, prepare_volume

        volume = prepare_volume(load_image(study.image), self.window)
        label = np.asarray(load_image(study.label, "label").array)
        pairs = [(z, v) for v in sorted(study.label_names.values()) for z in range(label.shape[2])
                 if (label[:, :, z] == v).sum() >= 30]
        rng = np.random.default_rng(self.config.seed)
        if len(pairs) > self.config.eval_pairs:
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), self.config.eval_pairs, replace=False))]
        emb = get_embeddings(self.segmenter.model, volume, self.segmenter.cache, 2, sorted({z for z, _ in pairs}))
        geom = SliceGeometry(volume.shape[0], volume.shape[1], self.segmenter.model.input_size)
        dices = []
        for n, (z, v) in enumerate(pairs):
            gt = label[:, :, z] == v
            prompt = simulate_prompt(gt, "box", jitter=self.config.eval_jitter,
                                     rng=np.random.default_rng(self.config.seed + n))
            pred = self.segmenter.decode(emb[z], geom, prompt).mask
            dices.append(2.0 * np.logical_and(pred, gt).sum() / max(pred.sum() + gt.sum(), 1))
        return dices

    # --- picking --------------------------------------------------------------------------------------
    def scorer(self):
        from samri.activelearning.config import ALConfig, SliceSampling
        from samri.activelearning.scorer import StudyScorer
        from samri.activelearning.scores import model_version

        config = ALConfig(slices=SliceSampling(step=1, max_slices=self.config.score_slices))
        return StudyScorer(self.segmenter, config, self.window, version=model_version(self.segmenter.model, None))

    def pick(self, strategy: str, labelled: Sequence[str], rng: random.Random) -> tuple[str, dict]:
        """The next study ``strategy`` hands out from the unlabelled pool, and the scores it saw."""
        from monailabel.tasks.activelearning.first import First
        from monailabel.tasks.activelearning.random import Random

        remaining = [s.study_id for s in self.pool if s.study_id not in labelled]
        if not remaining:
            raise SamriInputError("pool", [], "nothing left to annotate")
        if strategy in ("random", "first"):
            state = random.getstate()
            random.setstate(rng.getstate())  # MONAI Label's Random uses the global generator
            try:
                task = Random() if strategy == "random" else First()
                chosen = task({"strategy": strategy}, PoolDatastore(remaining))["id"]
            finally:
                rng.setstate(random.getstate())
                random.setstate(state)
            return chosen, {}
        from samri.activelearning.novelty import novelty_scores
        from samri.activelearning.selection import Candidate, combined_values, rank

        start = time.perf_counter()
        scorer = self.scorer()
        unc, nov = {}, {}
        if strategy in ("samri_uncertainty", "samri_combined"):
            for sid in remaining:
                rec = scorer.uncertainty(sid, array=self._array(sid), key=sid)
                unc[sid] = rec["value"]
        if strategy in ("samri_novelty", "samri_combined"):
            for sid in set(remaining) | set(labelled):
                if sid not in self.descriptors:
                    self.descriptors[sid] = scorer.descriptor(sid, array=self._array(sid), key=sid)
            values = novelty_scores({k: self.descriptors[k] for k in set(remaining) | set(labelled)}, set(labelled))
            nov = {sid: values[sid]["value"] for sid in remaining}
        if strategy == "samri_combined":
            from samri.activelearning.config import load_al_config

            values = combined_values(unc, nov, load_al_config().combined_weights)
        else:
            values = unc or nov
        self.timings["score"] += time.perf_counter() - start
        best = rank([Candidate(k, v) for k, v in values.items()])[0]
        return best.study_id, {"scores": {k: round(v, 4) for k, v in values.items() if v is not None}}

    def _array(self, study_id: str) -> np.ndarray:
        from samri.volume import load_image

        return np.asarray(load_image(self.by_id(study_id).image).array)


def run_simulation(config: SimConfig, work_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run every strategy of ``config``; returns the results (`samri.activelearning.sim.report` renders them)."""
    import torch

    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache
    from samri.inference.segmenter import Segmenter
    from samri.model.backends import apply_backend
    from samri.model.builders import load_model

    start = time.perf_counter()
    work_dir = Path(work_dir)
    torch.manual_seed(config.seed)
    studies = build_pool(config.studies, work_dir / "studies", pool=config.pool, held_out=config.held_out,
                         labels=config.labels, z_step=config.z_step, seed=config.seed)
    pool_ids = [s.study_id for s in studies if not s.held_out]
    if config.start not in pool_ids:
        raise SamriInputError("simulation.start", config.start, f"not a pool study; pool: {pool_ids}")
    rounds = min(config.rounds, len(pool_ids) - 1)
    registry = load_registry()
    model = load_model(registry.spec(config.model))
    apply_backend(model, parts=("encoder",))  # served embeddings; the trained decoder stays PyTorch
    segmenter = Segmenter(model, EmbeddingCache(cache_dir=work_dir / "cache"))
    sim = Simulation(config=config, studies=studies, segmenter=segmenter,
                     window=registry.window, work_dir=work_dir)
    sim.base_state = copy.deepcopy(model.mask_decoder.state_dict())
    results: dict[str, Any] = {"base_dice": sim.evaluate(), "curves": {}, "picks": {},
                               "encoder": dict(getattr(model, "backend_info", {}) or {})}
    logger.info("base decoder: held-out Dice %.4f", results["base_dice"]["mean"])
    first_train = sim.train([config.start])
    first_dice = sim.evaluate()
    first_state = copy.deepcopy(model.mask_decoder.state_dict())
    bar = _bar(len(config.strategies) * rounds, progress)
    for strategy in config.strategies:
        model.mask_decoder.load_state_dict(first_state)
        labelled = [config.start]
        rng = random.Random(config.seed)
        curve = [{"annotated": 1, "study": config.start, **first_dice, **first_train}]
        picks = []
        for _ in range(rounds):
            chosen, seen = sim.pick(strategy, labelled, rng)
            labelled.append(chosen)
            trained = sim.train(labelled)
            dice = sim.evaluate()
            curve.append({"annotated": len(labelled), "study": chosen, **dice, **trained})
            picks.append({"study": chosen, **seen})
            logger.info("%s: +%s -> held-out Dice %.4f", strategy, chosen, dice["mean"])
            bar.update(1)
        results["curves"][strategy] = curve
        results["picks"][strategy] = picks
    bar.close()
    results.update(config=_plain(config), pool=[_describe(s) for s in studies],
                   seconds=round(time.perf_counter() - start, 1),
                   timings={k: round(v, 1) for k, v in sim.timings.items()},
                   cache=dict(sim.segmenter.cache.stats))
    return results


def _describe(s: SimStudy) -> dict:
    return {"id": s.study_id, "source": s.source, "variant": s.variant or "original", "held_out": s.held_out,
            "structures": len(s.label_names)}


def _plain(config: SimConfig) -> dict:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(replace(config)).items()}


def _bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="al-sim rounds", unit="round", disable=not show)
