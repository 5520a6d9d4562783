"""Tests for samri.sample_data: sample studies written as a MONAI Label local datastore."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from samri import sample_data as data
from samri.errors import SamriInputError
from samri.labels import load_label_names

COLIN_INSTALLED = "colin27" in data.available_sources()
needs_colin = pytest.mark.skipif(
    not COLIN_INSTALLED,
    reason=f"Debian package mricron-data not installed (no ch2/aal files in ${data.MRICRON_DIR_ENV} "
    "or /usr/share/mricron/templates)",
)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in _files(folder)}


@pytest.fixture(scope="module")
def datastore(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[data.SampleStudy]]:
    """Every installed source, written once for the whole module (about 3 s)."""
    out = tmp_path_factory.mktemp("studies")
    return out, data.write_sample_studies(out)


@pytest.fixture()
def fake_mricron(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny stand-in for mricron-data (8x9x10 grid, 3 labels), selected via the env var."""
    folder = tmp_path / "mricron"
    folder.mkdir()
    affine = np.array([[1.0, 0, 0, -4], [0, 1, 0, -5], [0, 0, 1, -6], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.integers(0, 255, (8, 9, 10), dtype=np.uint8), affine), folder / "ch2.nii.gz")
    labels = np.zeros((8, 9, 10), np.uint8)
    labels[1:3, 1:3, 1:3], labels[4:6, 4:6, 4:6], labels[6, 7, 8] = 1, 2, 3
    nib.save(nib.Nifti1Image(labels, affine), folder / "aal.nii.gz")
    (folder / "aal.nii.txt").write_bytes(b"1 Region_L 2001\r\n2 Region_R 2002\r\n3 Vermis_1 9001\r\n")
    monkeypatch.setenv(data.MRICRON_DIR_ENV, str(folder))
    return folder


def test_import_is_light() -> None:
    code = ("import sys, samri.sample_data; "
            "print(sorted(m for m in ('nibabel', 'nilearn', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_available_sources() -> None:
    found = data.available_sources()
    assert found[0] == "mni152"
    assert set(found) <= set(data.SOURCES)


def test_layout(datastore: tuple[Path, list[data.SampleStudy]]) -> None:
    out, studies = datastore
    assert [s.study_id for s in studies] == [data.SOURCES[s] for s in data.available_sources()]
    expected = set()
    for s in studies:
        assert s.image == out / f"{s.study_id}.nii.gz"
        assert s.label == out / "labels" / "final" / f"{s.study_id}.nii.gz"
        assert s.source and "\n" not in s.source
        assert 0 not in s.label_names.values()
        expected |= {s.image, s.label}
    expected.add(out / "label_names.json")
    assert set(_files(out)) == expected  # no temporary files left behind
    assert load_label_names(out) == {s.study_id: s.label_names for s in studies}


def test_images_and_labels_share_grid(datastore: tuple[Path, list[data.SampleStudy]]) -> None:
    for s in datastore[1]:
        image, label = nib.load(s.image), nib.load(s.label)
        assert image.shape == label.shape and len(image.shape) == 3
        np.testing.assert_array_equal(image.affine, label.affine)
        assert label.get_data_dtype() in (np.uint8, np.uint16)
        values = np.unique(np.asanyarray(label.dataobj))
        assert set(values.tolist()) <= {0, *s.label_names.values()}
        assert len(values) > 1


def test_mni152_tissues(datastore: tuple[Path, list[data.SampleStudy]]) -> None:
    study = next(s for s in datastore[1] if s.study_id == "mni152_t1")
    assert study.label_names == {"csf": 1, "grey_matter": 2, "white_matter": 3}
    image = nib.load(study.image)
    t1 = image.get_fdata(dtype=np.float32)
    labels = np.asanyarray(nib.load(study.label).dataobj)
    assert image.shape == (197, 233, 189) and image.get_data_dtype() == np.float32
    assert t1.min() == 0.0 and t1.max() == 1.0
    counts = np.bincount(labels.ravel(), minlength=4)
    assert (counts[1:] > 100_000).all()
    assert counts[2] > counts[3] > counts[1]  # the blurred template: GM > WM > CSF
    assert (t1[labels > 0] > 0.2).all()  # labels only inside nilearn's brain mask
    # White matter is brighter than grey matter on T1.
    assert np.median(t1[labels == 3]) > np.median(t1[labels == 2])


@needs_colin
def test_colin27_aal(datastore: tuple[Path, list[data.SampleStudy]]) -> None:
    study = next(s for s in datastore[1] if s.study_id == "colin27_t1")
    assert len(study.label_names) == 116
    assert study.label_names["Precentral_L"] == 1 and study.label_names["Thalamus_L"] == 77
    image = nib.load(study.image)
    assert image.shape == (181, 217, 181) and image.get_data_dtype() == np.uint8
    labels = np.asanyarray(nib.load(study.label).dataobj)
    assert set(np.unique(labels).tolist()) == {0, *study.label_names.values()}
    assert "AAL" in study.source


def test_second_call_rewrites_nothing(datastore: tuple[Path, list[data.SampleStudy]]) -> None:
    out, studies = datastore
    before = _mtimes(out)
    again = data.write_sample_studies(out)
    assert again == studies
    assert _mtimes(out) == before


def test_unknown_source_is_named() -> None:
    with pytest.raises(SamriInputError, match="bogus") as info:
        data.write_sample_studies("/nonexistent-never-created", sources=["mni152", "bogus"])
    assert info.value.field == "sources" and info.value.value == "bogus"
    assert isinstance(info.value, ValueError)
    assert not Path("/nonexistent-never-created").exists()


def test_colin27_missing_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.MRICRON_DIR_ENV, str(tmp_path / "empty"))
    assert data.available_sources() == ["mni152"]
    with pytest.raises(SamriInputError, match="mricron-data"):
        data.write_sample_studies(tmp_path / "out", sources="colin27")


def test_fake_colin27_and_overwrite(fake_mricron: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out).mkdir()
    (out / "label_names.json").write_text(json.dumps({"other": {"x": 1}}))
    [study] = data.write_sample_studies(out, sources=["colin27"])
    assert study.label_names == {"Region_L": 1, "Region_R": 2, "Vermis_1": 3}
    assert load_label_names(out) == {"other": {"x": 1}, "colin27_t1": study.label_names}
    src = nib.load(fake_mricron / "aal.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(study.label).dataobj), np.asanyarray(src.dataobj))

    before = _mtimes(out)
    data.write_sample_studies(out, sources=["colin27"])
    assert _mtimes(out) == before
    data.write_sample_studies(out, sources=["colin27"], overwrite=True)
    after = _mtimes(out)
    assert after[study.image] > before[study.image] and after[study.label] > before[study.label]


def test_label_grid_within_tolerance_takes_image_affine(fake_mricron: Path, tmp_path: Path) -> None:
    aal = nib.load(fake_mricron / "aal.nii.gz")
    nudged = aal.affine.copy()
    nudged[:3, 3] += 5e-4
    nib.save(nib.Nifti1Image(np.asanyarray(aal.dataobj), nudged), fake_mricron / "aal.nii.gz")
    [study] = data.write_sample_studies(tmp_path / "out", sources=["colin27"])
    np.testing.assert_array_equal(nib.load(study.label).affine, nib.load(study.image).affine)


@pytest.mark.parametrize("shift, shape", [(1.0, (8, 9, 10)), (0.0, (8, 9, 11))])
def test_label_grid_mismatch_raises(fake_mricron: Path, tmp_path: Path, shift: float, shape: tuple) -> None:
    aal = nib.load(fake_mricron / "aal.nii.gz")
    affine = aal.affine.copy()
    affine[0, 3] += shift
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), fake_mricron / "aal.nii.gz")
    with pytest.raises(SamriInputError, match="voxel grid"):
        data.write_sample_studies(tmp_path / "out", sources=["colin27"])
    assert not (tmp_path / "out" / "colin27_t1.nii.gz").exists()


def test_unnamed_label_value_raises(fake_mricron: Path, tmp_path: Path) -> None:
    (fake_mricron / "aal.nii.txt").write_text("1 Region_L 2001\n2 Region_R 2002\n")
    with pytest.raises(SamriInputError, match="no name"):
        data.write_sample_studies(tmp_path / "out", sources=["colin27"])


def test_failed_write_leaves_no_file(fake_mricron: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(data.os, "replace", broken_replace)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        data.write_sample_studies(out, sources=["colin27"])
    assert [p for p in _files(out)] == []
