"""Settings of ``samri adapt-sim`` (``configs/adaptation.yaml``), checked field by field."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from samri.errors import SamriInputError

__all__ = ["AdaptConfig", "load_adapt_config"]

FIRSTS = ("box", "point")


@dataclass(frozen=True)
class AdaptConfig:
    """One adaptation experiment.

    Attributes:
        cohort: `samri cohort` folder; its ``annotate`` subjects are finished in id order, its
            ``test`` subjects are the held-out studies.
        rounds: ``POST /train/samri`` after this many finished studies (increasing, e.g. 1, 3, 5).
        model: registry name the server serves (``--conf model``).
        annotate_first, annotate_max_clicks, annotate_structures: the simulated annotator on a
            study: clicks sessions (first interaction, interactions per session) on the middle
            slice of this many seeded structures; their clicks are the study's counted effort.
        train: the ``POST /train/samri`` body of every round (`apps/samri/lib/trainers/options.py`).
        heldout_structures: seeded structures measured on every held-out study (middle slice each).
        eval_first, eval_max_clicks: first interactions and interactions per held-out session.
        original_studies, original_images, original_labels: the original domain (EVALUATION.md's
            test split): image ids and structure names measured the same way; empty = skipped.
        original_every_round: measure the original domain after every round (default: before the
            first and after the last only; it does not change in between unless the trainer forgets).
        human_seconds: annotator seconds per interaction (the clicks protocol's).
        seed: structure sampling.
    """

    cohort: str = "data/adapt-cohort"
    rounds: tuple[int, ...] = (1, 3, 5)
    model: str = "samri_lite"
    annotate_first: str = "box"
    annotate_max_clicks: int = 10
    annotate_structures: int = 24
    train: Mapping[str, Any] = field(default_factory=dict)
    heldout_structures: int = 40
    eval_first: tuple[str, ...] = FIRSTS
    eval_max_clicks: int = 10
    original_studies: str = "data/test-split"
    original_images: tuple[str, ...] = ()
    original_labels: tuple[str, ...] = ()
    original_every_round: bool = False
    human_seconds: float = 2.0
    seed: int = 0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **overrides: Any) -> "AdaptConfig":
        """Build from YAML data plus non-None ``overrides``; raise `SamriInputError` naming a bad key."""
        merged = {**dict(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise SamriInputError("adaptation", unknown, f"unknown keys; known: {sorted(known)}")
        for key in ("rounds", "eval_first", "original_images", "original_labels"):
            if key in merged:
                value = merged[key]
                merged[key] = tuple(str(value).split(",")) if isinstance(value, (str, int)) else tuple(value or ())
        if "rounds" in merged:
            try:
                merged["rounds"] = tuple(int(r) for r in merged["rounds"])
            except (TypeError, ValueError) as exc:
                raise SamriInputError("rounds", merged["rounds"], "integers") from exc
        if not isinstance(merged.get("train", {}), Mapping):
            raise SamriInputError("train", merged["train"], "a mapping of POST /train/samri options")
        cfg = cls(**merged)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        r = self.rounds
        if not r or any(b <= a for a, b in zip(r, r[1:])) or r[0] < 1:
            raise SamriInputError("rounds", list(r), "increasing study counts >= 1, e.g. 1,3,5")
        for name in ("annotate_max_clicks", "annotate_structures", "heldout_structures", "eval_max_clicks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SamriInputError(name, value, "an integer >= 1")
        if self.annotate_first not in FIRSTS:
            raise SamriInputError("annotate_first", self.annotate_first, f"one of {list(FIRSTS)}")
        bad = [f for f in self.eval_first if f not in FIRSTS]
        if not self.eval_first or bad:
            raise SamriInputError("eval_first", list(self.eval_first), f"a list of {list(FIRSTS)}")
        if self.human_seconds < 0:
            raise SamriInputError("human_seconds", self.human_seconds, "must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else
                         dict(v) if isinstance(v, Mapping) else v) for f in fields(self)}


def load_adapt_config(path: str | Path | None = None, **overrides: Any) -> AdaptConfig:
    """``configs/adaptation.yaml`` (or ``path``) with ``overrides`` (None values ignored)."""
    from samri.config import config_dir, read_yaml

    data = read_yaml(Path(path) if path else config_dir() / "adaptation.yaml", field="adaptation config")
    if data is not None and not isinstance(data, Mapping):
        raise SamriInputError("adaptation config", str(path), "must be a YAML mapping")
    return AdaptConfig.from_mapping(data, **overrides)
