"""The interactive protocol: clicks to an accurate mask, through the server's own request path.

A simulated annotator (`samri.annotator`) makes a first interaction -- ``box`` (the structure's
tight box on the slice, jittered by ``EvalConfig.jitter``) or ``point`` (one positive click at the
deepest interior point) -- and then corrective clicks, each at the deepest point of the largest
connected error region (positive on missed object, negative on a false positive). Every
interaction is sent as a client sends it: a MONAI Label request in voxel indices carrying the box
(``roi``) and *all* clicks so far, run by `samri.inference.request.run_request` with the previous
low-res logits of this "client" as the mask prompt, exactly as the app's per-client state serves a
second Slicer click (`apps/samri/lib/runtime/client_state.py`). ``client="ohif"`` is OHIF's: no
``client_id``, so the server finds the previous logits from the clicks
(`samri.inference.click_history`, as the app does); ``"ohif_no_history"`` serves each such request
with no previous logits at all (the server before that history).

* 2D: one session per (image, structure, slice) pair; the metric is the slice's Dice.
* 3D: one session per (image, structure): the first interaction on the structure's largest slice,
  propagated; each corrective click goes to the deepest voxel (mm metric) of the largest 3D error
  region, so onto the slice with the largest error; the metric is 3D Dice.

Interactions are counted from 1 (the first prompt); ``max_clicks`` is the total. NoC@t is the
number of interactions until Dice >= t; a session that never gets there counts ``max_clicks`` and
is a failure. Annotator seconds to 0.85 = NoC@85 x `HUMAN_SECONDS_PER_CLICK` (human part) + the
measured model time of those interactions (model part), reported apart.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from samri.annotator import corrective_click, simulate_prompt
from samri.evaluation.metrics import dice
from samri.geometry import in_plane_axes, join_point, take_slice
from samri.inference.click_history import ClickHistory, ClickSet
from samri.inference.prompts import parse_request

logger = logging.getLogger(__name__)

FIRST_INTERACTIONS = ("box", "point")
#: Dice targets of NoC@t (keys "80", "85", "90" in summaries)
TARGETS = (0.80, 0.85, 0.90)
#: human time per interaction in "annotator seconds" (the issue's convention)
HUMAN_SECONDS_PER_CLICK = 2.0


class RequestRunner(Protocol):
    """What the protocol needs from a model: one client request (`SegmenterRunner.request`)."""

    def request(self, volume, params: Mapping[str, Any], *, mode: str, axis: int,
                previous_logits: Mapping[int, Any], previous_run: Any = None) -> Any: ...


@dataclass
class Click:
    """One interaction after the first: ``point`` in voxel ``(i, j, k)`` and ``label`` 1/0."""

    point: tuple[int, int, int]
    label: int


@dataclass
class Session:
    """One simulated annotator's interactions with one structure.

    Attributes:
        dice: Dice after each interaction (length ``max_clicks``; once exact, the rest are 1.0).
        seconds: model seconds of each interaction (0 where no request was needed).
        box: the first box in slice pixels ``(r0, c0, r1, c1)`` of the first slice, or None.
        clicks: every point sent, in order (the first positive point included for ``point``).
        slice: the first interaction's slice.
        final: the last prediction on that slice, ``(H, W)`` bool (for the report's overlays).
    """

    dice: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    box: list[float] | None = None
    clicks: list[Click] = field(default_factory=list)
    slice: int = 0
    final: np.ndarray | None = field(default=None, repr=False)


def client_params(axis: int, index: int, box: np.ndarray | None, clicks: Sequence[Click],
                  label: str | None = None) -> dict[str, Any]:
    """The request a Slicer/OHIF client sends: ``roi`` (voxel box on slice ``index``) and all clicks.

    Args:
        box: ``(r0, c0, r1, c1)`` slice pixels of slice ``index`` (rounded to voxel indices), or None.
        label: the structure's name, sent as Slicer sends its segment's name (None: not sent).
    """
    params: dict[str, Any] = {"foreground": [list(c.point) for c in clicks if c.label == 1],
                              "background": [list(c.point) for c in clicks if c.label == 0]}
    if label:
        params["label"] = str(label)
    if box is not None:
        rows, cols = in_plane_axes(axis)
        r0, c0, r1, c1 = (int(round(float(v))) for v in box)
        roi = [0] * 6
        roi[2 * rows], roi[2 * rows + 1] = r0, r1
        roi[2 * cols], roi[2 * cols + 1] = c0, c1
        roi[2 * axis], roi[2 * axis + 1] = int(index), int(index)
        params["roi"] = roi
    return params


def _voxel(index: int, rc: np.ndarray, axis: int) -> tuple[int, int, int]:
    ijk = join_point(np.array([index]), np.round(np.asarray(rc, dtype=np.float64))[None], axis)[0]
    return tuple(int(v) for v in ijk)


def _first(gt2d: np.ndarray, index: int, axis: int, first: str, jitter: float,
           rng: np.random.Generator | None) -> tuple[np.ndarray | None, list[Click]]:
    prompt = simulate_prompt(gt2d, first, jitter=jitter, rng=rng)
    clicks = [Click(_voxel(index, p, axis), 1) for p in prompt.points]
    return prompt.box, clicks


class _ClientIdState:
    """Slicer's: the app keeps this client's latest logits per slice and its last 3D run."""

    def __init__(self) -> None:
        self.logits: dict[int, Any] = {}
        self.run: Any = None

    def before(self, params: Mapping[str, Any], shape: tuple[int, ...], axis: int) -> tuple[dict[int, Any], Any]:
        return dict(self.logits), self.run

    def after(self, result: Any) -> None:
        self.logits.update({int(i): s.low_res_logits for i, s in result.slices.items()})
        self.run = getattr(result, "memo", None)


class _ClickHistoryState:
    """OHIF's: no client_id; the app's `ClickHistory` finds the logits of the clicks a request extends."""

    SCOPE = "session"

    def __init__(self) -> None:
        self.history = ClickHistory()
        self.clicks: ClickSet | None = None

    def before(self, params: Mapping[str, Any], shape: tuple[int, ...], axis: int) -> tuple[dict[int, Any], Any]:
        self.clicks = ClickSet.of(parse_request(params, shape, axis))
        return self.history.previous(self.SCOPE, self.clicks)

    def after(self, result: Any) -> None:
        self.history.remember(self.SCOPE, self.clicks, {int(i): s.low_res_logits for i, s in result.slices.items()},
                              getattr(result, "memo", None))


class _NoState:
    """A client without client_id on a server that keeps nothing: every request starts over."""

    def before(self, params: Mapping[str, Any], shape: tuple[int, ...], axis: int) -> tuple[dict[int, Any], Any]:
        return {}, None

    def after(self, result: Any) -> None:
        pass


#: what the server keeps between one client's requests, by `EvalConfig.client`
SERVER_STATES = {"slicer": _ClientIdState, "ohif": _ClickHistoryState, "ohif_no_history": _NoState}


def _run(runner: RequestRunner, volume, params: dict, mode: str, axis: int, state) -> tuple[np.ndarray, float]:
    """One request, served with and then updating ``state`` (one of `SERVER_STATES`)."""
    previous, previous_run = state.before(params, tuple(getattr(volume, "shape", ())), axis)
    start = time.perf_counter()
    result = runner.request(volume, params, mode=mode, axis=axis, previous_logits=previous,
                            previous_run=previous_run)
    seconds = time.perf_counter() - start
    state.after(result)
    return np.asarray(result.mask, dtype=bool), seconds


def session_2d(runner: RequestRunner, volume, axis: int, index: int, gt2d: np.ndarray, *, first: str,
               max_clicks: int, jitter: float = 0.0, rng: np.random.Generator | None = None,
               client: str = "slicer", label: str | None = None) -> Session:
    """Interactions on slice ``index`` until ``max_clicks`` or an exact mask; ``gt2d`` is ``(H, W)`` bool.

    ``client``: a key of `SERVER_STATES`, what the server keeps between the requests. ``label``: the
    structure's name, sent with every request as Slicer sends it (OHIF sends none)."""
    box, clicks = _first(gt2d, index, axis, first, jitter, rng)
    out = Session(box=None if box is None else [float(v) for v in box], slice=int(index))
    state = SERVER_STATES[client]()
    pred: np.ndarray | None = None
    for _ in range(max_clicks):
        if pred is not None:
            click = corrective_click(pred, gt2d)
            if click is None:
                break
            clicks.append(Click(_voxel(index, click[0], axis), int(click[1])))
        mask, seconds = _run(runner, volume, client_params(axis, index, box, clicks, label), "2d", axis, state)
        pred = take_slice(mask, axis, index)
        out.dice.append(dice(pred, gt2d))
        out.seconds.append(seconds)
    _pad(out, max_clicks)
    out.clicks, out.final = clicks, pred
    return out


def session_3d(runner: RequestRunner, volume, axis: int, gt3d: np.ndarray, *, first: str, max_clicks: int,
               spacing: Sequence[float], index: int | None = None, jitter: float = 0.0,
               rng: np.random.Generator | None = None, client: str = "slicer", label: str | None = None) -> Session:
    """3D interactions on one structure (``gt3d`` ``(X, Y, Z)`` bool): first on ``index`` (default
    its largest slice), then corrective clicks at the deepest voxel of the largest 3D error.

    ``client``: a key of `SERVER_STATES`, what the server keeps between the requests. ``label``: the
    structure's name, sent with every request (`session_2d`)."""
    areas = gt3d.sum(axis=tuple(a for a in range(3) if a != axis))
    index = int(np.argmax(areas)) if index is None else int(index)
    box, clicks = _first(take_slice(gt3d, axis, index), index, axis, first, jitter, rng)
    out = Session(box=None if box is None else [float(v) for v in box], slice=index)
    state = SERVER_STATES[client]()
    pred: np.ndarray | None = None
    for _ in range(max_clicks):
        if pred is not None:
            click = corrective_click(pred, gt3d, spacing=spacing)
            if click is None:
                break
            clicks.append(Click(tuple(int(v) for v in np.round(click[0])), int(click[1])))
        pred, seconds = _run(runner, volume, client_params(axis, index, box, clicks, label), "3d", axis, state)
        out.dice.append(dice(pred, gt3d))
        out.seconds.append(seconds)
    _pad(out, max_clicks)
    out.clicks, out.final = clicks, None if pred is None else take_slice(pred, axis, index)
    return out


def _pad(session: Session, max_clicks: int) -> None:
    """An exact mask needs no more clicks: the curve stays at its last value, at no model time."""
    missing = max_clicks - len(session.dice)
    session.dice += [session.dice[-1] if session.dice else 0.0] * missing
    session.seconds += [0.0] * missing


# --- figures of sessions ------------------------------------------------------------------------
def noc(curve: Sequence[float], target: float) -> int | None:
    """Interactions until Dice >= ``target`` (1-based), or None when the curve never gets there."""
    for n, value in enumerate(curve, start=1):
        if value >= target:
            return n
    return None


def target_key(target: float) -> str:
    return f"{round(100 * target):d}"


def session_figures(curve: Sequence[float], seconds: Sequence[float], *,
                    human_seconds: float = HUMAN_SECONDS_PER_CLICK) -> dict[str, Any]:
    """Per-session NoC (failures count ``len(curve)``), failure flags and seconds to 0.85."""
    n = len(curve)
    out: dict[str, Any] = {"noc": {}, "failed": {}}
    for t in TARGETS:
        k = noc(curve, t)
        out["noc"][target_key(t)] = n if k is None else k
        out["failed"][target_key(t)] = k is None
    clicks_85 = out["noc"]["85"]
    out["seconds_to_85"] = {"human": human_seconds * clicks_85, "model": float(sum(seconds[:clicks_85]))}
    return out


def aggregate_sessions(rows: Sequence[Mapping[str, Any]], *,
                       human_seconds: float = HUMAN_SECONDS_PER_CLICK) -> dict[str, Any]:
    """Mean figures of session rows (each with ``dice_curve`` and ``seconds_curve`` lists).

    Returns:
        ``{"n", "dice_at": [mean Dice after interaction 1, 2, ...], "noc": {"80", "85", "90"},
        "failure_rate": {...}, "seconds_to_85": {"human", "model"}, "model_ms_per_click": {"p50", "p95"}}``.
    """
    if not rows:
        return {"n": 0}
    curves = np.array([r["dice_curve"] for r in rows], dtype=np.float64)
    figures = [session_figures(r["dice_curve"], r["seconds_curve"], human_seconds=human_seconds) for r in rows]
    keys = [target_key(t) for t in TARGETS]
    per_click = np.array([s for r in rows for s in r["seconds_curve"] if s > 0], dtype=np.float64)
    return {"n": len(rows), "dice_at": [round(float(v), 4) for v in curves.mean(axis=0)],
            "noc": {k: round(float(np.mean([f["noc"][k] for f in figures])), 3) for k in keys},
            "failure_rate": {k: round(float(np.mean([f["failed"][k] for f in figures])), 4) for k in keys},
            "seconds_to_85": {part: round(float(np.mean([f["seconds_to_85"][part] for f in figures])), 3)
                              for part in ("human", "model")},
            "model_ms_per_click": ({"p50": round(1000 * float(np.median(per_click)), 1),
                                    "p95": round(1000 * float(np.percentile(per_click, 95)), 1)}
                                   if per_click.size else {})}
