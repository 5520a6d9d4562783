"""Shared fixtures for the samri unit tests: a tiny random-weight SAM and synthetic MRI volumes.

Everything here is built in memory (no download, no real weights) and is fast on a 2-core CPU.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from samri.intensity import WindowSettings
from samri.model.builders import SamModel, load_model
from samri.volume import PreparedVolume, prepare_volume
from tests.helpers import ELLIPSOID_CENTER, TINY_ARCHITECTURE, ellipsoid_mask, synthetic_array, tiny_spec  # noqa: F401


@pytest.fixture(scope="session")
def tiny_model() -> SamModel:
    """The tiny SAM, random weights, built through `samri.model.builders.load_model` (shared, read-only)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return load_model(tiny_spec())


@pytest.fixture()
def fresh_tiny_model() -> SamModel:
    """A tiny SAM that a test may modify (same seed, so same weights as `tiny_model`)."""
    import torch

    torch.manual_seed(0)
    return load_model(tiny_spec())


@pytest.fixture(scope="session")
def gt_mask() -> np.ndarray:
    """Ground truth of the synthetic volume: the ellipsoid, ``(40, 48, 30)`` bool."""
    return ellipsoid_mask()


@pytest.fixture()
def volume_array() -> np.ndarray:
    """A fresh copy of the synthetic raw volume (tests may modify it)."""
    return synthetic_array()


@pytest.fixture()
def make_volume() -> Callable[..., PreparedVolume]:
    """Factory: ``make_volume(array=None, window=WindowSettings())`` -> `PreparedVolume`."""

    def factory(array: np.ndarray | None = None, window: WindowSettings = WindowSettings()) -> PreparedVolume:
        return prepare_volume(synthetic_array() if array is None else array, window)

    return factory


@pytest.fixture(scope="session")
def prepared_volume() -> PreparedVolume:
    """The synthetic volume, windowed once for the session (read-only)."""
    return prepare_volume(synthetic_array())
