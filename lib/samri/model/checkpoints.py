"""Checkpoint files: strict loading of full SAM-family state dicts, and our decoder-only format.

A decoder checkpoint (what the trainer publishes) is a ``torch.save``'d dict::

    {"format": "samri-decoder", "format_version": 1, "base_model": "litemedsam",
     "preprocessing": {...}, "metadata": {...}, "mask_decoder": {<state dict>}}

Everything is loaded with ``weights_only=True`` and written atomically (`samri.io`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from samri.errors import CheckpointError
from samri.io import atomic_write

logger = logging.getLogger(__name__)

DECODER_FORMAT = "samri-decoder"
DECODER_FORMAT_VERSION = 1
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (see `samri.io.atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: str | os.PathLike, field: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(field, str(p), "file not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(field, str(p), f"cannot be read as a weights-only torch file ({exc})") from exc


def unwrap_state_dict(obj: Any, path: str | os.PathLike, field: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Accept a plain state dict or one wrapped under ``model``/``state_dict``; drop ``module.``."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(field, str(path), "does not hold a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                field: str = "checkpoint", prefix: str = "") -> None:
    """Load ``state`` into ``module`` requiring identical keys and shapes.

    Raises:
        CheckpointError: naming the file, missing/unexpected keys and shape mismatches.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{prefix}{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(prefix + k for k in missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(prefix + k for k in unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
    if problems:
        raise CheckpointError(field, str(path), "does not match the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def save_decoder_checkpoint(path: str | os.PathLike, *, mask_decoder: nn.Module, base_model: str,
                            preprocessing: Mapping[str, Any], metadata: Mapping[str, Any],
                            shape_priors: Mapping[str, Any] | None = None) -> Path:
    """Write a decoder-only checkpoint atomically.

    Args:
        mask_decoder: the trained SAM ``MaskDecoder``.
        base_model: registry name the decoder belongs on (its encoder produced the embeddings).
        preprocessing: `samri.intensity.Preprocessing.to_dict()` used in training.
        metadata: free-form JSON-like facts: training data, metrics, version, created time.
        shape_priors: optional `samri.inference.shape_prior.ShapePriors.to_payload()` of the finished
            studies the decoder was trained on (served with it).
    """
    state = {k: v.detach().cpu().clone() for k, v in mask_decoder.state_dict().items()}
    payload = {"format": DECODER_FORMAT, "format_version": DECODER_FORMAT_VERSION,
               "base_model": str(base_model), "preprocessing": dict(preprocessing),
               "metadata": dict(metadata), "mask_decoder": state}
    if shape_priors is not None:
        payload["shape_priors"] = dict(shape_priors)
    return atomic_torch_save(payload, path)


def read_decoder_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a decoder-only checkpoint's envelope (not yet applied to a model)."""
    obj = read_checkpoint(path, field="decoder")
    if not isinstance(obj, Mapping) or obj.get("format") != DECODER_FORMAT:
        raise CheckpointError("decoder", str(path),
                              f"not a SAMRI decoder checkpoint (expected format '{DECODER_FORMAT}')")
    version = obj.get("format_version")
    if version != DECODER_FORMAT_VERSION:
        raise CheckpointError("decoder", str(path), f"format_version {version!r} unsupported "
                              f"(this code reads {DECODER_FORMAT_VERSION})")
    for key in ("base_model", "mask_decoder", "metadata", "preprocessing"):
        if key not in obj:
            raise CheckpointError("decoder", str(path), f"missing key '{key}'")
    return dict(obj)
