"""Shared fixtures for the samri unit tests: a tiny random-weight SAM and synthetic MRI volumes.

Everything here is built in memory (no download, no real weights) and is fast on a 2-core CPU.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from samri.intensity import Preprocessing, WindowSettings
from samri.model.builders import ModelSpec, SamModel, load_model
from samri.volume import PreparedVolume, prepare_volume

#: ViT parameters of the tiny test network: 64x64 input, 8x8x32 embeddings, 32x32 low-res logits.
TINY_ARCHITECTURE = {
    "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
    "global_attn_indexes": [0], "window_size": 4, "prompt_dim": 32, "decoder_mlp_dim": 64,
    "decoder_heads": 2,
}

#: shape of the synthetic volume and its ellipsoid (centre and radii in voxels).
VOLUME_SHAPE = (40, 48, 30)
ELLIPSOID_CENTER = (20.0, 24.0, 15.0)
ELLIPSOID_RADII = (9.0, 11.0, 7.0)


def tiny_spec(name: str = "tiny", preprocessing: Preprocessing | None = None) -> ModelSpec:
    """Registry entry of the tiny random-weight SAM (same builder path as every real variant)."""
    return ModelSpec(name=name, architecture=dict(TINY_ARCHITECTURE), checkpoint=None,
                     preprocessing=preprocessing or Preprocessing(input_size=64), random_init=True)


def ellipsoid_mask(shape=VOLUME_SHAPE, center=ELLIPSOID_CENTER, radii=ELLIPSOID_RADII) -> np.ndarray:
    """``(X, Y, Z)`` bool ellipsoid."""
    grid = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape), indexing="ij")
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii))
    return dist <= 1.0


def synthetic_array(seed: int = 0) -> np.ndarray:
    """``(40, 48, 30)`` float32 "MRI": dim background, bright ellipsoid, Gaussian noise."""
    rng = np.random.default_rng(seed)
    vol = 100.0 + 10.0 * rng.standard_normal(VOLUME_SHAPE)
    vol[ellipsoid_mask()] += 500.0
    return vol.astype(np.float32)


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
