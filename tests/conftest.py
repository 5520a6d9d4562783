"""Fixtures shared by tests/samri, tests/apps and tests/e2e."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import TINY_REGISTRY

REPO = Path(__file__).resolve().parents[1]
SAMPLE_NAMES = ("colin27_t1", "mni152_t1")


@pytest.fixture(autouse=True)
def _torch_rng_from_a_fixed_state():
    """Every test starts from the same global torch RNG state: the tiny models' random weights (and anything
    else drawn from it) must not depend on which tests ran before (a training run seeds and draws from it).
    A test that has not imported torch yet gets its fixed initial state anyway."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)


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


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory):
    """One ``monailabel start_server`` per test module: a copy of apps/samri over fresh sample studies.

    Precompute is off (tests time clicks, and background encoding would compete for the 2 cores);
    the embedding cache lives in the temporary folder.
    """
    import requests

    from samri import sample_data as data
    from samri.bench.http import post_infer, wait_for_backend
    from samri.testing.server import copy_app, start_server
    from tests.apps.helpers import APP_DIR, LiveServer

    root = tmp_path_factory.mktemp("samri_server")
    studies = root / "studies"
    written = data.write_sample_studies(studies)
    truth = {s.study_id: np.asarray(nib.load(str(s.label)).dataobj) for s in written}
    affines = {s.study_id: nib.load(str(s.image)).affine for s in written}
    app = copy_app(APP_DIR, root / "app")
    process = start_server(app_dir=app, studies=studies, log_path=root / "server.log",
                           conf={"precompute": "false", "cache_dir": str(root / "embedding_cache")})
    # load the network and let its backend (auto: OpenVINO) swap in before any test compares masks
    info = requests.get(process.base_url + "/info/", timeout=30).json()
    assert info["samri"]["model"]["loaded"] is False  # constructing the app loads no network
    first = written[0].study_id
    answer = post_infer(process.base_url, "samri_2d", first, {"foreground": [[s // 2 for s in truth[first].shape]]})
    assert answer.status_code == 200, answer.text[:300]
    wait_for_backend(process.base_url)
    try:
        yield LiveServer(process=process, studies=studies, images=[s.study_id for s in written], truth=truth,
                         label_names={s.study_id: s.label_names for s in written}, affines=affines)
    finally:
        process.stop()
