"""Confusion matrix of a detector between classes and background, at a score threshold.

Per image, detections at or above the threshold are taken by descending score; each is matched to the
unmatched non-crowd ground-truth box it overlaps most, class ignored, if that IoU is at least ``iou``.
A matched pair counts in row = true class, column = predicted class; an unmatched detection counts in row
"background" (a false positive); an unmatched ground-truth box in column "background" (a miss). The
diagonal holds the correct detections; the background/background cell is always 0.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou

BACKGROUND = "background"


def coco_boxes_xyxy(boxes: list[list[float]]) -> torch.Tensor:
    """COCO [x, y, w, h] boxes -> float64 [N, 4] (x0, y0, x1, y1)."""
    return box_convert(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")


def detections_by_image(results: list[dict], score_threshold: float) -> dict[int, list[dict]]:
    """Image id -> its detections at or above ``score_threshold``, highest score first."""
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_threshold:
            by_image.setdefault(r["image_id"], []).append(r)
    return {i: sorted(dets, key=lambda r: -r["score"]) for i, dets in by_image.items()}


def confusion_matrix(coco_gt, results: list[dict], score_threshold: float = 0.5, iou: float = 0.5,
                     image_ids: list[int] | None = None) -> dict:
    """{"labels": [class names..., "background"], "matrix": [[int]] rows = truth, columns = prediction}."""
    cats = sorted(coco_gt.dataset["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    bg = len(cats)
    matrix = [[0] * (bg + 1) for _ in range(bg + 1)]
    by_image = detections_by_image(results, score_threshold)
    for image_id in image_ids if image_ids is not None else coco_gt.getImgIds():
        gts = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        dets = by_image.get(image_id, [])
        used = [False] * len(gts)
        overlaps = None
        if dets and gts:
            overlaps = box_iou(coco_boxes_xyxy([d["bbox"] for d in dets]), coco_boxes_xyxy([g["bbox"] for g in gts]))
        for i, d in enumerate(dets):
            best, best_iou = -1, iou
            for j in range(len(gts)):
                if not used[j] and overlaps is not None and overlaps[i, j] >= best_iou:
                    best, best_iou = j, float(overlaps[i, j])
            if best >= 0:
                used[best] = True
                matrix[index[gts[best]["category_id"]]][index[d["category_id"]]] += 1
            else:
                matrix[bg][index[d["category_id"]]] += 1
        for j, g in enumerate(gts):
            if not used[j]:
                matrix[index[g["category_id"]]][bg] += 1
    return {"labels": [c["name"] for c in cats] + [BACKGROUND], "matrix": matrix}
