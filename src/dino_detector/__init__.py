"""dino_detector: end-to-end DETR-style object detection on DINOv2 / DINOv3 backbones and on an encoder you
pretrain yourself (ARCHITECTURE.md maps the packages).

The detector class is imported on first use, so that the command line answers ``--help`` and rejects a
bad flag without loading torch."""
from .config import Config, build_config

__all__ = ["Config", "DINOv2ObjectDetector", "DeployedDetector", "FitResult", "ObjectDetector", "Prediction",
           "build_config", "fit", "open_detector"]
__version__ = "0.1.0"
LAZY = {"DINOv2ObjectDetector": "models.detector", "ObjectDetector": "models.detector",
        "Prediction": "models.prediction", "fit": "api", "FitResult": "api",
        "open_detector": "deploy.detector", "DeployedDetector": "deploy.detector"}


def __getattr__(name: str):
    if name in LAZY:
        import importlib
        return getattr(importlib.import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'dino_detector' has no attribute '{name}'")
