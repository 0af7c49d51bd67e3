"""COCO evaluation: identical to pycocotools' own COCOeval; threshold metrics on hand-made cases."""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dino_detector.data.coco import load_coco
from dino_detector.engine.evaluator import STAT_NAMES, coco_evaluate, threshold_metrics


@pytest.fixture(scope="module")
def bccd_val_gt(bccd):
    return load_coco(bccd["val"])


def synthetic_predictions(coco_gt, seed: int = 0) -> list[dict]:
    """GT boxes jittered with seeded noise, ~20 % dropped, ~10 % relabelled, plus two false positives
    per image, all with random scores."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(coco_gt.getCatIds())
    results = []
    for image_id in sorted(coco_gt.getImgIds()):
        info = coco_gt.imgs[image_id]
        for ann in coco_gt.imgToAnns[image_id]:
            if rng.random() < 0.2:
                continue
            x, y, w, h = ann["bbox"]
            x, y = x + rng.normal(0, 0.08 * w), y + rng.normal(0, 0.08 * h)
            w, h = w * np.exp(rng.normal(0, 0.1)), h * np.exp(rng.normal(0, 0.1))
            cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
            results.append({"image_id": image_id, "category_id": cat,
                            "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                            "score": round(float(rng.uniform(0.05, 1.0)), 5)})
        for _ in range(2):
            w, h = rng.uniform(10, 120, 2)
            x, y = rng.uniform(0, info["width"] - w), rng.uniform(0, info["height"] - h)
            results.append({"image_id": image_id, "category_id": int(rng.choice(cat_ids)),
                            "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                            "score": round(float(rng.uniform(0.0, 0.6)), 5)})
    return results


def reference_cocoeval(coco_gt, results, image_ids=None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_coco_evaluate_equals_pycocotools_cocoeval(bccd_val_gt):
    results = synthetic_predictions(bccd_val_gt)
    metrics, table = coco_evaluate(bccd_val_gt, copy.deepcopy(results))
    ev = reference_cocoeval(bccd_val_gt, results)

    for name, value in zip(STAT_NAMES, ev.stats):
        assert metrics[name] == float(value), name
    assert 0.2 < metrics["AP"] < 0.95  # a non-trivial case
    assert metrics["AP50"] > metrics["AP75"]
    assert table.count("Average Precision") == 6 and table.count("Average Recall") == 6


def test_coco_evaluate_per_class_ap(bccd_val_gt):
    results = synthetic_predictions(bccd_val_gt, seed=1)
    metrics, _ = coco_evaluate(bccd_val_gt, copy.deepcopy(results))
    ev = reference_cocoeval(bccd_val_gt, results)

    assert set(metrics["per_class"]) == {"Platelets", "RBC", "WBC"}
    names = {c["id"]: c["name"] for c in bccd_val_gt.dataset["categories"]}
    precision = ev.eval["precision"][:, :, :, 0, -1]  # area "all", maxDets 100
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        assert metrics["per_class"][names[cid]] == pytest.approx(float(p[p > -1].mean()), abs=1e-12)
        assert 0.0 < metrics["per_class"][names[cid]] <= 1.0
    # AP is the mean of the per-class APs
    assert np.mean(list(metrics["per_class"].values())) == pytest.approx(metrics["AP"], abs=1e-9)


def test_coco_evaluate_on_an_image_subset(bccd_val_gt):
    results = synthetic_predictions(bccd_val_gt, seed=2)
    subset = sorted(bccd_val_gt.getImgIds())[:10]
    metrics, _ = coco_evaluate(bccd_val_gt, copy.deepcopy(results), subset)
    ev = reference_cocoeval(bccd_val_gt, results, subset)
    for name, value in zip(STAT_NAMES, ev.stats):
        assert metrics[name] == float(value), name


def test_coco_evaluate_without_detections_is_all_zero(bccd_val_gt):
    metrics, _ = coco_evaluate(bccd_val_gt, [])
    assert all(metrics[k] == 0.0 for k in STAT_NAMES)
    assert metrics["per_class"] == {"Platelets": 0.0, "RBC": 0.0, "WBC": 0.0}


def test_threshold_metrics_of_perfect_predictions(bccd_val_gt):
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
               for a in bccd_val_gt.dataset["annotations"]]
    m = threshold_metrics(bccd_val_gt, results, score_threshold=0.5)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(1.0)
    assert m["mean_iou"] == pytest.approx(1.0)
    assert m["score_threshold"] == 0.5
    # and pycocotools agrees these are perfect
    metrics, _ = coco_evaluate(bccd_val_gt, copy.deepcopy(results))
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP"] == pytest.approx(1.0)


def small_gt() -> COCO:
    """One 100 x 100 image with a class-1 box and a class-2 box (xywh)."""
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}],
                  "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
                  "annotations": [
                      {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
                      {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "area": 400,
                       "iscrowd": 0}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def test_threshold_metrics_hand_computed():
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 8], "score": 0.9},     # TP, IoU 80/100 = 0.8
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.8},  # on GT 2, wrong class
        {"image_id": 1, "category_id": 2, "bbox": [80, 0, 10, 10], "score": 0.7},   # nowhere near a GT box
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "score": 0.3},  # below the threshold
    ]
    m = threshold_metrics(small_gt(), results, score_threshold=0.5)
    assert m["precision"] == pytest.approx(1 / 3)  # 1 TP of 3 detections above the threshold
    assert m["recall"] == pytest.approx(1 / 2)  # 1 of 2 GT boxes
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert m["mean_iou"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(1 / 2)  # 2 detections localised, 1 with the right class

    # lowering the threshold admits the last detection: a second TP with IoU 1
    m = threshold_metrics(small_gt(), results, score_threshold=0.2)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(1.0)
    assert m["mean_iou"] == pytest.approx(0.9)
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_threshold_metrics_one_detection_per_ground_truth_box():
    # two identical detections on one GT box: only one can be a true positive
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": s} for s in (0.9, 0.8)]
    m = threshold_metrics(small_gt(), results, score_threshold=0.5)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["accuracy"] == pytest.approx(1.0)  # both are localised with the right class


def test_coco_evaluate_leaves_the_callers_results_unchanged(bccd_val_gt):
    results = synthetic_predictions(bccd_val_gt, seed=3)[:50]
    before = copy.deepcopy(results)
    coco_evaluate(bccd_val_gt, results)
    assert results == before
