"""Fixtures shared by tests/samri, tests/apps and tests/e2e."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_REGISTRY

REPO = Path(__file__).resolve().parents[1]
SAMPLE_NAMES = ("colin27_t1", "mni152_t1")


@pytest.fixture(scope="session")
def sample_studies_dir(tmp_path_factory) -> Path:
    """A folder with the sample studies: the repo's ``data/studies`` when `make run` wrote it, else
    written once per session (`samri.sample_data.write_sample_studies`; MNI152 at least, Colin27 with
    Debian's mricron-data), so a clean clone runs these tests instead of skipping them."""
    studies = REPO / "data" / "studies"
    if any((studies / f"{name}.nii.gz").is_file() for name in SAMPLE_NAMES):
        return studies
    from samri.sample_data import write_sample_studies

    out = tmp_path_factory.mktemp("sample_studies")
    write_sample_studies(out)
    return out


@pytest.fixture()
def tiny_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``SAMRI_CONFIG_DIR`` pointing at a registry whose default is a tiny random ViT."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "models.yaml").write_text(TINY_REGISTRY)
    monkeypatch.setenv("SAMRI_CONFIG_DIR", str(folder))
    return folder
