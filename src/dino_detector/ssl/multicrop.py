"""DINO multi-crop augmentation: two global views and several small local views per image."""
from __future__ import annotations

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
