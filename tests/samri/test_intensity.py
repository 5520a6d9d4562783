"""samri.intensity: per-volume windowing and the per-model slice preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samri.errors import SamriInputError
from samri.intensity import (
    PREPROCESSING_VERSION,
    Preprocessing,
    WindowSettings,
    check_volume,
    slice_to_model_input,
    window_volume,
)

LITEMEDSAM = Preprocessing(input_size=256, slice_minmax=True, value_scale=1.0, pixel_mean=(0.0, 0.0, 0.0),
                           pixel_std=(1.0, 1.0, 1.0))
UNIT = Preprocessing(input_size=64, slice_minmax=False, value_scale=1.0, pixel_mean=(0.0, 0.0, 0.0),
                     pixel_std=(1.0, 1.0, 1.0))


def ramp_volume(dtype, lo: float, hi: float, shape=(10, 12, 8)) -> np.ndarray:
    """A volume whose values rise linearly from ``lo`` to ``hi`` along the flattened index."""
    n = int(np.prod(shape))
    return np.linspace(lo, hi, n).reshape(shape).astype(dtype)


# --- window_volume ------------------------------------------------------------------------------
def test_window_output_range_and_dtype(volume_array):
    out = window_volume(volume_array)
    assert out.dtype == np.float32 and out.shape == volume_array.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.min() == 0.0 and out.max() == 1.0  # the percentiles are mapped to the ends
    assert not np.shares_memory(out, volume_array)


@pytest.mark.parametrize("dtype,lo,hi", [(np.uint8, 0, 255), (np.int16, -32000, 32000), (np.uint16, 0, 65000),
                                         (np.float64, -1e6, 5e6), (np.int32, 0, 3_000_000), (np.float32, 0, 1e7)])
def test_window_is_monotonic_without_wraparound(dtype, lo, hi):
    vol = ramp_volume(dtype, lo, hi)
    settings = WindowSettings(lower_percentile=0.0, upper_percentile=100.0, foreground_only=False)
    out = window_volume(vol, settings)
    flat = out.reshape(-1)
    assert np.all(np.diff(flat) >= 0), "windowing must preserve the intensity order (no 8-bit wrap)"
    assert flat[0] == 0.0 and flat[-1] == 1.0
    expected = (vol.astype(np.float64).reshape(-1) - float(vol.min())) / (float(vol.max()) - float(vol.min()))
    np.testing.assert_allclose(flat, expected, atol=1e-4)


def test_window_large_uint16_values_keep_their_order():
    vol = np.full((6, 6, 6), 1000, np.uint16)
    vol[2:4, 2:4, 2:4] = 60000  # would wrap to 96 through uint8
    vol[0, 0, 0] = 0
    out = window_volume(vol, WindowSettings(0.0, 100.0, foreground_only=False))
    assert out[3, 3, 3] == 1.0
    assert out[3, 3, 3] > out[1, 1, 1] > out[0, 0, 0]


def test_window_handles_nan_and_inf(volume_array):
    vol = volume_array.copy()
    vol[0, 0, 0] = np.nan
    vol[1, 1, 1] = np.inf
    vol[2, 2, 2] = -np.inf
    out = window_volume(vol)
    assert np.all(np.isfinite(out))
    assert out[0, 0, 0] == 0.0 and out[1, 1, 1] == 0.0 and out[2, 2, 2] == 0.0
    # the window is the same as without the bad voxels (they do not enter the percentiles)
    clean = window_volume(volume_array)
    mask = np.ones(vol.shape, bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = False
    np.testing.assert_allclose(out[mask], clean[mask], atol=1e-3)


def test_window_is_per_volume_not_per_slice():
    """A dim slice must stay dim (per-slice min-max would stretch it to [0, 1])."""
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 1000, (20, 20, 10)).astype(np.float32)
    vol[:, :, 3] = rng.uniform(0, 10, (20, 20))
    out = window_volume(vol)
    assert out[:, :, 3].max() < 0.05
    assert out[:, :, 5].max() > 0.9


def test_window_foreground_percentiles_ignore_background():
    vol = np.zeros((30, 30, 30), np.float32)  # mostly background at the minimum
    vol[10:20, 10:20, 10:20] = np.linspace(100, 200, 1000).reshape(10, 10, 10)
    out = window_volume(vol, WindowSettings(lower_percentile=10, upper_percentile=90))
    inner = out[10:20, 10:20, 10:20]
    assert inner.min() == 0.0 and inner.max() == 1.0
    assert 0.0 < np.median(inner) < 1.0
    assert (inner == 0).mean() < 0.15  # only ~10% clipped to the bottom, not the whole object


@pytest.mark.parametrize("value", [0.0, 7.0, -3.5])
def test_constant_image_raises_naming_image(value):
    with pytest.raises(SamriInputError, match=r"^image=") as err:
        window_volume(np.full((4, 5, 6), value, np.float32))
    assert err.value.field == "image" and "constant" in str(err.value)


def test_constant_image_with_nans_raises():
    vol = np.full((4, 5, 6), 3.0)
    vol[0] = np.nan
    with pytest.raises(SamriInputError, match=r"^image="):
        window_volume(vol)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_nonfinite_image_raises_naming_image(bad):
    with pytest.raises(SamriInputError, match=r"^image=") as err:
        window_volume(np.full((4, 5, 6), bad))
    assert "finite" in str(err.value)


def test_field_name_is_used_in_errors():
    with pytest.raises(SamriInputError, match=r"^moving image="):
        window_volume(np.ones((3, 3, 3)), field="moving image")


@pytest.mark.parametrize("shape", [(10, 10), (4, 5, 6, 2), (4, 5, 6, 1, 2), (10,)])
def test_non_3d_image_raises(shape):
    with pytest.raises(SamriInputError, match=r"^image=") as err:
        window_volume(np.random.default_rng(0).random(shape))
    assert "3D" in str(err.value) and str(shape).replace(" ", "") in str(err.value).replace(" ", "")


def test_4d_with_trailing_singleton_is_squeezed():
    vol = np.random.default_rng(0).random((4, 5, 6, 1))
    assert check_volume(vol).shape == (4, 5, 6)
    assert window_volume(vol).shape == (4, 5, 6)


def test_empty_and_non_numeric_volumes_raise():
    with pytest.raises(SamriInputError, match=r"^image="):
        check_volume(np.zeros((0, 5, 6)))
    with pytest.raises(SamriInputError, match=r"^image="):
        check_volume(np.full((2, 2, 2), "a"))


def test_bool_volume_is_accepted():
    vol = np.zeros((5, 5, 5), bool)
    vol[1:3] = True
    out = window_volume(vol, WindowSettings(foreground_only=False, lower_percentile=0, upper_percentile=100))
    assert set(np.unique(out).tolist()) == {0.0, 1.0}


def test_window_settings_validation_and_key():
    with pytest.raises(SamriInputError, match="window percentiles"):
        WindowSettings(lower_percentile=60, upper_percentile=40)
    with pytest.raises(SamriInputError, match="window percentiles"):
        WindowSettings(lower_percentile=-1)
    assert WindowSettings().key() == WindowSettings().key()
    assert WindowSettings().key() != WindowSettings(upper_percentile=99).key()
    assert WindowSettings().key() != WindowSettings(foreground_only=False).key()


# --- slice_to_model_input -----------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(40, 48), (48, 40), (64, 64), (1, 30), (100, 70)])
def test_slice_to_model_input_shape_and_padding(hw):
    plane = np.random.default_rng(0).uniform(0.2, 0.8, hw).astype(np.float32)
    out = slice_to_model_input(plane, Preprocessing(input_size=64))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    from samri.geometry import SliceGeometry

    new_h, new_w = SliceGeometry(hw[0], hw[1], 64).resized_shape
    assert not out[:, new_h:].any() and not out[:, :, new_w:].any(), "padding must be 0 after normalising"
    assert out[:, :new_h, :new_w].abs().sum() > 0


def test_slice_to_model_input_sam_normalisation():
    plane = np.full((32, 32), 0.5, np.float32)
    prep = Preprocessing(input_size=64)
    out = slice_to_model_input(plane, prep)
    for c in range(3):
        expected = (0.5 * 255.0 - prep.pixel_mean[c]) / prep.pixel_std[c]
        assert torch.allclose(out[c, :64, :64], torch.tensor(expected), atol=1e-4)
    assert not torch.allclose(out[0], out[2])  # channels differ by SAM's per-channel mean/std


def test_slice_minmax_stretches_each_slice():
    plane = np.random.default_rng(0).uniform(0.2, 0.4, (40, 40)).astype(np.float32)
    stretched = slice_to_model_input(plane, LITEMEDSAM)
    assert stretched.shape == (3, 256, 256)
    assert abs(float(stretched.min()) - 0.0) < 1e-6 and abs(float(stretched.max()) - 1.0) < 1e-6
    assert torch.equal(stretched[0], stretched[1]) and torch.equal(stretched[1], stretched[2])
    plain = slice_to_model_input(plane, UNIT)
    assert 0.19 < float(plain[0, :64, :64].min()) and float(plain.max()) < 0.41  # kept as windowed


def test_slice_minmax_constant_slice_is_finite():
    out = slice_to_model_input(np.full((10, 10), 0.3, np.float32), LITEMEDSAM)
    assert torch.isfinite(out).all()
    assert float(out.abs().max()) < 1e-5


def test_slice_values_outside_unit_range_are_clamped():
    plane = np.array([[-1.0, 2.0], [0.5, 0.5]], np.float32)
    out = slice_to_model_input(plane, UNIT)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


# --- Preprocessing ------------------------------------------------------------------------------
def test_preprocessing_key_is_stable_and_discriminating():
    a = Preprocessing()
    assert a.key() == Preprocessing().key()
    assert a.key().startswith(f"v{PREPROCESSING_VERSION}-")
    assert a.key() == "v1-s1024-mm0-x255-m123.675,116.28,103.53-d58.395,57.12,57.375"
    variants = [Preprocessing(input_size=256), Preprocessing(slice_minmax=True), Preprocessing(value_scale=1.0),
                Preprocessing(pixel_mean=(0.0, 0.0, 0.0)), Preprocessing(pixel_std=(1.0, 1.0, 1.0)), LITEMEDSAM]
    keys = {a.key()} | {v.key() for v in variants}
    assert len(keys) == len(variants) + 1


def test_preprocessing_dict_round_trip():
    for prep in (Preprocessing(), LITEMEDSAM, UNIT):
        data = prep.to_dict()
        assert isinstance(data["pixel_mean"], list)
        again = Preprocessing.from_dict(data)
        assert again == prep and again.key() == prep.key()
    # lists from YAML/JSON become tuples: hashable and equal
    assert Preprocessing.from_dict({"pixel_mean": [0, 0, 0]}).pixel_mean == (0.0, 0.0, 0.0)
    assert hash(Preprocessing.from_dict({})) == hash(Preprocessing())


def test_preprocessing_from_dict_unknown_key():
    with pytest.raises(SamriInputError, match=r"^preprocessing=") as err:
        Preprocessing.from_dict({"input_size": 64, "pixel_means": [0, 0, 0]})
    assert "pixel_means" in str(err.value) and "unknown" in str(err.value)
