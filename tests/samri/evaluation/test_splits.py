"""The validation cohort's structure pick (samri.evaluation.splits): never a test structure or its twin."""

from __future__ import annotations

import json

import pytest

from samri.errors import SamriInputError
from samri.evaluation.splits import _main, cohort_validation_structures
from samri.labels import side_less

NAMES = ["jhu_genu", "jhu_tract_a_l", "jhu_tract_a_r", "jhu_tract_b_l", "jhu_tract_b_r", "jhu_tract_c_l",
         "jhu_tract_c_r", "jhu_tract_d_l", "jhu_tract_d_r", "ho_area_a_l", "ho_area_a_r", "ho_area_b_l",
         "ho_area_b_r", "ho_area_c_l", "ho_area_c_r"]


def test_side_less():
    assert side_less("jhu_tract_a_l") == "jhu_tract_a"
    assert side_less("jhu_tract_a_r") == "jhu_tract_a"
    assert side_less("jhu_genu") == "jhu_genu"
    assert side_less("Putamen_L") == "Putamen" and side_less("Vermis_1_2") == "Vermis_1_2"  # AAL's


def test_pick_leaves_out_test_structures_and_their_twins():
    picked = cohort_validation_structures(NAMES, ["jhu_tract_b_r", "ho_area_a_l"], jhu_step=1, ho_step=1)
    assert picked == ["jhu_genu", "jhu_tract_a_r", "jhu_tract_c_l", "jhu_tract_d_r", "ho_area_b_l",
                      "ho_area_c_r"]
    assert not {side_less(n) for n in picked} & {"jhu_tract_b", "ho_area_a"}


def test_pick_takes_every_step_th_group_and_is_order_free():
    picked = cohort_validation_structures(NAMES, [], jhu_step=2, ho_step=2)
    assert picked == ["jhu_genu", "jhu_tract_b_r", "jhu_tract_d_l", "ho_area_a_l", "ho_area_c_r"]
    assert cohort_validation_structures(reversed(NAMES), [], jhu_step=2, ho_step=2) == picked


def test_pick_rejects_a_step_below_one():
    with pytest.raises(SamriInputError, match="ho_step"):
        cohort_validation_structures(NAMES, [], ho_step=0)


def test_cli_prints_the_comma_list(tmp_path, capsys):
    path = tmp_path / "label_names.json"
    path.write_text(json.dumps({"s0": {n: k + 1 for k, n in enumerate(NAMES)}}))
    _main([str(path), "--exclude", "jhu_tract_b_r,ho_area_a_l", "--jhu-step", "1", "--ho-step", "1"])
    assert capsys.readouterr().out.strip() == ("jhu_genu,jhu_tract_a_r,jhu_tract_c_l,jhu_tract_d_r,"
                                               "ho_area_b_l,ho_area_c_r")
