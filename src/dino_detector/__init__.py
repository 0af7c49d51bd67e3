"""dino_detector: end-to-end DETR-style object detection on DINOv2 / DINOv3 backbones."""
from .config import Config, build_config
from .models.detector import DINOv2ObjectDetector

__all__ = ["Config", "DINOv2ObjectDetector", "build_config"]
__version__ = "0.1.0"
