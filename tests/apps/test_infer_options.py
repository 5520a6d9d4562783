"""Request options of the infer task (`lib.infers.options`)."""

from __future__ import annotations

import pytest

from apps.samri.lib.configs.settings import DEFAULT_LABEL
from apps.samri.lib.infers.options import InferOptions, parse_options
from samri.errors import SamriInputError


def test_options_slicer_and_ohif() -> None:
    slicer = parse_options({"label": "Thalamus_L", "client_id": "abc", "reset_state": True,
                            "result_extension": ".nrrd", "result_dtype": "uint8"})
    assert slicer == InferOptions(label="Thalamus_L", client_id="abc", reset_state=True)
    ohif = parse_options({"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False})
    assert ohif.client_id is None and ohif.label == DEFAULT_LABEL and ohif.result_compress is False
    assert parse_options({"result_extension": "nii.gz", "client_id": 7}).result_extension == ".nii.gz"


@pytest.mark.parametrize("request_, field", [
    ({"label": 3}, "label"), ({"client_id": [1]}, "client_id"), ({"reset_state": "later"}, "reset_state"),
    ({"result_extension": ".png"}, "result_extension"), ({"result_dtype": "int64"}, "result_dtype"),
    ({"result_compress": "zip"}, "result_compress"),
])
def test_options_reject_wrong_types(request_: dict, field: str) -> None:
    with pytest.raises(SamriInputError) as info:
        parse_options(request_)
    assert info.value.field == field


