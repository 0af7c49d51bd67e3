"""Soft-NMS of the post-processing (``soft_nms_sigma``): near-duplicates of a higher-scored detection of
the same class are decayed by exp(-IoU^2 / sigma) and re-ranked; other detections keep their scores."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from dino_detector.models.detector import ObjectDetector
from dino_detector.models.postprocess import pairwise_iou, postprocess, soft_nms_scores, topk_detections


def test_pairwise_iou_equals_torchvisions_box_iou_per_image():
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(3, 7, 2, generator=g) * 50
    boxes = torch.cat([corner, corner + torch.rand(3, 7, 2, generator=g) * 40], -1)
    boxes[0, 0] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero area: IoU 0 with everything, not NaN
    got = pairwise_iou(boxes)
    for image, want in zip(boxes, got):
        assert torch.allclose(want, torch.nan_to_num(box_iou(image, image)), atol=1e-6)


def test_a_duplicate_is_decayed_by_its_iou_and_other_boxes_are_not():
    sigma = 0.5
    boxes = torch.tensor([[[0.0, 0, 10, 10],    # best
                           [0.0, 0, 10, 10],    # exact copy, same class: x exp(-1 / sigma)
                           [0.0, 0, 10, 5],     # half of it (IoU 0.5), same class: x exp(-0.25 / sigma)
                           [0.0, 0, 10, 10],    # copy of another class: unchanged
                           [20.0, 20, 30, 30]]])  # elsewhere: unchanged
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    labels = torch.tensor([[0, 0, 0, 1, 0]])
    got = soft_nms_scores(boxes, scores, labels, sigma)[0]
    want = [0.9, 0.8 * math.exp(-1 / sigma), 0.7 * math.exp(-0.25 / sigma), 0.6, 0.5]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_topk_detections_re_ranks_the_decayed_scores():
    """A sigmoid head with three queries: two near-copies of one box and one other box, lower scored than
    the copy. With soft NMS the copy (IoU 0.9 with the best) falls below the distinct box."""
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    outputs = {"pred_logits": torch.tensor([[[logit(0.9)], [logit(0.8)], [logit(0.6)]]]),
               "pred_boxes": torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.18], [0.7, 0.7, 0.2, 0.2]]])}
    sizes = torch.tensor([[100, 100]])
    _, plain, _ = topk_detections(outputs, sizes, top_k=3)
    boxes, scores, labels = topk_detections(outputs, sizes, top_k=3, soft_nms_sigma=0.5)
    assert plain[0].tolist() == pytest.approx([0.9, 0.8, 0.6], rel=1e-5)
    iou = 0.18 / 0.2
    assert scores[0].tolist() == pytest.approx([0.9, 0.6, 0.8 * math.exp(-iou ** 2 / 0.5)], rel=1e-5)
    assert boxes[0, 1].tolist() == pytest.approx([60.0, 60.0, 80.0, 80.0], abs=1e-4)  # the distinct box moved up
    dets = postprocess(outputs, [(100, 100)], top_k=3, soft_nms_sigma=0.5)[0]
    assert torch.equal(dets["scores"], scores[0]) and torch.equal(dets["boxes"], boxes[0])


def test_a_model_decodes_with_its_own_sigma_and_rejects_a_negative_one():
    cfg = dict(dino_model="tiny", pretrained=False, num_classes=2, hidden_dim=32, dim_feedforward=64,
               num_queries=5, decoder_layers=1, num_heads=2)
    model = ObjectDetector(**cfg, soft_nms_sigma=0.3)
    assert model.decode_options == {"softmax": False, "soft_nms_sigma": 0.3}
    with pytest.raises(ValueError, match="soft_nms_sigma"):
        ObjectDetector(**cfg, soft_nms_sigma=-1.0)
