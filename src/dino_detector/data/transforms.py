"""Resizing and augmentation with torchvision.transforms.v2 (boxes move with the image)."""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import DataConfig


def resize_shape(h: int, w: int, cfg: DataConfig) -> tuple[int, int]:
    """Target (h, w), aspect ratio kept: longer side = image_size if set, else shorter = min_size capped
    so the longer side stays <= max_size (DETR recipe)."""
    if cfg.image_size > 0:
        scale = cfg.image_size / max(h, w)
    else:
        scale = min(cfg.min_size / min(h, w), cfg.max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_for_inference(image: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    h, w = resize_shape(image.shape[-2], image.shape[-1], cfg)
    return v2.functional.resize(image, [h, w], antialias=True)


class DetectionTransform:
    """image tensor [3, H, W] + boxes xyxy pixels -> resized (and, when training, augmented) pair."""

    def __init__(self, cfg: DataConfig, train: bool):
        self.cfg = cfg
        augment = []
        if train and cfg.hflip_prob > 0:
            augment.append(v2.RandomHorizontalFlip(cfg.hflip_prob))
        if train and cfg.color_jitter > 0:
            s = cfg.color_jitter
            augment.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
        self.augment = v2.Compose(augment) if augment else None

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor):
        h, w = resize_shape(image.shape[-2], image.shape[-1], self.cfg)
        bxs = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))
        image, bxs = v2.functional.resize(image, [h, w], antialias=True), v2.functional.resize(bxs, [h, w])
        if self.augment is not None:
            image, bxs = self.augment(image, bxs)
        return image.clamp(0, 1), bxs.as_subclass(torch.Tensor)
