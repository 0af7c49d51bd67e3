"""Turn raw detector outputs into detections in original-image pixels and dataset category ids."""
from __future__ import annotations

import torch
from torchvision.ops import box_convert

from .heads import class_probabilities


def topk_detections(outputs: dict, orig_sizes: torch.Tensor, top_k: int = 100,
                    softmax: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``top_k`` best (query, class) pairs of every image, as fixed-size tensors (the form an exported
    graph returns): boxes [B, K, 4] xyxy in original pixels (clamped to the image), scores [B, K],
    labels [B, K] (contiguous 0..C-1). orig_sizes: [B, 2] (height, width)."""
    probs = class_probabilities(outputs["pred_logits"], softmax)
    _, q, c = probs.shape
    scores, idx = probs.flatten(1).topk(min(top_k, q * c), dim=1)
    query, labels = idx // c, idx % c
    xyxy = box_convert(outputs["pred_boxes"], "cxcywh", "xyxy")
    xyxy = torch.gather(xyxy, 1, query[..., None].expand(-1, -1, 4))
    scale = orig_sizes.to(xyxy.dtype).flip(-1).repeat(1, 2)[:, None]  # [B, 1, 4]: (w, h, w, h)
    boxes = torch.minimum((xyxy * scale).clamp(min=0), scale)
    return boxes, scores, labels


@torch.no_grad()
def postprocess(outputs: dict, orig_sizes: list[tuple[int, int]], category_ids: list[int] | None = None,
                top_k: int = 100, threshold: float = 0.0, softmax: bool = False) -> list[dict]:
    """outputs: pred_logits [B, Q, C] (or [B, Q, C + 1] with ``softmax``), pred_boxes [B, Q, 4] (cx, cy, w, h
    relative to each image). orig_sizes: (height, width) per image. Returns per image the detections scoring
    above ``threshold``: boxes [N, 4] xyxy pixels, scores [N], labels [N] (contiguous 0..C-1) and
    category_ids [N] (the dataset's own ids)."""
    device = outputs["pred_boxes"].device
    sizes = torch.tensor(orig_sizes, dtype=torch.float32, device=device).reshape(-1, 2)
    boxes, scores, labels = topk_detections(outputs, sizes, top_k, softmax)
    num_classes = outputs["pred_logits"].shape[-1] - int(softmax)
    lookup = torch.as_tensor(category_ids if category_ids is not None else range(num_classes), device=device)
    results = []
    for bxs, sc, lb in zip(boxes, scores, labels):
        keep = sc > threshold
        results.append({"boxes": bxs[keep], "scores": sc[keep], "labels": lb[keep],
                        "category_ids": lookup[lb[keep]]})
    return results
