"""Set-prediction losses (DETR's SetCriterion): a dict of named losses plus a separate weight dict."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from .matcher import HungarianMatcher


class SetCriterion(nn.Module):
    """Sigmoid focal classification loss over every query, L1 and GIoU on matched boxes, each normalised by
    the number of target boxes in the batch; the same on every auxiliary decoder output (suffix ``_i``) and
    on the two-stage proposals (suffix ``_enc``)."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.base_weights = dict(weight_dict)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def weight_dict(self, num_aux: int, with_enc: bool = False) -> dict[str, float]:
        """Weights of every loss key: final layer, ``num_aux`` auxiliary layers, two-stage proposals."""
        weights = dict(self.base_weights)
        for suffix in [str(i) for i in range(num_aux)] + (["enc"] if with_enc else []):
            weights.update({f"{k}_{suffix}": v for k, v in self.base_weights.items()})
        return weights

    def loss_labels(self, logits: torch.Tensor, targets, indices, num_boxes: float) -> torch.Tensor:
        """logits [B, Q, C]. Unmatched queries learn 'no object' as all-zero targets."""
        onehot = torch.zeros_like(logits)
        for i, (src, tgt) in enumerate(indices):
            onehot[i, src, targets[i]["labels"][tgt]] = 1.0
        loss = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                  reduction="sum")
        return loss / num_boxes

    @staticmethod
    def matched_boxes(boxes: torch.Tensor, targets, indices) -> tuple[torch.Tensor, torch.Tensor]:
        src = torch.cat([boxes[i, s] for i, (s, _) in enumerate(indices)])
        tgt = torch.cat([targets[i]["boxes"][t] for i, (_, t) in enumerate(indices)])
        return src, tgt

    def loss_boxes(self, boxes: torch.Tensor, targets, indices, num_boxes: float) -> dict[str, torch.Tensor]:
        src, tgt = self.matched_boxes(boxes, targets, indices)
        if src.numel() == 0:
            zero = boxes.sum() * 0.0  # keeps the graph connected for DDP / AMP
            return {"loss_bbox": zero, "loss_giou": zero}
        l1 = nn.functional.l1_loss(src, tgt, reduction="sum") / num_boxes
        giou = generalized_box_iou_loss(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"),
                                        reduction="sum") / num_boxes
        return {"loss_bbox": l1, "loss_giou": giou}

    def single(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses = {"loss_ce": self.loss_labels(outputs["pred_logits"], targets, indices, num_boxes)}
        losses.update(self.loss_boxes(outputs["pred_boxes"], targets, indices, num_boxes))
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        num_boxes = float(sum(len(t["labels"]) for t in targets))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            n = torch.tensor(num_boxes, device=outputs["pred_logits"].device)
            torch.distributed.all_reduce(n)
            num_boxes = n.item() / torch.distributed.get_world_size()
        num_boxes = max(num_boxes, 1.0)
        losses = self.single(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self.single(aux, targets, num_boxes).items()})
        if "enc_outputs" in outputs:  # two-stage proposals learn from the same set loss
            losses.update({f"{k}_enc": v for k, v in self.single(outputs["enc_outputs"], targets, num_boxes).items()})
        return losses


def build_criterion(num_classes: int, loss_cfg) -> SetCriterion:
    matcher = HungarianMatcher(loss_cfg.set_cost_class, loss_cfg.set_cost_bbox, loss_cfg.set_cost_giou,
                               loss_cfg.focal_alpha, loss_cfg.focal_gamma)
    weights = {"loss_ce": loss_cfg.cls_loss_coef, "loss_bbox": loss_cfg.bbox_loss_coef,
               "loss_giou": loss_cfg.giou_loss_coef}
    return SetCriterion(num_classes, matcher, weights, loss_cfg.focal_alpha, loss_cfg.focal_gamma)
