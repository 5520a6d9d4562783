"""Labelled volumes for evaluation (`Case`) and their contrast-shift variants (MONAI transforms, seeded).

`Case` is one image with its ground truth on the same grid (`load_case` checks the grid and the
structures); `variant_cases` derives contrast-shifted copies that share the label.

SAMRI's motivation is MRI's variable contrast; these variants measure robustness to it on any
labelled volume. Each takes the raw ``(X, Y, Z)`` image and returns a float32 image on the same
grid, so the ground truth is unchanged. Names (``--variant NAME[:STRENGTH]``):

========== ===================================================================== ================
name       what (MONAI transform)                                                 strength default
========== ===================================================================== ================
bias       multiplicative smooth bias field, ``RandBiasField`` (degree 3,          0.2
           Legendre coefficients uniform in ``[-s, s]``)
inverted   inverted T1 contrast inside the head (``ScaleIntensityRangePercentiles`` n/a
           0.5-99.5 % mapped to 1..0; background stays 0): T2-like CSF-bright look
noise      additive Gaussian noise, ``RandGaussianNoise``, std = s x the 99.5th    0.05
           percentile of the head's intensities
rician     Rician noise (MRI magnitude images), ``RandRicianNoise``, same std      0.05
lowres     lower resolution: ``Resize`` down by factor s (area) then back up        2
           (trilinear): s-mm voxels resampled onto the 1-mm grid
t2like     T2-like contrast inside the head: ``ScaleIntensityRangePercentiles``    0.05
           (0.5-99.5 % -> 0..1, unclipped), then the non-monotone piecewise-linear
           remap `T2LIKE_KNOTS` (CSF bright, grey matter mid, white matter dark;
           the darkest and brightest tails turn back); each knot height is
           jittered uniformly in ``[-s, s]`` by the seed (``s <= 0.1``, so the
           CSF > GM > WM order holds); background stays 0
========== ===================================================================== ================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from samri.errors import SamriInputError
from samri.volume import ImageVolume, load_image

#: affines of an image and its label may differ by this much (mm) and still share a grid
GRID_ATOL_MM = 1e-3

#: name -> default strength (None: the variant takes no strength)
VARIANTS: dict[str, float | None] = {"bias": 0.2, "inverted": None, "noise": 0.05, "rician": 0.05, "lowres": 2.0,
                                     "t2like": 0.05}

#: ``t2like`` remap: (T1 intensity inside the head, 0 = 0.5th and 1 = 99.5th percentile) -> output in
#: [0, 1]. On the MNI152 template CSF sits near 0-0.35, grey matter 0.4-0.75, white matter 0.8-1.0;
#: below 0 (air/bone partial volume) and above 1 (fat) the curve turns back, as in T2-weighted MRI.
T2LIKE_KNOTS: tuple[tuple[float, float], ...] = (
    (-0.2, 0.3), (0.0, 0.9), (0.15, 1.0), (0.35, 0.85), (0.6, 0.5), (0.8, 0.25), (0.95, 0.15), (1.0, 0.2),
    (1.2, 0.45),
)
#: largest ``t2like`` strength (knot jitter): smaller than half of every CSF/GM/WM gap in `T2LIKE_KNOTS`
T2LIKE_MAX_JITTER = 0.1


@dataclass(frozen=True)
class VariantSpec:
    """One contrast-shift variant: ``name`` from `VARIANTS` and its ``strength``."""

    name: str
    strength: float | None = None

    @property
    def label(self) -> str:
        """Text used in reports and as the image suffix (``colin27_t1~bias``)."""
        if self.strength is None or self.strength == VARIANTS[self.name]:
            return self.name
        return f"{self.name}:{self.strength:g}"


def parse_variant(text: str) -> VariantSpec:
    """``"NAME"`` or ``"NAME:STRENGTH"`` -> `VariantSpec` (raises naming the ``variant`` field)."""
    name, _, value = str(text).strip().partition(":")
    if name not in VARIANTS:
        raise SamriInputError("variant", text, f"unknown variant; known: {sorted(VARIANTS)}")
    default = VARIANTS[name]
    if not value:
        return VariantSpec(name, default)
    if default is None:
        raise SamriInputError("variant", text, f"variant '{name}' takes no strength")
    try:
        strength = float(value)
    except ValueError:
        raise SamriInputError("variant", text, "strength must be a number") from None
    if not np.isfinite(strength) or strength <= 0 or (name == "lowres" and strength < 1) \
            or (name == "t2like" and strength > T2LIKE_MAX_JITTER):
        raise SamriInputError("variant", text, "strength must be positive (lowres: a factor >= 1; "
                              f"t2like: at most {T2LIKE_MAX_JITTER})")
    return VariantSpec(name, strength)


def _head_mask(image: np.ndarray) -> np.ndarray:
    """Voxels above 5 % of the robust maximum: the head (MRI background is near zero)."""
    finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low = float(finite.min())
    top = float(np.percentile(finite, 99.5))
    return finite > low + 0.05 * (top - low)


def make_variant(image: np.ndarray, variant: VariantSpec | str, seed: int = 0) -> np.ndarray:
    """Apply one variant to a raw ``(X, Y, Z)`` image; returns float32 ``(X, Y, Z)``.

    The same ``(image, variant, seed)`` always gives the same output.
    """
    from monai.transforms import (
        RandBiasField,
        RandGaussianNoise,
        RandRicianNoise,
        Resize,
        ScaleIntensityRangePercentiles,
    )

    spec = parse_variant(variant) if isinstance(variant, str) else variant
    arr = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    head = _head_mask(arr)
    chan = arr[None]  # MONAI transforms are channel-first
    if spec.name == "bias":
        shift = float(arr.min())
        t = RandBiasField(degree=3, coeff_range=(-spec.strength, spec.strength), prob=1.0)
        t.set_random_state(seed=seed)
        out = np.asarray(t(chan - shift))[0] + shift
    elif spec.name == "inverted":
        t = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=1.0, b_max=0.0, clip=False)
        scaled = np.asarray(t(arr[head][None]))[0]
        out = np.zeros_like(arr)
        out[head] = np.clip(scaled, 0.0, 1.0)
    elif spec.name == "t2like":
        out = _t2like(arr, head, spec.strength, seed)
    elif spec.name in ("noise", "rician"):
        top = float(np.percentile(arr[head], 99.5)) if head.any() else float(arr.max())
        std = spec.strength * max(top, 1e-6)
        t = (RandGaussianNoise(prob=1.0, mean=0.0, std=std, sample_std=False) if spec.name == "noise"
             else RandRicianNoise(prob=1.0, mean=0.0, std=std, sample_std=False))
        t.set_random_state(seed=seed)
        out = np.asarray(t(chan))[0]
    elif spec.name == "lowres":
        shape = arr.shape
        small = [max(2, int(round(s / spec.strength))) for s in shape]
        down = Resize(spatial_size=small, mode="area")(chan)
        out = np.asarray(Resize(spatial_size=shape, mode="trilinear", align_corners=False)(down))[0]
    else:  # pragma: no cover - parse_variant guards the names
        raise SamriInputError("variant", spec.name, f"unknown variant; known: {sorted(VARIANTS)}")
    return np.ascontiguousarray(out, dtype=np.float32)


def _t2like(arr: np.ndarray, head: np.ndarray, jitter: float, seed: int) -> np.ndarray:
    """`T2LIKE_KNOTS` applied to the head voxels of ``arr`` (``(X, Y, Z)``), knot heights jittered by ``seed``."""
    from monai.transforms import ScaleIntensityRangePercentiles

    out = np.zeros_like(arr)
    if not head.any():
        return out
    t = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=False)
    scaled = np.asarray(t(arr[head][None]))[0]
    xs = np.array([k[0] for k in T2LIKE_KNOTS])
    heights = np.array([k[1] for k in T2LIKE_KNOTS]) + np.random.default_rng(seed).uniform(-jitter, jitter, len(xs))
    out[head] = np.clip(np.interp(scaled, xs, heights), 0.01, 1.0)  # a head voxel never becomes background
    return out


# --- labelled cases ------------------------------------------------------------------------------
@dataclass
class Case:
    """One labelled image.

    Attributes:
        name: image id (file name without extension); variants share the original's name.
        image: the (possibly contrast-shifted) image.
        label: ``(X, Y, Z)`` integer ground truth on the image's grid.
        structures: evaluated structures, name -> label value.
        variant: variant label (``"bias"``, ``"noise:0.1"``...) or ``""`` for the original.
    """

    name: str
    image: ImageVolume
    label: np.ndarray
    structures: dict[str, int]
    variant: str = ""


def image_id(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def label_names_for(image_path: Path, label_path: Path) -> dict[str, int] | None:
    """Structure names from a ``label_names.json`` (MONAI Label sample layout) next to the image or label.

    The image's datastore names apply only to the image's own datastore label
    (``<image folder>/labels/<tag>/<image file>``): another label volume on the same image (an
    atlas such as Brodmann areas on Colin27) has values of its own, so it gets names from its own
    folder or none.
    """
    own_label = label_path.parent.parent.parent.resolve() == image_path.parent.resolve() \
        and label_path.name == image_path.name and label_path.parent.parent.name == "labels"
    folders = (image_path.parent, label_path.parent, label_path.parent.parent.parent) if own_label \
        else (label_path.parent,)
    from samri.labels import LABEL_NAMES_FILE, load_label_names

    for folder in folders:
        if (folder / LABEL_NAMES_FILE).is_file():
            names = load_label_names(folder).get(image_id(image_path))
            if names is not None:
                return dict(names)
    return None


def select_structures(label: np.ndarray, names: Mapping[str, int] | None, wanted: Sequence[str] | None,
                      field_name: str) -> dict[str, int]:
    """Structures present in ``label``: name -> value, optionally only the ``wanted`` names/values."""
    present = [int(v) for v in np.flatnonzero(np.bincount(label.ravel().astype(np.int64))) if v != 0]
    if not present:
        raise SamriInputError(field_name, "all zero", "the label has no structures (no non-zero voxel)")
    by_value = {v: k for k, v in (names or {}).items()}
    structures = {by_value.get(v, f"label_{v}"): v for v in present}
    if wanted:
        keep = {w for w in wanted}
        structures = {k: v for k, v in structures.items() if k in keep or str(v) in keep}
    return structures


def load_case(image_path: str | Path, label_path: str | Path, *, names: Mapping[str, int] | None = None,
              wanted: Sequence[str] | None = None) -> Case:
    """Read one image/label pair and check they share a grid (shape and affine within 1e-3 mm)."""
    image = load_image(image_path, "image")
    label_img = load_image(label_path, "label")
    if image.array.shape != label_img.array.shape or not np.allclose(image.affine, label_img.affine,
                                                                   rtol=0.0, atol=GRID_ATOL_MM):
        raise SamriInputError("label", str(label_path),
                              f"not on the grid of image {image_path}: shape {label_img.array.shape} vs "
                              f"{image.array.shape}, affines equal: "
                              f"{np.allclose(image.affine, label_img.affine, atol=GRID_ATOL_MM)}")
    label = np.asarray(label_img.array)
    if label.dtype.kind == "f":
        label = np.rint(label)
    if label.min() < 0:
        raise SamriInputError("label", str(label_path), "negative label values")
    label = label.astype(np.int32)
    if names is None:
        names = label_names_for(Path(image_path), Path(label_path))
    structures = select_structures(label, names, wanted, f"label {label_path}")
    return Case(name=image_id(image_path), image=image, label=label, structures=structures)


def check_cases(cases: Sequence[Case], wanted: Sequence[str] | None) -> None:
    """Every case keeps a structure, and every wanted name exists somewhere."""
    if not cases:
        raise SamriInputError("image", [], "give at least one --image/--label pair")
    for case in cases:
        if not case.structures:
            raise SamriInputError("labels", list(wanted or []),
                                  f"none of these structures is in the label of {case.name}")
    if wanted:
        found = {k for c in cases for k in c.structures} | {str(v) for c in cases for v in c.structures.values()}
        missing = [w for w in wanted if w not in found]
        if missing:
            raise SamriInputError("labels", missing, "not found in any label")


def variant_cases(case: Case, variants: Sequence[str], seed: int) -> list[Case]:
    """The contrast-shifted copies of ``case`` (same label, same structures)."""
    out = []
    for text in variants:
        spec = parse_variant(text)
        image = ImageVolume(array=make_variant(case.image.array, spec, seed=seed), affine=case.image.affine,
                            path=case.image.path)
        out.append(Case(case.name, image, case.label, case.structures, variant=spec.label))
    return out
