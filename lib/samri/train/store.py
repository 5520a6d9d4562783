"""Published decoder versions: gated, atomic publishing and rollback.

Layout of a store folder (the app's ``model/decoders``)::

    versions/v0001.pt ...   immutable decoder-only checkpoints
    index.json              every version with its metrics and when it was published
    live.json               {"version": "v0003", "file": "versions/v0003.pt", ...}: what is served

Every file is written to a temp file and renamed, so a killed run leaves the previous state.
Servers watch ``live.json``'s mtime and reload on change. `DecoderStore` is the only reader and
writer of these files (the app's ``DecoderSelector`` caches `DecoderStore.live` per file version).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from samri.errors import SamriInputError
from samri.io import copy_file, write_json

logger = logging.getLogger(__name__)


#: clicks a candidate's mean validation NoC@85 may exceed the live decoder's before it is refused
#: (margin 0); one pair of 16 failing one click later moves a mean of 2 x 16 sessions by 0.03.
NOC_TOLERANCE = 0.05


def mean_noc85(metrics: dict[str, Any]) -> float | None:
    """Mean of a validation's ``noc85_<first>`` figures (the clicks protocol), None when it did not run."""
    values = [float(v) for k, v in metrics.items() if k.startswith("noc85_") and v is not None]
    return sum(values) / len(values) if values else None


def gate(new_dice: float, live_dice: float, margin: float, *, new_noc: float | None = None,
         live_noc: float | None = None) -> tuple[bool, str]:
    """The publish gate: ``(publish, reason)``.

    A candidate is published when its validation score (`samri.train.run.selection_score`: the
    clicks protocol's mean Dice, else box Dice) beats the live decoder's on the same studies, or
    (``margin`` > 0) is at most ``margin`` below it. With margin 0 it must improve. When both
    validations ran the clicks protocol, the candidate's mean NoC@85 must also not exceed the live
    decoder's by more than `NOC_TOLERANCE` (margin 0) or ``NOC_TOLERANCE + 10 * margin`` clicks: a
    better mean Dice bought with more clicks to an accepted mask is refused.
    """
    if new_noc is not None and live_noc is not None:
        allowed = NOC_TOLERANCE + 10.0 * max(margin, 0.0)
        if new_noc > live_noc + allowed:
            return False, (f"refused: val NoC@85 {new_noc:.2f} is {new_noc - live_noc:.2f} clicks above live "
                           f"{live_noc:.2f} (allowed {allowed:.2f}; val score {new_dice:.4f} vs {live_dice:.4f})")
        noc = f"; val NoC@85 {new_noc:.2f} vs live {live_noc:.2f}"
    else:
        noc = ""
    if new_dice > live_dice:
        return True, f"improved: val score {new_dice:.4f} > live {live_dice:.4f}{noc}"
    if margin > 0 and new_dice >= live_dice - margin:
        return True, (f"within margin: val score {new_dice:.4f} is {live_dice - new_dice:.4f} below live "
                      f"{live_dice:.4f}, gate_margin {margin}{noc}")
    if margin > 0:
        return False, (f"refused: val score {new_dice:.4f} is {live_dice - new_dice:.4f} below live "
                       f"{live_dice:.4f}, more than gate_margin {margin}")
    return False, f"refused: val score {new_dice:.4f} does not beat live {live_dice:.4f} (gate_margin 0)"


_READ = object()  # `DecoderStore.resolve`: read live.json


class DecoderStore:
    """Versions of decoders for one base model.

    Args:
        root: store folder.
        base_model: registry name the decoders must belong to (needed by `publish` only; a
            reader of the live version can leave it out).
    """

    def __init__(self, root: str | os.PathLike, *, base_model: str | None = None) -> None:
        self.root = Path(root)
        self.base_model = base_model

    @property
    def live_file(self) -> Path:
        return self.root / "live.json"

    def index(self) -> list[dict[str, Any]]:
        path = self.root / "index.json"
        return json.loads(path.read_text()) if path.is_file() else []

    def live(self) -> dict[str, Any] | None:
        """The live entry, or None when the plain base decoder is served.

        Raises:
            ValueError: ``live.json`` is not JSON or not an entry (``version`` and ``file`` strings).
            OSError: it cannot be read.
        """
        try:
            live = json.loads(self.live_file.read_text())
        except FileNotFoundError:
            return None
        if not (isinstance(live, dict) and isinstance(live.get("version"), str) and isinstance(live.get("file"), str)):
            raise ValueError(f"{self.live_file}: unexpected content {str(live)[:200]}")
        return live

    def live_path(self) -> Path | None:
        return self.resolve()[1]

    def version_file(self, version: str) -> Path:
        """The file a published ``vNNNN`` is (or would be) stored in."""
        return self.root / "versions" / f"{version}.pt"

    def resolve(self, pinned: str | None = None, *, live: Any = _READ) -> tuple[str, Path | None]:
        """``(version, decoder file)`` to serve: ``("base", None)`` for the base model's own decoder.

        Args:
            pinned: a published ``vNNNN`` (its file, which may not exist), ``"base"``, or None for
                the live version.
            live: the live entry if the caller already holds it (a cache of `live`); read otherwise.
        """
        if pinned == "base":
            return "base", None
        if pinned:
            return pinned, self.version_file(pinned)
        if live is _READ:
            live = self.live()
        if live is None:
            return "base", None
        return live["version"], self.root / live["file"]

    def publish(self, candidate: str | os.PathLike, *, margin: float = 0.0) -> dict[str, Any]:
        """Publish ``candidate`` if it passes `gate` against the live decoder.

        The run validates its starting decoder (the live one) on the same validation studies
        (``metrics.baseline_val``), so the gate compares like with like. The candidate must be a
        trained epoch (``metrics.val.epoch`` >= 1): a file holding the unchanged starting decoder
        (epoch 0) is refused whatever the margin.

        Returns:
            ``{"published": bool, "version": str | None, "reason": str}``.
        """
        envelope = self._envelope(candidate)
        metrics = envelope["metadata"].get("metrics", {})
        new, old = metrics.get("val", {}), metrics.get("baseline_val", {})
        # the run's selection score (clicks protocol, else box Dice), computed alike for both
        new_dice, old_dice = (float(m.get("score", m.get("dice", 0.0))) for m in (new, old))
        if new.get("epoch", 1) == 0:
            return {"published": False, "version": None,
                    "reason": "refused: no trained epoch (the file holds the starting decoder, "
                              f"val Dice {old_dice:.4f})"}
        ok, reason = gate(new_dice, old_dice, margin, new_noc=mean_noc85(new), live_noc=mean_noc85(old))
        if not ok:
            return {"published": False, "version": None, "reason": reason}
        version = self._record(candidate, envelope, reason, val=new, baseline=old)
        return {"published": True, "version": version, "reason": reason}

    def publish_shape_priors(self, candidate: str | os.PathLike, *, refused: str) -> dict[str, Any]:
        """Publish ``candidate``, the live decoder's own weights with newer shape priors, without the gate.

        Shape priors are the finished studies' shapes, not trained weights (`samri.inference.shape_prior`):
        when the gate refuses a trained decoder (``refused``: its reason), the studies it was trained on still
        serve as priors on the decoder already live. The caller checks that the run started from the live
        decoder (`samri.train.run.TrainResult.priors_checkpoint` holds the starting weights).

        Returns:
            ``{"published": bool, "version": str | None, "reason": str}``.
        """
        envelope = self._envelope(candidate)
        priors = envelope["metadata"].get("shape_priors")
        if not envelope.get("shape_priors") or not priors:
            return {"published": False, "version": None, "reason": refused}
        reason = (f"{refused}; the live decoder's weights published with the shape priors of the finished studies "
                  f"({priors.get('structures')} structures, {priors.get('sections')} sections)")
        baseline = envelope["metadata"].get("metrics", {}).get("baseline_val", {})
        version = self._record(candidate, envelope, reason, val=baseline, baseline=baseline, shape_priors_only=True)
        return {"published": True, "version": version, "reason": reason, "shape_priors_only": True}

    def _envelope(self, candidate: str | os.PathLike) -> dict[str, Any]:
        """A candidate decoder file's checked envelope (it must be for this store's base model)."""
        from samri.model.checkpoints import read_decoder_checkpoint  # torch: only publishing needs it

        if self.base_model is None:
            raise ValueError("publishing into a DecoderStore needs the store's base_model")
        envelope = read_decoder_checkpoint(candidate)
        if envelope["base_model"] != self.base_model:
            raise SamriInputError("decoder", str(candidate), f"is for base model '{envelope['base_model']}', "
                                  f"this store serves '{self.base_model}'")
        return envelope

    def _record(self, candidate: str | os.PathLike, envelope: dict[str, Any], reason: str, *,
                val: dict[str, Any], baseline: dict[str, Any], **extra: Any) -> str:
        """Copy ``candidate`` in as the next ``vNNNN``, append its index entry and make it live."""
        index = self.index()
        version = f"v{len(index) + 1:04d}"
        copy_file(candidate, self.version_file(version))
        score = [float(m.get("score", m.get("dice", 0.0))) for m in (val, baseline)]
        entry = {"version": version, "file": f"versions/{version}.pt", "val_dice": score[0],
                 "baseline_val_dice": score[1], "published": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "gate": reason, **extra, "metrics": {"val": val, "baseline_val": baseline},
                 "training_data": envelope["metadata"].get("training_data")}
        write_json(self.root / "index.json", index + [entry])
        write_json(self.live_file, entry)
        logger.info("published decoder %s (%s)", version, reason)
        return version

    def rollback(self, version: str | None = None) -> dict[str, Any] | None:
        """Serve ``version`` (default: the one published before the live one); ``"base"`` = plain decoder."""
        index = self.index()
        if version == "base":
            self.live_file.unlink(missing_ok=True)
            logger.info("rolled back to the base model's own decoder")
            return None
        names = [e["version"] for e in index]
        if version is None:
            live = self.live()
            pos = names.index(live["version"]) if live and live["version"] in names else len(names)
            if pos == 0:
                self.live_file.unlink(missing_ok=True)
                return None
            version = names[pos - 1]
        if version not in names:
            raise SamriInputError("version", version, f"unknown; published versions: {names + ['base']}")
        entry = index[names.index(version)]
        write_json(self.live_file, entry)
        logger.info("rolled back to decoder %s", version)
        return entry
