"""samri.inference.prompts: client requests (Slicer/OHIF schema) -> validated requests -> slice prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samri.errors import SamriInputError
from samri.geometry import SliceGeometry
from samri.inference.prompts import SlicePrompt, VolumeRequest, normalize_box, parse_request

SHAPE = (40, 48, 30)


def field_of(exc_info) -> str:
    return exc_info.value.field


# --- parse_request: happy paths -----------------------------------------------------------------
def test_foreground_background_parsing():
    req = parse_request({"foreground": [[1, 2, 3], [4, 5, 6]], "background": [[7, 8, 9]], "label": "x",
                         "result_extension": ".nrrd", "client_id": "abc"}, SHAPE)
    assert req.foreground.dtype == np.int64 and req.foreground.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert req.background.tolist() == [[7, 8, 9]]
    assert req.points.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert req.point_labels.tolist() == [1, 1, 0]
    assert req.roi is None and req.slice is None and req.axis == 2 and req.shape == SHAPE
    assert req.label == "x" and req.slice_prompt(3).structure == "x"  # the structure's name reaches the prompt


def test_label_must_be_a_name():
    assert parse_request({"foreground": [[1, 2, 3]], "label": ""}, SHAPE).label is None
    assert parse_request({"foreground": [[1, 2, 3]]}, SHAPE).slice_prompt(3).structure is None
    with pytest.raises(SamriInputError, match="label"):
        parse_request({"foreground": [[1, 2, 3]], "label": 5}, SHAPE)


def test_integral_floats_and_tuples_are_accepted():
    req = parse_request({"foreground": ((1.0, 2, 3.0000001),), "slice": 3.0}, SHAPE)
    assert req.foreground.tolist() == [[1, 2, 3]] and req.slice == 3


def test_empty_lists_and_none_are_no_points():
    req = parse_request({"foreground": [[1, 2, 3]], "background": [], "roi": []}, SHAPE)
    assert req.background.shape == (0, 3) and req.roi is None
    req = parse_request({"foreground": [[1, 2, 3]], "background": None, "roi": None, "slice": None}, SHAPE)
    assert req.background.shape == (0, 3) and req.slice is None


def test_roi_parsing_and_swapped_corners():
    req = parse_request({"roi": [5, 10, 6, 20, 7, 15]}, SHAPE)
    assert req.roi.tolist() == [[5, 6, 7], [10, 20, 15]]
    swapped = parse_request({"roi": [10, 5, 20, 6, 15, 7]}, SHAPE)
    np.testing.assert_array_equal(swapped.roi, req.roi)
    assert req.roi_range() == (7, 15)


def test_roi_partly_outside_is_clipped():
    req = parse_request({"roi": [-5, 10, 40, 60, 25, 100]}, SHAPE)
    assert req.roi.tolist() == [[0, 40, 25], [10, 47, 29]]


def test_slice_parsing_and_axis():
    req = parse_request({"foreground": [[1, 2, 3]], "slice": 2}, SHAPE, axis=0)
    assert req.slice == 2 and req.axis == 0
    assert req.roi_range() is None


# --- parse_request: bad input -------------------------------------------------------------------
@pytest.mark.parametrize("roi", [[50, 60, 0, 10, 0, 10], [0, 10, -20, -1, 0, 10], [0, 10, 0, 10, 30, 31]])
def test_roi_wholly_outside_raises(roi):
    with pytest.raises(SamriInputError, match=r"^roi=") as err:
        parse_request({"roi": roi}, SHAPE)
    assert "does not intersect" in str(err.value) and "[40, 48, 30]" in str(err.value)


@pytest.mark.parametrize("roi", [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7], "1,2,3,4,5,6", {"i0": 1}, 5])
def test_roi_wrong_length_or_type_raises(roi):
    with pytest.raises(SamriInputError, match=r"^roi=") as err:
        parse_request({"roi": roi}, SHAPE)
    assert err.value.value == roi


@pytest.mark.parametrize("value", ["3", None, True, False, [1], float("nan"), float("inf"), 2.5])
def test_roi_non_number_raises(value):
    roi = [1, 10, 2, 20, value, 9]
    with pytest.raises(SamriInputError, match=r"^roi=") as err:
        parse_request({"roi": roi}, SHAPE)
    assert field_of(err) == "roi"


@pytest.mark.parametrize("point,n", [([[1, 2, 3], [40, 0, 0]], 1), ([[1, 2, 3], [0, 0, -1]], 1),
                                     ([[0, 48, 0]], 0), ([[0, 0, 30]], 0)])
def test_point_outside_names_index(point, n):
    with pytest.raises(SamriInputError) as err:
        parse_request({"foreground": point}, SHAPE)
    assert field_of(err) == f"foreground[{n}]" and str(err.value).startswith(f"foreground[{n}]=")
    assert "outside the volume of shape [40, 48, 30]" in str(err.value)


def test_background_point_outside_names_background():
    with pytest.raises(SamriInputError, match=r"^background\[0\]="):
        parse_request({"foreground": [[1, 2, 3]], "background": [[100, 2, 3]]}, SHAPE)


@pytest.mark.parametrize("point", [[1, 2], [1, 2, 3, 4], "1,2,3", 7, [1, "2", 3], [1, True, 3], [1, 2.5, 3],
                                   [1, None, 3]])
def test_malformed_point_names_index(point):
    with pytest.raises(SamriInputError) as err:
        parse_request({"foreground": [[0, 0, 0], point]}, SHAPE)
    assert field_of(err) == "foreground[1]"


@pytest.mark.parametrize("value", ["[[1,2,3]]", 5, {"a": 1}])
def test_points_not_a_list(value):
    with pytest.raises(SamriInputError, match=r"^foreground="):
        parse_request({"foreground": value}, SHAPE)


@pytest.mark.parametrize("params", [{}, {"foreground": []}, {"background": [[1, 2, 3]]}, {"roi": []},
                                    {"slice": 3, "label": "liver"}])
def test_empty_prompt_raises(params):
    with pytest.raises(SamriInputError, match="empty prompt") as err:
        parse_request(params, SHAPE)
    assert field_of(err) == "foreground"


@pytest.mark.parametrize("slice_index", [-1, 30, 100])
def test_slice_out_of_range(slice_index):
    with pytest.raises(SamriInputError, match=r"^slice=") as err:
        parse_request({"foreground": [[1, 2, 3]], "slice": slice_index}, SHAPE)
    assert "0..29" in str(err.value)
    with pytest.raises(SamriInputError, match=r"^slice="):
        parse_request({"foreground": [[1, 2, 3]], "slice": 40 + abs(slice_index)}, SHAPE, axis=0)


@pytest.mark.parametrize("value", ["3", True, 2.5])
def test_slice_not_an_index(value):
    with pytest.raises(SamriInputError, match=r"^slice="):
        parse_request({"foreground": [[1, 2, 3]], "slice": value}, SHAPE)


def test_params_not_a_mapping_and_bad_axis():
    with pytest.raises(SamriInputError, match=r"^params="):
        parse_request([[1, 2, 3]], SHAPE)
    with pytest.raises(SamriInputError, match=r"^axis="):
        parse_request({"foreground": [[1, 2, 3]]}, SHAPE, axis=3)


# --- select_slice -------------------------------------------------------------------------------
def test_select_slice_rules():
    # slice credible (inside the ROI): used
    assert parse_request({"roi": [0, 10, 0, 10, 5, 15], "slice": 7}, SHAPE).select_slice() == 7
    # slice outside the ROI's range (Slicer's mm offset): the ROI's middle
    assert parse_request({"roi": [0, 10, 0, 10, 5, 15], "slice": 20}, SHAPE).select_slice() == 10
    assert parse_request({"roi": [0, 10, 0, 10, 15, 5], "slice": 2}, SHAPE).select_slice() == 10
    # no slice: the ROI's middle (rounded down)
    assert parse_request({"roi": [0, 10, 0, 10, 5, 16]}, SHAPE).select_slice() == 10
    # points and no slice: the last point's slice
    assert parse_request({"foreground": [[1, 1, 3], [2, 2, 8]]}, SHAPE).select_slice() == 8
    assert parse_request({"foreground": [[1, 1, 3]], "background": [[2, 2, 9]]}, SHAPE).select_slice() == 9
    # slice on a point: used even if it is not the last one
    assert parse_request({"foreground": [[1, 1, 3], [2, 2, 8]], "slice": 3}, SHAPE).select_slice() == 3
    # slice that holds no point: the last point's slice
    assert parse_request({"foreground": [[1, 1, 3], [2, 2, 8]], "slice": 5}, SHAPE).select_slice() == 8
    # points beat the ROI middle
    assert parse_request({"foreground": [[1, 1, 12]], "roi": [0, 10, 0, 10, 5, 15]}, SHAPE).select_slice() == 12


def test_select_slice_other_axis():
    req = parse_request({"foreground": [[7, 1, 3]]}, SHAPE, axis=0)
    assert req.select_slice() == 7
    req = parse_request({"roi": [4, 8, 0, 10, 0, 10], "slice": 30}, SHAPE, axis=0)
    assert req.select_slice() == 6


def test_select_slice_empty_request_raises():
    req = VolumeRequest(foreground=np.zeros((0, 3), int), background=np.zeros((0, 3), int), roi=None, slice=None,
                        axis=2, shape=SHAPE)
    with pytest.raises(SamriInputError, match="empty prompt"):
        req.select_slice()
    with pytest.raises(SamriInputError, match="empty prompt"):
        req.prompted_slices()


# --- slice_prompt / prompted_slices -------------------------------------------------------------
def test_slice_prompt_contents_axis2():
    req = parse_request({"foreground": [[1, 2, 5], [3, 4, 6], [7, 8, 5]], "background": [[9, 10, 5]],
                         "roi": [0, 20, 30, 10, 4, 8]}, SHAPE)
    p = req.slice_prompt(5)
    assert p.points.tolist() == [[1, 2], [7, 8], [9, 10]]
    assert p.labels.tolist() == [1, 1, 0]
    assert p.box.tolist() == [0, 10, 20, 30]  # (r0, c0, r1, c1) = (i0, j0, i1, j1)
    p6 = req.slice_prompt(6)
    assert p6.points.tolist() == [[3, 4]] and p6.labels.tolist() == [1]
    p9 = req.slice_prompt(9)  # outside the ROI's k range and no point
    assert p9.is_empty and p9.box is None


@pytest.mark.parametrize("axis,expected_rc,expected_box", [
    (0, [[2, 3]], [5, 7, 20, 25]),   # rows = j, cols = k
    (1, [[1, 3]], [0, 7, 10, 25]),   # rows = i, cols = k
    (2, [[1, 2]], [0, 5, 10, 20]),   # rows = i, cols = j
])
def test_slice_prompt_contents_every_axis(axis, expected_rc, expected_box):
    point = [1, 2, 3]
    req = parse_request({"foreground": [point], "roi": [0, 10, 5, 20, 7, 25]}, SHAPE, axis=axis)
    index = point[axis]
    lo, hi = req.roi_range()
    p = req.slice_prompt(index)
    assert p.points.tolist() == expected_rc and p.labels.tolist() == [1]
    if lo <= index <= hi:
        assert p.box.tolist() == expected_box
    else:
        assert p.box is None
    # the ROI's in-plane box on a slice in its range
    inside = req.slice_prompt((lo + hi) // 2)
    assert inside.box.tolist() == expected_box


def test_prompted_slices():
    assert parse_request({"foreground": [[1, 1, 8], [2, 2, 3], [3, 3, 8]]}, SHAPE).prompted_slices() == [3, 8]
    assert parse_request({"roi": [0, 5, 0, 5, 10, 20]}, SHAPE).prompted_slices() == [15]
    # background points alone do not seed propagation
    req = parse_request({"background": [[1, 1, 2]], "roi": [0, 5, 0, 5, 10, 20]}, SHAPE)
    assert req.prompted_slices() == [15] and req.background_slices() == [2]
    # a 3D ROI with points bounds them; a flat ROI (a 2D box) stays a seed beside clicks elsewhere
    assert parse_request({"foreground": [[1, 1, 12]], "roi": [0, 5, 0, 5, 10, 20]}, SHAPE).prompted_slices() == [12]
    assert parse_request({"foreground": [[1, 1, 12]], "roi": [0, 5, 0, 5, 7, 7]}, SHAPE).prompted_slices() == [7, 12]


# --- SlicePrompt --------------------------------------------------------------------------------
def test_slice_prompt_validation():
    with pytest.raises(SamriInputError, match=r"^labels="):
        SlicePrompt(points=[[1, 2], [3, 4]], labels=[1])
    with pytest.raises(SamriInputError, match=r"^box="):
        SlicePrompt(box=[1, 2, 3])
    with pytest.raises(SamriInputError, match=r"^box="):
        SlicePrompt(box=[1, 2, 3, float("nan")])
    assert SlicePrompt().is_empty
    assert not SlicePrompt(box=[0, 0, 1, 1]).is_empty
    assert SlicePrompt(box=[5, 6, 1, 2]).box.tolist() == [1, 2, 5, 6]
    assert normalize_box([3, 0, 1, 4]).tolist() == [1, 0, 3, 4]


def test_check_inside():
    p = SlicePrompt(points=[[0, 0], [39, 47]], labels=[1, 0], box=[-3, -3, 50, 60])  # box may stick out
    p.check_inside((40, 48))
    with pytest.raises(SamriInputError, match=r"^points\[1\]=") as err:
        SlicePrompt(points=[[0, 0], [40, 0]], labels=[1, 1]).check_inside((40, 48))
    assert "40x48" in str(err.value)
    with pytest.raises(SamriInputError, match=r"^points\[0\]="):
        SlicePrompt(points=[[-1, 0]], labels=[1]).check_inside((40, 48))
    with pytest.raises(SamriInputError, match=r"^box="):
        SlicePrompt(box=[41, 0, 45, 10]).check_inside((40, 48))
    with pytest.raises(SamriInputError, match=r"^box="):
        SlicePrompt(box=[0, -9, 10, -1]).check_inside((40, 48))


@pytest.mark.parametrize("hw,size", [((40, 48), 64), ((48, 30), 64), ((200, 130), 64), ((40, 48), 256)])
def test_to_model_frames_match_slice_geometry(hw, size):
    geom = SliceGeometry(hw[0], hw[1], size)
    points = np.array([[1.0, 2.0], [30.0, 7.0]])
    prompt = SlicePrompt(points=points, labels=[1, 0], box=[20, 25, 3, 4])
    kw = prompt.to_model(geom)
    coords, labels = kw["points"]
    assert coords.shape == (1, 2, 2) and coords.dtype == torch.float32
    assert labels.tolist() == [[1, 0]] and labels.dtype == torch.int64
    np.testing.assert_allclose(coords[0].numpy(), geom.points_to_input(points), atol=1e-5)
    assert kw["boxes"].shape == (1, 4)
    np.testing.assert_allclose(kw["boxes"][0].numpy(), geom.box_to_input([3, 4, 20, 25]), atol=1e-5)
    # x is the column: the first point (r=1, c=2) has x from c and y from r
    np.testing.assert_allclose(coords[0, 0].numpy(), [(2.5 * geom.col_scale) - 0.5, (1.5 * geom.row_scale) - 0.5],
                               atol=1e-5)
    assert kw["masks"] is None


def test_to_model_without_points_or_box_and_with_mask():
    geom = SliceGeometry(40, 48, 64)
    logits = torch.randn(1, 1, 32, 32, dtype=torch.float64)
    kw = SlicePrompt(mask_logits=logits).to_model(geom)
    assert kw["points"] is None and kw["boxes"] is None
    assert kw["masks"].dtype == torch.float32 and torch.allclose(kw["masks"], logits.float())
    kw = SlicePrompt(box=[0, 0, 39, 47]).to_model(geom)
    assert kw["points"] is None and kw["boxes"] is not None
