"""The flexible encoder (``--dino_model flexible-tiny|flexible-small|flexible-base|flexible-lite``): a
convolutional stem (strides 2, 4, 8) then ViT blocks on a stride-16 grid, for images of any H x W.

``flexible-lite`` is built for CPU deployment: a 4 x 4 patchify convolution replaces the stem's
full-resolution stride-2 layer, and its blocks attend on the stride-16 map pooled 2 x 2 (a quarter of the
tokens, a sixteenth of the attention); their output is repeated back onto the stride-16 grid and added to
the stem's own stride-16 tokens, so the rest of the package sees the same stride-16 interface.

The stem gives the transformer local, translation-equivariant features (cheaper than a large patch
projection and easier to pretrain on small data); the ViT blocks add global context. Positions are a 2D
sine-cosine encoding computed for the actual grid, so there is no learned table to interpolate and nothing
ties the encoder to a training resolution. ``maps()`` returns the stride 8, 16 and 32 maps; the detector
can take its finest pyramid level from the stem's stride-8 map (``--fine_level stem``).

It speaks the ``transformers`` ViT interface the rest of the package uses for DINOv2 / DINOv3
(``forward(pixel_values, bool_masked_pos, output_hidden_states)`` -> ``last_hidden_state`` with a CLS
token first; modules named ``embeddings``, ``encoder.layer.N`` with ``q_proj/k_proj/v_proj/o_proj`` and
``mlp.fc1/fc2``, ``layernorm``), so ViTBackbone, LoRA targets, layer-wise LR decay and the SSL code work
on it unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .catalog import FLEXIBLE_ARCHITECTURES

PATCH = 16  # the ViT grid's stride in pixels
MLP_RATIO = 4


def sincos_positions(h: int, w: int, dim: int, device, dtype) -> torch.Tensor:
    """[h*w, dim] 2D sine-cosine encoding: half the channels for y, half for x (as MAE / DINOv3 ablations)."""
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * freq[None]
        parts += [angles.sin(), angles.cos()]
    out = torch.cat(parts, -1)
    return F.pad(out, (0, dim - out.shape[-1])).to(dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim * MLP_RATIO), nn.Linear(dim * MLP_RATIO, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attention, self.mlp = Attention(dim, heads), Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def conv_bn_act(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(1, cout), nn.GELU())


class Embeddings(nn.Module):
    """Stem (stride 8 map) -> 2x2 stride-2 projection to the stride-16 grid, mask token; then positions and
    the CLS token on the grid the blocks attend on (``block_stride`` 16: that grid; 32: it pooled 2 x 2)."""

    def __init__(self, dim: int, c1: int, c2: int, block_stride: int = PATCH, stem_stride: int = 2):
        super().__init__()
        if stem_stride == 4:  # one patchify convolution: no full-resolution stride-2 map to normalise
            first = nn.Sequential(nn.Conv2d(3, c1, 4, 4, bias=False), nn.GroupNorm(1, c1), nn.GELU())
            self.stem = nn.Sequential(first, conv_bn_act(c1, c2, 2))
        else:
            self.stem = nn.Sequential(conv_bn_act(3, c1, 2), conv_bn_act(c1, c1, 2), conv_bn_act(c1, c2, 2))
        self.patch_embeddings = nn.Conv2d(c2, dim, 2, 2)
        self.block_stride = block_stride
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # replaces masked patches (iBOT pretraining)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def grid(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None):
        """pixel_values [B, 3, H, W] (H, W multiples of 16) -> stride-16 map [B, D, h, w] (masked cells take
        the mask token), stride-8 map."""
        stride8 = self.stem(pixel_values)
        grid = self.patch_embeddings(stride8)
        if bool_masked_pos is not None:
            b, d, h, w = grid.shape
            masked = bool_masked_pos.view(b, 1, h, w)
            grid = torch.where(masked, self.mask_token.to(grid.dtype).view(1, d, 1, 1), grid)
        return grid, stride8

    def tokens(self, grid: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Stride-16 map [B, D, h, w] -> the blocks' tokens [B, 1 + h'*w', D] with positions and CLS, and
        (h', w'): (h, w), or the map average-pooled to stride 32 (odd sides rounded up)."""
        if self.block_stride != PATCH:
            grid = F.avg_pool2d(grid, 2, ceil_mode=True)
        b, d, h, w = grid.shape
        tokens = grid.flatten(2).transpose(1, 2) + sincos_positions(h, w, d, grid.device, grid.dtype)
        return torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], 1), (h, w)


@dataclass
class EncoderOutput:
    """last_hidden_state [B, 1 + h*w, D]; hidden_states the embedding output and every block's (when asked);
    stem_map [B, c, H/8, W/8], the convolutional stem's stride-8 map (the detector's finest level)."""
    last_hidden_state: torch.Tensor
    hidden_states: tuple | None = None
    stem_map: torch.Tensor | None = None


class FlexibleEncoder(nn.Module):
    def __init__(self, name: str = "flexible-tiny"):
        super().__init__()
        if name not in FLEXIBLE_ARCHITECTURES:
            raise ValueError(f"unknown flexible encoder '{name}'; choose one of {sorted(FLEXIBLE_ARCHITECTURES)}")
        arch = FLEXIBLE_ARCHITECTURES[name]
        self.name = name
        self.config = SimpleNamespace(hidden_size=arch.dim, num_hidden_layers=arch.depth,
                                      num_attention_heads=arch.heads, patch_size=PATCH, num_register_tokens=0,
                                      model_type="flexible")
        self.embeddings = Embeddings(arch.dim, arch.c1, arch.c2, arch.block_stride, arch.stem_stride)
        self.stem_channels = arch.c2
        dim, depth, heads = arch.dim, arch.depth, arch.heads
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.layernorm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> EncoderOutput:
        """pixel_values [B, 3, H, W], H and W multiples of 16 (ViTBackbone pads); bool_masked_pos [B, h*w]
        on the stride-16 grid. Tokens come out on that grid whatever ``block_stride``."""
        grid, stem_map = self.embeddings.grid(pixel_values, bool_masked_pos)
        x, block_grid = self.embeddings.tokens(grid)
        states = [x]
        for block in self.encoder.layer:
            x = block(x)
            states.append(x)
        if block_grid != grid.shape[-2:]:
            x = self._back_to_grid(x, grid, block_grid)
            states = [self._back_to_grid(s, grid, block_grid) for s in states] if output_hidden_states else states
        return EncoderOutput(self.layernorm(x), tuple(states) if output_hidden_states else None, stem_map)

    @staticmethod
    def _back_to_grid(tokens: torch.Tensor, grid: torch.Tensor, coarse_hw: tuple[int, int]) -> torch.Tensor:
        """Tokens [B, 1 + h'*w', D] of the stride-32 grid (h', w') -> [B, 1 + h*w, D] on the stride-16
        ``grid`` [B, D, h, w]: each coarse token repeated over its 2 x 2 cells plus the cells' own stem tokens
        (the skip that keeps stride-16 detail), CLS kept."""
        b, d, h, w = grid.shape
        coarse = tokens[:, 1:].transpose(1, 2).reshape(b, d, *coarse_hw)
        fine = F.interpolate(coarse, scale_factor=2.0, mode="nearest")[..., :h, :w] + grid
        return torch.cat([tokens[:, :1], fine.flatten(2).transpose(1, 2)], 1)

    def maps(self, pixel_values: torch.Tensor) -> dict[int, torch.Tensor]:
        """{8: [B, c, H/8, W/8], 16: [B, D, H/16, W/16], 32: [B, D, H/32, W/32]} for any H x W (padded up to
        a multiple of 16 with zeros, i.e. the mean colour after normalisation)."""
        h, w = pixel_values.shape[-2:]
        pixel_values = F.pad(pixel_values, (0, -w % PATCH, 0, -h % PATCH))
        out = self(pixel_values)
        gh, gw = pixel_values.shape[-2] // PATCH, pixel_values.shape[-1] // PATCH
        grid = out.last_hidden_state[:, 1:].transpose(1, 2).reshape(pixel_values.shape[0], -1, gh, gw)
        # stride 32 without parameters: the detector does not use it, and unused weights would stall DDP
        return {8: out.stem_map, 16: grid, 32: F.avg_pool2d(grid, 2, ceil_mode=True)}


def is_flexible(name: str) -> bool:
    return name in FLEXIBLE_ARCHITECTURES
