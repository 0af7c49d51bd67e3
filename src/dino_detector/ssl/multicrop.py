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

    Randomness comes from torch's global RNG, so ``torch.manual_seed`` makes a run repeatable.
    """

    def __init__(self, global_size: int = 224, local_size: int = 96, n_local: int = 6,
                 global_scale: tuple[float, float] = (0.32, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.32),
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1), jitter_p: float = 0.8,
                 grayscale_p: float = 0.2, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 blur_kernel_fraction: float = 0.1, solarize_threshold: float = 0.5,
                 solarize_p: float = 0.2) -> None:
        self.n_local = n_local

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
        image = image.float()
        # Resampling (antialias) can overshoot slightly; clamp so every view stays a valid image.
        globals_ = [self.global1(image).clamp(0.0, 1.0), self.global2(image).clamp(0.0, 1.0)]
        locals_ = [self.local(image).clamp(0.0, 1.0) for _ in range(self.n_local)]
        return globals_, locals_
