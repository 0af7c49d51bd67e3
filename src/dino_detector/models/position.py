"""Sine positional encodings of normalised coordinates (DETR / Deformable DETR style)."""
from __future__ import annotations

import math

import torch

TEMPERATURE = 10000.0


def sine_embed(coords: torch.Tensor, dim_per_coord: int) -> torch.Tensor:
    """coords [..., K] in 0..1 -> [..., K * dim_per_coord] interleaved sin / cos features."""
    half = dim_per_coord // 2
    freqs = TEMPERATURE ** (torch.arange(half, device=coords.device, dtype=coords.dtype) / half)
    angles = coords.unsqueeze(-1) * (2 * math.pi) / freqs  # [..., K, half]
    emb = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # [..., K, dim_per_coord]
    return emb.flatten(-2)


def map_coordinates(shape: tuple[int, int], valid_ratios: torch.Tensor) -> torch.Tensor:
    """Cell-centre (x, y) of a padded [Hf, Wf] map, normalised to each image's own extent.

    valid_ratios [B, 2] (x, y): the fraction of the padded map covered by the image. Returns [B, Hf*Wf, 2].
    Coordinates depend only on the image, not on how much the batch padded it.
    """
    hf, wf = shape
    dtype, device = valid_ratios.dtype, valid_ratios.device
    ys = (torch.arange(hf, dtype=dtype, device=device) + 0.5) / hf
    xs = (torch.arange(wf, dtype=dtype, device=device) + 0.5) / wf
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(1, -1, 2)
    return grid / valid_ratios[:, None, :]


def map_position_embedding(shape: tuple[int, int], valid_ratios: torch.Tensor, dim: int) -> torch.Tensor:
    """[B, Hf*Wf, dim] sine embedding of each cell's normalised position."""
    return sine_embed(map_coordinates(shape, valid_ratios), dim // 2)
