"""The request fields the app reads itself (the prompt fields are validated by `samri.inference.prompts`).

Slicer sends ``label``, ``client_id``, ``reset_state``, ``result_extension: ".nrrd"`` and
``result_dtype: "uint8"``; OHIF sends ``result_extension``, ``result_dtype``,
``result_compress: false`` and no ``client_id``. Every field is checked for its type, and a wrong
one raises `samri.errors.SamriInputError` naming it (HTTP 422).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from samri.errors import SamriInputError

from ..configs.settings import DEFAULT_LABEL, parse_bool

#: result formats: ``.nrrd`` (pynrrd, LPS header; what Slicer and OHIF ask for) or NIfTI (nibabel).
RESULT_EXTENSIONS = (".nrrd", ".nii.gz", ".nii")
RESULT_DTYPES = ("uint8",)


@dataclass(frozen=True)
class InferOptions:
    """Validated non-prompt fields of one infer request.

    Attributes:
        label: segment name the mask is for (``label_names`` of the result).
        client_id: the client's id, or None (then no refinement state is kept).
        reset_state: drop this client's previous logits before predicting.
        result_extension: one of `RESULT_EXTENSIONS`.
        result_dtype: one of `RESULT_DTYPES`.
        result_compress: gzip the NRRD data (about 7 KB instead of 7 MB for a brain volume).
    """

    label: str = DEFAULT_LABEL
    client_id: str | None = None
    reset_state: bool = False
    result_extension: str = ".nrrd"
    result_dtype: str = "uint8"
    result_compress: bool = True


def _optional_str(request: Mapping[str, Any], key: str, allow_int: bool = False) -> str | None:
    value = request.get(key)
    if value is None or value == "":
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise SamriInputError(key, value, "must be a string")
    return value


def parse_options(request: Mapping[str, Any]) -> InferOptions:
    """Read and check ``label``, ``client_id``, ``reset_state`` and the ``result_*`` fields."""
    label = _optional_str(request, "label") or DEFAULT_LABEL
    client_id = _optional_str(request, "client_id", allow_int=True)
    reset = request.get("reset_state")
    reset_state = False if reset is None else parse_bool(reset, "reset_state")
    extension = _optional_str(request, "result_extension") or ".nrrd"
    extension = extension.lower() if extension.startswith(".") else "." + extension.lower()
    if extension not in RESULT_EXTENSIONS:
        raise SamriInputError("result_extension", request.get("result_extension"),
                              f"must be one of {list(RESULT_EXTENSIONS)}")
    dtype = _optional_str(request, "result_dtype") or "uint8"
    if dtype not in RESULT_DTYPES:
        raise SamriInputError("result_dtype", dtype, f"must be one of {list(RESULT_DTYPES)} (a binary mask)")
    compress = request.get("result_compress")
    result_compress = True if compress is None else parse_bool(compress, "result_compress")
    return InferOptions(label=label, client_id=client_id, reset_state=reset_state, result_extension=extension,
                        result_dtype=dtype, result_compress=result_compress)
