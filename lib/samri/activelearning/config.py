"""``configs/activelearning.yaml`` parsed into `ALConfig` (validated; bad values name their key)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

CONFIG_FILE = "activelearning.yaml"
#: default weights of the uncertainty terms (see `samri.activelearning.uncertainty`)
UNCERTAINTY_WEIGHTS = {"iou": 0.25, "stability": 0.25, "agreement": 1.0, "fill": 1.5}


@dataclass(frozen=True)
class SliceSampling:
    """Which slices of a study are scored (`samri.activelearning.sampling.sample_slices`)."""

    axis: int = 2
    step: int = 6
    max_slices: int = 8
    min_foreground: float = 0.05


@dataclass(frozen=True)
class UncertaintySettings:
    """Self-prompted decoder uncertainty (`samri.activelearning.uncertainty`)."""

    grid_points: int = 4
    max_prompts: int = 4
    box_fractions: tuple[float, ...] = (0.08,)
    perturbations: int = 2
    jitter: float = 0.1
    weights: Mapping[str, float] = field(default_factory=lambda: dict(UNCERTAINTY_WEIGHTS))
    label_weight: float = 0.5
    max_structures: int = 4
    top_slices: int = 5


@dataclass(frozen=True)
class ALConfig:
    """All active-learning settings.

    Attributes:
        slices: slice sampling.
        uncertainty: uncertainty scoring.
        pooling: novelty pooling (``grid``, ``mean`` or ``mean_std``).
        grid_size: side of the pooling grid of ``grid``.
        combined_weights: ``{"uncertainty": w, "novelty": w}`` of ``samri_combined``.
        reserve_seconds: how long a handed-out study is skipped for other clients.
        threads: torch threads of a scoring job (0 = leave torch's default).
    """

    slices: SliceSampling = SliceSampling()
    uncertainty: UncertaintySettings = UncertaintySettings()
    pooling: str = "grid"
    grid_size: int = 4
    combined_weights: Mapping[str, float] = field(default_factory=lambda: {"uncertainty": 0.5, "novelty": 0.5})
    reserve_seconds: float = 900.0
    threads: int = 1

    def scoring_key(self, kind: str) -> str:
        """Short hash of the settings a score of ``kind`` depends on (part of its validity)."""
        part: Any = {"slices": asdict(self.slices)}
        if kind == "uncertainty":
            part["uncertainty"] = {**asdict(self.uncertainty), "weights": dict(self.uncertainty.weights)}
        else:
            part["pooling"] = [self.pooling, self.grid_size]
        text = json.dumps(part, sort_keys=True, default=list)
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _number(section: Mapping[str, Any], key: str, default: float, where: str, *, integer: bool = False,
            minimum: float | None = None, maximum: float | None = None) -> Any:
    value = section.get(key, default)
    name = f"{where}.{key}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SamriInputError(name, value, "must be a number")
    if integer and float(value) != int(value):
        raise SamriInputError(name, value, "must be an integer")
    if minimum is not None and value < minimum:
        raise SamriInputError(name, value, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise SamriInputError(name, value, f"must be <= {maximum}")
    return int(value) if integer else float(value)


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise SamriInputError(key, value, "must be a mapping")
    return value


def _weights(raw: Any, keys: tuple[str, ...], where: str, default: Mapping[str, float]) -> dict[str, float]:
    if raw is None:
        return dict(default)
    if not isinstance(raw, Mapping):
        raise SamriInputError(where, raw, f"must map {list(keys)} to weights")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise SamriInputError(where, unknown, f"unknown keys; expected {list(keys)}")
    out = {k: _number(raw, k, default.get(k, 0.0), where, minimum=0.0) for k in keys}
    if sum(out.values()) <= 0:
        raise SamriInputError(where, dict(raw), "at least one weight must be positive")
    return out


def parse_al_config(data: Mapping[str, Any] | None) -> ALConfig:
    """`ALConfig` from the YAML mapping (missing keys take the defaults)."""
    data = data or {}
    if not isinstance(data, Mapping):
        raise SamriInputError("activelearning config", data, "must be a mapping")
    s, u = _section(data, "slices"), _section(data, "uncertainty")
    base_s, base_u = SliceSampling(), UncertaintySettings()
    axis = _number(s, "axis", base_s.axis, "slices", integer=True, minimum=0, maximum=2)
    slices = SliceSampling(axis=axis, step=_number(s, "step", base_s.step, "slices", integer=True, minimum=1),
                           max_slices=_number(s, "max_slices", base_s.max_slices, "slices", integer=True, minimum=1),
                           min_foreground=_number(s, "min_foreground", base_s.min_foreground, "slices",
                                                  minimum=0.0, maximum=1.0))
    fractions = u.get("box_fractions", list(base_u.box_fractions))
    if not isinstance(fractions, (list, tuple)) or not fractions:
        raise SamriInputError("uncertainty.box_fractions", fractions, "must be a non-empty list")
    fractions = tuple(_number({"f": f}, "f", 0.0, "uncertainty.box_fractions", minimum=0.005, maximum=0.5)
                      for f in fractions)
    uncertainty = UncertaintySettings(
        grid_points=_number(u, "grid_points", base_u.grid_points, "uncertainty", integer=True, minimum=1, maximum=32),
        max_prompts=_number(u, "max_prompts", base_u.max_prompts, "uncertainty", integer=True, minimum=1),
        box_fractions=fractions,
        perturbations=_number(u, "perturbations", base_u.perturbations, "uncertainty", integer=True, minimum=0),
        jitter=_number(u, "jitter", base_u.jitter, "uncertainty", minimum=0.0, maximum=0.5),
        weights=_weights(u.get("weights"), tuple(UNCERTAINTY_WEIGHTS), "uncertainty.weights", base_u.weights),
        label_weight=_number(u, "label_weight", base_u.label_weight, "uncertainty", minimum=0.0, maximum=1.0),
        max_structures=_number(u, "max_structures", base_u.max_structures, "uncertainty", integer=True, minimum=1),
        top_slices=_number(u, "top_slices", base_u.top_slices, "uncertainty", integer=True, minimum=1))
    novelty = _section(data, "novelty")
    pooling = str(novelty.get("pooling", "grid"))
    if pooling not in ("grid", "mean_std", "mean"):
        raise SamriInputError("novelty.pooling", pooling, "must be grid, mean or mean_std")
    grid_size = _number(novelty, "grid_size", 4, "novelty", integer=True, minimum=1, maximum=16)
    combined = _weights(_section(data, "combined").get("weights"), ("uncertainty", "novelty"), "combined.weights",
                        {"uncertainty": 0.5, "novelty": 0.5})
    sel = _section(data, "selection")
    return ALConfig(slices=slices, uncertainty=uncertainty, pooling=pooling, grid_size=grid_size,
                    combined_weights=combined,
                    reserve_seconds=_number(sel, "reserve_seconds", 900.0, "selection", minimum=0.0),
                    threads=_number(sel, "threads", 1, "selection", integer=True, minimum=0))


def load_al_config(path: str | Path | None = None) -> ALConfig:
    """Read ``activelearning.yaml`` (default: the config dir's); built-in defaults when it is absent."""
    from samri.config import config_dir, read_yaml

    p = Path(path) if path is not None else config_dir() / CONFIG_FILE
    if not p.is_file():
        if path is not None:
            raise SamriInputError("activelearning config", str(p), "file not found")
        logger.info("%s not found: active learning uses the built-in defaults", p)
        return ALConfig()
    return parse_al_config(read_yaml(p, field="activelearning config"))
