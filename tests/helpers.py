"""Plain helpers shared by several test folders (fixtures stay in the conftest files)."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pytest

if TYPE_CHECKING:
    from samri.evaluation.protocol import Case
    from samri.intensity import Preprocessing
    from samri.model.builders import ModelSpec

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
    from samri.intensity import Preprocessing
    from samri.model.builders import ModelSpec

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


def write_study(root: Path, study_id: str, seed: int, *, label: np.ndarray | None = None) -> None:
    """A synthetic study: bright ellipsoid (label 1 'blob') and a box (label 2 'slab')."""
    image = synthetic_array(seed)
    if label is None:
        label = ellipsoid_mask().astype(np.uint8)
        label[2:12, 4:14, 5:25] = 2
        image[2:12, 4:14, 5:25] += 250.0
    (root / "labels" / "final").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / f"{study_id}.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labels" / "final" / f"{study_id}.nii.gz"))
    names_file = root / "label_names.json"
    names = json.loads(names_file.read_text()) if names_file.exists() else {}
    names[study_id] = {"blob": 1, "slab": 2}
    names_file.write_text(json.dumps(names))


#: grid of `write_fake_inia` (0.5 mm voxels)
INIA_SHAPE = (20, 24, 18)


def write_fake_inia(folder: Path) -> Path:
    """An INIA19-like mricron folder: a brain ellipsoid at 0.5 mm; NeuroMaps-like value 1200 on the
    left, 7 on the right, a 3-voxel structure 1500 and a label outside the brain. Returns ``folder``."""
    from samri.neuromaps import INIA_ATLAS, INIA_T1

    folder.mkdir(parents=True, exist_ok=True)
    shape, affine = INIA_SHAPE, np.diag([0.5, 0.5, 0.5, 1.0])
    idx = np.indices(shape).astype(np.float32)
    r = np.sqrt(sum(((idx[a] - (shape[a] - 1) / 2) / (shape[a] / 2.4)) ** 2 for a in range(3)))
    t1 = np.where(r < 0.95, 0.5 + 0.4 * (r < 0.5), 0).astype(np.float32)
    atlas = np.zeros(shape, np.int16)
    atlas[:10][r[:10] < 0.9] = 1200
    atlas[10:][r[10:] < 0.9] = 7
    atlas[10, 12, 9:12] = 1500  # too small
    atlas[0, 0, 0] = 99  # outside the brain: ignored
    nib.save(nib.Nifti1Image(t1, affine), folder / INIA_T1)
    nib.save(nib.Nifti1Image(atlas, affine), folder / INIA_ATLAS)
    return folder


def backend_figures_stub(name: str, serves: str) -> dict:
    """One backend's figures as `samri.bench.backends.backend_figures` reports them (made-up values)."""
    p = {"p50": 10.0, "p95": 12.0, "n": 3}
    return {"serves": serves, "ready_s": 1.0, "encoder_s_per_slice": {"p50": 0.5, "p95": 0.6, "n": 5},
            "first_click_ms": p, "cached_click_ms": {k: p for k in ("box", "box_point", "points_only", "refinement")},
            "speedup_vs_torch": {"encoder": 1.0, "box_click": 1.0},
            "vs_torch": {"embedding_cosine": 1.0, "embedding_max_abs": 0.0,
                         "mask_dice": {"box": 1.0, "box_point": 1.0, "points_only": 1.0}}}


# --- the evaluation protocol on a synthetic case with known answers (tests/samri/evaluation) --------
#: anisotropic voxels of `synthetic_case`: 2 x 0.5 x 1 mm
CASE_AFFINE = np.diag([2.0, 0.5, 1.0, 1.0])


def synthetic_label() -> np.ndarray:
    """``(40, 48, 30)``: a big ellipsoid (1), a small one (2) and a thin sheet (3) normal to axis 0."""
    label = ellipsoid_mask().astype(np.int32)
    label[ellipsoid_mask(center=(8.0, 8.0, 15.0), radii=(4.0, 5.0, 5.0))] = 2
    label[34, 8:44, 10:20] = 3
    return label


def synthetic_case(names=None) -> Case:
    """Case ``syn``: `synthetic_array` on `CASE_AFFINE`, labelled by `synthetic_label`."""
    from samri.evaluation.protocol import Case
    from samri.volume import ImageVolume

    label = synthetic_label()
    return Case("syn", ImageVolume(synthetic_array(), CASE_AFFINE.copy()), label,
                names or {"big": 1, "small": 2, "sheet": 3})


class OracleRunner:
    """Returns the labelled structure under the prompt (shifted by ``shift`` slice pixels); records prompts."""

    def __init__(self, label: np.ndarray, shift: tuple[int, int] = (0, 0), fail_after: int | None = None):
        self.label, self.shift, self.fail_after = label, shift, fail_after
        self.prompts: list[tuple] = []
        self.prefetched: list[int] = []

    def _structure(self, axis, index, prompt) -> int:
        from samri.geometry import take_slice

        plane = take_slice(self.label, axis, index)
        if len(prompt.points):
            r, c = prompt.points[0]
        else:
            r, c = (prompt.box[0] + prompt.box[2]) / 2, (prompt.box[1] + prompt.box[3]) / 2
        return int(plane[int(round(r)), int(round(c))])

    def _count(self, index, prompt):
        self.prompts.append((index, None if prompt.box is None else prompt.box.tolist(), prompt.points.tolist()))
        if self.fail_after is not None and len(self.prompts) > self.fail_after:
            raise KeyboardInterrupt

    def prefetch(self, volume, axis, indices):
        self.prefetched += list(indices)

    def predict_slice(self, volume, axis, index, prompt):
        from samri.geometry import take_slice

        self._count(index, prompt)
        mask = take_slice(self.label, axis, index) == self._structure(axis, index, prompt)
        return np.roll(mask, self.shift, axis=(0, 1))

    def propagate(self, volume, axis, seeds):
        (index, prompt), = seeds.items()
        self._count(index, prompt)
        return self.label == self._structure(axis, index, prompt)


def assert_tables_well_formed(markdown: str) -> None:
    """Every Markdown table row has as many cells as its header."""
    width = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        cells = line.count("|")
        width = width or cells
        assert cells == width, line


# --- DICOM series (tests/samri/dicomweb) -----------------------------------------------------------
def reread_datasets(datasets: list) -> list:
    """Each dataset written as a Part 10 file and read back (what a server stores and returns)."""
    import pydicom

    out = []
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, write_like_original=False)
        out.append(pydicom.dcmread(io.BytesIO(buf.getvalue())))
    return out


def rotation_xz(deg_x: float, deg_z: float) -> np.ndarray:
    """Rotation by ``deg_x`` about x, then ``deg_z`` about z."""
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def small_dicom_series(n: int = 4) -> list:
    """An ``(8, 6, n)`` int16 ramp as an MR series (identity affine, UID seed ``bad``)."""
    from samri.dicomweb.convert import volume_to_dicom_series

    return volume_to_dicom_series(np.arange(8 * 6 * n, dtype=np.int16).reshape(8, 6, n), np.eye(4), uid_seed="bad")


def small_train_settings(**changes):
    """`samri.train.stage2.TrainSettings` for a few quick steps on the tiny model (``changes`` override)."""
    from samri.train.stage2 import TrainSettings

    base = dict(lr=1e-3, epochs=2, batch_size=4, max_steps_per_epoch=3, max_val_samples=16)
    return TrainSettings(**{**base, **changes})


def state_copy(module) -> dict:
    """A detached copy of ``module``'s state dict (to compare weights before and after)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def need_openvino() -> None:
    """Skip the calling test where OpenVINO is not installed (checked without importing it: see
    `samri.model.openvino_runtime.import_openvino`)."""
    from samri.model.backends import openvino_installed

    if not openvino_installed():
        pytest.skip("openvino is not installed")
