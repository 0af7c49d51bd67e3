"""Resizing and augmentation with torchvision.transforms.v2 (boxes move with the image).

Training augmentation, each switched by the config (``data`` section): random crop (``crop_prob``, sides
``crop_min_fraction``..1 of the image), multi-scale resize (``multi_scale``: DETR's shorter sides 480..800
step 32 as fractions of the evaluation size, so with ``--image_size`` they scale down with it), horizontal
flip (``hflip_prob``; ``--no_flip`` turns it off), colour jitter, and small rotations (``rotation_degrees``)
after which every box is re-fitted around its rotated corners and clipped to the image; scale jitter
(``scale_jitter`` j: the size times U[1 - j, 1 + j], a continuous alternative to ``multi_scale``); in training
the sampler draws the size once per batch, as YOLO and RT-DETR do, so a batch is never padded to its largest
member (per-image sizes cost up to ~1.4x the pixels at scale_jitter 0.25, 2026-12-03). Mosaic
composition happens a step before, in the dataset (mosaic.py). The strong part (crop, rotation, size changes:
``strong=False`` turns it off for the first epochs, ``strong_aug_start_epoch``, and the end of training,
``strong_aug_off_fraction``) is told apart from the light part (flip, colour) that stays on to the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import DataConfig

DETR_SHORT_SIDES = tuple(range(480, 801, 32))  # DETR's multi-scale training sizes, evaluated at 800
SCALE_FACTORS = tuple(s / DETR_SHORT_SIDES[-1] for s in DETR_SHORT_SIDES)


@dataclass(frozen=True)
class Resize:
    """The image sizes a model is trained and evaluated at (the three size fields of ``DataConfig``): all a
    model keeps of the data settings, so that ``predict`` resizes as training did."""
    image_size: int = DataConfig.image_size
    min_size: int = DataConfig.min_size
    max_size: int = DataConfig.max_size

    @classmethod
    def of(cls, settings) -> "Resize":
        """From anything with the three fields (a ``DataConfig``, a ``Resize``) or a dict of them."""
        get = settings.get if isinstance(settings, dict) else lambda k, d: getattr(settings, k, d)
        return cls(*(int(get(k, getattr(cls, k))) for k in ("image_size", "min_size", "max_size")))


def resize_shape(h: int, w: int, cfg: DataConfig | Resize, factor: float = 1.0) -> tuple[int, int]:
    """Target (h, w), aspect ratio kept: longer side = image_size if set, else shorter = min_size capped
    so the longer side stays <= max_size (DETR recipe); ``factor`` scales the result (multi-scale)."""
    if cfg.image_size > 0:
        scale = cfg.image_size / max(h, w)
    else:
        scale = min(cfg.min_size / min(h, w), cfg.max_size / max(h, w))
    scale *= factor
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_for_inference(image: torch.Tensor, cfg: DataConfig | Resize) -> torch.Tensor:
    h, w = resize_shape(image.shape[-2], image.shape[-1], cfg)
    return v2.functional.resize(image, [h, w], antialias=True)


def uniform(low: float, high: float) -> float:
    """One draw of U[low, high] from torch's global generator (seeded with the rest of the augmentation)."""
    return low + (high - low) * torch.rand(()).item()


def size_factors(cfg: DataConfig, count: int, generator: torch.Generator | None = None) -> list[float]:
    """``count`` training sizes as factors of the evaluation size: multi-scale steps (``multi_scale``), scale
    jitter draws (``scale_jitter``), or 1.0 when neither is set. The training sampler draws one per batch
    (every image of a batch gets the same size, so nothing is padded); ``generator`` None: torch's global one."""
    if cfg.multi_scale:
        return [SCALE_FACTORS[i] for i in torch.randint(len(SCALE_FACTORS), (count,), generator=generator).tolist()]
    if cfg.scale_jitter > 0:
        j = cfg.scale_jitter
        return (1 - j + 2 * j * torch.rand(count, generator=generator, dtype=torch.float64)).tolist()
    return [1.0] * count


class DetectionTransform:
    """image tensor [3, H, W] (uint8 0..255 or float 0..1) + boxes xyxy pixels -> resized (and, when
    training, augmented) pair, the image float 0..1. Random draws use torch's generator, so a seeded run
    repeats exactly."""

    def __init__(self, cfg: DataConfig, train: bool):
        check_augmentation(cfg)
        self.cfg, self.train = cfg, train
        light = []
        if train and cfg.flip and cfg.hflip_prob > 0:
            light.append(v2.RandomHorizontalFlip(cfg.hflip_prob))
        if train and cfg.color_jitter > 0:
            s = cfg.color_jitter
            light.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
        self.light = v2.Compose(light) if light else None
        self.rotate = v2.RandomRotation(cfg.rotation_degrees) if train and cfg.rotation_degrees > 0 else None

    def _crop(self, image: torch.Tensor, bxs: tv_tensors.BoundingBoxes):
        h, w = image.shape[-2:]
        ch, cw = max(1, round(h * uniform(self.cfg.crop_min_fraction, 1))), max(1, round(w * uniform(
            self.cfg.crop_min_fraction, 1)))
        top, left = int(torch.randint(h - ch + 1, ())), int(torch.randint(w - cw + 1, ()))
        return v2.functional.crop(image, top, left, ch, cw), v2.functional.crop(bxs, top, left, ch, cw)

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, strong: bool = True,
                 size_factor: float | None = None):
        """``strong``: with crop, rotation and size changes (training only); flip and colour apply either way.
        ``size_factor``: the training size as a factor of the evaluation size, drawn for the whole batch by the
        sampler; None: drawn here for this image (``size_factors``). Ignored unless strong."""
        cfg = self.cfg
        strong = self.train and strong
        if not strong:
            size_factor = 1.0
        elif size_factor is None:
            size_factor = size_factors(cfg, 1)[0]
        bxs = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))
        if strong and cfg.crop_prob > 0 and torch.rand(()).item() < cfg.crop_prob:
            image, bxs = self._crop(image, bxs)
        h, w = resize_shape(image.shape[-2], image.shape[-1], cfg, size_factor)
        image, bxs = v2.functional.resize(image, [h, w], antialias=True), v2.functional.resize(bxs, [h, w])
        # uint8 training images become 0..1 floats only now, at the training size (colour jitter is faster
        # on floats); float images pass unchanged
        image = v2.functional.to_dtype(image, torch.float32, scale=True).contiguous()
        if self.light is not None:
            image, bxs = self.light(image, bxs)
        if strong and self.rotate is not None:
            image, bxs = self.rotate(image, bxs)
        bxs = v2.functional.clamp_bounding_boxes(bxs)  # crops and rotations leave boxes partly outside
        return image.clamp(0, 1), bxs.as_subclass(torch.Tensor)


def uses_strong_augmentation(cfg: DataConfig) -> bool:
    """Whether any of the strong part (mosaic, crop, rotation, size changes) is configured."""
    return bool(cfg.mosaic_prob or cfg.crop_prob or cfg.rotation_degrees or cfg.scale_jitter or cfg.multi_scale)


def check_augmentation(cfg: DataConfig) -> None:
    """A ``ValueError`` for augmentation settings outside their range, before any image is read."""
    ranges = {"crop_min_fraction": (cfg.crop_min_fraction, 0 < cfg.crop_min_fraction <= 1, "(0, 1]"),
              "scale_jitter": (cfg.scale_jitter, 0 <= cfg.scale_jitter < 1, "[0, 1)"),
              "mosaic_prob": (cfg.mosaic_prob, 0 <= cfg.mosaic_prob <= 1, "[0, 1]"),
              "mosaic_window": (cfg.mosaic_window, 0 < cfg.mosaic_window <= 1, "(0, 1]"),
              "strong_aug_off_fraction": (cfg.strong_aug_off_fraction, 0 <= cfg.strong_aug_off_fraction <= 1,
                                          "[0, 1]"),
              "strong_aug_start_epoch": (cfg.strong_aug_start_epoch, cfg.strong_aug_start_epoch >= 0, "[0, inf)"),
              "crop_prob": (cfg.crop_prob, 0 <= cfg.crop_prob <= 1, "[0, 1]"),
              "hflip_prob": (cfg.hflip_prob, 0 <= cfg.hflip_prob <= 1, "[0, 1]")}
    for name, (value, ok, interval) in ranges.items():
        if not ok:
            raise ValueError(f"{name} must be in {interval}, got {value}")
    if cfg.multi_scale and cfg.scale_jitter > 0:
        raise ValueError("multi_scale and scale_jitter both set the training size: choose one "
                         f"(multi_scale: DETR's sizes; scale_jitter {cfg.scale_jitter}: a continuous range)")
