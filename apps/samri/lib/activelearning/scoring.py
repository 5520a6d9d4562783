"""Scoring methods ``samri_uncertainty`` and ``samri_novelty`` (MONAI Label ``ScoringMethod``).

How they run: MONAI Label 0.8.5 starts every scoring method when the server starts, after each
training run and after each ``/activelearning`` request, each as
``python -m monailabel.interfaces.utils.app -m scoring`` (a subprocess that builds the app again);
``POST /scoring/samri_uncertainty`` runs one by hand (``?run_sync=true``: inside the server).

Each writes one record per study into the datastore's image info (`samri.activelearning.scores`) and
skips studies whose record is current: same model version (registry name, encoder, served decoder
version and decoder weights), same settings, same input files. So after a new decoder is
published, the next job recomputes the uncertainty of every unlabelled study; novelty depends on
the encoder and on which studies are labelled. A study that cannot be read or encoded gets an
unusable record with the reason; the job goes on.

Request options (JSON body of ``POST /scoring/{method}``): ``force`` (recompute every study),
``images`` (only these ids).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from typing import Any, Mapping

from monailabel.interfaces.tasks.scoring import ScoringMethod

from samri.io import signature_text

from ..http_errors import http_errors
from ..runtime import SamriRuntime

logger = logging.getLogger(__name__)

FINAL, ORIGINAL = "final", "original"


def in_job_subprocess() -> bool:
    """True inside MONAI Label's task subprocess (``python -m monailabel.interfaces.utils.app``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monailabel.interfaces.utils.app"


def _label_path(datastore, image_id: str, tag: str) -> str | None:
    label_id = datastore.get_label_by_image_id(image_id, tag)
    if not label_id:
        return None
    return datastore.get_label_uri(label_id, tag) or None


class SamriScoring(ScoringMethod):
    """One SAMRI score (``kind``: ``uncertainty`` or ``novelty``) for every study of the datastore.

    Args:
        runtime: the app's `SamriRuntime` (model, embedding cache, decoder choice).
        kind: which score.
    """

    def __init__(self, *, runtime: SamriRuntime, kind: str) -> None:
        if kind not in ("uncertainty", "novelty"):
            raise ValueError(f"kind={kind!r}: must be uncertainty or novelty")
        text = ("decoder uncertainty under self-generated prompts (predicted IoU, stability, agreement under "
                "box jitter, box fill), per slice" if kind == "uncertainty" else
                "distance of the study's pooled embeddings to the labelled studies'")
        super().__init__(f"SAMRI {kind}: {text}")
        self.runtime = runtime
        self.kind = kind

    @property
    def descriptor_dir(self):
        return self.runtime.settings.app_dir / "model" / "activelearning" / "descriptors"

    def __call__(self, request: Mapping[str, Any], datastore) -> dict[str, Any]:
        with http_errors(f"scoring samri_{self.kind}"):
            return self._score(request, datastore)

    def _scorer(self):
        from samri.activelearning.config import load_al_config
        from samri.activelearning.novelty import DescriptorStore
        from samri.activelearning.scorer import StudyScorer
        from samri.activelearning.scores import encoder_version, model_version
        from samri.config import load_registry

        config = load_al_config()
        if config.threads and in_job_subprocess():
            import torch

            torch.set_num_threads(config.threads)  # leave the other cores to interactive clicks
        segmenter = self.runtime.segmenter()
        decoder_version = (self.runtime.status().get("model") or {}).get("decoder_version")
        version = (model_version(segmenter.model, decoder_version) if self.kind == "uncertainty"
                   else encoder_version(segmenter.model))
        return StudyScorer(segmenter, config, load_registry().window, version=version, decoder_version=decoder_version,
                           descriptors=DescriptorStore(self.descriptor_dir))

    def _score(self, request: Mapping[str, Any], datastore) -> dict[str, Any]:
        from samri.activelearning.scores import refresh, scores_of

        start = time.perf_counter()
        refresh(datastore)
        force = bool(request.get("force", False))
        images = sorted(datastore.list_images())
        wanted = request.get("images")
        if wanted:
            images = [i for i in images if i in set(wanted)]
        labelled = set(datastore.get_labeled_images(FINAL))
        scorer = self._scorer()
        todo = [i for i in images if i not in labelled]
        summary: dict[str, Any] = {"method": f"samri_{self.kind}", "version": scorer.version, "computed": [],
                                   "current": [], "unusable": {}, "labelled": sorted(labelled & set(images))}
        if self.kind == "uncertainty":
            self._uncertainty(scorer, datastore, todo, force, summary, scores_of)
        else:
            self._novelty(scorer, datastore, images, labelled, force, summary, scores_of)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        logger.info("samri_%s: %d computed, %d current, %d unusable (%.1f s)", self.kind, len(summary["computed"]),
                    len(summary["current"]), len(summary["unusable"]), summary["seconds"])
        return summary

    def _uncertainty(self, scorer, datastore, todo, force, summary, scores_of) -> None:
        from samri.activelearning.scores import is_current, write_score

        config_key = scorer.config.scoring_key("uncertainty")
        for image_id in _progress(todo, "uncertainty"):
            path = datastore.get_image_uri(image_id)
            original = _label_path(datastore, image_id, ORIGINAL)
            inputs = scorer.uncertainty_inputs(path, original)
            old = scores_of(datastore.get_image_info(image_id)).get("uncertainty")
            if not force and is_current(old, version=scorer.version, config=config_key, inputs=inputs):
                summary["current"].append(image_id)
                continue
            record = scorer.uncertainty(path, original=original)
            write_score(datastore, image_id, record)
            scorer.forget(str(path))
            if record["usable"]:
                summary["computed"].append(image_id)
            else:
                summary["unusable"][image_id] = record["reason"]

    def _novelty(self, scorer, datastore, images, labelled, force, summary, scores_of) -> None:
        from samri.activelearning.novelty import novelty_scores
        from samri.activelearning.scorer import STUDY_ERRORS
        from samri.activelearning.scores import is_current, make_record, write_score

        config_key = scorer.config.scoring_key("novelty")
        reference = hashlib.blake2b(",".join(sorted(labelled & set(images))).encode(), digest_size=6).hexdigest()
        version = f"{scorer.version}-{reference}"
        todo, inputs = [], {}
        for image_id in images:
            if image_id in labelled:
                continue
            inputs[image_id] = {"image": signature_text(datastore.get_image_uri(image_id))}
            old = scores_of(datastore.get_image_info(image_id)).get("novelty")
            if not force and is_current(old, version=version, config=config_key, inputs=inputs[image_id]):
                summary["current"].append(image_id)
            else:
                todo.append(image_id)
        if not todo:
            return
        descriptors, failed = {}, {}
        for image_id in _progress(sorted(labelled & set(images)) + todo, "novelty"):
            path = datastore.get_image_uri(image_id)
            try:
                descriptors[image_id] = scorer.descriptor(path)
            except STUDY_ERRORS as exc:
                failed[image_id] = str(exc)
                logger.warning("novelty of %s: unusable (%s)", image_id, exc)
            scorer.forget(str(path))
        values = novelty_scores(descriptors, labelled)
        for image_id in todo:
            if image_id in failed:
                record = make_record("novelty", value=None, version=version, config=config_key,
                                     inputs=inputs[image_id], reason=failed[image_id])
                summary["unusable"][image_id] = failed[image_id]
            else:
                v = values[image_id]
                record = make_record("novelty", value=v["value"], version=version, config=config_key,
                                     inputs=inputs[image_id],
                                     details={"nearest": v["nearest"], "reference": v["reference"],
                                              "labelled": len(labelled & set(descriptors))})
                summary["computed"].append(image_id)
            write_score(datastore, image_id, record)


def _progress(items, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=f"samri {desc}", unit="study", disable=not sys.stderr.isatty())
