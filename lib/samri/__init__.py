"""SAMRI: the Segment Anything Model specialised for MRI, as a library for MONAI Label.

Nothing heavy is imported by ``import samri``: the public API below is loaded on first use
(module ``__getattr__``), so ``import samri`` pulls in no torch.

Public API (one click -> one mask)::

    import samri
    segmenter = samri.load_segmenter("samri_lite")
    image = samri.load_image("data/studies/colin27_t1.nii.gz")
    volume = samri.prepare_volume(image)
    result = samri.run_request(segmenter, volume, {"roi": [60, 80, 110, 135, 74, 74]}, mode="3d")
    samri.save_label("putamen.nii.gz", result.mask, image.affine)

The subpackages: `samri.model` (networks, checkpoints), `samri.inference` (prompts, embeddings,
`Segmenter`, propagation, requests), `samri.train` (label -> decoder), `samri.activelearning`,
`samri.evaluation`, `samri.dicomweb`, `samri.bench`, `samri.testing`.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from samri.inference.request import InteractiveResult
    from samri.inference.segmenter import Segmenter
    from samri.volume import ImageVolume, PreparedVolume

__version__ = "0.1.0"

#: lazily imported names: name -> module
_LAZY = {
    "Segmenter": "samri.inference.segmenter",
    "SlicePrompt": "samri.inference.prompts",
    "load_image": "samri.volume",
    "save_label": "samri.volume",
}

__all__ = ["load_segmenter", "load_image", "prepare_volume", "run_request", "save_label", "Segmenter",
           "SlicePrompt", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'samri' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_segmenter(name: str = "samri_lite", *, checkpoint: str | os.PathLike | None = None,
                   decoder: str | os.PathLike | None = None, device: str = "cpu",
                   cache_dir: str | os.PathLike | None = None, backend: str | None = None,
                   precision: str | None = None) -> Segmenter:
    """A `Segmenter` for the registry model ``name`` (``configs/models.yaml``, or ``$SAMRI_CONFIG_DIR``).

    Args:
        checkpoint: overrides the registry's full checkpoint.
        decoder: a decoder-only checkpoint applied on top (default: the registry's).
        device: where the model runs.
        cache_dir: embeddings also kept on disk there (default: memory only).
        backend, precision: inference runtime (``torch``, ``openvino``, ``auto``) and ``fp32``/``bf16``/
            ``auto`` (default: the registry entry's; see `samri.model.backends`).
    """
    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache
    from samri.inference.segmenter import Segmenter
    from samri.model.backends import apply_backend
    from samri.model.builders import load_model

    model = load_model(load_registry().spec(name), checkpoint=checkpoint, decoder=decoder, device=device)
    apply_backend(model, backend, precision)
    return Segmenter(model, EmbeddingCache(cache_dir=cache_dir))


def prepare_volume(image: ImageVolume, window=None) -> PreparedVolume:
    """Window ``image`` once (a `samri.volume.ImageVolume` or array); ``window`` None = the registry's MRI window."""
    from samri import volume

    if window is None:
        from samri.config import load_registry

        window = load_registry().window
    return volume.prepare_volume(image, window)


def run_request(segmenter: Segmenter, volume: PreparedVolume, params: Mapping[str, Any], mode: str = "2d",
                axis: int = 2) -> InteractiveResult:
    """Segment ``volume`` for one Slicer/OHIF request ``params`` (see `samri.inference.request.run_request`)."""
    from samri.inference.request import run_request as _run

    return _run(segmenter, volume, params, mode=mode, axis=axis)
