"""Request options of ``POST /train/samri`` and the training config they override.

Body (JSON), every key optional; defaults come from ``configs/training.yaml`` (or
``$SAMRI_CONFIG_DIR/training.yaml``, parsed by `samri.train.config.load_train_config`) and are
what ``/info/`` lists under ``trainers.samri.config`` (3D Slicer shows them in its training options):

===================  ===========================================================================
``max_epochs``       epochs of stage 2 (integer >= 1; YAML ``epochs``)
``max_steps_per_epoch``  cap of decoder steps per epoch (integer; 0 = all samples)
``max_slices``       cap of new slices stage 1 encodes over all studies, each study an equal
                     share of evenly spaced labelled slices; labelled slices already in the
                     embedding cache are used too, for free (integer; 0 = every labelled slice;
                     one encoder pass each: LiteMedSAM on a 2-core CPU 1-5 s)
``max_val_samples``  validation pairs (slice, structure), each scored with 3 prompt modes before
                     training and after every epoch (integer >= 1)
``lr``               AdamW learning rate (> 0; YAML ``optimizer.lr``)
``labels``           label names to train on: a list or a comma-separated string; empty = all
                     named labels (YAML ``include_labels``)
``gate_margin``      publish when validation Dice beats the live decoder's, or is at most this much
                     below it (>= 0; 0 = must improve; YAML ``gate.margin``)
``rollback``         ``vNNNN``, ``base`` or ``previous``: make that published version live
                     instead of training (see `samri.train.store.DecoderStore.rollback`)
===================  ===========================================================================

MONAI Label adds ``model``, ``gpus``, ``local_rank`` and the like; other keys are ignored with a
log line.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping

from samri.errors import SamriInputError

if TYPE_CHECKING:  # importing it loads torch (samri.annotator): the app's import stays light
    from samri.train.config import TrainConfig

logger = logging.getLogger(__name__)

#: keys MONAI Label itself puts into a train request.
MONAI_LABEL_KEYS = {"model", "gpus", "local_rank", "device", "multi_gpu", "bundle_path", "name"}
OPTION_KEYS = {"max_epochs", "max_steps_per_epoch", "max_slices", "max_val_samples", "lr", "labels", "gate_margin",
               "rollback"}
_ROLLBACK_RE = re.compile(r"^(v\d{4,}|base|previous)$")


@dataclass(frozen=True)
class TrainOptions:
    """Validated options of one request (see the module docstring)."""

    epochs: int
    max_steps_per_epoch: int | None
    lr: float
    labels: tuple[str, ...] | None
    gate_margin: float
    rollback: str | None = None
    max_slices: int | None = None
    max_val_samples: int | None = None

    def summary(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """The training config with these options written in."""
        budget = {} if self.max_val_samples is None else {"max_val_samples": self.max_val_samples}
        return cfg.replace(epochs=self.epochs, max_steps_per_epoch=self.max_steps_per_epoch, max_slices=self.max_slices,
                           lr=self.lr, include_labels=self.labels or None, gate_margin=self.gate_margin, **budget)


#: largest epoch or step count accepted.
MAX_COUNT = 1_000_000


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _integer(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise SamriInputError(field, value, "must be an integer") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and (not math.isfinite(value) or int(value) != value)):
        raise SamriInputError(field, value, "must be an integer")
    if value > MAX_COUNT:  # checked on the Python value: a JSON integer may have thousands of digits
        raise SamriInputError(field, value, f"must be <= {MAX_COUNT}")
    if value < minimum:
        raise SamriInputError(field, value, f"must be >= {minimum}")
    return int(value)


def _number(value: Any, field: str, *, positive: bool) -> float:
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise SamriInputError(field, value, "must be a number") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise SamriInputError(field, value, "must be a positive number" if positive else "must be >= 0")
    return number


def _labels(value: Any) -> tuple[str, ...] | None:
    if _blank(value):
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise SamriInputError("labels", value, "must be a list of label names or a comma-separated string")
    names = []
    for n, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise SamriInputError(f"labels[{n}]", item, "must be a non-empty label name")
        if item.strip() not in names:
            names.append(item.strip())
    return tuple(names) or None


def defaults(cfg: TrainConfig) -> dict[str, Any]:
    """The options' defaults from a training config (what ``/info/`` shows clients)."""
    settings = cfg.settings
    return {"max_epochs": settings.epochs, "max_steps_per_epoch": settings.max_steps_per_epoch or 0,
            "max_slices": settings.max_slices or 0, "max_val_samples": settings.max_val_samples,
            "lr": settings.lr, "labels": ",".join(cfg.include_labels or ()), "gate_margin": cfg.gate_margin,
            "rollback": ""}


def parse_train_options(request: Mapping[str, Any], cfg: TrainConfig) -> TrainOptions:
    """Validate a train request over the config's defaults.

    Raises:
        SamriInputError: naming the option and its value.
    """
    unknown = sorted(set(request) - OPTION_KEYS - MONAI_LABEL_KEYS)
    if unknown:
        logger.info("train request keys not used by SAMRI: %s", unknown)
    base = defaults(cfg)

    def get(key: str) -> Any:
        value = request.get(key)
        return base[key] if _blank(value) else value

    rollback = request.get("rollback")
    if not _blank(rollback):
        if not isinstance(rollback, str) or not _ROLLBACK_RE.match(rollback.strip()):
            raise SamriInputError("rollback", rollback, "must be vNNNN (e.g. v0001), base or previous")
        rollback = rollback.strip()
    else:
        rollback = None
    steps = _integer(get("max_steps_per_epoch"), "max_steps_per_epoch", 0)
    slices = _integer(get("max_slices"), "max_slices", 0)
    labels = _labels(request.get("labels")) if not _blank(request.get("labels")) else _labels(base["labels"])
    return TrainOptions(epochs=_integer(get("max_epochs"), "max_epochs", 1), max_steps_per_epoch=steps or None,
                        lr=_number(get("lr"), "lr", positive=True), labels=labels,
                        gate_margin=_number(get("gate_margin"), "gate_margin", positive=False), rollback=rollback,
                        max_slices=slices or None,
                        max_val_samples=_integer(get("max_val_samples"), "max_val_samples", 1))
