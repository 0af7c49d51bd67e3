"""Turn raw detector outputs into detections in original-image pixels and dataset category ids."""
from __future__ import annotations

import torch
from torchvision.ops import box_area, box_convert

from .heads import class_probabilities

MIN_UNION = 1e-9  # zero-area boxes (clamped to the image edge) have IoU 0, not NaN


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """boxes [B, K, 4] xyxy -> IoU [B, K, K] of every pair within each image (torchvision's ``box_iou``
    takes one image's boxes; this is the same ratio for a batch, in fixed-shape ops an exported graph keeps)."""
    area = box_area(boxes.reshape(-1, 4)).reshape(boxes.shape[:2])
    top_left = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    return inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=MIN_UNION)


def soft_nms_scores(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian Soft-NMS (Bodla et al., 2017) in one parallel pass. boxes [B, K, 4], scores [B, K] sorted
    high to low, labels [B, K] -> scores [B, K]: each detection's score times exp(-IoU^2 / sigma), IoU with
    the most-overlapping detection of its class that scores higher. A DETR trained briefly still returns
    near-copies of one box from several queries; they would rank above the true boxes of other images and
    cost AP. Decayed, not dropped: at strict IoU thresholds a lower-scored copy may be the better box."""
    k = scores.shape[1]
    higher = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(1)  # [i, j]: i ranks above j
    same_class = labels[:, :, None] == labels[:, None, :]
    overlap = (pairwise_iou(boxes) * (higher & same_class)).amax(dim=1)  # [B, K]: max over the i above j
    return scores * torch.exp(-overlap.square() / sigma)


def topk_detections(outputs: dict, orig_sizes: torch.Tensor, top_k: int = 100, softmax: bool = False,
                    soft_nms_sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``top_k`` best (query, class) pairs of every image, as fixed-size tensors (the form an exported
    graph returns): boxes [B, K, 4] xyxy in original pixels (clamped to the image), scores [B, K] high to
    low, labels [B, K] (contiguous 0..C-1). orig_sizes: [B, 2] (height, width). ``soft_nms_sigma`` > 0:
    the scores of near-duplicates are decayed (``soft_nms_scores``) and the K re-ranked."""
    probs = class_probabilities(outputs["pred_logits"], softmax)
    _, q, c = probs.shape
    scores, idx = probs.flatten(1).topk(min(top_k, q * c), dim=1)
    query, labels = idx // c, idx % c
    xyxy = box_convert(outputs["pred_boxes"], "cxcywh", "xyxy")
    xyxy = torch.gather(xyxy, 1, query[..., None].expand(-1, -1, 4))
    scale = orig_sizes.to(xyxy.dtype).flip(-1).repeat(1, 2)[:, None]  # [B, 1, 4]: (w, h, w, h)
    boxes = torch.minimum((xyxy * scale).clamp(min=0), scale)
    if soft_nms_sigma > 0:
        scores, order = soft_nms_scores(boxes, scores, labels, soft_nms_sigma).topk(scores.shape[1], dim=1)
        boxes = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
        labels = torch.gather(labels, 1, order)
    return boxes, scores, labels


@torch.no_grad()
def postprocess(outputs: dict, orig_sizes: list[tuple[int, int]], category_ids: list[int] | None = None,
                top_k: int = 100, threshold: float = 0.0, softmax: bool = False,
                soft_nms_sigma: float = 0.0) -> list[dict]:
    """outputs: pred_logits [B, Q, C] (or [B, Q, C + 1] with ``softmax``), pred_boxes [B, Q, 4] (cx, cy, w, h
    relative to each image). orig_sizes: (height, width) per image. Returns per image the detections scoring
    above ``threshold``: boxes [N, 4] xyxy pixels, scores [N], labels [N] (contiguous 0..C-1) and
    category_ids [N] (the dataset's own ids). ``softmax`` and ``soft_nms_sigma``: as ``topk_detections``
    (a model's own are its ``decode_options``)."""
    device = outputs["pred_boxes"].device
    sizes = torch.tensor(orig_sizes, dtype=torch.float32, device=device).reshape(-1, 2)
    boxes, scores, labels = topk_detections(outputs, sizes, top_k, softmax, soft_nms_sigma)
    num_classes = outputs["pred_logits"].shape[-1] - int(softmax)
    lookup = torch.as_tensor(category_ids if category_ids is not None else range(num_classes), device=device)
    results = []
    for bxs, sc, lb in zip(boxes, scores, labels):
        keep = sc > threshold
        results.append({"boxes": bxs[keep], "scores": sc[keep], "labels": lb[keep],
                        "category_ids": lookup[lb[keep]]})
    return results
