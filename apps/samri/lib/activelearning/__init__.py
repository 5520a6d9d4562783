"""SAMRI active learning in MONAI Label: scoring methods (`scoring`) and strategies (`strategies`)."""

from __future__ import annotations

from typing import Any

from ..runtime import SamriRuntime


def samri_strategies(runtime: SamriRuntime) -> dict[str, Any]:
    """``{"samri_uncertainty", "samri_novelty", "samri_combined"}`` sharing one reservation book."""
    from samri.activelearning.config import ALConfig, load_al_config
    from samri.activelearning.selection import Reservations
    from samri.errors import SamriInputError

    from .strategies import STRATEGIES, SamriStrategy

    try:
        seconds = load_al_config().reserve_seconds
    except SamriInputError:  # reported by every request; keep the app starting
        seconds = ALConfig().reserve_seconds
    reservations = Reservations(seconds)
    return {name: SamriStrategy(kind, runtime=runtime, reservations=reservations) for name, kind in STRATEGIES.items()}


def samri_scoring_methods(runtime: SamriRuntime) -> dict[str, Any]:
    """``{"samri_uncertainty", "samri_novelty"}`` scoring methods."""
    from .scoring import SamriScoring

    return {f"samri_{kind}": SamriScoring(runtime=runtime, kind=kind) for kind in ("uncertainty", "novelty")}
