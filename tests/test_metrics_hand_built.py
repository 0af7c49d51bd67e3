"""Threshold metrics and the confusion matrix on a hand-built set, against values worked out by hand; AP
and per-class AP50 / recall against pycocotools itself."""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dino_detector.engine.evaluator import score_results

GT = {
    "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"},
               {"id": 2, "width": 100, "height": 100, "file_name": "b.jpg"}],
    "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],  # sparse ids on purpose
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},   # A
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0},  # B
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},    # C
    ],
}
RESULTS = [
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},    # on A, right class
    {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.8},  # on B, wrong class
    {"image_id": 1, "category_id": 3, "bbox": [50, 50, 5, 5], "score": 0.7},    # on nothing
    {"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.3},    # below the threshold
    {"image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 10], "score": 0.6},    # on C, IoU exactly 0.5
]


@pytest.fixture(scope="module")
def scored():
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(GT)
        gt.createIndex()
    metrics, _ = score_results(gt, copy.deepcopy(RESULTS), score_threshold=0.5)
    return gt, metrics


def test_threshold_metrics_equal_the_hand_computed_values(scored):
    _, m = scored
    # 4 detections at >= 0.5; true positives (same class, IoU >= 0.5, one per box): the cat on A, the dog on C
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["mean_iou"] == pytest.approx((1.0 + 0.5) / 2)
    # localised detections (IoU >= 0.5 with any box): on A (right), on B (wrong), on C (right)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["per_class_precision"] == pytest.approx({"cat": 1 / 2, "dog": 1 / 2})


def test_confusion_matrix_equals_the_hand_computed_one(scored):
    _, m = scored
    cm = m["confusion_matrix"]
    assert cm["labels"] == ["cat", "dog", "background"]
    assert cm["matrix"] == [[1, 0, 0],   # true cat: found as cat
                            [1, 1, 0],   # true dog: once called cat (B), once found (C)
                            [0, 1, 0]]   # background: one dog detection on nothing
    total_truth = sum(sum(row) for row in cm["matrix"][:-1])
    assert total_truth == len(GT["annotations"])  # every true box is counted once (found or missed)


def test_ap_and_per_class_values_equal_pycocotools(scored):
    gt, m = scored
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(RESULTS)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert m["AP"] == pytest.approx(ev.stats[0]) and m["AP50"] == pytest.approx(ev.stats[1])
    for k, name in enumerate(["cat", "dog"]):
        p50 = ev.eval["precision"][0, :, k, 0, -1]
        assert m["per_class_AP50"][name] == pytest.approx(float(np.mean(p50[p50 > -1])))
        r = ev.eval["recall"][:, k, 0, -1]
        assert m["per_class_recall"][name] == pytest.approx(float(np.mean(r[r > -1])))
    assert m["per_class_AP50"]["cat"] == pytest.approx(1.0)  # its one box is found with the top score
