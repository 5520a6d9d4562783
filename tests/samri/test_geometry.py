"""Round trips of every coordinate conversion in samri.geometry (exact to 1e-9 where exact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from samri.errors import SamriInputError
from samri.geometry import (
    SliceGeometry,
    box_mask,
    check_axis,
    in_plane_axes,
    join_point,
    put_slice,
    slice_boxes,
    split_point,
    take_slice,
)

# (height, width, input_size): tall, wide, square, 1xN, Nx1, larger than the input, odd ratios
SHAPES = [(48, 30, 64), (30, 48, 64), (40, 40, 64), (1, 50, 64), (50, 1, 64), (200, 130, 64),
          (197, 233, 256), (233, 189, 1024), (7, 3, 64), (64, 64, 64), (1, 1, 64)]
UPSCALING = [s for s in SHAPES if max(s[0], s[1]) <= s[2]]


def random_points(h: int, w: int, n: int = 25, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = np.stack([rng.uniform(0, h - 1, n), rng.uniform(0, w - 1, n)], axis=1)
    corners = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], dtype=np.float64)
    return np.concatenate([pts, corners])


# --- volume <-> slice ---------------------------------------------------------------------------
def test_in_plane_axes():
    assert in_plane_axes(0) == (1, 2)
    assert in_plane_axes(1) == (0, 2)
    assert in_plane_axes(2) == (0, 1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_split_join_point_round_trip(axis):
    rng = np.random.default_rng(axis)
    ijk = rng.integers(0, 100, size=(17, 3))
    index, rc = split_point(ijk, axis)
    assert index.shape == (17,) and rc.shape == (17, 2)
    np.testing.assert_array_equal(index, ijk[:, axis])
    rows, cols = in_plane_axes(axis)
    np.testing.assert_array_equal(rc[:, 0], ijk[:, rows])
    np.testing.assert_array_equal(rc[:, 1], ijk[:, cols])
    np.testing.assert_array_equal(join_point(index, rc, axis), ijk)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_split_point_indexes_the_same_voxel_as_take_slice(axis):
    vol = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    for ijk in ([1, 2, 3], [4, 5, 6], [0, 0, 0]):
        index, rc = split_point(np.array(ijk), axis)
        plane = take_slice(vol, axis, int(index[0]))
        assert plane[int(rc[0, 0]), int(rc[0, 1])] == vol[tuple(ijk)]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_take_put_slice_round_trip(axis):
    vol = np.random.default_rng(0).random((5, 6, 7))
    rows, cols = in_plane_axes(axis)
    for index in (0, vol.shape[axis] - 1, 2):
        plane = take_slice(vol, axis, index)
        assert plane.shape == (vol.shape[rows], vol.shape[cols])
        out = np.zeros_like(vol)
        put_slice(out, axis, index, plane)
        np.testing.assert_array_equal(take_slice(out, axis, index), plane)
        # nothing else was written
        assert np.count_nonzero(out) == np.count_nonzero(plane)


@pytest.mark.parametrize("bad", [3, -1, 1.0, "2", True, None])
def test_bad_axis_names_axis(bad):
    with pytest.raises(SamriInputError, match=r"^axis="):
        check_axis(bad)
    with pytest.raises(SamriInputError, match=r"^axis="):
        take_slice(np.zeros((2, 3, 4)), bad, 0)
    with pytest.raises(SamriInputError, match=r"^axis="):
        put_slice(np.zeros((2, 3, 4)), bad, 0, np.zeros((3, 4)))
    with pytest.raises(SamriInputError, match=r"^axis="):
        split_point(np.zeros((1, 3)), bad)


@pytest.mark.parametrize("index", [-1, 4, 100])
def test_take_slice_out_of_range_names_slice(index):
    with pytest.raises(SamriInputError, match=r"^slice=") as err:
        take_slice(np.zeros((2, 3, 4)), 2, index)
    assert err.value.field == "slice" and err.value.value == index
    assert "0..3" in str(err.value)


@pytest.mark.parametrize("index", [-1, 4])
def test_put_slice_out_of_range_names_slice(index):
    """put_slice must not wrap a negative index onto the last slice, nor raise a bare IndexError."""
    vol = np.zeros((2, 3, 4))
    with pytest.raises(SamriInputError, match=r"^slice="):
        put_slice(vol, 2, index, np.ones((2, 3)))
    assert not vol.any()


# --- slice <-> model input ----------------------------------------------------------------------
@pytest.mark.parametrize("h,w,size", SHAPES)
def test_resized_shape_matches_segment_anything(h, w, size):
    geom = SliceGeometry(h, w, size)
    assert geom.resized_shape == ResizeLongestSide.get_preprocess_shape(h, w, size)
    assert max(geom.resized_shape) == size


def test_resized_shape_never_zero_for_thin_slices():
    """A 1xN slice with N > 2 * input_size must still keep one row (SAM's rounding gives 0)."""
    for h, w in [(1, 1000), (3, 1000), (1000, 1)]:
        geom = SliceGeometry(h, w, 64)
        assert min(geom.resized_shape) >= 1, (h, w, geom.resized_shape)
        rc = np.array([[0.0, 0.0], [h - 1.0, w - 1.0]])
        np.testing.assert_allclose(geom.points_to_slice(geom.points_to_input(rc)), rc, atol=1e-9)


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_points_round_trip_exact(h, w, size):
    geom = SliceGeometry(h, w, size)
    rc = random_points(h, w)
    xy = geom.points_to_input(rc)
    assert xy.shape == rc.shape
    np.testing.assert_allclose(geom.points_to_slice(xy), rc, rtol=0, atol=1e-9)
    # and the other way round, from the input frame
    xy2 = np.random.default_rng(1).uniform(0, size - 1, (20, 2))
    np.testing.assert_allclose(geom.points_to_input(geom.points_to_slice(xy2)), xy2, rtol=0, atol=1e-9)


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_points_to_low_res_lands_on_the_logit_the_mask_maps_back_to(h, w, size):
    """A click's low-res cell is the cell whose logit `logits_to_slice` spreads onto the click's pixel."""
    geom = SliceGeometry(h, w, size)
    low = max(4, size // 4)
    rc = np.round(random_points(h, w))
    cells = geom.points_to_low_res(rc, low)
    assert cells.dtype == np.int64 and cells.min() >= 0 and cells.max() <= low - 1
    for (r, c), (i, j) in zip(rc.astype(int), cells):
        one_hot = torch.full((1, 1, low, low), -1.0)
        one_hot[0, 0, i, j] = 1.0
        up = geom.logits_to_slice(one_hot)[0, 0].numpy()
        assert up[r, c] > -1.0  # the pixel takes part of that cell's value


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_points_to_input_frame(h, w, size):
    """(r, c) -> (x, y): x follows columns, pixel centres map to pixel centres, all inside the image."""
    geom = SliceGeometry(h, w, size)
    new_h, new_w = geom.resized_shape
    xy = geom.points_to_input(np.array([[0.0, 0.0], [h - 1.0, w - 1.0]]))
    # pixel centre r + 0.5 maps to (r + 0.5) * scale, minus SAM's 0.5
    np.testing.assert_allclose(xy[0], [0.5 * new_w / w - 0.5, 0.5 * new_h / h - 0.5], atol=1e-12)
    np.testing.assert_allclose(xy[1], [new_w - 0.5 * new_w / w - 0.5, new_h - 0.5 * new_h / h - 0.5], atol=1e-12)
    assert np.all(xy > -0.5) and xy[1, 0] < new_w and xy[1, 1] < new_h


def test_points_match_segment_anything_for_a_uniform_scale():
    """Where the resize is an exact scale, our pixel-centre map is SAM's apply_coords (continuous) shifted."""
    geom = SliceGeometry(32, 16, 64)  # exact factor 2
    rc = random_points(32, 16)
    ours = geom.points_to_input(rc)
    sam = ResizeLongestSide(64).apply_coords(rc[:, ::-1] + 0.5, (32, 16)) - 0.5
    np.testing.assert_allclose(ours, sam, atol=1e-9)


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_box_round_trip_exact(h, w, size):
    geom = SliceGeometry(h, w, size)
    box = np.array([0.0, 0.0, h - 1.0, w - 1.0])
    b_in = geom.box_to_input(box)
    assert b_in.shape == (4,)
    assert b_in[0] <= b_in[2] and b_in[1] <= b_in[3]  # (x0, y0, x1, y1)
    np.testing.assert_allclose(geom.box_to_slice(b_in), box, rtol=0, atol=1e-9)
    rng = np.random.default_rng(2)
    for _ in range(10):
        r = np.sort(rng.uniform(0, h - 1, 2))
        c = np.sort(rng.uniform(0, w - 1, 2))
        box = np.array([r[0], c[0], r[1], c[1]])
        np.testing.assert_allclose(geom.box_to_slice(geom.box_to_input(box)), box, rtol=0, atol=1e-9)
        # the box's corners are the mapped points
        corners = geom.points_to_input(np.array([[r[0], c[0]], [r[1], c[1]]])).reshape(4)
        np.testing.assert_allclose(geom.box_to_input(box), corners, atol=0)


@pytest.mark.parametrize("h,w,size", UPSCALING)
def test_mask_round_trip_exact_when_upscaling(h, w, size):
    geom = SliceGeometry(h, w, size)
    rng = np.random.default_rng(3)
    for density in (0.1, 0.5, 0.9):
        mask = rng.random((h, w)) < density
        big = geom.mask_to_input(mask)
        assert big.shape == (size, size) and big.dtype == bool
        new_h, new_w = geom.resized_shape
        assert not big[new_h:].any() and not big[:, new_w:].any()  # padding stays empty
        np.testing.assert_array_equal(geom.mask_to_slice(big), mask)


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_mask_to_input_keeps_area_fraction(h, w, size):
    geom = SliceGeometry(h, w, size)
    mask = np.zeros((h, w), bool)
    mask[: max(1, h // 2), : max(1, w // 2)] = True
    big = geom.mask_to_input(mask)
    back = geom.mask_to_slice(big)
    assert back.shape == (h, w)
    new_h, new_w = geom.resized_shape
    frac = big[:new_h, :new_w].mean()
    assert abs(frac - mask.mean()) < 0.1


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_image_to_input_shape_and_padding(h, w, size):
    geom = SliceGeometry(h, w, size)
    img = torch.ones(3, h, w)
    out = geom.image_to_input(img)
    assert out.shape == (3, size, size)
    new_h, new_w = geom.resized_shape
    assert torch.allclose(out[:, :new_h, :new_w], torch.ones(()), atol=1e-5)
    assert not out[:, new_h:].any() and not out[:, :, new_w:].any()


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_logits_to_slice_shape_and_sign(h, w, size):
    geom = SliceGeometry(h, w, size)
    low = torch.full((2, 1, 16, 16), -3.0)
    out = geom.logits_to_slice(low)
    assert out.shape == (2, 1, h, w)
    assert torch.allclose(out, torch.tensor(-3.0))
    # a positive square in the input frame's top-left lands at the slice's top-left
    low = torch.full((1, 1, 32, 32), -10.0)
    low[..., :16, :16] = 10.0
    mask = geom.logits_to_slice(low)[0, 0] > 0
    if h * w > 1:  # a 1x1 slice samples the input frame's centre
        assert mask[0, 0]
        assert not mask[-1, -1] or min(geom.resized_shape) < 32


def test_logits_to_slice_inverts_mask_to_input():
    """A mask sent into the input frame and back through the logit path comes out the same."""
    geom = SliceGeometry(40, 48, 64)
    mask = np.zeros((40, 48), bool)
    mask[10:30, 5:40] = True
    logits = torch.as_tensor(np.where(geom.mask_to_input(mask), 10.0, -10.0), dtype=torch.float32)[None, None]
    out = geom.logits_to_slice(logits)[0, 0].numpy() > 0
    np.testing.assert_array_equal(out, mask)
    low = geom.slice_to_low_res(torch.as_tensor(np.where(mask, 10.0, -10.0), dtype=torch.float32)[None, None], 32)
    assert low.shape == (1, 1, 32, 32)
    back = geom.logits_to_slice(low)[0, 0].numpy() > 0
    assert (back == mask).mean() > 0.97


def test_slice_geometry_rejects_empty_shape():
    with pytest.raises(SamriInputError, match="slice shape"):
        SliceGeometry(0, 5, 64)


def test_box_mask_is_inclusive_rounded_and_clipped_to_the_slice():
    mask = box_mask([1.4, 2.6, 3.0, 4.0], (6, 8))
    assert mask.sum() == 3 * 2 and mask[1:4, 3:5].all()
    edge = box_mask([-2, -1, 10, 3], (6, 8))  # past the slice: clipped to it
    assert edge.sum() == 6 * 4 and edge[:, :4].all()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_boxes_are_each_slices_tight_box(axis: int) -> None:
    """A square that moves one pixel per slice: each slice's box is that slice's square, and filling the boxes
    gives the mask back (round trip)."""
    mask = np.zeros((24, 24, 12), bool)
    for k in range(3, 9):
        mask[4 + k:8 + k, 6:10, k] = True
    mask = np.moveaxis(mask, 2, axis)
    boxes = slice_boxes(mask, axis)
    assert sorted(boxes) == list(range(3, 9))
    filled = np.zeros_like(mask)
    for k, box in boxes.items():
        put_slice(filled, axis, k, box_mask(box, take_slice(mask, axis, k).shape))
    np.testing.assert_array_equal(filled, mask)
    if axis == 2:
        np.testing.assert_array_equal(boxes[5], [9, 6, 12, 9])
