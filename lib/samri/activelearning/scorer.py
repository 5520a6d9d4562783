"""`StudyScorer`: uncertainty records and novelty descriptors of studies, for the app and the simulation.

It loads a study once (`samri.volume.load_image` + `prepare_volume`), finds its head and the slices
to score (`samri.activelearning.sampling`), fetches their embeddings through the shared cache and
computes what `samri.activelearning.uncertainty` and `samri.activelearning.novelty` define. Anything that
goes wrong with one study (unreadable or corrupt file, constant image, encoder failure) becomes an
unusable record with the reason, never an exception out of a scoring job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samri.activelearning.config import ALConfig
from samri.activelearning.novelty import DescriptorStore, pooled_descriptor
from samri.activelearning.sampling import head_mask, sample_slices
from samri.activelearning.scores import make_record
from samri.activelearning.uncertainty import study_uncertainty
from samri.errors import SamriInputError
from samri.io import signature_text

logger = logging.getLogger(__name__)

#: what can go wrong with one study without being a bug of ours
STUDY_ERRORS = (SamriInputError, OSError, RuntimeError, ValueError, EOFError, MemoryError)


@dataclass
class PreparedStudy:
    """A study ready to score: its windowed volume, head mask and sampled slice indices."""

    volume: Any  # samri.volume.PreparedVolume
    head: np.ndarray
    indices: list[int]


class StudyScorer:
    """Scores studies with one model.

    Args:
        segmenter: a `samri.inference.segmenter.Segmenter` (model + shared embedding cache).
        config: the active-learning settings.
        window: the registry's intensity window (`samri.config.Registry.window`).
        version: `samri.activelearning.scores.model_version` of the segmenter's weights.
        decoder_version: served decoder version (``vNNNN``/``base``), recorded with each score.
        descriptors: where pooled descriptors are kept (default: memory only).
    """

    def __init__(self, segmenter, config: ALConfig, window, *, version: str, decoder_version: str | None = None,
                 descriptors: DescriptorStore | None = None) -> None:
        self.segmenter = segmenter
        self.config = config
        self.window = window
        self.version = version
        self.decoder_version = decoder_version
        self.descriptors = descriptors or DescriptorStore(None)
        self._prepared: dict[str, PreparedStudy] = {}

    # --- loading ----------------------------------------------------------------------------------
    def prepare(self, image: str | Path, *, array: np.ndarray | None = None, key: str | None = None) -> PreparedStudy:
        """Load (or take ``array``), window and sample one study; cached per ``key`` (default: the path)."""
        from samri.volume import ImageVolume, load_image, prepare_volume

        key = key or str(image)
        if key not in self._prepared:
            source = load_image(image) if array is None else ImageVolume(array=array)
            volume = prepare_volume(source, self.window)
            head = head_mask(volume.windowed)
            s = self.config.slices
            indices = sample_slices(head, s.axis, step=s.step, max_slices=s.max_slices, min_foreground=s.min_foreground)
            self._prepared[key] = PreparedStudy(volume, head, indices)
        return self._prepared[key]

    def embeddings(self, study: PreparedStudy) -> dict:
        from samri.inference.embeddings import get_embeddings

        return get_embeddings(self.segmenter.model, study.volume, self.segmenter.cache, self.config.slices.axis,
                              study.indices)

    # --- scores -----------------------------------------------------------------------------------
    def uncertainty_inputs(self, image: str | Path, original: str | Path | None) -> dict[str, Any]:
        return {"image": signature_text(image), "original": signature_text(original)}

    def uncertainty(self, image: str | Path, *, original: str | Path | None = None, array: np.ndarray | None = None,
                    key: str | None = None) -> dict[str, Any]:
        """An uncertainty record for one study (unusable with the reason when it cannot be scored).

        Args:
            image: the image file (its signature is part of the record's inputs).
            original: a model label file (MONAI Label ``original`` tag) on the image's grid, or None.
            array: the raw ``(X, Y, Z)`` image instead of reading ``image`` (simulation).
        """
        inputs = self.uncertainty_inputs(image, original) if array is None else {"image": key, "original": None}
        config_key = self.config.scoring_key("uncertainty")
        try:
            study = self.prepare(image, array=array, key=key)
            label = None
            if original is not None:
                from samri.volume import load_image

                label = np.asarray(load_image(original, "original label").array)
                if label.shape != study.volume.shape:
                    logger.warning("%s: original label shape %s differs from the image's %s: ignored",
                                   image, label.shape, study.volume.shape)
                    label = None
                else:
                    label = np.rint(label).astype(np.int32) if label.dtype.kind == "f" else label.astype(np.int32)
            result = study_uncertainty(self.segmenter, study.volume, study.indices, self.config.uncertainty,
                                       axis=self.config.slices.axis, label=label, embeddings=self.embeddings(study),
                                       head=study.head)
        except STUDY_ERRORS as exc:
            logger.warning("uncertainty of %s: unusable (%s)", image, exc)
            return make_record("uncertainty", value=None, version=self.version, config=config_key, inputs=inputs,
                               decoder_version=self.decoder_version, reason=str(exc))
        details = {"axis": result.axis, "slices_scored": [s.index for s in result.slices],
                   "top_slices": result.top_slices(self.config.uncertainty.top_slices),
                   "used_original_label": label is not None}
        return make_record("uncertainty", value=result.value, version=self.version, config=config_key, inputs=inputs,
                           decoder_version=self.decoder_version, details=details)

    def descriptor_key(self, image: str | Path, key: str | None = None) -> str:
        """Store key: encoder, the study (path + file signature, or ``key``), slice sampling, pooling."""
        c = self.config
        ident = key if key is not None else f"{image}@{signature_text(image)}"
        return f"{self.segmenter.model.cache_key()}|{ident}|{c.slices}|{c.pooling}:{c.grid_size}"

    def descriptor(self, image: str | Path, *, array: np.ndarray | None = None, key: str | None = None) -> np.ndarray:
        """Pooled descriptor of a study (`samri.activelearning.novelty.pooled_descriptor`), kept in ``descriptors``.

        Raises:
            One of `STUDY_ERRORS` when the study cannot be read or encoded.
        """
        dkey = self.descriptor_key(image, key if array is not None else None)
        vec = self.descriptors.get(dkey)
        if vec is None:
            study = self.prepare(image, array=array, key=key)
            vec = pooled_descriptor(self.embeddings(study), self.config.pooling, self.config.grid_size)
            self.descriptors.put(dkey, vec)
        return vec

    def forget(self, key: str) -> None:
        """Drop a prepared study from memory (the embeddings stay in the cache)."""
        self._prepared.pop(key, None)
