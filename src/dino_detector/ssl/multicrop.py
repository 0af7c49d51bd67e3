"""DINO multi-crop augmentation: two global views and several small local views per image."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torchvision.transforms import v2


def _odd_kernel(size: int, fraction: float) -> int:
    """Blur kernel of about ``fraction`` of the crop size, forced odd (as GaussianBlur requires)."""
    k = max(3, int(size * fraction))
    return k if k % 2 == 1 else k + 1


class MultiCrop:
    """``__call__(image [3, H, W] float in 0..1) -> ([2 x [3, g, g]], [n_local x [3, l, l]])``.

    ``view_region`` < 1: all views of one call are drawn from one random region of that share of the image
    area (its aspect ratio the image's), so that the two global views overlap and share content even when
    they are small, as on detection images whose crops are about one object in size: otherwise two cell-
    sized crops from far apart on a smear have nothing in common to agree on and the image-level (CLS)
    objective has no signal. The scales stay fractions of the whole image. 1: the whole image (DINO's).

    Randomness comes from torch's global RNG, so ``torch.manual_seed`` makes a run repeatable.
    """

    def __init__(self, global_size: int = 224, local_size: int = 96, n_local: int = 6,
                 global_scale: tuple[float, float] = (0.32, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.32),
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1), jitter_p: float = 0.8,
                 grayscale_p: float = 0.2, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 blur_kernel_fraction: float = 0.1, solarize_threshold: float = 0.5,
                 solarize_p: float = 0.2, view_region: float = 1.0) -> None:
        if not 0 < view_region <= 1:
            raise ValueError(f"view_region must be in (0, 1], got {view_region}")
        if max(global_scale) > view_region:
            raise ValueError(f"global crops of up to {max(global_scale)} of the image do not fit a view region of "
                             f"{view_region}")
        self.n_local, self.view_region = n_local, view_region
        # the crops' area ranges as fractions of the region they are drawn from
        global_scale = tuple(f / view_region for f in global_scale)
        local_scale = tuple(min(1.0, f / view_region) for f in local_scale)

        def base(size: int, scale: tuple[float, float]) -> list:
            return [
                v2.RandomResizedCrop(size, scale=scale, antialias=True),
                v2.RandomHorizontalFlip(p=0.5),
                v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p),
                v2.RandomGrayscale(p=grayscale_p),
            ]

        def blur(size: int, p: float) -> v2.Transform:
            return v2.RandomApply([v2.GaussianBlur(_odd_kernel(size, blur_kernel_fraction), sigma=blur_sigma)], p=p)

        # Asymmetric globals (always blurred vs. rarely blurred + solarized) as in DINO/BYOL, so the
        # two teacher views differ in which invariances they demand.
        self.global1 = v2.Compose(base(global_size, global_scale) + [blur(global_size, 1.0)])
        self.global2 = v2.Compose(base(global_size, global_scale) + [
            blur(global_size, 0.1), v2.RandomSolarize(threshold=solarize_threshold, p=solarize_p)])
        self.local = v2.Compose(base(local_size, local_scale) + [blur(local_size, 0.5)])

    def __call__(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a [3, H, W] image, got {tuple(image.shape)}")
        image = self._region(image.float())
        # Resampling (antialias) can overshoot slightly; clamp so every view stays a valid image.
        globals_ = [self.global1(image).clamp(0.0, 1.0), self.global2(image).clamp(0.0, 1.0)]
        locals_ = [self.local(image).clamp(0.0, 1.0) for _ in range(self.n_local)]
        return globals_, locals_

    def _region(self, image: torch.Tensor) -> torch.Tensor:
        """A random window of ``view_region`` of the image's area (the image itself at 1)."""
        if self.view_region >= 1:
            return image
        h, w = image.shape[-2:]
        side = self.view_region ** 0.5
        rh, rw = max(1, round(h * side)), max(1, round(w * side))
        top = int(torch.randint(0, h - rh + 1, ()))
        left = int(torch.randint(0, w - rw + 1, ()))
        return image[:, top:top + rh, left:left + rw]


class ObjectWindows:
    """Object-centric views (``--object_views``): each call crops an image to a square window around one of
    its unsupervised box proposals (data/proposals.py), ``context`` times the box's longer side, clamped to
    the image; the multi-crop views are then drawn inside it. Views centred on objects rather than on random
    windows make the CLS token describe one object, the way object crops are compared (k-NN) and detected.
    An image without proposals is used whole."""

    def __init__(self, boxes: dict[str, torch.Tensor], context: float):
        if context < 1:
            raise ValueError(f"object_context must be at least 1 (the box itself), got {context}")
        self.boxes, self.context = boxes, context
        self._boxes_of: dict[str, torch.Tensor | None] = {}  # the dataset's path -> boxes: resolved once, not per view

    @classmethod
    def of(cls, folders: list[str], out: Path, boxes: int, context: float) -> "ObjectWindows":
        """The proposals of every image in ``folders``, made once into ``out`` (proposals_<i>.json)."""
        from ..data.proposals import cached_proposals

        by_path: dict[str, torch.Tensor] = {}
        for i, folder in enumerate(folders):
            coco = json.loads(cached_proposals(folder, Path(out) / f"proposals_{i}.json", boxes).read_text())
            per_image: dict[int, list] = {}
            for a in coco["annotations"]:
                x, y, w, h = a["bbox"]
                per_image.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
            for image in coco["images"]:
                key = str((Path(folder) / image["file_name"]).resolve())
                by_path[key] = torch.tensor(per_image.get(image["id"], []), dtype=torch.float32).reshape(-1, 4)
        return cls(by_path, context)

    def around_an_object(self, image: torch.Tensor, path) -> torch.Tensor:
        """image [3, H, W] -> [3, h, w]: the window around a random proposal of the image at ``path``."""
        key = str(path)
        if key not in self._boxes_of:
            self._boxes_of[key] = self.boxes.get(str(Path(path).resolve()))
        boxes = self._boxes_of[key]
        if boxes is None or len(boxes) == 0:
            return image
        x0, y0, x1, y1 = boxes[int(torch.randint(len(boxes), ()))].tolist()
        h, w = image.shape[-2:]
        side = min(max(x1 - x0, y1 - y0) * self.context, h, w)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(min(max(cx - side / 2, 0), w - side))
        top = int(min(max(cy - side / 2, 0), h - side))
        side = max(1, int(side))
        return image[:, top:top + side, left:left + side]
