"""Hungarian matching between predictions and ground truth (scipy's linear_sum_assignment)."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from ..models.heads import class_probabilities


class HungarianMatcher(nn.Module):
    """Cost = w_class * class cost + w_bbox * L1(cxcywh) - w_giou * GIoU. The class cost is the focal one of
    Deformable DETR for sigmoid scores, or DETR's -p(target class) for softmax scores.

    One cost matrix for the whole batch (all queries x all targets), split per image before the assignment.
    ``repeats`` k > 1 matches one-to-many (H-DETR): every target is offered k times, so up to k queries learn
    each object.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0, softmax: bool = False):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma, self.softmax = alpha, gamma, softmax

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict], repeats: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: pred_logits [B, Q, C], pred_boxes [B, Q, 4]; targets: per image labels [N_i], boxes [N_i, 4].
        Returns per image (query indices, target indices), both int64 of length min(Q, repeats * N_i); a target
        index appears up to ``repeats`` times."""
        b, q = outputs["pred_logits"].shape[:2]
        sizes = [len(t["labels"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]
        prob = class_probabilities(outputs["pred_logits"].flatten(0, 1).float(), self.softmax)  # [B*Q, C]
        boxes = outputs["pred_boxes"].flatten(0, 1).float()
        tgt_labels = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).float()

        p = prob[:, tgt_labels]
        if self.softmax:
            class_cost = -p
        else:
            neg = (1 - self.alpha) * p ** self.gamma * -(1 - p + 1e-8).log()
            pos = self.alpha * (1 - p) ** self.gamma * -(p + 1e-8).log()
            class_cost = pos - neg
        cost = (self.cost_class * class_cost
                + self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
                - self.cost_giou * generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                                                       box_convert(tgt_boxes, "cxcywh", "xyxy")))
        cost = cost.view(b, q, -1).cpu()
        indices = []
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[i].repeat(1, repeats).numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64),
                            torch.as_tensor(cols % max(sizes[i], 1), dtype=torch.int64)))
        return indices
