"""HTTP round trip of SAMRI clicks against a running server, as a client feels it.

``http_click_benchmark`` posts Slicer-style requests (``params`` as a JSON form field,
``output=image``, NRRD back) and times them end to end:

* first clicks: the prompt moved to ``first_clicks`` different slices (k, k+1, ...), each never
  clicked before in this run, so each pays the encoder unless the server already has that slice in
  its embedding cache. For truly uncached numbers run the server with ``--conf precompute false``
  and a fresh ``--conf cache_dir``.
* cached clicks: ``repeats`` clicks on the first slice again (decoder + I/O only).

Standard library + ``requests`` only; imports as ``samri.bench.http`` from the repository
root.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import uuid
from typing import Any, Mapping

logger = logging.getLogger(__name__)


def shift_slice(params: Mapping[str, Any], dk: int) -> dict[str, Any]:
    """A copy of a request moved by ``dk`` slices along k (points, ``roi`` k range, ``slice``)."""
    out = copy.deepcopy(dict(params))
    for key in ("foreground", "background"):
        if out.get(key):
            out[key] = [[p[0], p[1], p[2] + dk] for p in out[key]]
    if out.get("roi"):
        roi = list(out["roi"])
        roi[4], roi[5] = roi[4] + dk, roi[5] + dk
        out["roi"] = roi
    if out.get("slice") is not None:
        out["slice"] = out["slice"] + dk
    return out


#: in-plane offsets (voxels) from the request's first point of the clicks an OHIF-style series sends
OHIF_SERIES_OFFSETS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1))


def ohif_series(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Requests as OHIF sends them on the slice of ``params``: points only, no ``roi`` and no
    ``client_id``, each with every click of the one before and one more (`OHIF_SERIES_OFFSETS` around the
    first foreground point, or the ``roi``'s centre), so each after the first refines the answer the
    server's click history remembers for the one before (`samri.inference.click_history`)."""
    if params.get("foreground"):
        i, j, k = (int(v) for v in params["foreground"][0])
    elif params.get("roi"):
        roi = [int(v) for v in params["roi"]]
        i, j, k = (roi[0] + roi[1]) // 2, (roi[2] + roi[3]) // 2, (roi[4] + roi[5]) // 2
    else:
        raise ValueError("params: need a foreground point or a roi to place OHIF-style clicks")
    clicks = [[i + di, j + dj, k] for di, dj in OHIF_SERIES_OFFSETS]
    extra = {key: params[key] for key in ("result_extension", "result_dtype", "label") if key in params}
    return [{**extra, "foreground": clicks[:n + 1]} for n in range(len(clicks))]


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """``n``, ``p50_ms``, ``p95_ms``, ``min_ms``, ``max_ms``, ``mean_ms`` of durations in seconds."""
    if not seconds:
        return {"n": 0}
    ms = sorted(s * 1000.0 for s in seconds)

    def pct(q: float) -> float:
        pos = q * (len(ms) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ms) - 1)
        return ms[lo] + (ms[hi] - ms[lo]) * (pos - lo)

    return {"n": len(ms), "p50_ms": round(pct(0.5), 1), "p95_ms": round(pct(0.95), 1),
            "min_ms": round(ms[0], 1), "max_ms": round(ms[-1], 1), "mean_ms": round(sum(ms) / len(ms), 1)}


def post_infer(base_url: str, model: str, image_id: str, params: Mapping[str, Any], *,
               session=None, timeout_s: float = 600.0, output: str = "image"):
    """One ``POST /infer/{model}?image=...&output=...`` with ``params`` as a JSON form field."""
    import requests

    http = session or requests
    return http.post(f"{base_url.rstrip('/')}/infer/{model}", params={"image": image_id, "output": output},
                     data={"params": json.dumps(dict(params))}, timeout=timeout_s)


def wait_for_backend(base_url: str, timeout_s: float = 300.0, poll_s: float = 1.0) -> dict[str, Any]:
    """Wait until ``/info/`` shows no backend export pending (`ModelHolder`); returns ``samri.model.backend``.

    A freshly loaded network is served by PyTorch while its OpenVINO copy is prepared in a thread;
    a benchmark of the served backend waits for it. On timeout the pending state is returned as is.
    """
    import requests

    deadline = time.monotonic() + timeout_s
    backend: dict[str, Any] = {}
    while True:
        info = requests.get(f"{base_url.rstrip('/')}/info/", timeout=30).json()
        backend = ((info.get("samri") or {}).get("model") or {}).get("backend") or {}
        if "pending" not in backend or time.monotonic() > deadline:
            return backend
        time.sleep(poll_s)


def http_click_benchmark(base_url: str, image_id: str, params: Mapping[str, Any], repeats: int = 20, *,
                         first_clicks: int = 3, model: str = "samri_2d", warm_model: bool = True,
                         timeout_s: float = 600.0) -> dict[str, Any]:
    """Time first and cached clicks over HTTP.

    Args:
        base_url: ``http://host:port`` of a running SAMRI server (or a `ServerProcess`).
        image_id: datastore image id.
        params: a valid request on slice k (``foreground``/``background``/``roi``/``slice``);
            ``client_id`` and ``reset_state`` are set here.
        repeats: cached clicks timed.
        first_clicks: first clicks timed, on slices k .. k+first_clicks-1 (must exist).
        model: infer task name.
        warm_model: first send one untimed click on slice k-1 (else k+first_clicks), so a freshly
            started server loads its network outside the timed clicks, and wait for its backend
            (`wait_for_backend`).

    Returns:
        ``{"model", "image", "backend", "first": stats, "cached": stats, "response_bytes",
        "first_click_ms", "cached_click_ms"}`` (``backend``: what served, from ``/info/``) where stats
        has ``n``, ``p50_ms``, ``p95_ms``, ``min_ms``, ``max_ms``,
        ``mean_ms``; ``first_click_ms`` is the first clicks' p50 and ``cached_click_ms`` is
        ``{"p50", "p95"}`` of the cached ones.

    Raises:
        RuntimeError: a request did not answer 200 (with the server's message).
    """
    import requests

    base_url = str(getattr(base_url, "base_url", base_url))  # a samri.testing.server.ServerProcess is fine too
    base = dict(params)
    base.setdefault("result_extension", ".nrrd")
    base.setdefault("result_dtype", "uint8")
    client = f"bench-{uuid.uuid4().hex[:8]}"
    session = requests.Session()
    size = 0

    def click(request: dict[str, Any]) -> float:
        nonlocal size
        start = time.perf_counter()
        resp = post_infer(base_url, model, image_id, request, session=session, timeout_s=timeout_s)
        elapsed = time.perf_counter() - start
        if resp.status_code != 200:
            raise RuntimeError(f"{model} on {image_id}: HTTP {resp.status_code}: {resp.text[:500]}")
        size = len(resp.content)
        return elapsed

    n_first = max(1, int(first_clicks))
    if warm_model:  # load the network (and pay its first-call overheads) on a slice not timed
        for dk in (-1, n_first):
            resp = post_infer(base_url, model, image_id, {**shift_slice(base, dk), "client_id": client},
                              session=session, timeout_s=timeout_s)
            if resp.status_code == 200:
                break
        wait_for_backend(base_url, timeout_s)
    first = [click({**shift_slice(base, dk), "client_id": client, "reset_state": True}) for dk in range(n_first)]
    cached = [click({**base, "client_id": client, "reset_state": True}) for _ in range(max(1, int(repeats)))]
    ohif, refined = _ohif_clicks(click, base, repeats, lambda request: post_infer(
        base_url, model, image_id, request, session=session, timeout_s=timeout_s, output="all"))
    info = requests.get(f"{base_url.rstrip('/')}/info/", timeout=30).json()
    backend = ((info.get("samri") or {}).get("model") or {}).get("backend") or {}
    result = {"model": model, "image": image_id, "first": percentiles_ms(first), "cached": percentiles_ms(cached),
              "response_bytes": size, "backend": {k: backend.get(k) for k in ("backend", "precision", "pending")
                                                  if k in backend}}
    result["ohif"], result["ohif_refined"] = percentiles_ms(ohif), refined
    # flat aliases (the names docs/BENCHMARKS.md uses)
    result["first_click_ms"] = result["first"]["p50_ms"]
    result["cached_click_ms"] = {"p50": result["cached"]["p50_ms"], "p95": result["cached"]["p95_ms"]}
    result["ohif_click_ms"] = {"p50": result["ohif"]["p50_ms"], "p95": result["ohif"]["p95_ms"]}
    logger.info("HTTP clicks on %s: first p50 %.0f ms, cached p50 %.0f ms, OHIF-style p50 %.0f ms", image_id,
                result["first"]["p50_ms"], result["cached"]["p50_ms"], result["ohif"]["p50_ms"])
    return result


def _ohif_clicks(click, base: Mapping[str, Any], repeats: int, post_all) -> tuple[list[float], dict[str, int]]:
    """Time about ``repeats`` OHIF-style refinement clicks (`ohif_series`, every request after a series'
    first); ``click(request) -> seconds`` times one. After each series one more request that extends it
    is sent with ``output=all`` (``post_all(request) -> response``, untimed) to check from its
    ``samri.refined_slices`` that the server refined the remembered answer: ``{"checked", "refined"}``."""
    from samri.bench.clients import split_multipart

    seconds, checked, refined = [], 0, 0
    series = ohif_series(base)
    check = dict(series[-1])
    check["background"] = [[p[0] + 2, p[1] + 2, p[2]] for p in series[-1]["foreground"][:1]]
    for _ in range(max(1, -(-int(repeats) // (len(series) - 1)))):
        click(series[0])  # a first click: no earlier clicks to extend (its set may repeat, so not a refinement)
        seconds += [click(request) for request in series[1:]]
        resp = post_all(check)
        if resp.status_code != 200:
            raise RuntimeError(f"OHIF-style check: HTTP {resp.status_code}: {resp.text[:500]}")
        meta = json.loads(split_multipart(resp.content, resp.headers.get("content-type", "")).get("params", b"{}"))
        checked += 1
        refined += bool(((meta.get("samri") or {}).get("refined_slices")))
    return seconds, {"checked": checked, "refined": refined}
