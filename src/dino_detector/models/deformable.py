"""Multi-scale deformable attention (Deformable DETR), pure PyTorch: runs on CPU and exports to ONNX.

Each query samples ``num_points`` locations per head and level around its reference point with
``grid_sample`` (bilinear, zeros outside the map) and mixes them with softmax-normalised weights.

Every value token is projected, then sampled. (Sampling the raw 256-channel tokens first and projecting the
mix per head is exact too, since sampling is linear, and needs far fewer multiply-adds for a 100-query
decoder; measured on CPU it is 2x slower, grid_sample's backward over the full width dominating.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

OFFSET_INIT_SHIFT = 0.1  # cells; see MSDeformAttn.reset_parameters


def ms_deform_attn_core(value: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                        sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """value [B, S, H, D] (S = sum of h*w over levels); sampling_locations [B, Q, H, L, P, 2] as (x, y) in
    0..1 of each padded level map; attention_weights [B, Q, H, L, P]. Returns [B, Q, H*D]."""
    b, _, heads, dim = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    value_levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants -1..1
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, q, levels, points)
    out = value.new_zeros(b * heads, dim, q)
    # level by level: a [B*H, D, Q, L, P] stack of all samples costs ~40 % more time on CPU
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = value_levels[lvl].permute(0, 2, 3, 1).reshape(b * heads, dim, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * heads, q, points, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # [BH, D, Q, P]
        out = out + (sampled * weights[:, :, :, lvl]).sum(-1)
    return out.view(b, heads * dim, q).transpose(1, 2)


def project_values(linear: nn.Linear, value: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """linear(value) [B, S, C] with padded tokens set to zero, so padding never leaks into samples."""
    v = linear(value)
    if padding_mask is None:
        return v
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():  # no branch on tensor values in a graph
        return v.masked_fill(padding_mask[..., None], 0.0)
    if padding_mask.any():
        v[padding_mask] = 0.0  # in place, on the padded rows only: a broadcast masked_fill copies everything
    return v


class MSDeformAttn(nn.Module):
    """Deformable attention module. Reference points are (x, y) or boxes (cx, cy, w, h) in 0..1 of each
    image's valid region; ``valid_ratios`` [B, L, 2] maps them onto the padded maps."""

    def __init__(self, dim: int = 256, levels: int = 1, heads: int = 8, points: int = 4,
                 project_values: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden dim {dim} must be divisible by the number of heads {heads}")
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        # project_values False: the caller passes values already projected and masked (see project_values)
        self.value_proj = nn.Linear(dim, dim) if project_values else None
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start on a ring of directions, one per head, growing with the point index.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            # Shifted off the integers: the encoder's reference points are cell centres, so integer offsets
            # would put every initial sample exactly on a cell centre, where bilinear sampling has a kink and
            # its gradient depends on float rounding, i.e. on how far the image happens to be padded.
            self.sampling_offsets.bias.copy_(grid.flatten() + OFFSET_INIT_SHIFT)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def sampling(self, query: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                 valid_ratios: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations [B, Q, H, L, P, 2] (0..1 of the padded maps) and weights [B, Q, H, L, P]."""
        b, q, _ = query.shape
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        ratios = valid_ratios[:, None, None, :, None, :]  # [B, 1, 1, L, 1, 2]
        if reference_points.shape[-1] == 2:
            # offsets are in feature cells of each level
            normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype,
                                      device=query.device)
            loc = reference_points[:, :, None, None, None, :] * ratios \
                + offsets / normaliser[None, None, None, :, None, :]
        else:
            # offsets are relative to the box size, spread over the points
            centre = reference_points[:, :, None, None, None, :2]
            size = reference_points[:, :, None, None, None, 2:]
            loc = (centre + offsets / self.points * size * 0.5) * ratios
        return loc, weights

    def sample_values(self, value, padding_mask, spatial_shapes, loc, weights) -> torch.Tensor:
        """Projected values sampled: [B, Q, H*D]."""
        b, s, _ = value.shape
        v = project_values(self.value_proj, value, padding_mask) if self.value_proj is not None else value
        return ms_deform_attn_core(v.view(b, s, self.heads, -1), spatial_shapes, loc, weights)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], valid_ratios: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query [B, Q, C]; reference_points [B, Q, 2 or 4]; value [B, S, C]; padding_mask [B, S]."""
        loc, weights = self.sampling(query, reference_points, spatial_shapes, valid_ratios)
        return self.output_proj(self.sample_values(value, padding_mask, spatial_shapes, loc, weights))
