"""The flexible encoder (``--dino_model flexible-tiny|flexible-small|flexible-base``): a convolutional stem
(strides 2, 4, 8) then ViT blocks on a stride-16 grid, for images of any H x W.

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
    """Stem (stride 8 map) -> 2x2 stride-2 projection to the ViT grid, CLS token, mask token, positions."""

    def __init__(self, dim: int, c1: int, c2: int):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_act(3, c1, 2), conv_bn_act(c1, c1, 2), conv_bn_act(c1, c2, 2))
        self.patch_embeddings = nn.Conv2d(c2, dim, 2, 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # replaces masked patches (iBOT pretraining)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None):
        """pixel_values [B, 3, H, W] (H, W multiples of 16) -> tokens [B, 1 + h*w, D], stride-8 map, (h, w)."""
        stride8 = self.stem(pixel_values)
        grid = self.patch_embeddings(stride8)
        b, d, h, w = grid.shape
        tokens = grid.flatten(2).transpose(1, 2)
        if bool_masked_pos is not None:
            tokens = torch.where(bool_masked_pos[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + sincos_positions(h, w, d, tokens.device, tokens.dtype)
        return torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], 1), stride8, (h, w)


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
        dim, depth, heads, c1, c2 = FLEXIBLE_ARCHITECTURES[name]
        self.name = name
        self.config = SimpleNamespace(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                                      patch_size=PATCH, num_register_tokens=0, model_type="flexible")
        self.embeddings = Embeddings(dim, c1, c2)
        self.stem_channels = c2
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
        """pixel_values [B, 3, H, W], H and W multiples of 16 (ViTBackbone pads); bool_masked_pos [B, h*w]."""
        x, stem_map, _ = self.embeddings(pixel_values, bool_masked_pos)
        states = [x]
        for block in self.encoder.layer:
            x = block(x)
            states.append(x)
        return EncoderOutput(self.layernorm(x), tuple(states) if output_hidden_states else None, stem_map)

    def maps(self, pixel_values: torch.Tensor) -> dict[int, torch.Tensor]:
        """{8: [B, c, H/8, W/8], 16: [B, D, H/16, W/16], 32: [B, D, H/32, W/32]} for any H x W (padded up to
        a multiple of 16 with zeros, i.e. the mean colour after normalisation)."""
        h, w = pixel_values.shape[-2:]
        pixel_values = F.pad(pixel_values, (0, -w % PATCH, 0, -h % PATCH))
        x, stride8, (gh, gw) = self.embeddings(pixel_values, None)
        for block in self.encoder.layer:
            x = block(x)
        grid = self.layernorm(x)[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
        # stride 32 without parameters: the detector does not use it, and unused weights would stall DDP
        return {8: stride8, 16: grid, 32: F.avg_pool2d(grid, 2, ceil_mode=True)}




def is_flexible(name: str) -> bool:
    return name in FLEXIBLE_ARCHITECTURES
