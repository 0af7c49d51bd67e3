"""Simple feature pyramid (ViTDet): multi-scale maps from the ViT's single stride-p map.

Scales relative to the patch stride p: 2 (transposed conv), 1 (projection only), 1/2 and 1/4 (stride-2
convolutions). With p = 16 that is strides 8, 16, 32, 64; with p = 14 strides 7, 14, 28, 56. Given a stem map
(``stem_dim`` > 0: the flexible encoder's own stride-8 map), the x2 level projects it instead of upsampling
the ViT map: real stride-8 detail for small objects, where the transposed conv only interpolates.

Padding never changes an image's features: padded cells are zeroed before every spatial operation, and
the kernels (2x2, stride 2, no overlap) see exactly the same values whether the image is alone or padded
further by a larger batch-mate. LayerNorm acts per cell (GroupNorm would mix padding into statistics).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SCALES = (1.0, 0.5, 2.0, 0.25)  # level order by num_feature_levels: 1 -> core single scale, 4 -> full pyramid


@dataclass
class Level:
    """One pyramid level. tensor [B, d, H, W]; mask [B, H, W] True on padding; valid_ratios [B, 2] (x, y)."""
    tensor: torch.Tensor
    mask: torch.Tensor
    valid_ratios: torch.Tensor


class CellNorm(nn.Module):
    """LayerNorm over channels of a [B, C, H, W] map, per cell."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _pad_even(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))


class SimpleFeaturePyramid(nn.Module):
    def __init__(self, in_dim: int, dim: int, num_levels: int, stem_dim: int = 0):
        super().__init__()
        if not 1 <= num_levels <= len(SCALES):
            raise ValueError(f"num_feature_levels must be 1..{len(SCALES)}, got {num_levels}")
        self.scales = sorted(SCALES[:num_levels], reverse=True)  # finest first
        if stem_dim and 2.0 not in self.scales:
            raise ValueError(f"fine_level 'stem' feeds the x2 (stride-8) level, which needs num_feature_levels >= "
                             f"{SCALES.index(2.0) + 1}, got {num_levels}")
        blocks = {}
        for s in self.scales:
            if s == 2.0 and stem_dim:
                blocks["stem"] = nn.Sequential(nn.Conv2d(stem_dim, dim, 1), CellNorm(dim))
            elif s == 2.0:
                blocks["up2"] = nn.Sequential(nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2), nn.GELU(),
                                              nn.Conv2d(in_dim // 2, dim, 1), CellNorm(dim))
            elif s == 1.0:
                blocks["same"] = nn.Sequential(nn.Conv2d(in_dim, dim, 1), CellNorm(dim))
            elif s == 0.5:
                blocks["down2"] = nn.Sequential(nn.Conv2d(in_dim, dim, 2, stride=2), CellNorm(dim))
            else:
                blocks["down4"] = nn.Sequential(nn.Conv2d(dim, dim, 2, stride=2), CellNorm(dim))
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, fmap: torch.Tensor, mask: torch.Tensor, grid_sizes: torch.Tensor,
                image_cells: torch.Tensor, stem: torch.Tensor | None = None) -> list[Level]:
        """fmap [B, C, H, W] (zero on padding); grid_sizes [B, 2] valid cells (h, w) per image;
        image_cells [B, 2] the image extent in cells (h / p, w / p), fractional; stem [B, c, 2H, 2W], the
        stem map (needed when built with ``stem_dim``)."""
        x = fmap.masked_fill(mask[:, None], 0.0)
        out: dict[float, Level] = {}
        for s in self.scales:
            if s == 2.0:  # the stem map (1x1: its padded cells are zeroed by _level), or the patch map upsampled
                t = self.blocks["stem"](stem) if "stem" in self.blocks else self.blocks["up2"](x)
                grid = grid_sizes * 2
            elif s == 1.0:
                t, grid = self.blocks["same"](x), grid_sizes
            elif s == 0.5:
                t, grid = self.blocks["down2"](_pad_even(x)), torch.div(grid_sizes + 1, 2, rounding_mode="floor")
            else:
                half = out[0.5]
                t = self.blocks["down4"](_pad_even(half.tensor.masked_fill(half.mask[:, None], 0.0)))
                grid = torch.div(torch.div(grid_sizes + 1, 2, rounding_mode="floor") + 1, 2, rounding_mode="floor")
            out[s] = self._level(t, grid, image_cells * s)
        return [out[s] for s in self.scales]

    @staticmethod
    def _level(t: torch.Tensor, grid: torch.Tensor, extent: torch.Tensor) -> Level:
        h, w = t.shape[-2:]
        rows = torch.arange(h, device=t.device)[None, :, None] >= grid[:, 0, None, None]
        cols = torch.arange(w, device=t.device)[None, None, :] >= grid[:, 1, None, None]
        mask = rows | cols
        ratios = torch.stack([extent[:, 1] / w, extent[:, 0] / h], -1)
        return Level(t.masked_fill(mask[:, None], 0.0), mask, ratios)
