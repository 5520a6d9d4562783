"""Plain helpers shared by several test folders (fixtures stay in the conftest files)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np

#: ``configs/models.yaml`` whose default is a random 64-px ViT (fast tests; no weights).
TINY_REGISTRY = textwrap.dedent("""\
    default_model: tiny
    window: {lower_percentile: 0.5, upper_percentile: 99.5, foreground_only: true}
    models:
      tiny:
        description: random 64-px ViT for fast tests
        architecture: {img_size: 64, patch_size: 16, embed_dim: 32, depth: 1, num_heads: 2,
                       global_attn_indexes: [0], window_size: 0, prompt_dim: 32, decoder_mlp_dim: 64}
        checkpoint: null
        random_init: true
        preprocessing: {input_size: 64, slice_minmax: true, value_scale: 1.0,
                        pixel_mean: [0.0, 0.0, 0.0], pixel_std: [1.0, 1.0, 1.0]}
    """)


def write_tiny_studies(folder: Path, ids: tuple[str, ...] = ("tiny_a", "tiny_b")) -> Path:
    """A datastore of small ``(40, 36, 8)`` MR-like volumes (a bright ellipsoid on noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(np.arange(40), np.arange(36), np.arange(8), indexing="ij")
    blob = ((x - 20) / 9.0) ** 2 + ((y - 18) / 7.0) ** 2 + ((z - 4) / 3.0) ** 2 < 1.0
    affine = np.array([[-1.2, 0, 0, 30.0], [0, 1.1, 0, -20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
    for n, image_id in enumerate(ids):
        vol = (100 + 20 * rng.standard_normal(blob.shape) + 300 * blob + 10 * n).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, affine), str(folder / f"{image_id}.nii.gz"))
    return folder
