"""The parts of an analysis report: metrics tables and charts, predictions (confidence histogram, class
distribution, drawn images) and the evaluation extras (precision-recall curves, confusion heat map)."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data.images import ImageReadError, folder_image_id, list_images, load_image
from ..engine.confusion import coco_boxes_xyxy, detections_by_image
from ..engine.evaluator import detection_outcomes
from . import charts
from .plots import draw_detections
from .report import Report

log = logging.getLogger(__name__)
COCO_ROWS = (("AP", "AP @ IoU 0.50:0.95"), ("AP50", "AP @ IoU 0.50"), ("AP75", "AP @ IoU 0.75"),
             ("APs", "AP small (< 32² px)"), ("APm", "AP medium"), ("APl", "AP large (> 96² px)"),
             ("AR1", "AR, 1 detection / image"), ("AR10", "AR, 10 detections"), ("AR100", "AR, 100 detections"))
THRESHOLD_ROWS = (("precision", "true positives / detections"), ("recall", "true positives / true boxes"),
                  ("f1", "harmonic mean of precision and recall"),
                  ("mean_iou", "mean IoU of the true positives"),
                  ("accuracy", "right class among detections on some true box (IoU >= 0.5)"),
                  ("mAP50", "= AP50 (the name the YOLO comparison uses)"))


@dataclass
class Predictions:
    """A COCO results list and what is known about its images: files, names and optional ground truth."""
    results: list[dict]
    files: dict[int, Path]  # image id -> file
    names: dict[int, str]  # category id -> class name
    gt: object | None = None  # pycocotools COCO with the annotations, when given


def metrics_section(report: Report, metrics: dict, out: Path) -> None:
    """Tables of the COCO, threshold and per-class metrics with their bar charts, and the confusion matrix."""
    report.heading("Metrics")
    report.text(f"{metrics.get('num_images', '?')} images. COCO metrics are pycocotools' own; n/a = undefined "
                "(no boxes of that size).")
    report.table(["metric", "value", "meaning"], [[k, float(metrics[k]), what] for k, what in COCO_ROWS
                                                  if k in metrics])
    if "precision" in metrics:
        report.text(f"At score >= {metrics.get('score_threshold', 0.5)}, a detection is a true positive when it "
                    "overlaps an unmatched true box of its class with IoU >= 0.5 (greedy by score, per image).")
        report.table(["metric", "value", "definition"], [[k, float(metrics[k]), what] for k, what in THRESHOLD_ROWS
                                                         if k in metrics])
    report.figure(charts.metric_bars(metrics, out / "metrics.png"), "Overall metrics")
    per_class = [(key, label) for key, label in charts.PER_CLASS_METRICS if isinstance(metrics.get(key), dict)]
    if per_class:
        names = list(metrics[per_class[0][0]])
        report.heading("Per class", 3)
        report.table(["class"] + [label for _, label in per_class],
                     [[n] + [float(metrics[key].get(n, -1.0)) for key, _ in per_class] for n in names])
        report.figure(charts.per_class_bars(metrics, out / "per_class.png"), "Per-class AP, AP50, AR100, precision")
    if "confusion_matrix" in metrics:
        cm = metrics["confusion_matrix"]
        report.heading("Confusion matrix", 3)
        report.text("Rows: true class; columns: predicted class. A detection on no true box is in row "
                    "'background' (false positive); a true box nobody found is in column 'background' (a miss).")
        report.table(["true \\ predicted"] + cm["labels"], [[lab] + row for lab, row in zip(cm["labels"],
                                                                                          cm["matrix"])])
        report.figure(charts.confusion_heatmap(cm, out / "confusion_matrix.png"), "Confusion matrix")
    if "pr_curves" in metrics:
        report.heading("Precision-recall curves", 3)
        report.figure(charts.pr_curves(metrics["pr_curves"], out / "pr_curves.png"),
                      "Precision against recall per class (pycocotools, 100 detections per image)")


def predictions_section(report: Report, preds: Predictions, out: Path, num_visualizations: int,
                        confidence_threshold: float) -> None:
    """Confidence histogram (true vs false positives with ground truth), class distribution, drawn images."""
    report.heading("Predictions")
    results = preds.results
    kept = [r for r in results if r["score"] >= confidence_threshold]
    report.text(f"{len(results)} detections on {len({r['image_id'] for r in results})} images; {len(kept)} at "
                f"confidence >= {confidence_threshold}.")
    scores, true_positive = [r["score"] for r in results], None
    if preds.gt is not None:
        outcomes, _ = detection_outcomes(preds.gt, results, 0.0, sorted(preds.files))
        scores = [o["result"]["score"] for o in outcomes]
        true_positive = [o["tp_iou"] is not None for o in outcomes]
    report.figure(charts.confidence_histogram(scores, out / "confidence_histogram.png", confidence_threshold,
                                              true_positive), "Confidence scores of all detections")
    names = [preds.names[c] for c in sorted(preds.names)]
    predicted = Counter([preds.names.get(r["category_id"], str(r["category_id"])) for r in kept])
    truth = None
    if preds.gt is not None:
        anns = [a for i in preds.files for a in preds.gt.imgToAnns.get(i, []) if not a.get("iscrowd", 0)]
        truth = Counter([preds.names[a["category_id"]] for a in anns])
    report.figure(charts.class_distribution(names, predicted, out / "class_distribution.png", confidence_threshold,
                                            truth), "Boxes per class: predictions vs ground truth")
    drawn = draw_images(preds, out / "visualizations", num_visualizations, confidence_threshold)
    if drawn:
        report.heading("Visualizations", 3)
        report.text("Predictions at or above the confidence threshold in class colours with their scores"
                    + ("; ground truth in green." if preds.gt is not None else "."))
        report.gallery(drawn)


def draw_images(preds: Predictions, folder: Path, count: int, threshold: float) -> list[tuple[Path, str]]:
    """Up to ``count`` images spread evenly over the image ids, drawn; unreadable files are skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    by_image = detections_by_image(preds.results, threshold)
    ids = sorted(preds.files)
    picked = [ids[round(i * (len(ids) - 1) / max(1, count - 1))] for i in range(count)] if count < len(ids) else ids
    drawn = []
    for image_id in dict.fromkeys(picked):
        path = preds.files[image_id]
        try:
            image = load_image(path)
        except ImageReadError as err:
            log.warning("visualization skipped: %s", err)
            continue
        dets = by_image.get(image_id, [])[::-1]  # best drawn last, on top
        boxes = coco_boxes_xyxy([d["bbox"] for d in dets]).tolist()
        truth = None
        if preds.gt is not None:
            anns = [a for a in preds.gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
            truth = list(zip(coco_boxes_xyxy([a["bbox"] for a in anns]).tolist(), [a["category_id"] for a in anns]))
        header = f"{path.name}: {len(dets)} detection{'s' * (len(dets) != 1)} >= {threshold}" + (
            f", {len(truth)} true box{'es' * (len(truth) != 1)} (green)" if truth is not None else "")
        picture = draw_detections(image, boxes, [d["category_id"] for d in dets], [d["score"] for d in dets],
                                  preds.names, truth, header)
        target = folder / f"{path.stem}.png"
        picture.save(target)
        drawn.append((target, header))
    return drawn


def folder_files(images_dir: str | Path) -> dict[int, Path]:
    """Image id -> file for an unannotated folder, by the rule the predictions were written with."""
    return {folder_image_id(p, i): p for i, p in enumerate(list_images(images_dir))}


def annotated_files(gt, images_dir: str | Path) -> dict[int, Path]:
    return {i: Path(images_dir) / img["file_name"] for i, img in gt.imgs.items()}
