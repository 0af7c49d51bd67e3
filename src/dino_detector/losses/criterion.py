"""Set-prediction losses (DETR's SetCriterion): a dict of named losses plus a separate weight dict."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from .matcher import HungarianMatcher

BOX_LOSSES = ("l1", "smooth_l1")


class SetCriterion(nn.Module):
    """Classification loss over every query (sigmoid focal, or softmax cross-entropy with a down-weighted
    "no object" class), L1 or smooth-L1 and GIoU on matched boxes, each normalised by the number of target
    boxes in the batch; the same on every auxiliary decoder output (suffix ``_i``) and on the two-stage
    proposals (suffix ``_enc``).

    ``one_to_many`` k > 1 matches each object to up to k queries, so many more queries get a box to learn,
    normalised by k times the number of boxes. With a hybrid branch (the model's ``hybrid_outputs``, H-DETR's
    hybrid matching; suffix ``_hybrid``) it applies to that branch and to the proposals, and the main queries
    stay one-to-one in every layer. Without one (H-DETR's hybrid layers, no extra compute) it applies to the
    proposals and every decoder layer but the last two, which learn to keep one box per object.

    Denoising queries (the model's ``dn_outputs``, suffix ``_dn``) need no matching: each positive query
    learns the object it was noised from (``indices``), the rest learn "no object"; normalised by the number
    of groups times the number of boxes."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float], *,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, softmax: bool = False,
                 no_object_weight: float = 0.1, box_loss: str = "l1", smooth_l1_beta: float = 0.1,
                 iou_aware: bool = False, vfl_alpha: float = 0.75, one_to_many: int = 1,
                 iou_aware_loss: str = "varifocal", mal_gamma: float = 1.5):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got '{box_loss}'")
        self.num_classes = num_classes
        self.matcher = matcher
        self.base_weights = dict(weight_dict)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.softmax, self.box_loss, self.smooth_l1_beta = softmax, box_loss, smooth_l1_beta
        self.iou_aware, self.vfl_alpha = iou_aware and not softmax, vfl_alpha
        if iou_aware_loss not in ("varifocal", "mal"):
            raise ValueError(f"iou_aware_loss must be 'varifocal' or 'mal', got '{iou_aware_loss}'")
        self.iou_aware_loss, self.mal_gamma = iou_aware_loss, mal_gamma
        if one_to_many < 1:
            raise ValueError(f"one_to_many must be >= 1, got {one_to_many}")
        self.one_to_many = one_to_many
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = no_object_weight
        self.register_buffer("class_weight", class_weight, persistent=False)

    @property
    def final_terms(self) -> tuple[str, ...]:
        """The loss keys of the final decoder layer; every other key is one of them plus a suffix (``_i``
        auxiliary layer, ``_enc`` proposals, ``_hybrid``, ``_dn``)."""
        return tuple(self.base_weights)

    def final_losses(self, losses: dict) -> dict:
        """The final layer's terms of ``losses`` (the epoch summaries and validation losses report these)."""
        return {k: losses[k] for k in self.final_terms if k in losses}

    def weight_dict(self, num_aux: int, with_enc: bool = False, with_hybrid: bool = False,
                    with_dn: bool = False) -> dict[str, float]:
        """Weights of every loss key: final layer, ``num_aux`` auxiliary layers, two-stage proposals, and the
        same layers of the hybrid branch and of the denoising queries."""
        layers = [""] + [f"_{i}" for i in range(num_aux)]
        suffixes = (layers + (["_enc"] if with_enc else []) + ([f"{s}_hybrid" for s in layers] if with_hybrid else [])
                    + ([f"{s}_dn" for s in layers] if with_dn else []))
        return {f"{k}{suffix}": v for suffix in suffixes for k, v in self.base_weights.items()}

    def total(self, losses: dict[str, torch.Tensor], outputs: dict) -> torch.Tensor:
        """The weighted sum of ``losses`` (this criterion's output for ``outputs``): the loss to minimise."""
        weights = self.weight_dict(len(outputs.get("aux_outputs", [])), "enc_outputs" in outputs,
                                   "hybrid_outputs" in outputs, "dn_outputs" in outputs)
        return sum(losses[k] * weights[k] for k in losses)

    def loss_labels(self, logits: torch.Tensor, targets, indices, num_boxes: float,
                    num_images: float | None = None, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, Q, C] (sigmoid) or [B, Q, C + 1] (softmax). Unmatched queries learn 'no object'.
        ``boxes`` [B, Q, 4]: the predicted boxes, needed by ``iou_aware``."""
        if self.softmax:
            classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
            for i, (src, tgt) in enumerate(indices):
                classes[i, src] = targets[i]["labels"][tgt]
            # DETR: mean over queries weighted by class, so the many background queries do not swamp the few
            # objects. Its denominator (sum of weights: 1 per matched query, no_object_weight per other one)
            # comes from the counts of the whole step, so split batches (DDP, accumulation) give the same loss.
            ce = nn.functional.cross_entropy(logits.transpose(1, 2), classes,
                                             weight=self.class_weight.to(logits.dtype), reduction="sum")
            num_images = len(targets) if num_images is None else num_images
            matched = min(num_boxes, num_images * logits.shape[1])
            no_object = num_images * logits.shape[1] - matched
            return ce / max(matched + float(self.class_weight[-1]) * no_object, 1e-6)
        onehot = torch.zeros_like(logits)
        for i, (src, tgt) in enumerate(indices):
            onehot[i, src, targets[i]["labels"][tgt]] = 1.0
        if self.iou_aware and boxes is not None:
            return self.varifocal(logits, onehot, boxes, targets, indices) / num_boxes
        loss = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                  reduction="sum")
        return loss / num_boxes

    def varifocal(self, logits, onehot, boxes, targets, indices) -> torch.Tensor:
        """Varifocal loss (VarifocalNet; RT-DETR, DEIM): a matched query's target is the IoU of its box with
        the object's, so the class score also ranks localisation quality, which AP rewards; unmatched
        queries are down-weighted by ``vfl_alpha * p^gamma`` as in focal loss. ``iou_aware_loss`` "mal":
        DEIM's matchability-aware form (target IoU^g, matched weight 1, unmatched weight p^g, g = mal_gamma)."""
        score = torch.zeros_like(logits)
        src, tgt = self.matched_boxes(boxes, targets, indices)
        if src.numel():
            iou = box_iou(box_convert(src.detach(), "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")).diag()
            batch = torch.cat([torch.full_like(s, i) for i, (s, _) in enumerate(indices)]).to(logits.device)
            query = torch.cat([s for s, _ in indices]).to(logits.device)
            label = torch.cat([targets[i]["labels"][t] for i, (_, t) in enumerate(indices)])
            score[batch, query, label] = iou.clamp(min=0).to(score.dtype)
        prob = logits.sigmoid().detach()
        if self.iou_aware_loss == "mal":
            # DEIM's matchability-aware loss: the target is IoU^gamma and every matched query weighs 1, so a
            # poorly overlapping match (many of them with mosaic's dense small boxes) still gets its gradient,
            # where varifocal's IoU weight would all but silence it
            target = score.pow(self.mal_gamma)
            weight = prob.pow(self.mal_gamma) * (1 - onehot) + onehot
            return nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
        weight = self.vfl_alpha * prob.pow(self.focal_gamma) * (1 - onehot) + score
        return nn.functional.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="sum")

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
        if self.box_loss == "smooth_l1":
            reg = nn.functional.smooth_l1_loss(src, tgt, beta=self.smooth_l1_beta, reduction="sum")
        else:
            reg = nn.functional.l1_loss(src, tgt, reduction="sum")
        giou = generalized_box_iou_loss(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"),
                                        reduction="sum")
        return {"loss_bbox": reg / num_boxes, "loss_giou": giou / num_boxes}

    def single(self, outputs: dict, targets: list[dict], num_boxes: float, num_images: float,
               repeats: int = 1, indices: list | None = None) -> dict[str, torch.Tensor]:
        """The losses of one layer; ``indices`` (query, object) pairs per image, else the matcher's with each
        object offered ``repeats`` times. Normalised by ``repeats`` x ``num_boxes``."""
        if indices is None:
            indices = self.matcher(outputs, targets, repeats)
        num_boxes = num_boxes * repeats
        losses = {"loss_ce": self.loss_labels(outputs["pred_logits"], targets, indices, num_boxes, num_images,
                                              outputs["pred_boxes"])}
        losses.update(self.loss_boxes(outputs["pred_boxes"], targets, indices, num_boxes))
        return losses

    def forward(self, outputs: dict, targets: list[dict], num_boxes: float | None = None,
                num_images: float | None = None) -> dict[str, torch.Tensor]:
        """``num_boxes`` / ``num_images``: the normalisers of one optimizer step, per process (the totals over
        every process and accumulated batch, divided by the number of processes). The trainer passes them,
        so that DDP's gradient mean and accumulation's gradient sum equal one large batch; left out, they
        are this batch's own counts."""
        if num_boxes is None:
            num_boxes = float(sum(len(t["labels"]) for t in targets))
        if num_images is None:
            num_images = float(len(targets))
        num_boxes = max(num_boxes, 1.0)
        hybrid = outputs.get("hybrid_outputs")
        # without a hybrid branch, the early layers are one-to-many and the last two one-to-one
        early = 1 if hybrid is not None else self.one_to_many
        losses = self.layer_losses(outputs, targets, num_boxes, num_images, early)
        if hybrid is not None:
            branch = self.layer_losses(hybrid, targets, num_boxes, num_images, self.one_to_many, self.one_to_many)
            losses.update({f"{k}_hybrid": v for k, v in branch.items()})
        dn = outputs.get("dn_outputs")
        if dn is not None:  # denoising queries: each positive knows its object, no matching
            branch = self.layer_losses(dn, targets, num_boxes, num_images, dn["groups"], dn["groups"], dn["indices"])
            losses.update({f"{k}_dn": v for k, v in branch.items()})
        if "enc_outputs" in outputs:  # two-stage proposals learn from the same set loss
            enc = self.single(outputs["enc_outputs"], targets, num_boxes, num_images, self.one_to_many)
            losses.update({f"{k}_enc": v for k, v in enc.items()})
        return losses

    def layer_losses(self, outputs: dict, targets: list[dict], num_boxes: float, num_images: float,
                     early: int = 1, late: int = 1, indices: list | None = None) -> dict[str, torch.Tensor]:
        """Losses of the last layer and of each ``aux_outputs`` layer (suffix ``_i``); every box is matched
        ``late`` times in the last two layers and ``early`` times in the others (or has ``indices``' queries,
        ``late`` of them per box)."""
        losses = self.single(outputs, targets, num_boxes, num_images, late, indices)
        aux_outputs = outputs.get("aux_outputs", [])
        for i, aux in enumerate(aux_outputs):
            repeats = early if i < len(aux_outputs) - 1 else late
            aux_losses = self.single(aux, targets, num_boxes, num_images, repeats, indices)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses


def build_criterion(num_classes: int, loss_cfg, softmax: bool = False) -> SetCriterion:
    """The criterion of a run's ``loss`` section (a LossConfig). ``softmax``: the model's class logits have a
    "no object" column (``classifier: softmax``)."""
    matcher = HungarianMatcher(cost_class=loss_cfg.set_cost_class, cost_bbox=loss_cfg.set_cost_bbox,
                               cost_giou=loss_cfg.set_cost_giou, alpha=loss_cfg.focal_alpha,
                               gamma=loss_cfg.focal_gamma, softmax=softmax)
    weights = {"loss_ce": loss_cfg.cls_loss_coef, "loss_bbox": loss_cfg.bbox_loss_coef,
               "loss_giou": loss_cfg.giou_loss_coef}
    return SetCriterion(num_classes, matcher, weights, focal_alpha=loss_cfg.focal_alpha,
                        focal_gamma=loss_cfg.focal_gamma, softmax=softmax, no_object_weight=loss_cfg.no_object_weight,
                        box_loss=loss_cfg.box_loss, smooth_l1_beta=loss_cfg.smooth_l1_beta,
                        iou_aware=loss_cfg.iou_aware, vfl_alpha=loss_cfg.vfl_alpha, one_to_many=loss_cfg.one_to_many,
                        iou_aware_loss=loss_cfg.iou_aware_loss, mal_gamma=loss_cfg.mal_gamma)
