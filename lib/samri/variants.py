"""Contrast-shift variants of a labelled MRI volume, made with MONAI transforms (seeded).

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
========== ===================================================================== ================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samri.errors import SamriInputError

#: name -> default strength (None: the variant takes no strength)
VARIANTS: dict[str, float | None] = {"bias": 0.2, "inverted": None, "noise": 0.05, "rician": 0.05, "lowres": 2.0}


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
    if not np.isfinite(strength) or strength <= 0 or (name == "lowres" and strength < 1):
        raise SamriInputError("variant", text, "strength must be positive (lowres: a factor >= 1)")
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
    from monai.transforms import (RandBiasField, RandGaussianNoise, RandRicianNoise, Resize,
                                  ScaleIntensityRangePercentiles)

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
