"""ONNX export: onnxruntime equals PyTorch within 1e-4 on images of different sizes and batch sizes
(dynamic axes), with and without post-processing, for the tiny and the lightweight (DINOv2-S + LoRA)
detectors; the command line exports a checkpoint."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import build_small_detector, perturb_head_
from dino_detector.models.exportable import InferenceGraph, compare_with_onnxruntime, export_onnx


def outputs_match(model, path, post: bool, top_k: int = 100) -> None:
    """Two images of different sizes, one alone and one in a batch of 3, against PyTorch."""
    graph = InferenceGraph(model.eval(), post, top_k)
    for batch, h, w in ((1, 150, 230), (3, 97, 61)):
        inputs = graph.example(batch, h, w, seed=h)
        assert compare_with_onnxruntime(graph, path, inputs) < 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = build_small_detector(3, num_feature_levels=2)
    perturb_head_(model)  # zero-initialised heads would make every output the same
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_onnx(model, path, dynamic=True)
    return model, path, report


def test_tiny_dynamic_export_matches_pytorch(tiny):
    model, path, report = tiny
    assert report["max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dims = session.get_inputs()[0].shape
    assert all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # batch, height, width are symbolic
    outputs_match(model, path, post=False)
    # the outputs depend on the image (not a constant graph)
    a, b = (session.run(None, {"images": np.random.default_rng(s).random((1, 3, 90, 90), np.float32)})[0]
            for s in (0, 1))
    assert np.abs(a - b).max() > 1e-3


def test_postprocessed_export_returns_pixel_boxes_and_category_ids(tmp_path):
    model = build_small_detector(2, category_ids=[3, 17], class_names=["cat", "dog"])
    perturb_head_(model)
    path = tmp_path / "post.onnx"
    export_onnx(model, path, dynamic=True, postprocess=True, top_k=5)
    outputs_match(model, path, post=True, top_k=5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, ids = session.run(None, {"images": np.random.default_rng(0).random((2, 3, 80, 120), np.float32),
                                            "orig_sizes": np.array([[400, 600], [80, 120]], dtype=np.int64)})
    assert boxes.shape == (2, 5, 4) and scores.shape == (2, 5) and set(np.unique(ids)) <= {3, 17}
    assert boxes[0, :, 2].max() <= 600 and boxes[1, :, 2].max() <= 120  # each image's own pixel frame
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


def test_lightweight_dinov2_small_with_lora_exports(tmp_path):
    """The lightweight preset's real architecture (DINOv2-S/14, LoRA on the last blocks), random weights."""
    from dino_detector.config import build_config
    from dino_detector.models.detector import DINOv2ObjectDetector

    cfg = build_config("lightweight", pretrained=False, backbone_mode="lora")
    model = DINOv2ObjectDetector(num_classes=3, config=cfg.model)
    assert model.backbone_mode == "lora"
    perturb_head_(model)
    path = tmp_path / "lightweight.onnx"
    report = export_onnx(model, path, dynamic=True)
    assert report["max_abs_diff"] < 1e-4
    outputs_match(model, path, post=False)
    # the exported copy had LoRA merged; the model itself keeps its adapters
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_export_command_line(trained_checkpoint, tmp_path, capsys):
    from dino_detector.export import main as export_main

    out = tmp_path / "m.onnx"
    assert export_main(["--checkpoint", str(trained_checkpoint), "--output", str(out), "--dynamic",
                        "--with_postprocess"]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    names = [i.name for i in ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_inputs()]
    assert names == ["images", "orig_sizes"]
    assert export_main(["--checkpoint", str(tmp_path / "missing.pth"), "--output", str(out)]) == 2


def test_tensor_batch_equals_list_of_the_same_images():
    """The one-size batch path (the one ONNX traces) gives what the per-image list path gives."""
    model = build_small_detector(3).eval()
    perturb_head_(model)
    images = torch.rand(3, 3, 100, 130)
    with torch.no_grad():
        batched, listed = model(images), model(list(images))
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(batched[key], listed[key], atol=1e-5, rtol=0)


def test_flexible_encoder_with_stem_level_exports(tmp_path):
    """--fine_level stem: the stem map travels through the dynamic graph (sizes, batches) as in PyTorch."""
    model = build_small_detector(2, dino_model="flexible-tiny", num_feature_levels=3, fine_level="stem")
    perturb_head_(model)
    path = tmp_path / "stem.onnx"
    assert export_onnx(model, path, dynamic=True)["max_abs_diff"] < 1e-4
    outputs_match(model, path, post=False)
