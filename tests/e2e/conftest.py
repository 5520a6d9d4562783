"""Fixtures for the browser end-to-end test: Orthanc on a free loopback port, a real MRI volume on it
as a DICOM MR series, the SAMRI server over that DICOMweb root, and Debian's chromium (headless,
driven by Playwright; nothing downloads a browser).

Everything runs in a temporary folder and is stopped at the end of the module, whatever happened.
Screenshots and the server's result go to ``$SAMRI_TEST_ARTIFACTS`` (default ``tests/e2e/artifacts``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from samri import sample_data as data
from samri.dicomweb.orthanc import OrthancProcess, orthanc_unavailable_reason, running_orthanc
from samri.testing.netaudit import audit_env
from samri.testing.server import ServerProcess, copy_app, start_server

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "apps" / "samri"
#: where `samri sample-data` / `make sample-data` put the sample studies
STUDIES = REPO / "data" / "studies"
#: chromium executable: ``$SAMRI_CHROMIUM``, else ``chromium`` on PATH, else Debian's path
CHROMIUM_ENV = "SAMRI_CHROMIUM"
DEBIAN_CHROMIUM = "/usr/bin/chromium"
ARTIFACTS_ENV = "SAMRI_TEST_ARTIFACTS"
#: force the sample MRI (``colin27`` or ``mni152``); default: Colin27 when installed, else MNI152
SAMPLE_ENV = "SAMRI_E2E_SAMPLE"
#: headless chromium on a closed network: no GPU, no QUIC, no background/update/sync connections
#: (without them chromium's own connections are refused and slow everything down). Playwright adds
#: a fresh --user-data-dir itself.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1600, "height": 1000}


def find_chromium() -> str | None:
    """Path of the chromium executable, or None."""
    env = os.environ.get(CHROMIUM_ENV)
    for candidate in ([env] if env else [shutil.which("chromium"), DEBIAN_CHROMIUM]):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_unavailable_reason() -> str | None:
    """Why the browser test cannot run here (a sentence), or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "the Python package playwright is not installed (pip install -r requirements.txt)"
    if find_chromium() is None:
        where = os.environ.get(CHROMIUM_ENV) or f"'chromium' on PATH or {DEBIAN_CHROMIUM}"
        return (f"chromium not found ({where}): apt-get install chromium chromium-driver "
                "(or `make sysdeps-ohif` as root)")
    return None


def e2e_unavailable_reason() -> str | None:
    """Why the end-to-end test is skipped: chromium or Orthanc missing; None when both are there."""
    return browser_unavailable_reason() or orthanc_unavailable_reason()


@dataclass(frozen=True)
class Target:
    """The structure the test clicks on, and how well the result must match it.

    Attributes:
        study_id: sample study (``colin27_t1`` or ``mni152_t1``).
        label: ground-truth label name (``label_names.json``).
        min_dice: least Dice between the mask and the structure on the clicked slice.
        min_precision: least fraction of mask voxels inside the structure.
    """

    study_id: str
    label: str
    min_dice: float
    min_precision: float


#: Colin27's left thalamus: compact, ~540 voxels on its largest axial slice; LiteMedSAM from one
#: interior point reaches Dice ~0.87 there. MNI152 (no Colin27): white matter, too large for one
#: point to cover, so only precision is required.
TARGETS = {"colin27_t1": Target("colin27_t1", "Thalamus_L", min_dice=0.5, min_precision=0.5),
           "mni152_t1": Target("mni152_t1", "white_matter", min_dice=0.0, min_precision=0.6)}


@dataclass
class MrStudy:
    """The MR series on Orthanc and what the test knows about it.

    Attributes:
        target: the structure to click.
        image_path, label_path: the NIfTI image and its ground truth (same grid).
        label_value: the structure's voxel value in the ground truth.
        gt_affine: ``(4, 4)`` voxel-to-RAS of image and ground truth.
        study_uid, series_uid: the uploaded DICOM study and series (MONAI Label's image id).
        patient_id: as shown in OHIF's study list (MRN column).
        n_instances: slices in the series.
        click_ras: the point to click, RAS mm: deepest voxel of the structure on its largest axial slice.
    """

    target: Target
    image_path: Path
    label_path: Path
    label_value: int
    gt_affine: np.ndarray
    study_uid: str
    series_uid: str
    patient_id: str
    n_instances: int
    click_ras: np.ndarray

    @property
    def click_lps(self) -> list[float]:
        """The click in DICOM patient coordinates (what cornerstone calls world)."""
        return [float(-self.click_ras[0]), float(-self.click_ras[1]), float(self.click_ras[2])]

    def ground_truth(self) -> np.ndarray:
        """``(X, Y, Z)`` bool mask of the structure on the NIfTI grid."""
        return np.asarray(nib.load(str(self.label_path)).dataobj) == self.label_value


def _sample_study() -> tuple[Target, data.SampleStudy]:
    """``$SAMRI_E2E_SAMPLE`` if set, else Colin27 if installed, else MNI152, from data/studies (written
    there when missing)."""
    sources = data.available_sources()
    if not sources:
        pytest.fail("no sample MRI installed: nilearn (MNI152) should come with requirements.txt")
    wanted = os.environ.get(SAMPLE_ENV, "").strip()
    if wanted:
        if wanted not in sources:
            pytest.fail(f"{SAMPLE_ENV}={wanted!r} is not an installed sample source (installed: {sources})")
        source = wanted
    else:
        source = "colin27" if "colin27" in sources else sources[0]
    study_id = data.SOURCES[source]
    written = {s.study_id: s for s in data.write_sample_studies(STUDIES, sources=[source])}
    return TARGETS[study_id], written[study_id]


def _click_point(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS mm of the deepest voxel (largest distance to the border) of ``mask`` on its largest axial slice."""
    k = int(mask.sum(axis=(0, 1)).argmax())
    depth = ndimage.distance_transform_edt(mask[:, :, k])
    i, j = np.unravel_index(int(depth.argmax()), depth.shape)
    return (affine @ np.array([i, j, k, 1.0]))[:3]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``$SAMRI_TEST_ARTIFACTS`` or ``tests/e2e/artifacts`` (git-ignored), created."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "tests" / "e2e" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def e2e_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ohif_e2e")


@pytest.fixture(scope="module")
def orthanc(e2e_root: Path) -> Iterator[OrthancProcess]:
    """Debian's Orthanc + DICOMweb plugin on a free loopback port, storage in the temporary folder."""
    reason = orthanc_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with running_orthanc(e2e_root / "orthanc") as process:
        yield process


@pytest.fixture(scope="module")
def mr_study(orthanc: OrthancProcess) -> MrStudy:
    """The sample MRI converted to a DICOM MR series (one instance per axial slice) and STOW-RS'd to Orthanc."""
    from samri.dicomweb.convert import nifti_to_dicom_series
    from samri.dicomweb.upload import upload_series

    target, sample = _sample_study()
    label_value = sample.label_names[target.label]
    gt_img = nib.load(str(sample.label))
    mask = np.asarray(gt_img.dataobj) == label_value
    patient_id = f"e2e-{sample.study_id}"
    description = f"{sample.study_id} T1"
    datasets = nifti_to_dicom_series(sample.image, patient_id=patient_id, series_description=description)
    series_uid = upload_series(datasets, orthanc.dicomweb_root)
    return MrStudy(target=target, image_path=sample.image, label_path=sample.label, label_value=label_value,
                   gt_affine=gt_img.affine, study_uid=str(datasets[0].StudyInstanceUID), series_uid=series_uid,
                   patient_id=patient_id, n_instances=len(datasets), click_ras=_click_point(mask, gt_img.affine))


def net_audit_log(e2e_root: Path) -> Path:
    """Where the server's Python processes record connection attempts (`samri.testing.netaudit`)."""
    return e2e_root / "net_audit.log"


@pytest.fixture(scope="module")
def samri_server(e2e_root: Path, orthanc: OrthancProcess, mr_study: MrStudy) -> Iterator[ServerProcess]:
    """``monailabel start_server`` (a copy of apps/samri, model litemedsam), ``--studies`` = Orthanc's DICOMweb root."""
    app = copy_app(APP_DIR, e2e_root / "app")
    conf = {"model": "litemedsam", "precompute": "false", "cache_dir": str(e2e_root / "embedding_cache")}
    # the datastore's local cache (NIfTI of fetched series) stays in the temporary folder too
    env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(e2e_root / "dicomweb_cache"), **audit_env(net_audit_log(e2e_root))}
    try:
        server = start_server(app_dir=app, studies=orthanc.dicomweb_root, conf=conf, env=env, timeout_s=300,
                              log_path=e2e_root / "server.log")
    except RuntimeError as exc:
        pytest.fail(f"SAMRI server over {orthanc.dicomweb_root} did not start: {exc}\n"
                    f"--- Orthanc log tail ---\n{orthanc.log_tail()}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium launched by Playwright (``executable_path``; no bundled browser)."""
    reason = browser_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    try:
        chromium = driver.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS, headless=True,
                                          timeout=120_000)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        driver.stop()


class ConsoleLog:
    """The page's console messages and failed requests, for failure messages and the artifacts."""

    NOISE = ("fonts.g", "Failed to load resource: net::ERR_FAILED", "measurement mapping", "Crosshairs mapping",
             "Set value to model directly", "matchImages", "GL Driver Message")

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if not any(n in line for n in self.NOISE):
            self.lines.append(line)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


@pytest.fixture()
def page(browser, artifacts_dir: Path, request: pytest.FixtureRequest):
    """A fresh browser context and page; the page's console goes to ``<artifacts>/<test>.console.log``."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(60_000)
    # index.html links Google Fonts: fail those requests at once instead of waiting on a closed network
    context.route("**/fonts.googleapis.com/**", lambda route: route.abort())
    context.route("**/fonts.gstatic.com/**", lambda route: route.abort())
    pg = context.new_page()
    log = ConsoleLog()
    pg.on("console", lambda msg: log.add(f"{msg.type}: {msg.text}"))
    pg.on("pageerror", lambda exc: log.add(f"pageerror: {exc}"))
    pg.on("requestfailed", lambda req: log.add(f"requestfailed: {req.method} {req.url} {req.failure}"))
    pg.console_log = log
    try:
        yield pg
    finally:
        (artifacts_dir / f"{request.node.name}.console.log").write_text("\n".join(log.lines) + "\n")
        context.close()
