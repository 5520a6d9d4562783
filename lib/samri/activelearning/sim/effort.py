"""``samri al-effort``: active-learning strategies compared by the clicks an annotator spends.

The question (issue 14, part 3): does a strategy that picks the next study to annotate make the
annotator reach a target on studies nobody annotated with fewer clicks than MONAI Label's ``random``?

One run per (strategy, seed), all starting from the shipped decoder of ``model``:

1. the seed picks the first study (``annotate[seed % n]`` of the cohort's ``annotate`` subjects);
   later studies are picked by the strategy from the rest (`samri.activelearning.sim.loop.Simulation.pick`,
   the same scoring code as the app's jobs; ``random`` is MONAI Label's class with the seed's generator);
2. the simulated annotator finishes the study with the decoder of that moment: clicks sessions
   (`samri.evaluation.clicks`, box first, corrective clicks) on the middle slice of seeded structures;
   the clicks each session needs to Dice 0.85 (the maximum when never) are the study's **cost**;
3. the decoder is fine-tuned on every finished study so far (`samri.train.run.run_training`, continuing
   from the previous round's decoder, the app's ``training.yaml`` with the ``train`` overrides) and kept
   only when the app's publish gate (`samri.train.store.gate`) would publish it;
4. the held-out (``test``) studies are measured with the clicks protocol: NoC@85, Dice@1, Dice@k.

A run's figure of merit is the annotation clicks spent until the held-out figure reaches the target
(``target``), and the held-out figures after each study. Decoders, costs and measurements are memoised
on disk per (seed, studies finished in order), so strategies that pick alike share the work and an
interrupted run resumes. `samri.activelearning.sim.effort_report` renders the comparison.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

__all__ = ["EffortConfig", "load_effort_config", "run_effort", "target_reached_at"]

STRATEGIES = ("random", "samri_uncertainty", "samri_novelty", "samri_combined")
TARGET_FIGURES = ("noc85", "dice1")


@dataclass(frozen=True)
class EffortConfig:
    """One comparison (the ``effort`` section of ``configs/activelearning.yaml``).

    Attributes:
        cohort: a `samri cohort` folder: ``annotate`` subjects are the pool, ``test`` the held-out studies.
        model: registry name; every run starts from its shipped decoder.
        strategies: from `STRATEGIES`.
        seeds: one run per strategy and seed; the seed picks the first study and seeds training.
        studies_per_run: studies finished per run (the first + picks).
        annotate_structures, annotate_max_clicks: the annotator's sessions on a study (its cost).
        heldout_structures, eval_max_clicks: held-out sessions per test study (box first).
        target_figure, target_change: the held-out goal, as a change from the shipped decoder's figure:
            ``noc85`` down by at least ``-target_change`` clicks, or ``dice1`` up by at least ``target_change``.
        train: overrides of the app's ``training.yaml`` per round (its keys, e.g. ``epochs``).
        score_slices: slices the uncertainty / novelty scores sample per study.
        human_seconds: annotator seconds per interaction.
    """

    cohort: str = "data/adapt-cohort"
    model: str = "samri_lite"
    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    studies_per_run: int = 3
    annotate_structures: int = 12
    annotate_max_clicks: int = 10
    heldout_structures: int = 12
    eval_max_clicks: int = 10
    target_figure: str = "dice1"
    target_change: float = 0.02
    train: Mapping[str, Any] = field(default_factory=dict)
    score_slices: int = 3
    human_seconds: float = 2.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **overrides: Any) -> "EffortConfig":
        """Parse the YAML section; every error names ``effort.<key>`` and the value."""
        from samri.activelearning.sim.loop import section_fields

        data = section_fields(cls, "effort", data, overrides, lists=("strategies", "seeds"))
        if "seeds" in data:
            try:
                data["seeds"] = tuple(int(s) for s in data["seeds"])
            except (TypeError, ValueError) as exc:
                raise SamriInputError("effort.seeds", list(data["seeds"]), "must be integers") from exc
        cfg = cls(**data)
        bad = [s for s in cfg.strategies if s not in STRATEGIES]
        if bad or not cfg.strategies:
            raise SamriInputError("effort.strategies", list(cfg.strategies), f"known: {list(STRATEGIES)}")
        if not cfg.seeds:
            raise SamriInputError("effort.seeds", [], "needs at least one seed")
        for key in ("studies_per_run", "annotate_structures", "annotate_max_clicks", "heldout_structures",
                    "eval_max_clicks", "score_slices"):
            if int(getattr(cfg, key)) < 1:
                raise SamriInputError(f"effort.{key}", getattr(cfg, key), "must be >= 1")
        if cfg.target_figure not in TARGET_FIGURES:
            raise SamriInputError("effort.target_figure", cfg.target_figure, f"one of {list(TARGET_FIGURES)}")
        if (cfg.target_change >= 0) if cfg.target_figure == "noc85" else (cfg.target_change <= 0):
            raise SamriInputError("effort.target_change", cfg.target_change,
                                  "must be an improvement: < 0 for noc85 (fewer clicks), > 0 for dice1")
        if not isinstance(cfg.train, Mapping):
            raise SamriInputError("effort.train", cfg.train, "must be a mapping of training.yaml keys")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
                for k, v in out.items()}


def load_effort_config(path: str | Path | None = None, **overrides: Any) -> EffortConfig:
    """The ``effort`` section of ``activelearning.yaml`` (default: the config dir's), with overrides."""
    from samri.config import config_dir, read_yaml

    p = Path(path) if path else config_dir() / "activelearning.yaml"
    data = read_yaml(p, field="activelearning config") or {}
    return EffortConfig.from_mapping(data.get("effort"), **overrides)


def target_reached_at(curve: Sequence[Mapping[str, Any]], figure: str, change: float) -> int | None:
    """Index of the first round whose held-out ``figure`` changed by ``change`` from ``curve[0]`` (None: never).

    ``curve[0]`` is the shipped decoder (no study finished); ``noc85`` must fall to ``base + change``
    or below (``change`` < 0), ``dice1`` rise to ``base + change`` or above.
    """
    target = float(curve[0]["heldout"][figure]) + change
    for i, point in enumerate(curve[1:], start=1):
        value = point["heldout"][figure]
        if (value <= target) if figure == "noc85" else (value >= target):
            return i
    return None


class _Memo:
    """JSON records and decoder states on disk, keyed by what produced them (resume and share)."""

    def __init__(self, folder: Path, salt: Mapping[str, Any]) -> None:
        self.folder = folder
        self.salt = json.dumps(salt, sort_keys=True, default=str)
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, key: Sequence[Any], suffix: str) -> Path:
        digest = hashlib.sha1((self.salt + json.dumps([kind, *key], default=str)).encode()).hexdigest()[:16]
        return self.folder / f"{kind}-{digest}{suffix}"

    def record(self, kind: str, key: Sequence[Any], compute: Callable[[], dict]) -> dict:
        from samri.io import write_json

        path = self._path(kind, key, ".json")
        if path.is_file():
            return json.loads(path.read_text())
        value = compute()
        write_json(path, value)
        return value

    def state_path(self, key: Sequence[Any]) -> Path:
        return self._path("decoder", key, ".pt")


class EffortRun:
    """Model, cache, cohort and memo of one comparison; `run_effort` drives it."""

    def __init__(self, cfg: EffortConfig, work_dir: Path) -> None:
        from samri.activelearning.sim.loop import SimConfig, Simulation
        from samri.activelearning.sim.pool import SimStudy
        from samri.adaptation.experiment import cohort_splits, pick_structures, study_paths
        from samri.adaptation.measure import StudySet
        from samri.config import load_registry
        from samri.inference.embeddings import EmbeddingCache
        from samri.inference.segmenter import Segmenter
        from samri.model.backends import apply_backend
        from samri.model.builders import load_model

        self.cfg, self.work_dir = cfg, work_dir
        cohort = Path(cfg.cohort)
        self.annotate, self.test, self.names = cohort_splits(cohort)
        if len(self.annotate) < cfg.studies_per_run:
            raise SamriInputError("effort.studies_per_run", cfg.studies_per_run,
                                  f"the cohort has only {len(self.annotate)} annotate studies")
        images, labels = study_paths(cohort, self.test)
        self.heldout = StudySet(images, labels, pick_structures([self.names[s] for s in self.test],
                                                                cfg.heldout_structures, 0))
        self.own_sets = {}
        for sid in self.annotate:
            (image,), (label,) = study_paths(cohort, [sid])
            self.own_sets[sid] = StudySet((image,), (label,),
                                          pick_structures([self.names[sid]], cfg.annotate_structures, 0))
        registry = load_registry()
        self.window = registry.window
        self.model = load_model(registry.spec(cfg.model))
        # the served encoder, as the app's trainer and `samri train` encode: the embeddings annotators get;
        # the decoder stays a PyTorch module, since it is trained and swapped in place
        apply_backend(self.model, parts=("encoder",))
        self.base_state = copy.deepcopy(self.model.mask_decoder.state_dict())
        self.cache = EmbeddingCache(cache_dir=work_dir / "cache")
        studies = [SimStudy(sid, "cohort", "", self.own_sets[sid].images[0], self.own_sets[sid].labels[0],
                            dict(self.names[sid]), False) for sid in self.annotate]
        self.sim = Simulation(config=SimConfig(score_slices=cfg.score_slices), studies=studies,
                              segmenter=Segmenter(self.model, self.cache), window=self.window, work_dir=work_dir)
        self.memo = _Memo(work_dir / "memo", {"config": cfg.to_dict(), "model": self.model.cache_key()})
        self.timings = {"train": 0.0, "annotate": 0.0, "heldout": 0.0, "pick": 0.0}

    # --- decoder states ------------------------------------------------------------------------
    def load_state(self, seed: int, finished: Sequence[str]) -> None:
        """Put the decoder of (seed, studies finished in order) into the model; () = the shipped one."""
        import torch

        if not finished:
            self.model.mask_decoder.load_state_dict(self.base_state)
            return
        self.model.mask_decoder.load_state_dict(torch.load(self.memo.state_path([seed, *finished]),
                                                           map_location="cpu", weights_only=True))

    def train(self, seed: int, finished: Sequence[str]) -> dict:
        """Fine-tune from the decoder of ``finished[:-1]`` on all of ``finished``; the gate decides."""
        return self.memo.record("train", [seed, *finished], lambda: self._train(seed, finished))

    def _train(self, seed: int, finished: Sequence[str]) -> dict:
        from samri.model.checkpoints import atomic_torch_save, read_decoder_checkpoint
        from samri.train.config import load_train_config
        from samri.train.run import run_training
        from samri.train.stage1 import Study
        from samri.train.store import gate, mean_noc85

        self.load_state(seed, finished[:-1])
        tcfg = load_train_config(overrides={**dict(self.cfg.train), "seed": seed}, overrides_source="effort.train")
        studies = [Study(s, self.own_sets[s].images[0], self.own_sets[s].labels[0], dict(self.names[s]))
                   for s in finished]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.work_dir) as run_dir:
            result = run_training(studies, model=self.model, out_dir=run_dir, settings=tcfg.settings,
                                  window=self.window, cache=self.cache, min_pixels=tcfg.min_pixels, axes=tcfg.axes,
                                  val_fraction=tcfg.val_fraction, include_labels=tcfg.include_labels,
                                  progress=False)
            candidate_state = read_decoder_checkpoint(result.checkpoint)["mask_decoder"]
        wall = time.perf_counter() - start
        self.timings["train"] += wall
        cand, base = result.candidate, result.baseline
        published, reason = (False, "refused: no trained epoch") if cand.get("epoch", 0) == 0 else gate(
            float(cand["score"]), float(base["score"]), tcfg.gate_margin,
            new_noc=mean_noc85(cand), live_noc=mean_noc85(base))
        if published:  # what the app's store would make live: the file's decoder
            self.model.mask_decoder.load_state_dict(candidate_state)
        else:
            self.load_state(seed, finished[:-1])
        atomic_torch_save(self.model.mask_decoder.state_dict(), self.memo.state_path([seed, *finished]))
        for p in self.model.mask_decoder.parameters():
            p.requires_grad_(False)
        return {"published": published, "reason": reason, "seconds": result.seconds,
                "wall_seconds": round(wall, 1), "steps": result.budget["steps"],
                "slices_encoded": result.budget["slices_encoded"], "val_score": round(float(cand["score"]), 4),
                "baseline_score": round(float(base["score"]), 4)}

    # --- measuring -------------------------------------------------------------------------------
    def _measure(self, studies, name: str, max_clicks: int) -> dict:
        from samri.adaptation.measure import headline, measure_clicks

        result = measure_clicks(studies, model=self.model, cache=self.cache, key=self.cfg.model, first=("box",),
                                max_clicks=max_clicks, human_seconds=self.cfg.human_seconds,
                                out_dir=self.work_dir / "measure" / name, window=self.window, progress=False)
        figures = headline(result)["box"]
        noc = result["clicks:box"]["noc"]
        figures.update(noc80=noc["80"], noc90=noc["90"], dice_at=result["clicks:box"]["dice_at"])
        return figures

    def cost(self, seed: int, finished: Sequence[str], study: str) -> dict:
        """The clicks the annotator spends on ``study`` with the decoder of ``finished``."""
        def compute() -> dict:
            self.load_state(seed, finished)
            start = time.perf_counter()
            fig = self._measure(self.own_sets[study], "annotate", self.cfg.annotate_max_clicks)
            self.timings["annotate"] += time.perf_counter() - start
            clicks = fig["noc85"] * fig["n"]
            return {"study": study, "sessions": fig["n"], "clicks": round(clicks, 3), "noc85": fig["noc85"],
                    "clicks80": round(fig["noc80"] * fig["n"], 3), "noc80": fig["noc80"],
                    "dice1": fig["dice1"], "seconds": round(fig["seconds85"] * fig["n"], 1)}

        return self.memo.record("cost", [seed, *finished, "->", study], compute) if finished else \
            self.memo.record("cost", ["base", study], compute)

    def heldout_figures(self, seed: int, finished: Sequence[str]) -> dict:
        """Clicks-protocol figures on the held-out studies with the decoder of ``finished``."""
        def compute() -> dict:
            self.load_state(seed, finished)
            start = time.perf_counter()
            fig = self._measure(self.heldout, "heldout", self.cfg.eval_max_clicks)
            self.timings["heldout"] += time.perf_counter() - start
            return fig

        return self.memo.record("heldout", [seed, *finished] if finished else ["base"], compute)

    def pick(self, strategy: str, seed: int, finished: Sequence[str], rng: random.Random) -> tuple[str, dict]:
        """The strategy's next study, scored with the decoder of ``finished``.

        ``random`` draws from ``rng`` every time (cheap, and its generator must advance alike on a
        resumed run); the SAMRI strategies are deterministic given the decoder, so they are memoised.
        """
        def compute() -> dict:
            self.load_state(seed, finished)
            start = time.perf_counter()
            chosen, seen = self.sim.pick(strategy, list(finished), rng)
            self.timings["pick"] += time.perf_counter() - start
            return {"study": chosen, **seen}

        record = compute() if strategy == "random" else self.memo.record("pick", [strategy, seed, *finished], compute)
        return record["study"], {k: v for k, v in record.items() if k != "study"}


def run_effort(cfg: EffortConfig, work_dir: str | Path, *, progress: bool = True,
               on_run: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Every (strategy, seed) run of ``cfg``; returns the record `effort_report` renders.

    Returns:
        ``{"config", "cohort": {"annotate", "test", "heldout_structures"}, "encoder": the image encoder's
        backend (``model.backend_info``), "base": held-out figures of the shipped decoder, "runs":
        [{"strategy", "seed", "rounds": [{"finished", "study", "cost", "training", "heldout",
        "clicks_so_far"}, ...], "reached_at_clicks"}], "timings", "seconds"}``.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    work_dir = Path(work_dir)
    run = EffortRun(cfg, work_dir)
    base = run.heldout_figures(0, [])
    record: dict[str, Any] = {"config": cfg.to_dict(), "base": base, "runs": [],
                              "encoder": dict(getattr(run.model, "backend_info", {}) or {}),
                              "cohort": {"annotate": run.annotate, "test": run.test,
                                         "heldout_structures": list(run.heldout.structures)}}
    bar = tqdm(total=len(cfg.seeds) * len(cfg.strategies) * cfg.studies_per_run, desc="al-effort",
               unit="study", disable=not progress)
    for seed in cfg.seeds:
        for strategy in cfg.strategies:
            rng = random.Random(seed)
            finished: list[str] = []
            curve = [{"finished": 0, "heldout": base, "clicks_so_far": 0.0, "clicks80_so_far": 0.0}]
            for k in range(cfg.studies_per_run):
                if k == 0:
                    study, seen = run.annotate[seed % len(run.annotate)], {}
                else:
                    study, seen = run.pick(strategy, seed, finished, rng)
                cost = run.cost(seed, finished, study)
                finished.append(study)
                training = run.train(seed, finished)
                figures = run.heldout_figures(seed, finished)
                curve.append({"finished": len(finished), "study": study, "seen": seen, "cost": cost,
                              "training": training, "heldout": figures,
                              "clicks_so_far": round(curve[-1]["clicks_so_far"] + cost["clicks"], 3),
                              "clicks80_so_far": round(curve[-1]["clicks80_so_far"] + cost["clicks80"], 3)})
                logger.info("%s seed %d: +%s (%.0f clicks) -> held-out NoC@85 %.2f, Dice@1 %.3f", strategy, seed,
                            study, cost["clicks"], figures["noc85"], figures["dice1"])
                bar.update(1)
            at = target_reached_at(curve, cfg.target_figure, cfg.target_change)
            entry = {"strategy": strategy, "seed": seed, "rounds": curve,
                     "reached_at": at, "reached_at_clicks": None if at is None else curve[at]["clicks_so_far"]}
            record["runs"].append(entry)
            if on_run is not None:
                on_run(record)
    bar.close()
    record["timings"] = {k: round(v, 1) for k, v in run.timings.items()}
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record
