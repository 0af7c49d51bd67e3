"""A trained detector as the source of box proposals: the self-training round of detection pretraining.

``train --proposals --proposals_from RUN`` trains on the confident boxes of the detector in ``RUN`` (an
earlier ``--proposals`` run, or any trained detector: its classes are ignored) instead of the colour
segments of data/proposals.py. CutLER's observation holds on BCCD too: the detector that learnt from noisy
segments finds more of the objects than the segments it learnt from (BENCHMARKS.md, issue 23), so a second
round trains on cleaner boxes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.ops import nms
from tqdm import tqdm

from ..data.download import file_md5
from ..data.images import load_image
from .persistence import RUN_CHECKPOINTS, model_path, weights_file

METHOD = "detector/1"  # stored in the proposals file beside the detector's digest and the score threshold
DUPLICATE_IOU = 0.7  # boxes of one object under two classes (a multi-class source) are one proposal
BATCH = 4  # images per forward pass


def detector_path(path: str | Path) -> Path:
    """The detector ``path`` names: a checkpoint file, a ``save_pretrained`` folder, or a run folder (its
    checkpoint: ``persistence.model_path``). FileNotFoundError saying which were looked for."""
    resolved = model_path(path)
    if weights_file(resolved).is_file():
        return resolved
    raise FileNotFoundError(f"--proposals_from {path}: not a detector checkpoint, a save_pretrained folder "
                            f"(model.safetensors) or a run folder with {' or '.join(RUN_CHECKPOINTS)}")


class DetectorProposals:
    """``BoxFinder`` (data/proposals.py) of a trained detector: per image, its detections scoring at least
    ``min_score``, classes ignored (duplicates across classes merged), best first. The detector is loaded
    when the boxes are made (not for a cached file), on ``device`` ("auto": CUDA when there is one)."""

    def __init__(self, path: str | Path, min_score: float = 0.3, device: str = "auto"):
        if not 0.0 <= min_score < 1.0:
            raise ValueError(f"proposals_min_score must be in [0, 1), got {min_score}")
        self.path = detector_path(path)
        self.min_score = min_score
        self.device = device
        # the weights' digest too: new weights at the same path make new proposals
        self.settings = {"method": METHOD, "detector": str(self.path.resolve()),
                         "detector_md5": file_md5(weights_file(self.path)), "min_score": min_score}

    def __call__(self, files: list[Path], max_boxes: int) -> list[tuple[tuple[int, int], np.ndarray]]:
        from ..runtime.device import resolve_device
        from .detector import ObjectDetector
        model = ObjectDetector.from_pretrained(self.path).to(resolve_device(self.device)).eval()
        found = []
        progress = tqdm(total=len(files), desc=f"proposals from {self.path.name}", unit="image", dynamic_ncols=True)
        for start in range(0, len(files), BATCH):
            images = [load_image(f) for f in files[start:start + BATCH]]
            for image, dets in zip(images, model.predict(images, threshold=self.min_score, top_k=max(100, max_boxes))):
                found.append((image.size, self._kept(dets, max_boxes)))
            progress.update(len(images))
        progress.close()
        return found

    @staticmethod
    def _kept(dets: dict, max_boxes: int) -> np.ndarray:
        """The class-agnostic boxes of one image's detections [K <= max_boxes, 4], best first."""
        boxes, scores = dets["boxes"].float().cpu(), dets["scores"].float().cpu()
        keep = nms(boxes, scores, DUPLICATE_IOU)[:max_boxes]  # nms returns indices by decreasing score
        return boxes[keep].numpy().astype(np.float32)
