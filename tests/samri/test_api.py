"""The lazy public API of ``samri`` (the README example), on a tiny random registry."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

import samri
from samri.errors import SamriInputError
from tests.helpers import write_tiny_studies


def test_import_samri_imports_no_torch():
    code = "import samri, sys; samri.load_segmenter; samri.prepare_volume; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names():
    assert set(samri.__all__) >= {"load_segmenter", "load_image", "prepare_volume", "run_request", "save_label",
                                  "Segmenter", "SlicePrompt"}
    from samri.inference.prompts import SlicePrompt
    from samri.inference.segmenter import Segmenter

    assert samri.Segmenter is Segmenter and samri.SlicePrompt is SlicePrompt


def test_readme_example_on_tiny_model(tmp_path, tiny_registry):
    studies = write_tiny_studies(tmp_path / "studies", ids=("tiny_a",))
    segmenter = samri.load_segmenter("tiny")
    assert isinstance(segmenter, samri.Segmenter) and segmenter.model.backend_info["backend"] == "torch"
    with pytest.raises(SamriInputError, match="backend"):
        samri.load_segmenter("tiny", backend="fast")
    image = samri.load_image(studies / "tiny_a.nii.gz")
    volume = samri.prepare_volume(image)
    result = samri.run_request(segmenter, volume, {"roi": [10, 30, 10, 26, 4, 4]}, mode="3d")
    assert result.mask.shape == image.array.shape
    out = samri.save_label(tmp_path / "label.nii.gz", result.mask, image.affine)
    saved = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(saved.dataobj), result.mask)
    np.testing.assert_allclose(saved.affine, image.affine)
