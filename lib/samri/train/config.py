"""Typed training configuration: ``configs/training.yaml`` parsed and checked once.

Every key a training run reads lives here, with its built-in default in exactly one place (the
dataclass fields of `TrainSettings`, `TrainConfig` and `samri.annotator.SimSettings`); a YAML
that leaves a key out gets that default. `load_train_config` reads the config dir's
``training.yaml`` and, given another YAML (the default decoder's recipe, ``samri train
--config``), overlays it with `merge_config`, so such a file holds only what differs.

YAML shape (see ``configs/training.yaml``)::

    optimizer: {lr, weight_decay}
    loss: {lambda_dice, lambda_focal, focal_gamma, iou_weight, click_weight, box_clip}
    epochs, batch_size, max_steps_per_epoch, max_slices, max_val_samples, validation_clicks, seed
    min_pixels, axes, val_fraction, include_labels
    validation: {label_stride, click_fill}
    prompts: {mode_weights, box_jitter, max_negatives, correction_prob, correction_rounds}
    gate: {margin}
    pseudo_structures: {grey_cells, white_cells, fine_grey_cells, fine_white_cells, white_tubes}
                                                (the default decoder's recipe only)

An unknown key or a bad value raises `SamriInputError` naming the file and the dotted key
(``training.yaml: optimizer.lr``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from samri.annotator import SimSettings
from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

__all__ = ["TRAINING_YAML", "TrainConfig", "TrainSettings", "load_train_config", "merge_config", "read_train_yaml"]

#: the training config's file name in the config dir (`samri.config.config_dir`).
TRAINING_YAML = "training.yaml"


@dataclass(frozen=True)
class TrainSettings:
    """Stage-2 settings (and the run's stage-1 budget); YAML keys in the module docstring.

    The built-in defaults leave a run unbounded (every labelled slice, every sample per epoch);
    the app's ``training.yaml`` sets the budget a request runs under. ``validation_clicks`` > 0
    also runs the clicks protocol (that many interactions) on the validation pairs, and its mean
    Dice then picks the epoch and gates publishing (`samri.train.run.selection_score`).
    ``max_steps_per_epoch`` and ``max_slices``: None = unbounded. ``box_clip``: the decoder's
    logits outside a prompt's box are clipped as serving clips its mask
    (`samri.train.stage2.clip_logits_to_boxes`) in the loss, the fed-back logits and validation.
    ``validation_click_fill``: the clicks validation applies serving's click fill
    (`samri.inference.refine.fill_clicks`) on the windowed slice, so it scores the served answer.
    ``shape_prior_weight`` > 0: the decoder file also carries the shapes of the studies' named
    structures, added to the logits of a box's answers with this weight when a request names the structure
    (`samri.inference.shape_prior`); ``shape_prior_neighbours`` sections are averaged per prior when chosen by size
    alone; with ``shape_prior_patch`` > 0 each section keeps the image inside its box, and a prior averages the
    ``shape_prior_matched`` of the ``shape_prior_candidates`` closest in size that look most like the request's box
    (by size alone when their mean correlation is under ``shape_prior_min_correlation``); on an answer with clicks a
    section's correlation is lowered by ``shape_prior_click_penalty`` x the fraction of the clicks it contradicts
    (the same score chooses the box a click session's refinement takes the prior on).
    """

    lr: float = 1e-4
    weight_decay: float = 0.1
    lambda_dice: float = 1.0
    lambda_focal: float = 10.0
    focal_gamma: float = 2.0
    iou_weight: float = 1.0
    click_weight: float = 0.0
    box_clip: bool = False
    epochs: int = 4
    batch_size: int = 8
    max_steps_per_epoch: int | None = None
    max_val_samples: int = 256
    max_slices: int | None = None
    validation_clicks: int = 0
    validation_click_fill: bool = False
    shape_prior_weight: float = 0.0
    shape_prior_neighbours: int = 16
    shape_prior_patch: int = 16
    shape_prior_candidates: int = 64
    shape_prior_matched: int = 4
    shape_prior_min_correlation: float = 0.5
    shape_prior_click_penalty: float = 0.3
    seed: int = 0
    sim: SimSettings = field(default_factory=SimSettings)


@dataclass(frozen=True)
class TrainConfig:
    """One training run's configuration: the stage-2 settings and the data/publishing keys.

    Attributes:
        settings: stage 2 and the budget (`TrainSettings`; ``prompts`` is its ``sim``).
        min_pixels: objects smaller than this many pixels in a slice are dropped (SAMRI: 30).
        axes: slicing axes used for training (volume axes 0..2).
        val_fraction: share of studies validated on (split by study); 0 = validate on training.
        include_labels: label names to train on; None = every named label.
        label_stride: the recipe's held-out structures (``validation.label_stride``,
            `samri.train.recipe.split_validation_labels`): 0 = off, else at least 2.
        gate_margin: publish when the validation score is within this of the live decoder's
            (``gate.margin``, `samri.train.store.gate`).
        pseudo_grey_cells, pseudo_white_cells: the recipe's pseudo-structures
            (``pseudo_structures.grey_cells`` / ``white_cells``, `samri.train.pseudo_structures`):
            parcels of the training volume's grey / white matter added as structures; 0 = none.
        pseudo_fine_grey_cells, pseudo_fine_white_cells: a second, finer parcellation of the same
            tissue (``pseudo_structures.fine_grey_cells`` / ``fine_white_cells``), a study of its own.
        pseudo_white_tubes: tract-like tubes cut from the white matter (``pseudo_structures.white_tubes``,
            `samri.train.pseudo_structures.tube_parcels`), a study of their own; 0 = none.
    """

    settings: TrainSettings = field(default_factory=TrainSettings)
    min_pixels: int = 30
    axes: tuple[int, ...] = (2,)
    val_fraction: float = 0.25
    include_labels: tuple[str, ...] | None = None
    label_stride: int = 0
    gate_margin: float = 0.0
    pseudo_grey_cells: int = 0
    pseudo_white_cells: int = 0
    pseudo_fine_grey_cells: int = 0
    pseudo_fine_white_cells: int = 0
    pseudo_white_tubes: int = 0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, source: str = TRAINING_YAML) -> "TrainConfig":
        """Parse a training YAML's mapping; keys left out keep their defaults.

        Args:
            data: the YAML's top-level mapping (None = empty).
            source: file name the error messages start with.
        Raises:
            SamriInputError: ``"<source>: <dotted key>"`` and the value, for an unknown key, a
                section that is not a mapping, or a value of the wrong type or range.
        """
        values = {group: {} for group in ("settings", "sim", "config")}
        for key, value in _leaves(data, source):
            if key not in KEYS:
                section = key.split(".")[0] if "." in key else None
                known = sorted(k for k in KEYS if section is None or k.startswith(f"{section}."))
                raise SamriInputError(f"{source}: {key}", value, f"unknown key; known: {known}")
            group, name, parse = KEYS[key]
            values[group][name] = parse(value, f"{source}: {key}")
        try:
            sim = SimSettings(**values["sim"])
        except SamriInputError as exc:  # its own cross-field checks (mode names, rounds)
            raise SamriInputError(f"{source}: {exc.field}", exc.value, exc.reason) from None
        return cls(settings=TrainSettings(**values["settings"], sim=sim), **values["config"])

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``: `TrainConfig` fields, or `TrainSettings` fields (``lr``, ``epochs``...)."""
        own = {f.name for f in dataclasses.fields(self)}
        settings = {k: v for k, v in changes.items() if k not in own}
        out = dataclasses.replace(self, **{k: v for k, v in changes.items() if k in own})
        return dataclasses.replace(out, settings=dataclasses.replace(out.settings, **settings)) if settings else out

    def run_arguments(self) -> dict[str, Any]:
        """Keyword arguments of `samri.train.run.run_training` this config sets."""
        return {"settings": self.settings, "min_pixels": self.min_pixels, "axes": self.axes,
                "val_fraction": self.val_fraction,
                "include_labels": list(self.include_labels) if self.include_labels else None}


# --- value parsers: (value, field) -> typed value, or SamriInputError naming field and value -----------------
Parser = Callable[[Any, str], Any]


def _number(*, low: float = 0.0, low_open: bool = False, high: float | None = None) -> Parser:
    """A finite number in ``[low, high]`` (``(low, ...`` when ``low_open``); a numeric string is
    accepted because PyYAML reads ``1e-4`` (no dot) as a string."""
    shown = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")

    def parse(value: Any, name: str) -> float:
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number) or number < low or (low_open and number == low) \
                or (high is not None and number > high):
            raise SamriInputError(name, value, f"must be a number {shown}")
        return number
    return parse


def _integer(low: int) -> Parser:
    def parse(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SamriInputError(name, value, f"must be an integer >= {low}")
        return value
    return parse


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SamriInputError(name, value, "must be true or false")
    return value


def _budget(value: Any, name: str) -> int | None:
    """A budget: null or 0 = unbounded (None)."""
    return None if value is None else (_integer(0)(value, name) or None)


def _stride(value: Any, name: str) -> int:
    stride = _integer(0)(value, name)
    if stride == 1:
        raise SamriInputError(name, value, "must be 0 (off) or at least 2")
    return stride


def _axes(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value) \
            or any(isinstance(a, bool) or a not in (0, 1, 2) for a in value):
        raise SamriInputError(name, value, "must be a list of distinct volume axes (0, 1, 2)")
    return tuple(int(a) for a in value)


def _labels(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in value):
        raise SamriInputError(name, value, "must be null (every named label) or a list of label names")
    return tuple(n.strip() for n in value) or None


def _weights(value: Any, name: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise SamriInputError(name, value, "must be a mapping of prompt kind to weight")
    return {str(k): _number()(v, f"{name}.{k}") for k, v in value.items()}


#: dotted YAML key -> (group, field name, parser); groups: TrainSettings, SimSettings, TrainConfig.
KEYS: dict[str, tuple[str, str, Parser]] = {
    "optimizer.lr": ("settings", "lr", _number(low_open=True)),
    "optimizer.weight_decay": ("settings", "weight_decay", _number()),
    "loss.lambda_dice": ("settings", "lambda_dice", _number()),
    "loss.lambda_focal": ("settings", "lambda_focal", _number()),
    "loss.focal_gamma": ("settings", "focal_gamma", _number()),
    "loss.iou_weight": ("settings", "iou_weight", _number()),
    "loss.click_weight": ("settings", "click_weight", _number()),
    "loss.box_clip": ("settings", "box_clip", _boolean),
    "epochs": ("settings", "epochs", _integer(1)),
    "batch_size": ("settings", "batch_size", _integer(1)),
    "max_steps_per_epoch": ("settings", "max_steps_per_epoch", _budget),
    "max_slices": ("settings", "max_slices", _budget),
    "max_val_samples": ("settings", "max_val_samples", _integer(1)),
    "validation_clicks": ("settings", "validation_clicks", _integer(0)),
    "seed": ("settings", "seed", _integer(0)),
    "prompts.mode_weights": ("sim", "mode_weights", _weights),
    "prompts.box_jitter": ("sim", "box_jitter", _number()),
    "prompts.max_negatives": ("sim", "max_negatives", _integer(0)),
    "prompts.correction_prob": ("sim", "correction_prob", _number(high=1.0)),
    "prompts.correction_rounds": ("sim", "correction_rounds", _integer(1)),
    "min_pixels": ("config", "min_pixels", _integer(0)),
    "axes": ("config", "axes", _axes),
    "val_fraction": ("config", "val_fraction", _number(high=1.0)),
    "include_labels": ("config", "include_labels", _labels),
    "validation.label_stride": ("config", "label_stride", _stride),
    "validation.click_fill": ("settings", "validation_click_fill", _boolean),
    "shape_prior.weight": ("settings", "shape_prior_weight", _number()),
    "shape_prior.neighbours": ("settings", "shape_prior_neighbours", _integer(1)),
    "shape_prior.patch": ("settings", "shape_prior_patch", _integer(0)),
    "shape_prior.candidates": ("settings", "shape_prior_candidates", _integer(1)),
    "shape_prior.matched": ("settings", "shape_prior_matched", _integer(1)),
    "shape_prior.min_correlation": ("settings", "shape_prior_min_correlation", _number(low=-1.0, high=1.0)),
    "shape_prior.click_penalty": ("settings", "shape_prior_click_penalty", _number()),
    "gate.margin": ("config", "gate_margin", _number()),
    "pseudo_structures.grey_cells": ("config", "pseudo_grey_cells", _integer(0)),
    "pseudo_structures.white_cells": ("config", "pseudo_white_cells", _integer(0)),
    "pseudo_structures.fine_grey_cells": ("config", "pseudo_fine_grey_cells", _integer(0)),
    "pseudo_structures.fine_white_cells": ("config", "pseudo_fine_white_cells", _integer(0)),
    "pseudo_structures.white_tubes": ("config", "pseudo_white_tubes", _integer(0)),
}

#: sections: mappings whose keys `merge_config` merges one by one.
SECTIONS = frozenset(k.split(".")[0] for k in KEYS if "." in k)


def _leaves(data: Mapping[str, Any] | None, source: str):
    """``(dotted key, value)`` of a training mapping; a section's value must be a mapping (or null)."""
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise SamriInputError(source, type(data).__name__, "must be a YAML mapping of training settings")
    for key, value in data.items():
        if key in SECTIONS:
            if value is not None and not isinstance(value, Mapping):
                raise SamriInputError(f"{source}: {key}", value, "must be a mapping")
            yield from ((f"{key}.{sub}", v) for sub, v in (value or {}).items())
        else:
            yield str(key), value


def merge_config(base: Mapping[str, Any] | None, overlay: Mapping[str, Any] | None) -> dict[str, Any]:
    """``overlay`` on ``base``: a section (``optimizer``, ``loss``, ``prompts``...) merges key by key
    (an empty one changes nothing); any other value (``prompts.mode_weights`` and ``axes`` included)
    replaces the base's whole."""
    out = dict(base or {})
    for key, value in (overlay or {}).items():
        if key in SECTIONS and (value is None or isinstance(value, Mapping)) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **(value or {})}
        else:
            out[key] = value
    return out


def read_train_yaml(path: str | Path, *, missing_ok: bool = False) -> dict[str, Any]:
    """A training YAML's mapping (``{}`` for an empty file, or a missing one when ``missing_ok``)."""
    from samri.config import read_yaml

    path = Path(path)
    if missing_ok and not path.is_file():
        logger.info("%s not found: training with the built-in defaults", path)
        return {}
    data = read_yaml(path, field="training config")
    if data is not None and not isinstance(data, Mapping):
        raise SamriInputError(f"{path.name}", type(data).__name__, "must be a YAML mapping of training settings")
    return dict(data or {})


def load_train_config(path: str | Path | None = None, *, base: str | Path | None = None,
                      overrides: Mapping[str, Any] | None = None, overrides_source: str = "overrides") -> TrainConfig:
    """The config dir's ``training.yaml`` (built-in defaults when it is missing), ``path`` overlaid on
    it, then ``overrides`` (same shape, e.g. command-line options), each merged by `merge_config`.

    Args:
        path: a YAML holding only what differs from ``base`` (the recipe's
            ``configs/training_default_decoder.yaml``, ``samri train --config``); None = ``base`` alone.
        base: default ``<config dir>/training.yaml`` (`samri.config.config_dir`).
        overrides: a last layer of values; errors in it are named ``"<overrides_source>: <key>"``.
    Raises:
        SamriInputError: naming the file (or ``overrides_source``) and key of a bad entry
            (`TrainConfig.from_mapping`), or ``path`` when it does not exist.
    """
    from samri.config import config_dir

    base = Path(base) if base is not None else config_dir() / TRAINING_YAML
    layers = [(base.name, read_train_yaml(base, missing_ok=True))]
    if path is not None and not (base.is_file() and Path(path).resolve() == base.resolve()):
        layers.append((Path(path).name, read_train_yaml(path)))
    if overrides:
        layers.append((overrides_source, dict(overrides)))
    merged: dict[str, Any] = {}
    for source, data in layers:
        # the layers below parsed cleanly, so an error now is this layer's: name its source
        merged = merge_config(merged, data)
        config = TrainConfig.from_mapping(merged, source=source)
    return config
