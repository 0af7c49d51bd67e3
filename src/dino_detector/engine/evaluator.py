"""COCO evaluation with pycocotools, plus threshold metrics (precision / recall / F1 / mean IoU / accuracy).

The AP numbers are pycocotools' own ``COCOeval.stats``; nothing here re-implements them.
Threshold metrics (at ``score_threshold``), per image, greedy one-to-one matching by descending score:
- a detection is a true positive when it overlaps an unmatched non-crowd ground-truth box of the same
  category with IoU >= 0.5;
- precision = TP / detections, recall = TP / ground-truth boxes, f1 = their harmonic mean;
- mean_iou = mean IoU of the true positives (0 when there are none);
- accuracy = of the detections that overlap some ground-truth box with IoU >= 0.5 (class ignored), the
  fraction whose category is right;
- mAP50 = the COCO AP at IoU 0.5 (the same as AP50), kept under the name the YOLO comparison uses.
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from ..models.postprocess import postprocess
from .confusion import coco_boxes_xyxy as _xyxy
from .confusion import confusion_matrix, detections_by_image

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
MATCH_IOU = 0.5


@torch.no_grad()
def predict_dataset(model, loader, device, category_ids: list[int], desc: str = "evaluate",
                    on_outputs=None, progress: bool = True) -> list[dict]:
    """COCO results list: image_id, category_id (dataset ids), bbox [x, y, w, h] original pixels, score.
    ``on_outputs(outputs, targets)`` sees every batch's raw outputs (the trainer's validation loss)."""
    model.eval()
    results = []
    for images, targets in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
        outputs = model([im.to(device) for im in images])
        if on_outputs is not None:
            on_outputs(outputs, targets)
        dets = postprocess(outputs, [t["orig_size"] for t in targets], category_ids, **model.decode_options)
        for t, det in zip(targets, dets):
            xywh = det["boxes"].clone()
            xywh[:, 2:] -= xywh[:, :2]
            for box, score, cid in zip(xywh.tolist(), det["scores"].tolist(), det["category_ids"].tolist()):
                results.append({"image_id": int(t["image_id"]), "category_id": int(cid),
                                "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
    return results


def coco_evaluate(coco_gt, results: list[dict], image_ids: list[int] | None = None,
                  pr_curves: bool = False) -> tuple[dict, str]:
    """pycocotools bbox evaluation -> (metrics dict, the printed summary table). ``pr_curves`` adds
    pycocotools' interpolated precision at its 101 recall points per class, at IoU 0.5 and 0.75:
    ``{"recall": [...], "IoU50": {name: [...]}, "IoU75": {...}}`` (-1 where a class has no ground truth)."""
    from pycocotools.cocoeval import COCOeval

    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    if not results:
        metrics = {k: 0.0 for k in STAT_NAMES}
        for key in ("per_class", "per_class_AP50", "per_class_recall"):
            metrics[key] = {n: 0.0 for n in names.values()}
        if pr_curves:  # pycocotools' 101 recall points, precision 0 everywhere
            metrics["pr_curves"] = {"recall": [i / 100 for i in range(101)]} | {
                key: {n: [0.0] * 101 for n in names.values()} for key in ("IoU50", "IoU75")}
        return metrics, "no detections: every metric is 0\n"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes adds fields to each entry
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
    # precision [T, R, K, A, M]: all IoUs and recalls, area "all", maxDets 100
    precision = ev.eval["precision"][:, :, :, 0, -1]
    recall = ev.eval["recall"][:, :, 0, -1]  # [T, K]: area "all", maxDets 100
    per_class, per_class_ap50, per_class_recall = {}, {}, {}
    for k, cid in enumerate(ev.params.catIds):
        per_class[names[cid]] = _mean_defined(precision[:, :, k])
        per_class_ap50[names[cid]] = _mean_defined(precision[0, :, k])  # IoU 0.5 is the first threshold
        per_class_recall[names[cid]] = _mean_defined(recall[:, k])  # COCO AR100 of the class
    metrics.update(per_class=per_class, per_class_AP50=per_class_ap50, per_class_recall=per_class_recall)
    if pr_curves:
        t50, t75 = (int(np.argmin(np.abs(ev.params.iouThrs - t))) for t in (0.5, 0.75))
        metrics["pr_curves"] = {"recall": [float(r) for r in ev.params.recThrs]} | {
            key: {names[cid]: [float(p) for p in precision[t, :, k]] for k, cid in enumerate(ev.params.catIds)}
            for key, t in (("IoU50", t50), ("IoU75", t75))}
    table = "\n".join(line for line in buf.getvalue().splitlines() if line.lstrip().startswith("Average"))
    return metrics, table


def _mean_defined(values: np.ndarray) -> float:
    """Mean of the entries pycocotools defined (-1 marks undefined); -1 when there are none."""
    return float(values[values > -1].mean()) if (values > -1).any() else -1.0


def detection_outcomes(coco_gt, results: list[dict], score_threshold: float,
                       image_ids: list[int] | None = None) -> tuple[list[dict], int]:
    """Each detection at or above ``score_threshold``, judged as in the module doc:
    ([{"result", "tp_iou" (IoU with the box it matched, None for a false positive), "localised",
    "class_correct"}], number of non-crowd ground-truth boxes). Per image, by descending score."""
    ids = image_ids if image_ids is not None else coco_gt.getImgIds()
    by_image = detections_by_image(results, score_threshold)
    outcomes, n_gt = [], 0
    for image_id in ids:
        gts = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        dets = by_image.get(image_id, [])
        n_gt += len(gts)
        if not gts:
            outcomes += [{"result": d, "tp_iou": None, "localised": False, "class_correct": False} for d in dets]
            continue
        iou = box_iou(_xyxy([d["bbox"] for d in dets]), _xyxy([g["bbox"] for g in gts]))
        gt_cats = torch.tensor([g["category_id"] for g in gts])
        used = torch.zeros(len(gts), dtype=torch.bool)
        for i, d in enumerate(dets):
            localised = bool((iou[i] >= MATCH_IOU).any())
            class_correct = localised and int(gt_cats[int(iou[i].argmax())]) == d["category_id"]
            same = (gt_cats == d["category_id"]) & ~used
            cand = torch.where(same, iou[i], torch.full_like(iou[i], -1.0))
            j = int(cand.argmax())
            tp_iou = None
            if cand[j] >= MATCH_IOU:
                used[j] = True
                tp_iou = float(cand[j])
            outcomes.append({"result": d, "tp_iou": tp_iou, "localised": localised, "class_correct": class_correct})
    return outcomes, n_gt


def threshold_metrics(coco_gt, results: list[dict], score_threshold: float,
                      image_ids: list[int] | None = None) -> dict:
    """Precision / recall / F1 / mean IoU / accuracy at a score threshold (definitions in the module doc)."""
    outcomes, n_gt = detection_outcomes(coco_gt, results, score_threshold, image_ids)
    ious = [o["tp_iou"] for o in outcomes if o["tp_iou"] is not None]
    localised = sum(o["localised"] for o in outcomes)
    tp, n_det = len(ious), len(outcomes)
    det_per_class: dict[int, int] = {}
    tp_per_class: dict[int, int] = {}
    for o in outcomes:
        cid = o["result"]["category_id"]
        det_per_class[cid] = det_per_class.get(cid, 0) + 1
        tp_per_class[cid] = tp_per_class.get(cid, 0) + (o["tp_iou"] is not None)
    precision = tp / n_det if n_det else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "mean_iou": float(np.mean(ious)) if ious else 0.0,
            "accuracy": sum(o["class_correct"] for o in outcomes) / localised if localised else 0.0,
            "score_threshold": score_threshold,
            # per class: true positives / detections of that class (-1 where it has no detection)
            "per_class_precision": {c["name"]: tp_per_class.get(c["id"], 0) / det_per_class[c["id"]]
                                    if det_per_class.get(c["id"]) else -1.0
                                    for c in coco_gt.dataset["categories"]}}


def score_results(coco_gt, results: list[dict], score_threshold: float = 0.5,
                  image_ids: list[int] | None = None, pr_curves: bool = False) -> tuple[dict, str]:
    """COCO metrics and threshold metrics of a results list: (metrics, printed table)."""
    metrics, table = coco_evaluate(coco_gt, results, image_ids, pr_curves)
    metrics.update(threshold_metrics(coco_gt, results, score_threshold, image_ids))
    metrics["confusion_matrix"] = confusion_matrix(coco_gt, results, score_threshold, MATCH_IOU, image_ids)
    metrics["mAP50"] = metrics["AP50"]
    metrics["num_images"] = len(image_ids) if image_ids is not None else len(coco_gt.getImgIds())
    return metrics, table


def evaluate(model, loader, device, coco_gt, category_ids, score_threshold: float = 0.5,
             image_ids: list[int] | None = None) -> tuple[dict, list[dict], str]:
    """Run the model over ``loader`` and score it: (metrics, COCO results, printed table)."""
    results = predict_dataset(model, loader, device, category_ids)
    metrics, table = score_results(coco_gt, results, score_threshold, image_ids)
    return metrics, results, table
