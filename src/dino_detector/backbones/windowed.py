"""Windowed self-attention for DINOv2 ViTs (as RF-DETR does): fewer FLOPs at detection resolutions.

The patch grid is cut into ``windows`` x ``windows`` tiles. In every block except the ``global_blocks`` the
tokens of a tile attend only to each other (each tile gets its own copy of the class / register tokens);
the global blocks (evenly spaced, the last included) attend over the whole image, so information still
crosses tiles. Attention costs O(N^2): with 2 x 2 tiles a windowed block spends a quarter of a global
block on attention; the per-token projections and MLP are unchanged. The weights are the ViT's own, so a
pretrained DINOv2 can run windowed too (its features then differ slightly from full attention, which
stays the default for pretrained weights; resolve.py's ``resolve_backbone_attention`` decides).

Runs the transformers blocks one by one (``encoder.layer[i](hidden)``), so LoRA adapters injected by
peft and frozen / trainable settings apply unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


def global_block_ids(depth: int, count: int) -> set[int]:
    """0-based ids of ``count`` evenly spaced blocks with full attention, the last block included."""
    count = max(1, min(count, depth))
    return {round(depth * (i + 1) / count) - 1 for i in range(count)}


def to_windows(tokens: torch.Tensor, prefix: int, grid: tuple[int, int], windows: int) -> torch.Tensor:
    """[B, prefix + gh*gw, D] -> [B * n * n, prefix + (gh/n)*(gw/n), D]: each tile with its own prefix copy."""
    b, _, d = tokens.shape
    gh, gw = grid
    n = windows
    patches = tokens[:, prefix:].reshape(b, n, gh // n, n, gw // n, d).permute(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b * n * n, (gh // n) * (gw // n), d)
    return torch.cat([tokens[:, :prefix].repeat_interleave(n * n, 0), patches], 1)


def from_windows(tokens: torch.Tensor, prefix: int, grid: tuple[int, int], windows: int) -> torch.Tensor:
    """Inverse of ``to_windows``; the tiles' prefix copies are averaged back into one."""
    n = windows
    b = tokens.shape[0] // (n * n)
    d = tokens.shape[-1]
    gh, gw = grid
    patches = tokens[:, prefix:].reshape(b, n, n, gh // n, gw // n, d).permute(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, gh * gw, d)
    head = tokens[:, :prefix].reshape(b, n * n, prefix, d).mean(1)
    return torch.cat([head, patches], 1)


class WindowedRunner(nn.Module):
    """Runs a transformers DINOv2 / DINOv2-with-registers model with windowed attention and returns the
    hidden states after the requested blocks (1-based, as ``hidden_states`` counts them), in image layout."""

    def __init__(self, vit: nn.Module, windows: int, global_blocks: int):
        super().__init__()
        if not hasattr(vit, "encoder") or not hasattr(vit, "embeddings"):
            raise ValueError("windowed backbone attention needs a DINOv2 ViT (DINOv3's rotary positions and "
                             "our flexible encoder are not supported)")
        if windows < 1:
            raise ValueError(f"backbone_windows must be at least 1, got {windows}")
        self.windows = windows
        self.global_ids = global_block_ids(len(vit.encoder.layer), global_blocks)

    def forward(self, vit: nn.Module, pixel_values: torch.Tensor, patch_size: int, prefix: int,
                wanted: list[int]) -> list[torch.Tensor]:
        """pixel_values [B, 3, H, W] with H, W multiples of patch_size * windows -> one [B, prefix + N, D]
        tensor per entry of ``wanted`` (block outputs before the final norm)."""
        grid = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
        hidden = vit.embeddings(pixel_values)
        windowed, kept = False, {}
        for i, block in enumerate(vit.encoder.layer):
            want_windows = i not in self.global_ids
            if want_windows != windowed:
                convert = to_windows if want_windows else from_windows
                hidden = convert(hidden, prefix, grid, self.windows)
                windowed = want_windows
            hidden = block(hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # transformers < 5 returns a tuple
            if i + 1 in wanted:
                kept[i + 1] = from_windows(hidden, prefix, grid, self.windows) if windowed else hidden
        return [kept[k] for k in wanted]
