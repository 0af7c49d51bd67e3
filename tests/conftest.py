"""Shared fixtures: dataset paths, seeding, and a factory for small, fast detectors.

Everything here runs offline on CPU: the ``tiny`` backbone with random weights, small images, few queries.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

# Never reach the Hugging Face hub from the test suite.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# One intra-op thread: the tensors here are tiny, and on a small shared machine (2 cores, other jobs)
# OpenMP thread teams oversubscribe the CPU and make every op ~100x slower. Results stay deterministic.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
# the real data the tests read travels with the repository (tests/data/README.md: sources, licences, sizes)
DATASETS = Path(__file__).resolve().parent / "data"
TINY_COCO = DATASETS / "tiny-coco"
TINY_COCO_IMAGES = TINY_COCO / "train2017"
TINY_COCO_ANN = TINY_COCO / "annotations" / "instances_train2017_small.json"
BCCD = DATASETS / "bccd"
BCCD_IMAGES = BCCD / "JPEGImages"
BCCD_TRAIN_ANN = BCCD / "coco" / "instances_train.json"
BCCD_VAL_ANN = BCCD / "coco" / "instances_val.json"

# Small detector settings used throughout (fast on 2 CPU cores).
SMALL_MODEL = dict(dino_model="tiny", pretrained=False, num_queries=10, decoder_layers=2, hidden_dim=64,
                   num_heads=4, dim_feedforward=128, num_points=2)


def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state."""
    seed_all(0)
    yield


def _require(path: Path) -> Path:
    """A test data file: its absence is a broken checkout, an error, never a skip."""
    if not path.exists():
        raise FileNotFoundError(f"test data missing: {path} (it is part of the repository: tests/data/README.md)")
    return path


@pytest.fixture(scope="session")
def tiny_coco() -> dict:
    return {"images": _require(TINY_COCO_IMAGES), "annotations": _require(TINY_COCO_ANN)}


@pytest.fixture(scope="session")
def bccd() -> dict:
    return {"images": _require(BCCD_IMAGES), "train": _require(BCCD_TRAIN_ANN), "val": _require(BCCD_VAL_ANN)}


def build_small_detector(num_classes: int = 3, seed: int = 0, **overrides):
    """A small random-weight detector; ``overrides`` are ModelConfig fields or constructor arguments."""
    from dino_detector import DINOv2ObjectDetector

    seed_all(seed)
    kwargs = {**SMALL_MODEL, **overrides}
    return DINOv2ObjectDetector(num_classes=num_classes, **kwargs)


def perturb_head_(model, scale: float = 0.05, seed: int = 1) -> None:
    """Add seeded noise to every non-backbone parameter, so that zero-initialised heads (box deltas,
    attention weights, sampling offsets) are not trivially constant and outputs depend on the image."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("backbone."):
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


@pytest.fixture
def make_detector():
    """Factory fixture: ``make_detector(num_classes=3, **overrides)`` -> small detector (train mode)."""
    return build_small_detector


@pytest.fixture(scope="session")
def trained_bccd(bccd, tmp_path_factory) -> Path:
    """A run folder: a tiny detector trained for 2 short epochs on 16 BCCD training images
    (dino_detector_final.pth, val_metrics_final.json, val_predictions_final.json)."""
    from dino_detector.train import main as train_main

    out = tmp_path_factory.mktemp("bccd_model")
    code = train_main(["--dino_model", "tiny", "--no_pretrained", "--image_size", "128", "--batch_size", "4",
                       "--num_queries", "20", "--decoder_layers", "1", "--device", "cpu", "--num_workers", "0",
                       "--debug", "--debug_samples", "16", "--debug_epochs", "2", "--debug_lr", "5e-4",
                       "--train_images", str(bccd["images"]), "--train_annotations", str(bccd["train"]),
                       "--output_dir", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(trained_bccd) -> Path:
    return trained_bccd / "dino_detector_final.pth"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Captured output as valid UTF-8: a test that prints an undecodable file name (a surrogate escape) would
    otherwise stop pytest-xdist, which sends each report to the controller as UTF-8."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for title, text in report.sections]
