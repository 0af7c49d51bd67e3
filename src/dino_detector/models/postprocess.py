"""Turn raw detector outputs into detections in original-image pixels and dataset category ids."""
from __future__ import annotations

import torch
from torchvision.ops import box_convert

from .heads import class_probabilities


@torch.no_grad()
def postprocess(outputs: dict, orig_sizes: list[tuple[int, int]], category_ids: list[int] | None = None,
                top_k: int = 100, threshold: float = 0.0, softmax: bool = False) -> list[dict]:
    """outputs: pred_logits [B, Q, C] (or [B, Q, C + 1] with ``softmax``), pred_boxes [B, Q, 4] (cx, cy, w, h relative to each image).
    orig_sizes: (height, width) per image. Returns per image: boxes [N, 4] xyxy pixels, scores [N],
    labels [N] (contiguous 0..C-1) and category_ids [N] (the dataset's own ids)."""
    probs, boxes = class_probabilities(outputs["pred_logits"], softmax), outputs["pred_boxes"]
    b, q, c = probs.shape
    prob = probs.flatten(1)  # [B, Q*C]
    scores, idx = prob.topk(min(top_k, q * c), dim=1)
    query, labels = idx // c, idx % c
    xyxy = box_convert(boxes, "cxcywh", "xyxy")
    lookup = torch.as_tensor(category_ids if category_ids is not None else range(c), device=probs.device)
    results = []
    for i, (h, w) in enumerate(orig_sizes):
        scale = torch.tensor([w, h, w, h], dtype=xyxy.dtype, device=xyxy.device)
        bxs = xyxy[i, query[i]] * scale
        bxs[:, 0::2] = bxs[:, 0::2].clamp(0, w)
        bxs[:, 1::2] = bxs[:, 1::2].clamp(0, h)
        keep = scores[i] > threshold
        results.append({"boxes": bxs[keep], "scores": scores[i][keep], "labels": labels[i][keep],
                        "category_ids": lookup[labels[i][keep]]})
    return results
