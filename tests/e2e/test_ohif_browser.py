"""OHIF v3 (the build inside the monailabel wheel, served at ``/ohif/``) in headless Debian chromium,
reading an MR series from Orthanc through the server's DICOMweb proxy, segmenting with ``samri_2d``
from a point placed through the viewer's own UI.

The test drives the UI as an annotator does: study list -> *MONAI Label* mode; in the viewer the
*MONAI Label* panel: server URL + connect, *Point Prompts* tab, model ``samri_2d``, segment
``object``, scroll the axial viewport (mouse wheel) to the structure's slice, click it (the panel's
``ProbeMONAILabel`` tool), *Run*. It then checks the exact request the viewer sent (``POST
/infer/samri_2d?image=<SeriesInstanceUID>&output=image``, ``params`` with ``foreground: [[i, j, k]]``,
no ``slice``, no box), the NRRD answer (on the viewer's own voxel grid, non-empty, overlapping the
ground-truth structure, mapped through world coordinates) and that the viewer painted it into its
labelmap. It then saves the labelmap with OHIF's "Export DICOM SEG" (the only save of this build;
see `save_and_check`), checks the SEG in Orthanc and the trainer's read-back, and finally that the
server attempted no non-loopback connection. Screenshots go to the artifacts folder (see conftest).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from io import BytesIO

import nrrd
import numpy as np
import pytest

from .conftest import e2e_unavailable_reason
from .ohif_page import (
    JS_LABELMAP,
    JS_PROBES,
    SEGMENT,
    Steps,
    axial_viewport,
    diagnostics,
    dismiss_banner,
    multipart_field,
    nrrd_world,
    save_and_check,
    scroll_to,
    truth_on_grid,
    wait_for_pixels,
    write_json,
)

_SKIP = e2e_unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

MODEL = "samri_2d"
INFER_TIMEOUT_MS = 300_000
LOAD_TIMEOUT_MS = 120_000

def test_study_list_shows_mr_study_and_opens_monai_label_mode(page, samri_server, mr_study, orthanc, artifacts_dir):
    steps = Steps(page, artifacts_dir, "study_list", samri_server, orthanc)
    steps.run("open the study list", page.goto, samri_server.base_url + "/ohif/", wait_until="domcontentloaded")
    row = page.locator(f'[data-cy="studyRow-{mr_study.study_uid}"]')
    steps.run("study row appears", row.wait_for, timeout=LOAD_TIMEOUT_MS)
    dismiss_banner(page)
    text = row.inner_text()
    assert mr_study.patient_id in text and "MR" in text and str(mr_study.n_instances) in text, \
        f"study row does not show patient {mr_study.patient_id}, MR, {mr_study.n_instances} instances: {text!r}"
    page.screenshot(path=str(artifacts_dir / "ohif_study_list.png"))
    steps.run("expand the study row", row.click)
    mode = page.locator(f'[data-cy="mode-monai-label-{mr_study.study_uid}"]')
    steps.run("MONAI Label mode button", mode.wait_for)
    assert mode.is_enabled(), "the MONAI Label mode is disabled for the MR study"
    page.screenshot(path=str(artifacts_dir / "ohif_study_modes.png"))
    steps.run("open the MONAI Label mode", mode.click)
    steps.run("viewer route", page.wait_for_url, re.compile(r"/ohif/monai-label\?.*StudyInstanceUIDs="))
    query = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)
    assert query.get("StudyInstanceUIDs") == [mr_study.study_uid], page.url
    viewport = steps.run("series displayed", axial_viewport, page, mr_study)
    steps.run("image drawn", wait_for_pixels, page, viewport)


def test_point_prompt_segments_structure(page, samri_server, mr_study, orthanc, artifacts_dir):
    steps = Steps(page, artifacts_dir, "segmentation", samri_server, orthanc)
    url = f"{samri_server.base_url}/ohif/monai-label?StudyInstanceUIDs={mr_study.study_uid}"
    steps.run("open the viewer", page.goto, url, wait_until="domcontentloaded")
    viewport = steps.run("series displayed", axial_viewport, page, mr_study, LOAD_TIMEOUT_MS / 1000)
    dismiss_banner(page)
    pixels = steps.run("image drawn", wait_for_pixels, page, viewport)
    (artifacts_dir / "ohif_axial_loaded.png").write_bytes(pixels)
    page.screenshot(path=str(artifacts_dir / "ohif_viewer_loaded.png"))

    # MONAI Label panel: connect, Point Prompts tab, model, segment
    steps.run("server URL", page.fill, "#monailabelServerURL", samri_server.base_url + "/")
    steps.run("connect", page.locator("table.settingsTable button.actionButton").click)
    tab = page.locator("label.tab-label", has_text="Point Prompts")
    steps.run("Point Prompts tab appears after /info/", tab.wait_for, timeout=LOAD_TIMEOUT_MS)
    steps.run("open Point Prompts", tab.click)
    selector = page.locator(".modelSelector select").filter(has=page.locator(f'option[value="{MODEL}"]')).first
    options = steps.run("model list", selector.evaluate, "s => Array.from(s.options).map(o => o.value)")
    assert MODEL in options and "samri_3d" in options, f"point models listed: {options}"
    steps.run(f"select {MODEL}", selector.select_option, MODEL)
    rows = page.locator("tr.clickable-row")
    names = [t.strip() for t in steps.run("segment list", rows.all_inner_texts)]
    segments = [n for n in names if n and n != "background"]
    assert segments, f"the Point Prompts panel lists no segment: {names}"
    segment = SEGMENT if SEGMENT in segments else segments[0]
    steps.run(f"select segment {segment}", rows.nth(names.index(segment)).click)

    # scroll to the structure's slice and click it
    slice_mm = float(np.linalg.norm(np.asarray(viewport["grid"]["spacing"])[2]))
    where = steps.run("scroll to the target slice", scroll_to, page, viewport, mr_study.click_lps, slice_mm)
    x, y = viewport["rect"][0] + where["canvas"][0], viewport["rect"][1] + where["canvas"][1]
    steps.run("click the structure", page.mouse.click, x, y)
    try:
        page.wait_for_function(f"() => ({JS_PROBES})().length > 0", timeout=15_000)
    except Exception:  # noqa: BLE001  reported just below
        pass
    probes = page.evaluate(JS_PROBES)
    assert len(probes) == 1, f"expected one ProbeMONAILabel point after the click, found {probes}\n{diagnostics(page)}"
    page.screenshot(path=str(artifacts_dir / "ohif_point_placed.png"))
    before = page.screenshot(clip=dict(zip(("x", "y", "width", "height"), viewport["rect"])))

    run_button = page.locator('button[title="Run PointPrompts"]')

    def run_inference():
        with page.expect_response(lambda r: "/infer/" in r.url, timeout=INFER_TIMEOUT_MS) as info:
            run_button.click()
        return info.value

    response = steps.run("Run (infer request)", run_inference)
    request = response.request
    body = request.post_data_buffer or b""
    if response.status != 200:
        pytest.fail(f"POST {request.url} answered {response.status}: {response.text()[:1000]}\n"
                    f"{diagnostics(page, samri_server, orthanc)}", pytrace=False)

    # the exact request the viewer sent
    parsed = urllib.parse.urlparse(request.url)
    query = urllib.parse.parse_qs(parsed.query)
    assert request.method == "POST" and parsed.path == f"/infer/{MODEL}", request.url
    assert query == {"image": [mr_study.series_uid], "output": ["image"]}, request.url
    params = json.loads(multipart_field(body, "params"))
    write_json(artifacts_dir / "ohif_infer_request.json", {"url": request.url, "params": params})
    assert "slice" not in params and "roi" not in params, f"OHIF sent a slice or box: {params}"
    assert params["background"] == [] and len(params["foreground"]) == 1, params
    assert params.get("result_extension") == ".nrrd", params
    fg = np.asarray(params["foreground"][0])

    # the answer: a NRRD volume on the viewer's own grid
    nrrd_path = artifacts_dir / "ohif_samri_2d_result.nrrd"
    nrrd_path.write_bytes(response.body())
    mask, header = nrrd.read(str(nrrd_path))
    grid = viewport["grid"]
    assert list(mask.shape) == grid["dimensions"], f"result {mask.shape} vs viewer volume {grid['dimensions']}"
    origin, steps_lps = nrrd_world(header)
    viewer_steps = np.asarray(grid["direction"]).reshape(3, 3) * np.asarray(grid["spacing"])[:, None]
    assert np.allclose(origin, grid["origin"], atol=1e-2) and np.allclose(steps_lps, viewer_steps, atol=1e-3), \
        (f"the server's image grid is not the viewer's: NRRD origin {origin}, steps {steps_lps.tolist()}; "
         f"viewer origin {grid['origin']}, steps {viewer_steps.tolist()}")
    # the click, in voxels of that grid, is where the target is
    expected = np.linalg.solve(steps_lps.T, np.asarray(mr_study.click_lps) - origin)
    assert np.all(np.abs(fg - expected) <= 1.0), f"clicked voxel {fg.tolist()} vs target voxel {expected.round(2)}"

    seg = mask > 0
    k = int(fg[2])
    assert seg.any(), "samri_2d returned an empty mask"
    assert set(np.nonzero(seg)[2].tolist()) == {k}, f"2D result outside the clicked slice {k}"
    assert seg[tuple(fg)], "the clicked voxel is not in the mask"
    truth = truth_on_grid(mr_study, origin, steps_lps, mask.shape, k)
    inter = int((seg[:, :, k] & truth).sum())
    dice = 2 * inter / (int(seg.sum()) + int(truth.sum()))
    precision = inter / int(seg.sum())
    metrics = {"structure": mr_study.target.label, "slice": k, "mask_voxels": int(seg.sum()),
               "truth_voxels": int(truth.sum()), "overlap": inter, "dice": dice, "precision": precision}
    write_json(artifacts_dir / "ohif_segmentation_metrics.json", metrics)
    assert dice >= mr_study.target.min_dice and precision >= mr_study.target.min_precision, \
        f"mask does not match {mr_study.target.label}: {metrics}"

    # the viewer painted exactly that mask into its labelmap
    def labelmap_filled():
        page.wait_for_function(
            "() => { const v = window.services.segmentationService.getLabelmapVolume('1');"
            " return v && v.voxelManager.getCompleteScalarDataArray().some(x => x); }", timeout=60_000)
        return page.evaluate(JS_LABELMAP)

    labelmap = steps.run("viewer labelmap updated", labelmap_filled)
    assert labelmap["dimensions"] == grid["dimensions"], labelmap["dimensions"]
    expected_flat = np.flatnonzero(seg.ravel(order="F"))
    assert np.array_equal(np.asarray(labelmap["nonzero"]), expected_flat), \
        f"viewer labelmap has {len(labelmap['nonzero'])} voxels, result {expected_flat.size}"
    time.sleep(1.0)  # let the overlay render
    after = page.screenshot(clip=dict(zip(("x", "y", "width", "height"), viewport["rect"])))
    (artifacts_dir / "ohif_axial_segmented.png").write_bytes(after)
    page.screenshot(path=str(artifacts_dir / "ohif_segmentation.png"))
    from PIL import Image

    changed = np.abs(np.asarray(Image.open(BytesIO(after)).convert("RGB"), dtype=int)
                     - np.asarray(Image.open(BytesIO(before)).convert("RGB"), dtype=int)).max(axis=2) > 30
    assert changed.sum() >= 100, f"the segmentation overlay is not visible: {int(changed.sum())} pixels changed"

    # --- saving: this build's only save of a segmentation is OHIF's "Export DICOM SEG" ---
    steps.run("save through the viewer (Export DICOM SEG)", save_and_check, page, samri_server, orthanc, mr_study,
              seg, artifacts_dir)


def test_no_outbound_connection_during_the_browser_session(samri_server, e2e_root):
    """Runs last: every connection the server's Python processes attempted went to loopback."""
    from samri.testing.netaudit import loopback_connects, outbound_attempts

    from .conftest import net_audit_log

    log = net_audit_log(e2e_root)
    assert loopback_connects(log) > 0, "the network audit hook was not active in the server"
    assert outbound_attempts(log) == [], f"outbound connection attempts: {outbound_attempts(log)}"
