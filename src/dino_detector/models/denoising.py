"""Denoising queries (DN-DETR; DINO's contrastive denoising): training-only decoder queries built from
noised ground-truth boxes, which the decoder learns to restore.

Matching is what makes DETRs slow to converge: early in training a query's matched object changes from step
to step. A denoising query has a fixed object (the one it was noised from), so its box and class losses
teach the decoder layers from the first step, without the matcher. Every object gives one positive query
(box moved by less than ``box_noise`` of its half-size: it learns the object) and one negative query (moved
by between one and two times that: it learns "no object", so a near-miss is not kept as a duplicate). The
content of a query is the embedding of the object's class, flipped to a random class with probability
``label_noise / 2``. Queries come in groups (one positive and one negative per object each) as many as fit
in ``num_queries``; groups never attend to each other or to the matching queries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_convert

from .heads import inverse_sigmoid

# the detector's state-dict name of the class embedding of noised queries: class-indexed, but an input, not a
# class head (models/transfer.py rebuilds it row by row and never from another class's row)
LABEL_EMBEDDING = "denoising.label_embed.weight"


@dataclass
class DenoisingBatch:
    """content [B, P, d] and ref_logits [B, P, 4] of the P denoising queries; branch [P]: the group of each
    query; target [B, P]: index of its object in the image's targets, -1 for negatives and padding."""
    content: torch.Tensor
    ref_logits: torch.Tensor
    branch: torch.Tensor
    target: torch.Tensor
    groups: int

    def indices(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(query, object) pairs of every image's positive queries, in the matcher's format."""
        pairs = []
        for row in self.target:
            query = torch.nonzero(row >= 0).flatten()
            pairs.append((query, row[query]))
        return pairs


class DenoisingQueries(nn.Module):
    def __init__(self, num_classes: int, dim: int, num_queries: int, box_noise: float = 1.0,
                 label_noise: float = 0.5):
        super().__init__()
        if num_queries < 0 or box_noise < 0 or not 0 <= label_noise <= 1:
            raise ValueError("denoising needs dn_queries >= 0, dn_box_noise >= 0 and dn_label_noise in [0, 1], "
                             f"got {num_queries}, {box_noise}, {label_noise}")
        self.label_embed = nn.Embedding(num_classes, dim)
        self.num_classes, self.num_queries = num_classes, num_queries
        self.box_noise, self.label_noise = box_noise, label_noise

    def forward(self, targets: list[dict]) -> DenoisingBatch | None:
        """targets: per image ``labels`` [n] and ``boxes`` [n, 4] (cx, cy, w, h in 0..1). None when the batch
        has no objects or ``num_queries`` cannot hold one group."""
        most = max((len(t["labels"]) for t in targets), default=0)
        groups = self.num_queries // (2 * most) if most else 0
        if groups == 0:
            return None
        device = self.label_embed.weight.device
        b, per_group = len(targets), 2 * most
        labels = torch.zeros(b, most, dtype=torch.int64, device=device)
        boxes = torch.full((b, most, 4), 0.5, device=device)
        valid = torch.zeros(b, most, dtype=torch.bool, device=device)
        for i, t in enumerate(targets):
            n = len(t["labels"])
            labels[i, :n], boxes[i, :n], valid[i, :n] = t["labels"], t["boxes"], True
        # [B, groups, 2 (positive, negative), most] -> [B, P]
        shape = (b, groups, 2, most)
        labels = labels[:, None, None].expand(shape).reshape(b, -1)
        boxes = boxes[:, None, None].expand(*shape, 4).reshape(b, -1, 4)
        valid = valid[:, None, None].expand(shape).reshape(b, -1)
        negative = (torch.arange(per_group, device=device) >= most).repeat(groups)  # [P]: each group's 2nd half

        flip = torch.rand(labels.shape, device=device) < self.label_noise / 2
        labels = torch.where(flip, torch.randint_like(labels, self.num_classes), labels)
        # corners move by up to box_noise x half the box size (positives) or 1-2 times that (negatives)
        xyxy = box_convert(boxes, "cxcywh", "xyxy")
        half = boxes[..., 2:].repeat(1, 1, 2) / 2
        part = torch.rand_like(xyxy) + negative[None, :, None].to(xyxy.dtype)
        sign = torch.randint_like(xyxy, 2) * 2 - 1
        xyxy = (xyxy + sign * part * half * self.box_noise).clamp(0.0, 1.0)
        noised = box_convert(xyxy, "xyxy", "cxcywh")

        positions = torch.arange(most, device=device).repeat(2 * groups)
        target = torch.where(valid & ~negative[None], positions[None].expand(b, -1), -1)
        branch = torch.arange(groups, device=device).repeat_interleave(per_group)
        return DenoisingBatch(self.label_embed(labels), inverse_sigmoid(noised), branch, target, groups)
