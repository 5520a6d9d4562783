"""The SAMRI MONAI Label app driven over HTTP exactly as 3D Slicer and OHIF drive it.

One real ``monailabel start_server`` for the whole module (`conftest.live_server`); tests run in
file order and later ones reuse slices the earlier ones encoded.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import nrrd
import numpy as np
import pytest
import requests
from requests_toolbelt.multipart.decoder import MultipartDecoder
from scipy import ndimage

from samri.bench.http import http_click_benchmark, post_infer
from tests.apps.helpers import COLIN, MNI, LiveServer, needs_colin

pytestmark = pytest.mark.slow

SLICER = {"result_extension": ".nrrd", "result_dtype": "uint8"}


def read_nrrd(content: bytes, tmp_path: Path, name: str = "result.nrrd") -> tuple[np.ndarray, dict]:
    path = tmp_path / name
    path.write_bytes(content)
    return nrrd.read(str(path))


def infer_all(server: LiveServer, model: str, image: str, params: dict, tmp_path: Path) -> tuple[dict, np.ndarray]:
    """``output=all`` (what Slicer asks for): the result params and the mask."""
    resp = post_infer(server.url, model, image, params, output="all")
    assert resp.status_code == 200, resp.text
    parts = {}
    for part in MultipartDecoder(resp.content, resp.headers["content-type"]).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        parts["params" if 'name="params"' in disposition else "image"] = part.content
    mask, _ = read_nrrd(parts["image"], tmp_path, "all.nrrd")
    return json.loads(parts["params"]), mask


def infer_mask(server: LiveServer, model: str, image: str, params: dict, tmp_path: Path) -> np.ndarray:
    resp = post_infer(server.url, model, image, params)
    assert resp.status_code == 200, resp.text
    mask, header = read_nrrd(resp.content, tmp_path)
    check_geometry(server, image, mask, header)
    return mask


def check_geometry(server: LiveServer, image: str, mask: np.ndarray, header: dict) -> None:
    """The mask lies on the image's grid: shape, spacing, origin and direction (LPS, as Slicer reads it)."""
    affine = server.affines[image]
    assert mask.shape == server.truth[image].shape
    assert mask.dtype == np.uint8
    assert header["space"] == "left-posterior-superior"
    flip = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(header["space directions"], (flip @ affine[:3, :3]).T, atol=1e-5)
    np.testing.assert_allclose(header["space origin"], flip @ affine[:3, 3], atol=1e-4)


def structure_prompt(server: LiveServer, name: str) -> tuple[int, dict, np.ndarray]:
    """Slicer-style request for the largest axial cross-section of a labelled structure.

    Returns (slice k, params, ground truth of that slice): ``roi`` is the structure's in-plane box on
    slice k only, with i given max-first (swapped, as Slicer sends on flipped axes), plus one
    foreground point at the cross-section's deepest interior voxel.
    """
    value = server.label_names[COLIN][name]
    structure = server.truth[COLIN] == value
    k = int(np.argmax(structure.sum(axis=(0, 1))))
    section = structure[:, :, k]
    ii, jj = np.nonzero(section)
    depth = ndimage.distance_transform_edt(np.pad(section, 1))[1:-1, 1:-1]
    pi, pj = np.unravel_index(int(np.argmax(depth)), section.shape)
    params = {**SLICER, "label": name, "roi": [int(ii.max()), int(ii.min()), int(jj.min()), int(jj.max()), k, k],
              "foreground": [[int(pi), int(pj), k]], "background": [], "slice": k}
    return k, params, section


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def any_image(server: LiveServer) -> str:
    return COLIN if COLIN in server.images else MNI


def center_point(server: LiveServer, image: str) -> list[int]:
    return [int(s) // 2 for s in server.truth[image].shape]


# --- tests --------------------------------------------------------------------------------------
def test_info_lists_both_deepgrow_tasks(live_server: LiveServer) -> None:
    info = requests.get(live_server.url + "/info/", timeout=30).json()
    models = info["models"]
    assert models["samri_2d"]["type"] == "deepgrow" and models["samri_2d"]["dimension"] == 2
    assert models["samri_3d"]["type"] == "deepgrow" and models["samri_3d"]["dimension"] == 3
    names = set().union(*(n.keys() for n in live_server.label_names.values()))
    for task in ("samri_2d", "samri_3d"):
        assert set(models[task]["labels"]) == names
    # the fixture checked that constructing the app loaded no network, then loaded it with one click
    assert info["samri"]["model"]["loaded"] is True and info["samri"]["model"]["loads"] == 1


@needs_colin
def test_slicer_box_and_point_on_thalamus(live_server: LiveServer, tmp_path: Path) -> None:
    k, params, truth = structure_prompt(live_server, "Thalamus_L")
    mask = infer_mask(live_server, "samri_2d", COLIN,
                      {**params, "client_id": "slicer-a", "reset_state": True}, tmp_path)
    assert set(np.unique(mask)) <= {0, 1}
    outside = np.delete(mask, k, axis=2)
    assert not outside.any(), "a 2D result fills only the requested slice"
    score = dice(mask[:, :, k], truth)
    assert score >= 0.6, f"Dice {score:.3f} on slice {k}"


@needs_colin
def test_refinement_click_changes_mask_near_click(live_server: LiveServer, tmp_path: Path) -> None:
    k, params, _ = structure_prompt(live_server, "Thalamus_L")
    first = {**params, "client_id": "slicer-refine", "reset_state": True}
    meta0, before = infer_all(live_server, "samri_2d", COLIN, first, tmp_path)
    assert meta0["label_names"] == {"Thalamus_L": 1}
    assert meta0["samri"]["refined_slices"] == []
    # background click on a predicted voxel far from the foreground point (Slicer resends all points)
    fi, fj, _ = params["foreground"][0]
    ii, jj = np.nonzero(before[:, :, k])
    far = int(np.argmax((ii - fi) ** 2 + (jj - fj) ** 2))
    click = [int(ii[far]), int(jj[far]), k]
    second = {**params, "client_id": "slicer-refine", "background": [click]}
    meta1, after = infer_all(live_server, "samri_2d", COLIN, second, tmp_path)
    assert meta1["samri"]["refined_slices"] == [k], "the previous logits were the mask prompt"
    window = (slice(max(click[0] - 4, 0), click[0] + 5), slice(max(click[1] - 4, 0), click[1] + 5), k)
    assert (before[window] != after[window]).any(), "the mask changed around the click"
    # another client, same first request: no state leaks across clients
    meta2, other = infer_all(live_server, "samri_2d", COLIN, {**first, "client_id": "slicer-other"}, tmp_path)
    assert meta2["samri"]["refined_slices"] == []
    np.testing.assert_array_equal(other, before)
    # reset_state and a new label start over
    meta3, reset = infer_all(live_server, "samri_2d", COLIN, first, tmp_path)
    assert meta3["samri"]["refined_slices"] == []
    np.testing.assert_array_equal(reset, before)
    meta4, _ = infer_all(live_server, "samri_2d", COLIN, {**second, "label": "Putamen_L"}, tmp_path)
    assert meta4["samri"]["refined_slices"] == []


def test_ohif_points_only_without_slice(live_server: LiveServer, tmp_path: Path) -> None:
    image = any_image(live_server)
    point = center_point(live_server, image)
    if image == COLIN:
        k, params, _ = structure_prompt(live_server, "Thalamus_L")
        point = params["foreground"][0]
    ohif = {"foreground": [point], "background": [], "result_extension": ".nrrd", "result_dtype": "uint8",
            "result_compress": False, "restore_label_idx": False}
    resp = post_infer(live_server.url, "samri_2d", image, ohif)
    assert resp.status_code == 200, resp.text
    mask, header = read_nrrd(resp.content, tmp_path)
    assert header["encoding"] == "raw"  # OHIF asked for result_compress false
    check_geometry(live_server, image, mask, header)
    assert mask[:, :, point[2]].any()
    assert not np.delete(mask, point[2], axis=2).any()


@needs_colin
def test_samri_3d_propagates_within_the_roi(live_server: LiveServer, tmp_path: Path) -> None:
    k, params, _ = structure_prompt(live_server, "Thalamus_L")
    roi = list(params["roi"])
    roi[4], roi[5] = k + 2, k - 2  # a 3D box of 5 slices, k given max-first
    request = {**params, "roi": roi, "client_id": "slicer-3d", "reset_state": True}
    request.pop("slice")
    mask = infer_mask(live_server, "samri_3d", COLIN, request, tmp_path)
    filled = sorted(int(z) for z in np.nonzero(mask.any(axis=(0, 1)))[0])
    assert k in filled and len(filled) >= 3, filled
    assert all(k - 2 <= z <= k + 2 for z in filled), "stays inside the ROI's k range"
    truth = live_server.truth[COLIN] == live_server.label_names[COLIN]["Thalamus_L"]
    zs = slice(k - 2, k + 3)
    assert dice(mask[:, :, zs], truth[:, :, zs]) >= 0.5


def _label_files(server: LiveServer) -> dict[str, int]:
    folder = server.studies / "labels"
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _bad_cases(image: str, point: list[int]) -> list[tuple[str, dict, int, str]]:
    good = {**SLICER, "foreground": [point], "label": "x", "client_id": "bad"}
    big = [10_000, point[1], point[2]]
    return [
        ("unknown image", {"image": "no_such_image", **good}, 404, "image"),
        ("point outside", {**good, "foreground": [big]}, 422, "foreground[0]"),
        ("negative background", {**good, "background": [[-1, 0, point[2]]]}, 422, "background[0]"),
        ("roi too short", {**good, "roi": [1, 2, 3]}, 422, "roi"),
        ("roi not numbers", {**good, "roi": ["a", 2, 3, 4, 5, 6]}, 422, "roi"),
        ("roi outside", {**good, "roi": [5000, 5001, 1, 2, 1, 2]}, 422, "roi"),
        ("empty prompt", {**SLICER, "foreground": [], "background": []}, 422, "foreground"),
        ("points not a list", {**good, "foreground": "12,3,4"}, 422, "foreground"),
        ("fractional index", {**good, "foreground": [[1.5, 2, point[2]]]}, 422, "foreground[0]"),
        ("slice not a number", {**good, "slice": "middle"}, 422, "slice"),
        ("slice out of range", {**good, "slice": 99999}, 422, "slice"),
        ("label not a string", {**good, "label": 7}, 422, "label"),
        ("reset_state not a bool", {**good, "reset_state": "maybe"}, 422, "reset_state"),
        ("result extension", {**good, "result_extension": ".exe"}, 422, "result_extension"),
        ("result dtype", {**good, "result_dtype": "float64"}, 422, "result_dtype"),
        ("corrupt upload", {"upload": b"definitely not a nifti", **good}, 422, "file"),
    ]


@pytest.mark.parametrize("case", range(16))
def test_bad_request_gets_4xx_and_server_keeps_serving(live_server: LiveServer, case: int, tmp_path: Path) -> None:
    image = any_image(live_server)
    point = center_point(live_server, image)
    cases = _bad_cases(image, point)
    assert len(cases) == 16
    name, params, status, field = cases[case]
    params = dict(params)
    target = params.pop("image", image)
    upload = params.pop("upload", None)
    labels_before = _label_files(live_server)
    if upload is not None:
        resp = requests.post(f"{live_server.url}/infer/samri_2d", params={"output": "image"},
                             data={"params": json.dumps(params)}, files={"file": ("scan.nii.gz", upload)}, timeout=60)
    else:
        resp = post_infer(live_server.url, "samri_2d", target, params)
    assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text[:300]}"
    detail = resp.json()["detail"]
    assert f"{field}=" in detail, f"{name}: message does not name {field!r}: {detail}"
    assert _label_files(live_server) == labels_before, "no datastore label may change"
    good = {**SLICER, "foreground": [point], "client_id": "after-bad"}
    assert post_infer(live_server.url, "samri_2d", image, good).status_code == 200


def test_concurrent_clients_get_independent_results(live_server: LiveServer, tmp_path: Path) -> None:
    images = live_server.images if len(live_server.images) > 1 else live_server.images * 2
    clicks_by_client: dict[str, tuple[str, list[dict]]] = {}
    for n, image in enumerate(images[:2]):
        point = center_point(live_server, image)
        first = {**SLICER, "foreground": [point], "label": f"l{n}", "reset_state": True}
        second = {**SLICER, "foreground": [point], "label": f"l{n}"}
        if n == 0:  # client-0 refines with a background click; client-1 repeats its click
            second["background"] = [[point[0] + 6, point[1], point[2]]]
        clicks_by_client[f"client-{n}"] = (image, [first, second])
    results: dict[str, list[np.ndarray]] = {c: [] for c in clicks_by_client}
    errors: list[str] = []

    def client(name: str) -> None:
        image, clicks = clicks_by_client[name]
        for n, click in enumerate(clicks):
            resp = post_infer(live_server.url, "samri_2d", image, {**click, "client_id": name})
            if resp.status_code != 200:
                errors.append(f"{name}: {resp.status_code} {resp.text[:200]}")
                return
            results[name].append(read_nrrd(resp.content, tmp_path, f"{name}-{n}.nrrd")[0])

    threads = [threading.Thread(target=client, args=(name,)) for name in clicks_by_client]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    # the same click sequences, one client after the other, give the same masks
    for name, (image, clicks) in clicks_by_client.items():
        for n, click in enumerate(clicks):
            expected = infer_mask(live_server, "samri_2d", image, {**click, "client_id": name + "-seq"}, tmp_path)
            np.testing.assert_array_equal(results[name][n], expected, err_msg=f"{name} click {n}")


def test_http_click_benchmark_reports_percentiles(live_server: LiveServer) -> None:
    image = any_image(live_server)
    point = center_point(live_server, image)
    out = http_click_benchmark(live_server.url, image, {"foreground": [point]}, repeats=4, first_clicks=2)
    assert out["first"]["n"] == 2 and out["cached"]["n"] == 4
    # OHIF-style: one series of 5 requests, 4 of them timed refinements, and the check after it refined
    assert out["ohif"]["n"] == 4 and out["ohif_refined"] == {"checked": 1, "refined": 1}
    assert 0 < out["cached"]["p50_ms"] <= out["cached"]["p95_ms"]
    assert out["response_bytes"] > 0
    if importlib.util.find_spec("openvino"):  # the default conf serves OpenVINO (backend auto) once it is ready
        assert out["backend"]["backend"] == "openvino" and "pending" not in out["backend"], out["backend"]


def test_put_final_label_is_stored(live_server: LiveServer, tmp_path: Path) -> None:
    image = any_image(live_server)
    mask = infer_mask(live_server, "samri_2d", image,
                      {**SLICER, "foreground": [center_point(live_server, image)]}, tmp_path)
    path = tmp_path / "final.nrrd"
    nrrd.write(str(path), mask, {"encoding": "gzip"})
    label_info = {"label_info": [{"name": "object", "idx": 1}]}
    with open(path, "rb") as f:
        resp = requests.put(f"{live_server.url}/datastore/label", params={"image": image, "tag": "final"},
                            data={"params": json.dumps(label_info)}, files={"label": ("final.nrrd", f)}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["image"] == image
    listing = requests.get(f"{live_server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    labels = listing["objects"][image]["labels"]
    assert "final" in labels
    stored = live_server.studies / "labels" / "final"
    assert any(p.name.startswith(image) for p in stored.iterdir())
