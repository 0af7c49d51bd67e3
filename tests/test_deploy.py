"""Deployment backends: onnxruntime and OpenVINO reproduce the torch backend's detections on BCCD val images
(boxes within 1e-3 of the image size, same classes, scores within 1e-4) for the tiny, lightweight,
two-stage and two-stage-lite architectures, OpenVINO also through the graph it compiles for a repeated input
shape; exported files are cached beside the checkpoint and remade when it changes; INT8 graphs are quantised
and stay close to fp32; wrong choices are one-line errors."""
from __future__ import annotations

import gc
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from conftest import perturb_head_
from dino_detector.data.images import load_image, to_tensor_image
from dino_detector.data.transforms import Resize, resize_for_inference
from dino_detector.deploy.artifacts import artifact_path
from dino_detector.deploy.backends import OpenVinoBackend, TorchBackend
from dino_detector.deploy.loader import open_backend
from dino_detector.runtime.signals import signal_stack

CLASSES = {"category_ids": [1, 2, 3], "class_names": ["Platelets", "RBC", "WBC"]}
SCORE_TOL, BOX_TOL = 1e-4, 1e-3  # scores absolute; boxes as a fraction of the image's longer side
SCORE_SPREAD = 4.0  # class-head weights x this


RECIPES = {"tiny": ("standard", {"dino_model": "tiny"}), "lightweight": ("lightweight", {}),
           "two-stage": ("two-stage", {}), "two-stage-lite": ("two-stage-lite", {})}
# the tiny ViT (make demo's model) and three presets


def preset_model(recipe: str):
    from dino_detector.config import build_config
    from dino_detector.models.detector import ObjectDetector

    torch.manual_seed(0)
    preset, overrides = RECIPES[recipe]
    cfg = build_config(preset, pretrained=False, **overrides)
    model = ObjectDetector(config=cfg.model, resize=Resize(image_size=320), **CLASSES).eval()
    perturb_head_(model)  # zero-initialised heads would give every image the same outputs
    with torch.no_grad():  # scores spread over 0..1 as a trained model's are: random heads put every score
        for name, p in model.named_parameters():  # within 1e-7 of others, and float noise would reorder them
            if "class_head" in name and name.endswith("weight"):
                p.mul_(SCORE_SPREAD)
    return model


@pytest.fixture(scope="module")
def val_images(bccd):
    """Three BCCD val images at their 640 x 480 and one cropped to 500 x 333 (a second size in one call)."""
    names = sorted(bccd["images"].glob("*.jpg"))
    images = [to_tensor_image(load_image(p)) for p in names[-3:]]
    return images + [images[0][:, 100:433, 50:550].contiguous()]


def detect(backend, images, threshold=0.0, top_k=100):
    resized = [resize_for_inference(im, backend.resize) for im in images]
    return backend.detect(resized, [tuple(im.shape[-2:]) for im in images], threshold=threshold, top_k=top_k)


def assert_same_detections(want: dict, got: dict, side: int, first: int = 70) -> None:
    """Each of the first ``first`` reference detections has a counterpart of the same class, score within
    SCORE_TOL and box within BOX_TOL * side (order may differ between near-equal scores)."""
    assert len(got["scores"]) == len(want["scores"])
    for box, score, cid in zip(want["boxes"][:first], want["scores"][:first], want["category_ids"][:first]):
        close = ((got["category_ids"] == cid) & ((got["scores"] - score).abs() <= SCORE_TOL)
                 & ((got["boxes"] - box).abs().amax(1) <= BOX_TOL * side))
        assert close.any(), f"no match for {box.tolist()} {float(score):.5f} class {int(cid)}"


@pytest.mark.parametrize("preset", ["tiny", "lightweight", "two-stage", "two-stage-lite"])
def test_graph_backends_reproduce_torch(preset, val_images, tmp_path):
    model = preset_model(preset)
    folder = tmp_path / preset
    model.save_pretrained(folder)
    reference = [detect(TorchBackend(model, torch.device("cpu")), val_images)]
    queries = model.config.num_queries * model.num_classes
    assert len(reference[0][0]["scores"]) == min(100, queries) and float(reference[0][0]["scores"].std()) > 1e-3
    for name in ("onnxruntime", "openvino"):
        backend = open_backend(folder, name)
        got = detect(backend, val_images)
        if name == "openvino":  # each input shape's second call runs a graph compiled for that shape alone
            assert not backend.static
            got = detect(backend, val_images)
            assert len(backend.static) == 2  # [3, 3, 240, 320] and the crop's [1, 3, 213, 320]
        for want_image, got_image, image in zip(reference[0], got, val_images):
            assert_same_detections(want_image, got_image, max(image.shape[-2:]))
        # a threshold and a smaller top_k cut the same detections as the torch path's post-processing
        cut = detect(backend, val_images[:1], threshold=0.3, top_k=20)[0]
        want = detect(TorchBackend(model, torch.device("cpu")), val_images[:1], threshold=0.3, top_k=20)[0]
        assert_same_detections(want, cut, 640, first=len(want["scores"]))
    assert artifact_path(folder, "onnx", weights="raw", top_k=100).is_file()
    assert artifact_path(folder, "openvino", weights="raw", top_k=100).with_suffix(".bin").is_file()


def test_exported_graph_is_cached_and_remade_when_the_checkpoint_changes(tmp_path):
    model = preset_model("tiny")
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    open_backend(folder, "onnxruntime")
    onnx = artifact_path(folder, "onnx", weights="raw", top_k=100)
    first = onnx.stat().st_mtime_ns
    open_backend(folder, "onnxruntime")
    assert onnx.stat().st_mtime_ns == first  # reused
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # a newer checkpoint
    open_backend(folder, "onnxruntime")
    assert onnx.stat().st_mtime_ns != first  # exported again


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A saved tiny model, shared by the tests that only read it (its exports are made once)."""
    folder = tmp_path_factory.mktemp("deploy") / "tiny"
    preset_model("tiny").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_int8_graph_is_quantised_and_close_to_fp32(name, bccd, val_images, tiny_folder, tmp_path):
    folder = tiny_folder
    fresh = tmp_path / "fresh"
    shutil.copytree(folder, fresh, ignore=shutil.ignore_patterns("*.onnx*", "*.xml*", "*.bin*"))
    with pytest.raises(ValueError, match="calibration_images"):  # said before anything is exported
        open_backend(fresh, name, int8=True)
    assert not list(fresh.glob("*.onnx"))
    calibration = tmp_path / "calibration"  # 8 of the BCCD images: the ranges of real inputs, quickly
    calibration.mkdir()
    for path in sorted(bccd["images"].glob("*.jpg"))[:8]:
        shutil.copy(path, calibration)
    int8 = open_backend(folder, name, int8=True, calibration_images=str(calibration))
    text = int8.path.read_bytes()
    assert (b"QuantizeLinear" if name == "onnxruntime" else b"FakeQuantize") in text
    fp32 = open_backend(folder, name)
    a, b = detect(fp32, val_images[:2], top_k=10), detect(int8, val_images[:2], top_k=10)
    for x, y in zip(a, b):
        assert np.isfinite(y["scores"].numpy()).all()
        assert (x["scores"] - y["scores"]).abs().max() < 0.15  # INT8 moves the scores of this random model a little
    if name == "openvino":  # quantised graphs stay dynamic (deploy/backends.py: static_model)
        detect(int8, val_images[:2], top_k=10)
        assert not int8.static
    assert open_backend(folder, name, int8=True).path == int8.path  # found again without calibration images


def test_wrong_choices_are_value_errors(tiny_folder):
    with pytest.raises(ValueError, match="backend must be one of"):
        open_backend(tiny_folder, "tensorrt")
    with pytest.raises(ValueError, match="onnxruntime or openvino"):
        open_backend(tiny_folder, "torch", int8=True)
    backend = open_backend(tiny_folder, "onnxruntime")
    with pytest.raises(ValueError, match="top_k"):
        backend.detect([torch.rand(3, 64, 64)], [(64, 64)], top_k=101)


def test_openvino_compiles_a_shape_on_its_second_call_and_at_most_static_shapes_of_them(tiny_folder, val_images):
    backend = open_backend(tiny_folder, "openvino")
    backend.static_shapes = 1
    first = detect(backend, val_images[:1])
    assert not backend.static  # a shape seen once runs the dynamic graph
    again = detect(backend, val_images[:1])
    assert list(backend.static) == [(1, 3, 240, 320)]  # 640 x 480 resized to 320 px
    assert_same_detections(first[0], again[0], 640, first=len(first[0]["scores"]))
    crop = [val_images[0][:, :200, :300]]
    detect(backend, crop)
    detect(backend, crop)
    assert list(backend.static) == [(1, 3, 240, 320)]  # the limit reached: the second shape stays dynamic
    meta = dict(resize=backend.resize, category_ids=backend.category_ids, class_names=backend.class_names,
                weights="raw")
    with pytest.raises(ValueError, match="static_shapes"):
        OpenVinoBackend(backend.path, static_shapes=-1, **meta)


def test_openvino_leaves_the_threads_signal_stack_and_a_later_sigterm_is_handled(tiny_folder):
    # OpenVINO's CPU plugin repointed the thread's alternate signal stack at a buffer it later frees: a
    # training run's SIGTERM after an OpenVINO INT8 test ended the whole suite in a segmentation fault
    before = signal_stack()
    assert before != (0, 0, 0)  # Linux: the stack is readable (pytest's faulthandler set one)
    backend = open_backend(tiny_folder, "openvino")
    assert signal_stack() == before
    del backend
    gc.collect()
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM]
