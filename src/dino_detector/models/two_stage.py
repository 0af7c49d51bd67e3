"""Two-stage query selection (Deformable DETR / DINO): every encoder token proposes a box, the top-k
scoring proposals become the decoder's initial reference boxes.

Each token's proposal is centred on its cell with a side of ``BASE_PROPOSAL_SIZE * 2**level`` (coarser
levels propose larger boxes); a box head refines it and a class head scores it. Padding tokens and
proposals centred on the image border are never selected. The selected boxes are detached: the decoder
refines them, the encoder learns from its own loss on them (``enc_outputs``).
"""
from __future__ import annotations

import torch
from torch import nn

from .heads import HeadSpec, class_probabilities, inverse_sigmoid

BASE_PROPOSAL_SIZE = 0.05  # proposal side on the finest level, as a fraction of the image
BORDER = 0.01  # centres closer than this to the image border are not proposed


class ProposalSelector(nn.Module):
    def __init__(self, dim: int, heads: HeadSpec, num_queries: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.class_head = heads.class_head(dim)
        self.box_head = heads.box_head(dim)
        self.softmax = heads.softmax
        self.num_queries = num_queries

    def forward(self, memory: torch.Tensor, centres: torch.Tensor, shapes: list[tuple[int, int]],
                padding_mask: torch.Tensor, extra: int = 0) -> tuple[torch.Tensor, dict]:
        """memory [B, S, d]; centres [B, S, 2] image-normalised; shapes [(H, W)] per level, finest first;
        padding_mask [B, S]; ``extra``: proposals selected beyond ``num_queries`` (the hybrid branch's, ranked
        after the main ones). Returns initial reference-box logits [B, Q + extra, 4] (detached, best first)
        and enc_outputs."""
        level_index = torch.cat([torch.full((h * w,), i, device=memory.device) for i, (h, w) in enumerate(shapes)])
        size = BASE_PROPOSAL_SIZE * (2.0 ** level_index.to(memory.dtype))
        proposals = torch.cat([centres, size[None, :, None].expand(centres.shape[0], -1, 2)], -1)
        invalid = padding_mask | ((centres < BORDER) | (centres > 1 - BORDER)).any(-1)
        feats = self.project(memory.masked_fill(invalid[..., None], 0.0))
        logits = self.class_head(feats)
        box_logits = self.box_head(feats) + inverse_sigmoid(proposals)
        scores = class_probabilities(logits, self.softmax).max(-1).values
        # invalid positions rank after every valid one (scores are 0..1), by position: a small image has more
        # of them than queries, and equal scores would let torch and an exported graph's TopK pick different ones
        position = torch.arange(scores.shape[1], device=scores.device, dtype=scores.dtype) / scores.shape[1]
        scores = torch.where(invalid, -1.0 - position, scores)
        k = min(self.num_queries + extra, scores.shape[1])
        top = scores.topk(k, dim=1).indices

        def pick(t: torch.Tensor) -> torch.Tensor:
            return torch.gather(t, 1, top[..., None].expand(-1, -1, t.shape[-1]))

        chosen = pick(box_logits)
        enc_outputs = {"pred_logits": pick(logits), "pred_boxes": chosen.sigmoid()}
        return chosen.detach(), enc_outputs
