"""Measure any decoder on an ``adapt-sim`` run's held-out sessions (same studies, structures, protocol).

Answers questions the rounds cannot, on identical sessions: would a longer training run on the same
finished studies (``samri train --decoder ... --epochs ...``) need fewer clicks than the round's
budget gave? ``python -m samri.adaptation.measure_decoder RUN --decoder FILE --name NAME`` writes
``RUN/extra/NAME/`` (the clicks run) and ``RUN/extra/NAME.json`` (the headline figures).

``RUN`` without a ``summary.json`` (no ``samri adapt-sim`` run there) gets the sessions ``samri adapt-sim``
would measure: ``configs/adaptation.yaml`` (or ``--config``), its cohort's ``test`` studies and the same
seeded structures; that record is written to ``RUN/heldout.json`` and ``RUN/cache`` holds the embeddings.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = ["fresh_record", "heldout_set", "measure_decoder"]


def fresh_record(config: Path | None = None) -> dict[str, Any]:
    """What an adapt-sim ``summary.json`` says about its held-out sessions, without a run: the adaptation
    config ``config`` (default ``configs/adaptation.yaml``), its cohort's ``test`` studies and the seeded
    structures `samri.adaptation.experiment.run_adaptation` picks from them."""
    from samri.adaptation.config import load_adapt_config
    from samri.adaptation.experiment import cohort_splits, heldout_structures

    cfg = load_adapt_config(config)
    _, test, names = cohort_splits(Path(cfg.cohort))
    return {"config": cfg.as_dict(), "heldout": test, "heldout_structures": list(heldout_structures(cfg, test, names))}


def heldout_set(record: Mapping[str, Any]):
    """The `samri.adaptation.measure.StudySet` of a run's held-out studies, from its ``summary.json``."""
    from samri.adaptation.experiment import study_paths
    from samri.adaptation.measure import StudySet

    cohort = Path(record["config"]["cohort"])
    return StudySet(*study_paths(cohort, list(record["heldout"])), tuple(record["heldout_structures"]))


def measure_decoder(run: Path, decoder: Path | None, name: str, *, click_fill: bool = True,
                    config: Path | None = None, progress: bool = False,
                    shapes_from: Path | None = None) -> dict[str, Any]:
    """Clicks figures of ``decoder`` (None: the registry's) on ``run``'s held-out sessions, served
    with or without click fill (`samri.inference.refine.fill_clicks`). A ``run`` folder without a
    ``summary.json`` measures `fresh_record` (``config``), kept in ``run/heldout.json``.
    ``shapes_from``: a studies folder whose finished labels' shapes the decoder serves instead of its own
    (`samri.train.run.study_shape_priors` with `configs/training.yaml`'s ``shape_prior`` weight and neighbours,
    as the trainer would collect them), e.g. the shipped decoder with an adapt-sim run's finished studies.

    Returns:
        ``{"decoder", "headline", "dice_at"}`` as a round's ``heldout`` entry, also written to
        ``run/extra/<name>.json``.
    """
    from samri.adaptation.measure import headline, measure_clicks
    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache
    from samri.io import write_json
    from samri.model.builders import load_model

    if (run / "summary.json").is_file():
        record = json.loads((run / "summary.json").read_text())
    else:
        record = fresh_record(config)
        write_json(run / "heldout.json", record)
    cfg = record["config"]
    registry = load_registry()
    model = load_model(registry.spec(cfg["model"]), decoder=decoder)
    if shapes_from is not None:
        model.shape_priors = _shapes(shapes_from)
    result = measure_clicks(heldout_set(record), model=model,
                            cache=EmbeddingCache(cache_dir=run / "cache", max_memory_bytes=1 << 30),
                            key=f"{cfg['model']}@{name}", first=cfg["eval_first"], max_clicks=cfg["eval_max_clicks"],
                            human_seconds=cfg["human_seconds"], out_dir=run / "extra" / name, window=registry.window,
                            progress=progress, click_fill=click_fill)
    out = {"decoder": str(decoder) if decoder else "base", "click_fill": click_fill,
           "shapes_from": None if shapes_from is None else str(shapes_from), "headline": headline(result),
           "dice_at": {k.split(":", 1)[1]: v["dice_at"] for k, v in result.items() if k.startswith("clicks:")}}
    write_json(run / "extra" / f"{name}.json", out)
    return out


def _shapes(studies: Path):
    """The shape priors the trainer would collect from ``studies`` (a MONAI Label studies folder)."""
    from dataclasses import replace

    from samri.config import load_registry
    from samri.train.config import load_train_config
    from samri.train.run import shape_prior_settings, study_shape_priors
    from samri.train.stage1 import find_studies

    cfg = load_train_config()
    settings = shape_prior_settings(replace(cfg.settings, shape_prior_weight=cfg.settings.shape_prior_weight or 1.0))
    priors = study_shape_priors(find_studies(studies), axes=cfg.axes, include_labels=None, settings=settings,
                                window=load_registry().window)
    logger.info("shapes from %s: %d sections of %d structures", studies, len(priors), len(priors.names))
    return priors


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="adapt-sim output folder, or any folder (the sessions adapt-sim would "
                   "measure, from --config)")
    p.add_argument("--config", type=Path, default=None,
                   help="adaptation config for a folder without an adapt-sim run (default configs/adaptation.yaml)")
    p.add_argument("--decoder", type=Path, default=None, help="decoder-only checkpoint (default: the registry's)")
    p.add_argument("--name", required=True, help="name of this measurement under RUN/extra/")
    p.add_argument("--click-fill", choices=("on", "off"), default="on", help="serve with click fill (default on)")
    p.add_argument("--shapes-from", type=Path, default=None,
                   help="studies folder whose finished labels' shapes the decoder serves (docs/ADAPTATION.md)")
    args = p.parse_args(argv)
    out = measure_decoder(args.run, args.decoder, args.name, click_fill=args.click_fill == "on",
                          config=args.config, progress=True, shapes_from=args.shapes_from)
    print(json.dumps(out["headline"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
