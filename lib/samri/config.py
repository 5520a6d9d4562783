"""Read the YAML configs in ``configs/`` (data only) into typed objects."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from samri.errors import SamriInputError
from samri.intensity import Preprocessing, WindowSettings

#: override with SAMRI_CONFIG_DIR; default is the repository's configs/ (editable install).
CONFIG_DIR_ENV = "SAMRI_CONFIG_DIR"


def config_dir() -> Path:
    env = os.environ.get(CONFIG_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"


def read_yaml(path: str | os.PathLike, field: str = "config") -> Any:
    p = Path(path)
    if not p.is_file():
        raise SamriInputError(field, str(p), "file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SamriInputError(field, str(p), f"invalid YAML ({exc})") from exc


@dataclass(frozen=True)
class Registry:
    """Parsed ``configs/models.yaml``."""

    default_model: str
    window: WindowSettings
    models: dict[str, Any]  # name -> samri.model.builders.ModelSpec

    def spec(self, name: str | None = None):
        name = name or self.default_model
        if name not in self.models:
            raise SamriInputError("model", name, f"unknown model; known: {sorted(self.models)}")
        return self.models[name]


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Parse the model registry (default ``configs/models.yaml``)."""
    from samri.model.builders import ModelSpec

    path = Path(path) if path else config_dir() / "models.yaml"
    data = read_yaml(path, field="models config")
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise SamriInputError("models config", str(path), "needs a 'models' mapping")
    specs = {}
    # registry-wide inference runtime, overridable per entry (samri.model.backends)
    default_backend, default_precision = data.get("backend", "torch"), data.get("precision", "auto")
    for name, entry in data["models"].items():
        if not isinstance(entry, dict) or "architecture" not in entry:
            raise SamriInputError(f"models.{name}", entry, "needs at least 'architecture'")
        specs[name] = ModelSpec(name=name, architecture=entry["architecture"], checkpoint=entry.get("checkpoint"),
                                preprocessing=Preprocessing.from_dict(entry.get("preprocessing", {})),
                                description=str(entry.get("description", "")).strip(),
                                random_init=bool(entry.get("random_init", False)),
                                point_prompts=str(entry.get("point_prompts", "native")),
                                point_prompts_3d=entry.get("point_prompts_3d"),
                                lone_point_threshold=entry.get("lone_point_threshold", 0.0),
                                decoder=entry.get("decoder"), base=entry.get("base"),
                                backend=str(entry.get("backend", default_backend)),
                                precision=str(entry.get("precision", default_precision)))
    window = WindowSettings(**(data.get("window") or {}))
    default = data.get("default_model", next(iter(specs)))
    if default not in specs:
        raise SamriInputError("default_model", default, f"not among models {sorted(specs)}")
    return Registry(default_model=default, window=window, models=specs)
