"""Contrast-shift variants (samri.evaluation.variants): seeded, same grid, the intended change."""

from __future__ import annotations

import numpy as np
import pytest

from samri.errors import SamriInputError
from samri.evaluation.variants import VARIANTS, VariantSpec, make_variant, parse_variant
from tests.helpers import ellipsoid_mask, synthetic_array


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_keeps_grid_is_seeded_and_changes_image(name):
    image = synthetic_array()
    a = make_variant(image, name, seed=1)
    b = make_variant(image, name, seed=1)
    assert a.shape == image.shape and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, image)


@pytest.mark.parametrize("name", ["bias", "noise", "rician"])
def test_random_variants_depend_on_seed(name):
    image = synthetic_array()
    assert not np.allclose(make_variant(image, name, seed=1), make_variant(image, name, seed=2))


def test_inverted_swaps_bright_and_dark_inside_the_head_only():
    image = np.full((20, 20, 20), 0.0, dtype=np.float32)
    image[4:16, 4:16, 4:16] = 100.0  # "grey"
    image[8:12, 8:12, 8:12] = 300.0  # bright core
    out = make_variant(image, "inverted")
    assert out[10, 10, 10] < out[5, 5, 5]  # core now darker than its surround
    assert out[0, 0, 0] == 0.0  # background stays dark


def test_bias_field_is_smooth_and_multiplicative():
    image = synthetic_array()
    out = make_variant(image, "bias:0.3", seed=0)
    inside = ellipsoid_mask()
    ratio = (out[inside] - image.min()) / (image[inside] - image.min())
    assert ratio.std() > 0.01  # a real shift...
    assert 0.2 < ratio.min() and ratio.max() < 5.0  # ...but no wild scaling


def test_lowres_blurs_edges():
    image = np.zeros((32, 32, 32), dtype=np.float32)
    image[:, :, 16:] = 1.0
    out = make_variant(image, "lowres:4")
    assert out[10, 10, 15] > 0.0 or out[10, 10, 16] < 1.0
    assert abs(out.mean() - image.mean()) < 0.05


def test_parse_variant():
    assert parse_variant("bias") == VariantSpec("bias", 0.2)
    assert parse_variant("noise:0.1") == VariantSpec("noise", 0.1)
    assert parse_variant("noise:0.1").label == "noise:0.1" and parse_variant("noise").label == "noise"
    for bad in ("blur", "inverted:2", "noise:x", "noise:-1", "lowres:0.5"):
        with pytest.raises(SamriInputError) as err:
            parse_variant(bad)
        assert err.value.field == "variant"


def _tissue_phantom() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """T1-like nested shells: CSF 0.3 outside grey matter 0.6 outside white matter 0.9, background 0."""
    idx = np.indices((30, 30, 30)) - 14.5
    r = np.sqrt((idx**2).sum(0))
    masks = {"wm": r < 6, "gm": (r >= 6) & (r < 10), "csf": (r >= 10) & (r < 13), "bg": r >= 13}
    image = 0.3 * masks["csf"] + 0.6 * masks["gm"] + 0.9 * masks["wm"]
    image = image + 0.01 * np.random.default_rng(0).standard_normal(image.shape) * ~masks["bg"]
    return image.astype(np.float32), masks


@pytest.mark.parametrize("strength", [None, 0.1])
def test_t2like_makes_csf_bright_grey_mid_white_dark_and_background_zero(strength):
    image, masks = _tissue_phantom()
    for seed in range(4):
        out = make_variant(image, "t2like" if strength is None else f"t2like:{strength}", seed=seed)
        mean = {k: float(out[m].mean()) for k, m in masks.items()}
        assert mean["csf"] > mean["gm"] + 0.15 and mean["gm"] > mean["wm"] + 0.15, mean
        assert (out[masks["bg"]] == 0).all() and (out[~masks["bg"]] > 0).all() and out.max() <= 1.0


def test_t2like_is_not_a_plain_inversion_and_depends_on_seed():
    image, masks = _tissue_phantom()
    t2, inverted = make_variant(image, "t2like", seed=0), make_variant(image, "inverted")
    assert abs(float(t2[masks["gm"]].mean()) - float(inverted[masks["gm"]].mean())) > 0.05
    assert not np.allclose(t2, make_variant(image, "t2like", seed=1))
    with pytest.raises(SamriInputError) as err:
        parse_variant("t2like:0.5")  # a jitter that could break the CSF > GM > WM order
    assert err.value.field == "variant"
