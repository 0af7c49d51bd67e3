"""``dino_detector.open_detector``: a trained detector behind the backend of your choice, with the same
``predict`` as ``ObjectDetector.predict`` (and sliced inference)."""
from __future__ import annotations

from pathlib import Path

from .backends import Backend
from .loader import EXPORT_TOP_K, open_backend
from .slicing import SliceSettings


class DeployedDetector:
    """A checkpoint ready for inference through ``backend`` ("torch", "onnxruntime" or "openvino")."""

    def __init__(self, backend: Backend):
        self.backend = backend

    @property
    def class_names(self) -> list[str]:
        return self.backend.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.backend.category_ids

    def predict(self, images, threshold: float = 0.5, top_k: int = 100, color: str = "rgb",
                slice_size: int | None = None, slice_overlap: float = 0.2, slice_merge: str = "nms",
                slice_prefer_whole: bool = False):
        """Detect objects in a path, PIL image, array, tensor, or a list of those (the inputs of
        ``ObjectDetector.predict``). ``slice_size``: sliced inference with tiles of that many pixels
        overlapping by ``slice_overlap`` of a side, merged by ``slice_merge`` ("nms" or "nmm"); with
        ``slice_prefer_whole`` the objects the whole image shows are taken from it (deploy/slicing.py).
        Returns a ``Prediction`` per image (a list for a list input)."""
        from ..data.images import to_tensor_image
        from ..data.transforms import resize_for_inference
        from ..models.detector import check_prediction_settings
        from ..models.prediction import Prediction
        from .slicing import sliced_detect

        check_prediction_settings(threshold, top_k)
        slicing = (SliceSettings(slice_size, slice_overlap, slice_merge, prefer_whole=slice_prefer_whole)
                   if slice_size else None)
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        tensors = [to_tensor_image(item, color) for item in items]
        if slicing is not None:
            dets = [sliced_detect(self.backend, t, slicing, threshold=threshold, top_k=top_k) for t in tensors]
        elif tensors:
            dets = self.backend.detect([resize_for_inference(t, self.backend.resize) for t in tensors],
                                       [tuple(t.shape[-2:]) for t in tensors], threshold=threshold, top_k=top_k)
        else:
            dets = []
        name = dict(zip(self.category_ids, self.class_names))
        results = [Prediction(boxes=d["boxes"], scores=d["scores"], labels=d["category_ids"],
                              label_names=[name[c] for c in d["category_ids"].tolist()]) for d in dets]
        return results[0] if single else results

    def __repr__(self) -> str:
        return f"DeployedDetector({self.backend.label}, {len(self.class_names)} classes)"


def open_detector(checkpoint: str | Path, backend: str = "onnxruntime", *, weights: str = "auto",
                  int8: bool = False, calibration_images: str | None = None, device: str = "cpu",
                  top_k: int = EXPORT_TOP_K, num_threads: int = 0, int8_method: str = "qdq") -> DeployedDetector:
    """A checkpoint (``dino_detector_*.pth`` or a ``save_pretrained`` folder) behind ``backend``; the ONNX
    graph, OpenVINO IR and INT8 files are made on first use and kept beside the checkpoint.

        detector = dino_detector.open_detector("runs/cells/dino_detector_best.pth", "openvino")
        prediction = detector.predict("smear.jpg", slice_size=640)
    """
    return DeployedDetector(open_backend(checkpoint, backend, weights=weights, device=device, int8=int8,
                                         calibration_images=calibration_images, top_k=top_k,
                                         num_threads=num_threads, int8_method=int8_method))
