"""Transformer encoder and decoder with standard or deformable cross-attention.

The decoder follows DAB-/Deformable-DETR: each query carries a reference box (cx, cy, w, h); its positional
query is an MLP of the box's sine embedding; with ``box_refine`` every layer predicts a correction of the
previous layer's box in logit space and passes the (detached) result on as the next reference.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .deformable import MSDeformAttn, project_values
from .heads import MLP, HeadSpec, inverse_sigmoid
from .position import sine_embed


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.net(x)))


class FlatLevels:
    """What attention needs to know about the (flattened, padded) feature maps of a batch."""

    def __init__(self, shapes: list[tuple[int, int]], valid_ratios: torch.Tensor, padding_mask: torch.Tensor):
        self.shapes = shapes  # [(Hf, Wf)] per level
        self.valid_ratios = valid_ratios  # [B, L, 2] (x, y)
        self.padding_mask = padding_mask  # [B, S] True on padding


class EncoderLayer(nn.Module):
    def __init__(self, *, dim: int, heads: int, ffn: int, dropout: float, attention: str, levels: int, points: int):
        super().__init__()
        self.deformable = attention == "deformable"
        self.attn = (MSDeformAttn(dim, levels, heads, points) if self.deformable
                     else nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True))
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn, dropout)

    def forward(self, src, pos, ref_points, levels: FlatLevels, first: int = 0):
        """Updates the tokens from index ``first`` on; every token (earlier ones too) is attended to."""
        q = src + pos
        keep, src_q, q_q = src[:, :first], src[:, first:], q[:, first:]
        if self.deformable:
            out = self.attn(q_q, ref_points[:, first:], src, levels.shapes, levels.valid_ratios,
                            levels.padding_mask)
        else:
            out = self.attn(q_q, q, src, key_padding_mask=levels.padding_mask, need_weights=False)[0]
        return torch.cat([keep, self.ffn(self.norm(src_q + self.drop(out)))], 1)


class DecoderLayer(nn.Module):
    """``shared_values``: deformable cross-attention reads values the Decoder projected once for all layers."""

    def __init__(self, *, dim: int, heads: int, ffn: int, dropout: float, attention: str, levels: int, points: int,
                 shared_values: bool = False):
        super().__init__()
        self.deformable = attention == "deformable"
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = (MSDeformAttn(dim, levels, heads, points, project_values=not shared_values)
                           if self.deformable
                           else nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True))
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn, dropout)

    def forward(self, tgt, query_pos, ref_boxes, memory, memory_pos, levels: FlatLevels,
                self_attn_mask: torch.Tensor | None = None):
        """``self_attn_mask`` [Q, Q]: True where query i must not attend to query j (separate branches)."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop1(self.self_attn(q, q, tgt, attn_mask=self_attn_mask,
                                                         need_weights=False)[0]))
        q = tgt + query_pos
        if self.deformable:
            out = self.cross_attn(q, ref_boxes, memory, levels.shapes, levels.valid_ratios, levels.padding_mask)
        else:
            out = self.cross_attn(q, memory + memory_pos, memory, key_padding_mask=levels.padding_mask,
                                  need_weights=False)[0]
        return self.ffn(self.norm2(tgt + self.drop2(out)))


class Encoder(nn.Module):
    """Stack of encoder layers. Tokens before index ``first`` (the upsampled level, when it is not encoded)
    are read by attention but passed through unchanged: that level alone holds four times the tokens of all
    coarser levels together, so encoding it would multiply the encoder's cost by about five."""

    def __init__(self, layer: EncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src, pos, ref_points, levels: FlatLevels, first: int = 0):
        for layer in self.layers:
            src = layer(src, pos, ref_points, levels, first)
        return src


class Decoder(nn.Module):
    """Returns per-layer class logits [L, B, Q, C] and boxes [L, B, Q, 4] (cx, cy, w, h in 0..1)."""

    def __init__(self, layer: DecoderLayer, *, num_layers: int, dim: int, heads: HeadSpec, box_refine: bool):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.query_pos_head = MLP(2 * dim, dim, dim, 2)
        self.box_refine = box_refine
        n_box = num_layers if box_refine else 1
        self.bbox_heads = nn.ModuleList(heads.box_head(dim) for _ in range(n_box))
        self.class_heads = nn.ModuleList(heads.class_head(dim) for _ in range(num_layers))
        self.dim = dim
        # One value projection of the memory for every layer, when the layers were built without their own:
        # the memory holds thousands of tokens and its projection dominates a CPU step otherwise.
        shared = layer.deformable and layer.cross_attn.value_proj is None
        self.value_proj = nn.Linear(dim, dim) if shared else None
        if shared:
            nn.init.xavier_uniform_(self.value_proj.weight)
            nn.init.zeros_(self.value_proj.bias)

    def forward(self, tgt, ref_logits, memory, memory_pos, levels: FlatLevels,
                self_attn_mask: torch.Tensor | None = None):
        """tgt [B, Q, C] query content; ref_logits [B, Q, 4] initial boxes before the sigmoid;
        self_attn_mask [Q, Q] bool, True where a query must not see another (queries of separate branches)."""
        ref = ref_logits.sigmoid()
        if self.value_proj is not None:
            memory = project_values(self.value_proj, memory, levels.padding_mask)
        all_logits, all_boxes = [], []
        for i, layer in enumerate(self.layers):
            query_pos = self.query_pos_head(sine_embed(ref, self.dim // 2))
            tgt = layer(tgt, query_pos, ref, memory, memory_pos, levels, self_attn_mask)
            box_head_i = self.bbox_heads[i if self.box_refine else 0]
            boxes = (box_head_i(tgt) + inverse_sigmoid(ref)).sigmoid()
            all_logits.append(self.class_heads[i](tgt))
            all_boxes.append(boxes)
            if self.box_refine:
                ref = boxes.detach()  # as Deformable DETR: no gradient through the reference chain
        return torch.stack(all_logits), torch.stack(all_boxes)
