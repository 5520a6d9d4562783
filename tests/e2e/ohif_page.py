"""What the OHIF browser test (test_ohif_browser.py) knows about the viewer: the JavaScript that reads
cornerstone's viewports, annotations and labelmap, the UI steps (`Steps`, scrolling, waiting for
pixels), the NRRD/world-coordinate checks of the answer, and the save through OHIF's "Export DICOM
SEG" with its checks in Orthanc and the trainer's read-back (`save_and_check`).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from .conftest import MrStudy

#: the segment to select: the app's default label (OHIF's point panel lists the model's labels as
#: "organs"); the first one listed when the app names others
SEGMENT = "object"


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


#: every viewport of the rendering engine: id, camera, canvas rectangle, volume grid (LPS)
JS_VIEWPORTS = """() => {
  const engine = window.cornerstone && cornerstone.getRenderingEngines()[0];
  if (!engine) return [];
  return engine.getViewports().map(v => {
    const cam = v.getCamera(); const r = v.canvas.getBoundingClientRect();
    let grid = null;
    try { const d = v.getImageData(); if (d) grid = {dimensions: Array.from(d.dimensions),
      spacing: Array.from(d.spacing), origin: Array.from(d.origin), direction: Array.from(d.direction)}; } catch (e) {}
    return {id: v.id, normal: Array.from(cam.viewPlaneNormal), focalPoint: Array.from(cam.focalPoint),
            rect: [r.left, r.top, r.width, r.height], grid: grid};
  });
}"""
#: signed distance (mm) from a viewport's plane to a world point, and the point's canvas position
JS_LOCATE = """([id, world]) => {
  const v = cornerstone.getRenderingEngines()[0].getViewport(id);
  const cam = v.getCamera(); const n = cam.viewPlaneNormal, f = cam.focalPoint;
  const dist = (world[0] - f[0]) * n[0] + (world[1] - f[1]) * n[1] + (world[2] - f[2]) * n[2];
  return {dist: dist, canvas: Array.from(v.worldToCanvas(world))};
}"""
#: a viewport's display window and the value range of its volume (for "stayed blank" failures)
JS_VOI = """(id) => {
  const v = cornerstone.getRenderingEngines()[0].getViewport(id); const out = {};
  try { out.voiRange = v.getProperties().voiRange; } catch (e) { out.voiError = String(e); }
  try { out.scalarRange = Array.from(v.getImageData().imageData.getPointData().getScalars().getRange()); }
  catch (e) { out.rangeError = String(e); }
  return out;
}"""
#: the ProbeMONAILabel points placed so far (world coordinates), read as the panel reads them
JS_PROBES = """() => {
  const saved = cornerstoneTools.annotation.state.getAnnotationManager().saveAnnotations(null, 'ProbeMONAILabel') || {};
  const points = [];
  for (const group of Object.values(saved))
    for (const a of (group['ProbeMONAILabel'] || [])) points.push(Array.from(a.data.handles.points[0]));
  return points;
}"""
#: flat indices of the non-zero voxels of the viewer's labelmap '1' (the one the MONAI Label panel fills)
JS_LABELMAP = """() => {
  const vol = window.services.segmentationService.getLabelmapVolume('1');
  if (!vol) return null;
  const a = vol.voxelManager.getCompleteScalarDataArray(); const idx = [];
  for (let i = 0; i < a.length; i++) if (a[i]) idx.push(i);
  return {dimensions: Array.from(vol.dimensions), nonzero: idx};
}"""


def diagnostics(page, server=None, orthanc=None) -> str:
    parts = [f"--- page console (tail) ---\n{page.console_log.tail()}"]
    if server is not None:
        parts.append(f"--- SAMRI server log (tail) ---\n{server.log_tail(3000)}")
    if orthanc is not None:
        parts.append(f"--- Orthanc log (tail) ---\n{orthanc.log_tail(1500)}")
    return "\n".join(parts)


class Steps:
    """Runs named steps; a failing step fails the test with its name, a screenshot and the logs."""

    def __init__(self, page, artifacts: Path, prefix: str, server=None, orthanc=None) -> None:
        self.page, self.artifacts, self.prefix = page, artifacts, prefix
        self.server, self.orthanc = server, orthanc

    def run(self, name: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001  every failure gets the same diagnostics
            shot = self.artifacts / f"{self.prefix}_FAILED.png"
            try:
                self.page.screenshot(path=str(shot))
            except Exception:  # noqa: BLE001
                shot = None
            pytest.fail(f"step '{name}' failed: {type(exc).__name__}: {exc}\nscreenshot: {shot}\n"
                        f"{diagnostics(self.page, self.server, self.orthanc)}", pytrace=False)


def dismiss_banner(page) -> None:
    """OHIF's "investigational use only" banner covers the bottom of the page."""
    button = page.locator('[data-cy="confirm-and-hide-button"]')
    try:
        button.click(timeout=5_000)
    except Exception:  # noqa: BLE001  absent once confirmed (cookie) or in other builds
        pass


def screenshot_stats(png: bytes) -> tuple[float, float]:
    """(fraction of pixels brighter than 40, standard deviation) of a screenshot's grey levels."""
    from PIL import Image

    grey = np.asarray(Image.open(BytesIO(png)).convert("L"), dtype=np.float32)
    return float((grey > 40).mean()), float(grey.std())


def axial_viewport(page, study: MrStudy, timeout_s: float = 120) -> dict:
    """The viewport looking along the series' slice normal, once its volume has the series' grid."""
    deadline = time.monotonic() + timeout_s
    seen: list = []
    while time.monotonic() < deadline:
        seen = page.evaluate(JS_VIEWPORTS)
        for vp in seen:
            grid = vp["grid"]
            if grid and grid["dimensions"][2] == study.n_instances and abs(vp["normal"][2]) > 0.99:
                return vp
        time.sleep(1.0)
    raise AssertionError(f"no axial viewport showing the {study.n_instances}-slice series after {timeout_s:.0f} s; "
                         f"viewports: {json.dumps(seen)}")


def wait_for_pixels(page, viewport: dict, timeout_s: float = 60) -> bytes:
    """Screenshot of the viewport once it draws an image (not a blank canvas)."""
    x, y, w, h = viewport["rect"]
    clip = {"x": x, "y": y, "width": w, "height": h}
    deadline = time.monotonic() + timeout_s
    stats = (0.0, 0.0)
    while time.monotonic() < deadline:
        png = page.screenshot(clip=clip)
        stats = screenshot_stats(png)
        if stats[0] > 0.05 and stats[1] > 15:
            return png
        time.sleep(1.0)
    try:
        voi = page.evaluate(JS_VOI, viewport["id"])
    except Exception as exc:  # noqa: BLE001  only for the message
        voi = f"unavailable ({exc})"
    raise AssertionError(f"viewport {viewport['id']} stayed blank: bright fraction {stats[0]:.3f}, std {stats[1]:.1f}; "
                         f"display window and volume values: {voi}")


def scroll_to(page, viewport: dict, world: list[float], slice_mm: float, max_steps: int = 400) -> dict:
    """Mouse-wheel the viewport (OHIF's stack-scroll binding) until its plane is within half a slice of ``world``."""
    x, y, w, h = viewport["rect"]
    page.mouse.move(x + w / 2, y + h / 2)
    where = page.evaluate(JS_LOCATE, [viewport["id"], world])
    direction = 1.0
    for _ in range(max_steps):
        if abs(where["dist"]) <= slice_mm / 2:
            return where
        page.mouse.wheel(0, float(100 * direction * np.sign(where["dist"])))
        before = where["dist"]
        for _ in range(20):  # the camera moves on the next animation frame
            time.sleep(0.05)
            where = page.evaluate(JS_LOCATE, [viewport["id"], world])
            if where["dist"] != before:
                break
        if abs(where["dist"]) >= abs(before):
            direction = -direction  # this build scrolls the other way
    raise AssertionError(f"could not scroll {viewport['id']} to the target plane: {where['dist']:.2f} mm away")


def multipart_field(body: bytes, name: str) -> str:
    match = re.search(rb'name="' + name.encode() + rb'"\r\n(?:[^\r\n]*\r\n)*\r\n(.*?)\r\n--', body, re.S)
    if not match:
        raise AssertionError(f"no form field {name!r} in the infer request body: {body[:400]!r}")
    return match.group(1).decode()


def nrrd_world(header: dict) -> tuple[np.ndarray, np.ndarray]:
    """(origin, (3, 3) rows = axis steps) of a NRRD header, in LPS mm."""
    space = str(header.get("space", "")).lower()
    origin = np.asarray(header["space origin"], dtype=float)
    steps = np.asarray(header["space directions"], dtype=float)
    if space in ("right-anterior-superior", "ras"):
        flip = np.array([-1.0, -1.0, 1.0])
        origin, steps = origin * flip, steps * flip
    elif space not in ("left-posterior-superior", "lps"):
        raise AssertionError(f"unexpected NRRD space {space!r}")
    return origin, steps


def truth_on_grid(study: MrStudy, origin: np.ndarray, steps: np.ndarray, shape, k: int) -> np.ndarray:
    """Ground truth of the structure resampled (nearest) onto slice ``k`` of a LPS grid."""
    truth = study.ground_truth()
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    lps = origin + i[..., None] * steps[0] + j[..., None] * steps[1] + k * steps[2]
    ras = lps * np.array([-1.0, -1.0, 1.0])
    vox = np.rint((np.c_[ras.reshape(-1, 3), np.ones(ras[..., 0].size)] @ np.linalg.inv(study.gt_affine).T)[:, :3])
    vox = vox.astype(int)
    inside = np.all((vox >= 0) & (vox < truth.shape), axis=1)
    out = np.zeros(vox.shape[0], dtype=bool)
    out[inside] = truth[vox[inside, 0], vox[inside, 1], vox[inside, 2]]
    return out.reshape(shape[0], shape[1])


#: OHIF's own "Export DICOM SEG" of the MONAI Label panel's labelmap '1' to the active DICOMweb source;
#: it opens OHIF's "Create Report" dialog and resolves once the STOW-RS request has been answered
JS_EXPORT_SEG = """() => { window.__samriStore = {done: false};
  const dataSource = extensionManager.getActiveDataSource()[0];
  commandsManager.runCommand('storeSegmentation', {segmentationId: '1', dataSource})
    .then(r => { window.__samriStore = {done: true, ok: !!r, sop: r && r.SOPInstanceUID}; })
    .catch(e => { window.__samriStore = {done: true, ok: false, error: String(e)}; }); }"""
SEG_DESCRIPTION = "SAMRI e2e final label"


def save_and_check(page, server, orthanc, study: MrStudy, mask: np.ndarray, artifacts: Path) -> None:
    """Save the viewer's labelmap as OHIF does, then check the SEG in Orthanc and the trainer's read-back.

    The MONAI Label panel of this OHIF build has no save button (its client's ``save_label`` is never
    called), and the MONAI Label mode shows no segmentation panel; the save this build offers is the
    ``storeSegmentation`` command behind the segmentation panel's "Export DICOM SEG". It is started
    here on the panel's labelmap, and the annotator's part, OHIF's "Create Report" dialog (name, Save),
    is done through the UI. It sends a dcmjs DICOM SEG by STOW-RS (``POST /proxy/dicom/wado/studies``,
    ``multipart/related; type="application/dicom"``) through MONAI Label's proxy to Orthanc.
    """
    from samri.dicomweb.upload import search_series

    before = {s["0020000E"]["Value"][0] for s in search_series(orthanc.dicomweb_root, Modality="SEG")}
    page.evaluate(JS_EXPORT_SEG)
    page.locator('[data-cy="Save-btn"]').wait_for(timeout=30_000)
    page.fill('input[data-cy="input-undefined"]', SEG_DESCRIPTION)
    page.screenshot(path=str(artifacts / "ohif_export_seg_dialog.png"))
    with page.expect_request(lambda r: r.method == "POST" and "/proxy/dicom/" in r.url, timeout=60_000) as info:
        page.locator('[data-cy="Save-btn"]').click()
    request = info.value
    page.wait_for_function("() => window.__samriStore.done", timeout=60_000)
    result = page.evaluate("() => window.__samriStore")
    sent = {"method": request.method, "url": request.url, "content-type": request.headers.get("content-type"),
            "bytes": len(request.post_data_buffer or b""), "result": result}
    write_json(artifacts / "ohif_save_request.json", sent)
    assert result.get("ok"), f"OHIF's SEG export failed: {sent}"
    assert urllib.parse.urlparse(request.url).path == "/proxy/dicom/wado/studies", sent
    assert sent["content-type"].startswith("multipart/related") and "application/dicom" in sent["content-type"], sent

    # in Orthanc: one new SEG referencing the source series, segment named after the panel's label
    new = [s for s in search_series(orthanc.dicomweb_root, Modality="SEG") if s["0020000E"]["Value"][0] not in before]
    assert len(new) == 1, f"expected one new SEG series in Orthanc, found {len(new)}"
    seg_uid = new[0]["0020000E"]["Value"][0]
    import requests

    meta = requests.get(f"{orthanc.dicomweb_root}/studies/{study.study_uid}/series/{seg_uid}/metadata",
                        timeout=30).json()
    from pydicom.dataset import Dataset

    header = Dataset.from_json(meta[0], bulk_data_uri_handler=lambda *a: b"")
    seg_file = requests.get(f"{orthanc.dicomweb_root}/studies/{study.study_uid}/series/{seg_uid}/instances/"
                            f"{header.SOPInstanceUID}",
                            headers={"Accept": 'multipart/related; type="application/dicom"'},
                            timeout=60)
    (artifacts / "ohif_saved_seg.multipart").write_bytes(seg_file.content)
    assert header.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    assert [s.SegmentLabel for s in header.SegmentSequence] == [SEGMENT]
    assert header.SeriesDescription == SEG_DESCRIPTION

    # the trainer's path: a fresh datastore over Orthanc, collect_studies
    studies, skipped = collect_studies(orthanc.dicomweb_root, Path(server.log_path).parent / "trainer_cache")
    assert skipped == {} and [s.study_id for s in studies] == [study.series_uid], (studies, skipped)
    import nibabel as nib

    image, label = nib.load(str(studies[0].image)), nib.load(str(studies[0].label))
    assert studies[0].label_names == {SEGMENT: 1}
    assert label.shape == image.shape == mask.shape and np.abs(label.affine - image.affine).max() < 1e-6
    back = np.asarray(label.dataobj) > 0
    metrics = {"seg_uid": seg_uid, "viewer_voxels": int(mask.sum()), "read_back_voxels": int(back.sum()),
               "viewer_slices": sorted(set(np.nonzero(mask)[2].tolist())),
               "read_back_slices": sorted(set(np.nonzero(back)[2].tolist())),
               "equal": bool(np.array_equal(back, mask)), "equal_slice_reversed": bool(np.array_equal(back[:, :, ::-1],
                                                                                                      mask))}
    write_json(artifacts / "ohif_saved_seg_check.json", metrics)
    assert back.sum() == mask.sum(), metrics
    # voxel-exact, no mirroring: OHIF's SEG export writes labelmap frame i onto the i-th image of dcmjs'
    # order (decreasing position along the normal) while the labelmap is in InstanceNumber order, so
    # this holds because `samri.dicomweb.convert` numbers instances against the normal (see there)
    assert np.array_equal(back, mask), metrics


def collect_studies(dicomweb_root: str, cache: Path):
    import sys

    app_dir = str(Path(__file__).resolve().parents[2] / "apps" / "samri")
    sys.path.insert(0, app_dir)
    try:
        from lib.datastore.dicomweb import SamriDicomWebDatastore
        from lib.trainers.studies import collect_studies
    finally:
        sys.path.remove(app_dir)
    return collect_studies(SamriDicomWebDatastore(dicomweb_root, cache_path=cache))
