"""Encoder checkpoints written by ``pretrain`` (``encoder_final.pth``) and read as detection backbones
(``train --dino_model X/encoder_final.pth`` or ``--dino_model X``, the folder holding it)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..runtime.checkpoint import save_atomic
from .flexible import FlexibleEncoder, is_flexible

ENCODER_FILE = "encoder_final.pth"
FORMAT = "dino_detector.encoder/1"


def encoder_path(name: str) -> Path | None:
    """The encoder file ``name`` points at (the file, or a folder holding ``encoder_final.pth``), else None."""
    path = Path(name)
    if path.suffix == ".pth":
        return path
    if path.is_dir() and (path / ENCODER_FILE).is_file():
        return path / ENCODER_FILE
    return None


def encoder_spec(vit: nn.Module, arch: str) -> dict:
    """What rebuilds ``vit``'s architecture offline: a flexible name, or a transformers config."""
    if isinstance(vit, FlexibleEncoder):
        return {"arch": vit.name}
    return {"arch": arch, "vit_config": vit.config.to_dict()}


def build_from_spec(spec: dict) -> nn.Module:
    if is_flexible(spec["arch"]):
        return FlexibleEncoder(spec["arch"])
    from transformers import AutoConfig, AutoModel

    config = dict(spec["vit_config"])
    return AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))


def save_encoder(vit: nn.Module, arch: str, path: str | Path, extra: dict | None = None) -> None:
    save_atomic({"format": FORMAT, **encoder_spec(vit, arch), "state_dict": vit.state_dict(), **(extra or {})},
                path)


def save_backbone_encoder(vit: nn.Module, arch: str, path: str | Path) -> bool:
    """A detector's trained encoder as an encoder file (``--dino_model`` reads it), e.g. after detection
    pretraining on unsupervised boxes. False, and nothing written, for a LoRA-adapted encoder (its adapters
    are not an encoder's weights: ``--init_from`` carries them)."""
    if hasattr(vit, "peft_config"):
        return False
    save_encoder(vit, arch, path)
    return True


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder checkpoint not found: {path}")
    try:  # memory-mapped: reading the architecture does not read the weights
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(f"cannot read encoder checkpoint {path}: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not an encoder written by `python -m dino_detector.pretrain` "
                         f"(format '{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__}')")
    return ckpt


def read_encoder_arch(path: str | Path) -> str:
    """The ``--arch`` the encoder at ``path`` was pretrained as (a flexible name, a table name or a folder)."""
    return str(_read(path)["arch"])


def load_encoder(path: str | Path, weights: bool = True) -> nn.Module:
    """The encoder saved at ``path`` (``weights=False``: its architecture with random weights)."""
    ckpt = _read(path)
    vit = build_from_spec(ckpt)
    if weights:
        vit.load_state_dict(ckpt["state_dict"])
    vit.source_path = os.fspath(path)
    return vit
