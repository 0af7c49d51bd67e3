"""The rules that resolve a model section's backbone settings, each in one place: where the weights come
from, how the backbone trains, its attention and its patch size. ``resolve_backbone`` applies them all and is
idempotent, so the detector (Python API) and the run specification (spec.py) share it, and a resolved
section resolves to itself.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from ..config import ModelConfig
from .catalog import ARCHITECTURES, DINOV2_FAMILIES, family, has_published_weights, offline_architecture

log = logging.getLogger(__name__)
WEIGHT_SOURCES = ("random", "hub", "folder", "official", "encoder")
BACKBONE_MODES = ("auto", "frozen", "lora", "full")
ATTENTION_MODES = ("full", "windowed", "auto")
# the weights of these sources were published by others and are adapted with LoRA by default; random
# weights and our own encoders (small, pretrained on the user's domain) are trained fully
PUBLISHED_SOURCES = ("hub", "folder", "official")


def weights_source(name: str, *, pretrained: bool, weights_file: str = "") -> str:
    """The one rule for where a backbone's weights come from:
    ``official`` (an official DINOv2 .pth file, whatever ``pretrained`` says), ``encoder`` (an encoder file of
    ``pretrain``), ``random`` (``--no_pretrained``, or a name without published weights: tiny, flexible-*),
    ``folder`` (a local model folder) or ``hub`` (the Hugging Face cache or hub)."""
    from .encoder_file import encoder_path

    if weights_file:
        return "official"
    if encoder_path(name) is not None:
        return "encoder" if pretrained else "random"
    if not pretrained or not has_published_weights(name):
        return "random"
    return "folder" if os.path.isdir(name) else "hub"


def resolve_backbone_mode(mode: str, source: str) -> str:
    """``auto``: LoRA adapters on published pretrained weights; everything else is trained fully, since
    low-rank updates of random features cannot learn a useful representation."""
    if mode not in BACKBONE_MODES:
        raise ValueError(f"backbone_mode must be one of {BACKBONE_MODES}, got '{mode}'")
    if mode != "auto":
        return mode
    return "lora" if source in PUBLISHED_SOURCES else "full"


def resolve_backbone_attention(mode: str, random_weights: bool, dinov2: bool) -> str:
    """``auto`` is windowed for a DINOv2 architecture with random weights (nothing to preserve) and full
    attention for pretrained weights, whose features were learnt with it."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"backbone_attention must be one of {ATTENTION_MODES}, got '{mode}'")
    if mode == "auto":
        return "windowed" if random_weights and dinov2 else "full"
    if mode == "windowed" and not dinov2:
        raise ValueError("backbone_attention 'windowed' needs a DINOv2 backbone (tiny or a facebook/dinov2-* "
                         "architecture); DINOv3's rotary positions and the flexible encoder are not supported")
    return mode


def encoder_arch(name: str) -> str:
    """The offline architecture name an encoder file records ('' when it has none or is not an encoder)."""
    from .encoder_file import encoder_path, read_encoder_arch

    path = encoder_path(name)
    if path is None or not path.is_file():
        return ""
    arch = read_encoder_arch(path)
    return arch if offline_architecture(arch) else ""


def resolve_backbone(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with its backbone settings resolved: ``backbone_weights`` (the source), ``pretrained`` (True
    when weights are loaded), ``backbone_mode``, ``backbone_attention``, ``backbone_patch_size`` (0: the
    architecture's own) and ``backbone_arch`` (an encoder file's architecture)."""
    source = weights_source(cfg.dino_model, pretrained=cfg.pretrained, weights_file=cfg.dino_weights)
    if cfg.backbone_weights not in ("auto", source):
        raise ValueError(f"backbone_weights '{cfg.backbone_weights}' does not match dino_model "
                         f"'{cfg.dino_model}', pretrained {cfg.pretrained}, dino_weights '{cfg.dino_weights}', "
                         f"which load '{source}' weights (it is recorded, not chosen: leave it out)")
    random_weights = source == "random"
    attention = resolve_backbone_attention(cfg.backbone_attention, random_weights,
                                           family(cfg.dino_model) in DINOV2_FAMILIES)
    patch = cfg.backbone_patch_size
    if patch and not (random_weights and cfg.dino_model in ARCHITECTURES):
        log.info("backbone_patch_size %d ignored: %s keeps its own patch size", patch, cfg.dino_model)
        patch = 0
    arch = cfg.backbone_arch or encoder_arch(cfg.dino_model)
    return dataclasses.replace(cfg, backbone_weights=source, pretrained=not random_weights,
                               backbone_mode=resolve_backbone_mode(cfg.backbone_mode, source),
                               backbone_attention=attention, backbone_patch_size=patch, backbone_arch=arch)


def architecture_only(cfg: ModelConfig) -> ModelConfig:
    """A resolved model section that builds the same architecture without loading any weights (the weights come
    from a checkpoint or ``model.safetensors``): random initialisation, everything else as resolved."""
    return dataclasses.replace(cfg, pretrained=False, dino_weights="", backbone_weights="auto")
