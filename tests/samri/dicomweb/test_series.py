"""samri.dicomweb.series: a broken series is refused naming the DICOM attribute at fault."""

from __future__ import annotations

import pytest

from samri.dicomweb.series import series_to_volume
from samri.errors import SamriInputError
from tests.helpers import small_dicom_series


def _as_ct(ds):
    for d in ds:
        d.Modality = "CT"
    return ds


def _without_position(ds):
    del ds[2].ImagePositionPatient
    return ds


def _multi_frame(ds):
    for d in ds:
        d.NumberOfFrames = 2
    return ds


@pytest.mark.parametrize("break_it, field", [
    (_as_ct, "Modality"),
    (lambda ds: ds[:1], "series"),                                    # single image: not a volume
    (lambda ds: [ds[0], ds[1], ds[3]], "ImagePositionPatient"),       # gap: inconsistent spacing
    (_without_position, "ImagePositionPatient"),
    (lambda ds: [ds[0], ds[0], *ds[1:]], "ImagePositionPatient"),     # duplicate position
    (_multi_frame, "NumberOfFrames"),
])
def test_bad_series_name_the_field(break_it, field):
    with pytest.raises(SamriInputError) as err:
        series_to_volume(break_it(small_dicom_series()))
    assert err.value.field == field
