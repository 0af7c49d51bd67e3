"""predict's results: dicts as before that also convert to COCO entries and to supervision.Detections (and
back), and arrays in OpenCV's BGR order read right with color="bgr"."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dino_detector import Prediction

from conftest import build_small_detector, perturb_head_


@pytest.fixture(scope="module")
def model():
    detector = build_small_detector(num_classes=3, category_ids=[2, 4, 6], class_names=["a", "b", "c"])
    perturb_head_(detector)
    return detector.eval()


def test_predictions_convert_to_supervision_and_coco_and_back(model):
    sv = pytest.importorskip("supervision")
    det = model.predict(torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(3)), threshold=0.0, top_k=7)
    assert isinstance(det, Prediction) and len(det["scores"]) == 7
    detections = det.to_supervision()
    assert isinstance(detections, sv.Detections) and len(detections) == 7
    np.testing.assert_array_equal(detections.xyxy, det["boxes"].numpy())
    np.testing.assert_array_equal(detections.confidence, det["scores"].numpy())
    assert detections.class_id.tolist() == det["labels"].tolist() and set(det["labels"].tolist()) <= {2, 4, 6}
    assert detections.data["class_name"].tolist() == det["label_names"]
    back = Prediction.from_supervision(detections)
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(back[key], det[key]), key
    assert back["label_names"] == det["label_names"]
    coco = det.to_coco(image_id=11)
    x0, y0, x1, y1 = det["boxes"][0].tolist()
    assert coco[0] == {"image_id": 11, "category_id": det["labels"][0].item(), "bbox": [x0, y0, x1 - x0, y1 - y0],
                       "score": det["scores"][0].item(), "category_name": det["label_names"][0]}


def test_bgr_arrays_are_read_as_their_rgb_image(model):
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    a, b = model.predict(rgb, threshold=0.0), model.predict(bgr, threshold=0.0, color="bgr")
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert not torch.equal(a["scores"], model.predict(bgr, threshold=0.0)["scores"])  # read as RGB: another image
    with pytest.raises(ValueError, match="color"):
        model.predict(rgb, color="hsv")
