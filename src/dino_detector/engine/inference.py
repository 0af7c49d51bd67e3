"""Batch inference over image files: unreadable files reported and skipped, images of similar size batched
together (one ViT call per patch grid), eval mode with no autograd graph, optional ``torch.compile``."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..backbones.adapters import merge_lora_
from ..data.images import ImageReadError, header_size, image_problem, load_image, to_tensor_image
from ..data.transforms import resize_for_inference
from ..models.postprocess import postprocess

log = logging.getLogger(__name__)


@dataclass
class ImagePrediction:
    path: Path
    height: int
    width: int
    boxes: list[list[float]]  # xyxy, original pixels
    scores: list[float]
    category_ids: list[int]


@dataclass
class PredictionRun:
    predictions: list[ImagePrediction]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)
    seconds: float = 0.0  # model time (data loading excluded)

    @property
    def images_per_second(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds > 0 else 0.0


class ImageFiles(Dataset):
    """(resized [3, h, w] tensor, (height, width) original, index); None for a file that fails to decode."""

    def __init__(self, paths: list[Path], resize):
        self.paths, self.resize = paths, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = to_tensor_image(load_image(self.paths[i]))
        except ImageReadError as err:
            return None, str(err), i
        return resize_for_inference(image, self.resize), tuple(image.shape[-2:]), i


def readable_images(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split by a header check: (readable files sorted by size so that batches share a patch grid, problems)."""
    sizes = {p: header_size(p) for p in paths}
    problems = [(p, image_problem(p)) for p, size in sizes.items() if size is None]
    ok = [p for p, size in sizes.items() if size is not None]
    return sorted(ok, key=lambda p: (sizes[p][1], sizes[p][0], str(p))), problems


# inductor options of ``prepare_model(compile_model=True)``. Freezing folds the (now fixed) weights into the
# graph as constants, so inductor can pre-pack them for oneDNN and fold what depends only on them. It applies
# only under no_grad / inference_mode (as ``predict_files`` runs). Measured for `lightweight`, batch 1, eager
# and compiled interleaved in one process (BENCHMARKS.md): 512² on 2 CPU threads, 0 to 13 % faster over four
# runs, after a 20-60 s first call; 640² on an H200, 18.5 -> 12.5 ms.
COMPILE_OPTIONS = {"freezing": True}


def prepare_model(model: torch.nn.Module, device: torch.device, compile_model: bool = False) -> torch.nn.Module:
    """Eval mode on ``device`` with LoRA merged; with ``compile_model``, ``torch.compile`` with frozen weights.

    Compiled for the first input's shapes; a second shape recompiles once with dynamic shapes (torch's
    default), so one resolution gets the specialised graph. The frozen graph keeps the weights it was built
    with: compile only a model whose training is over."""
    model = model.to(device).eval()
    if merge_lora_(model):
        log.info("LoRA adapters merged into the backbone weights for inference")
    if compile_model:
        model.forward = torch.compile(model.forward, options=COMPILE_OPTIONS)
    return model


def predict_files(model, paths: list[Path], device: torch.device, *, batch_size: int = 4, threshold: float = 0.5,
                  top_k: int = 100, num_workers: int = 0, progress: bool = True) -> PredictionRun:
    """Detections for every readable file of ``paths``; the others are listed in ``skipped``."""
    files, skipped = readable_images(paths)
    for path, why in skipped:
        log.warning("skipped %s: %s", path, why)
    loader = DataLoader(ImageFiles(files, model.resize), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=list)
    run = PredictionRun([], skipped)
    with torch.inference_mode(), tqdm(total=len(files), desc="predict", unit="img", disable=not progress,
                                      dynamic_ncols=True) as bar:
        for batch in loader:
            good = [item for item in batch if item[0] is not None]
            for _, why, i in (item for item in batch if item[0] is None):  # truncated after the header
                log.warning("skipped %s: %s", files[i], why)
                run.skipped.append((files[i], why))
            if good:
                start = time.perf_counter()
                outputs = model([image.to(device) for image, _, _ in good])
                dets = postprocess(outputs, [size for _, size, _ in good], model.category_ids, top_k, threshold,
                                   model.softmax)
                if device.type == "cuda":
                    torch.cuda.synchronize()  # count the GPU work, not only its launch
                run.seconds += time.perf_counter() - start
                for (_, (h, w), i), det in zip(good, dets):
                    run.predictions.append(ImagePrediction(files[i], h, w, det["boxes"].tolist(),
                                                           det["scores"].tolist(), det["category_ids"].tolist()))
            bar.update(len(batch))
    return run
