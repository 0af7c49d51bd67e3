"""Masked image modelling: the student reconstructs the pixels of the patches it did not see (SimMIM's
linear pixel head, MAE's per-patch normalised targets).

DINO and iBOT teach invariance (two views, one answer); reconstruction teaches what a detector reads: where
edges, blobs and colours are inside each patch. On small detection data the patch tokens it trains are the
ones the detector's pyramid is built from.
"""
from __future__ import annotations

import torch
from torch import nn

from .masking import masked_token_mean


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``images [B, C, H, W]`` (H, W multiples of ``patch``) -> ``[B, H/p * W/p, p * p * C]``, patches in
    row-major order (the encoder's token order), each patch's pixels row-major with channels last."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class PixelReconstructionLoss(nn.Module):
    """Mean squared error between predicted and true pixels of the masked patches.

    ``norm_pix``: each target patch is standardised by its own mean and variance (MAE's ``norm_pix_loss``):
    the loss then asks for structure (edges, texture) rather than the patch's average colour, which the
    neighbouring tokens already give away.
    """

    def __init__(self, patch: int, norm_pix: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch, self.norm_pix, self.eps = patch, norm_pix, eps

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, C, H, W]`` -> ``[B, T, p * p * C]`` reconstruction targets."""
        target = patchify(images, self.patch)
        if self.norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True, unbiased=False)
            target = (target - mean) / (var + self.eps).sqrt()
        return target

    def forward(self, predicted: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Scalar loss from ``predicted [B, T, p * p * C]``, the student's input ``images [B, C, H, W]`` and
        ``masks [B, T]`` (True: hidden from the student). Per-token mean squared error, averaged per image over
        its masked tokens, then over the images with at least one (as the iBOT loss weighs images)."""
        return masked_token_mean((predicted - self.targets(images)).pow(2).mean(-1), masks)
