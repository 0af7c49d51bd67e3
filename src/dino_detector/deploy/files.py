"""Inference over image files through any backend: unreadable files reported and skipped, images of similar
size batched together (one ViT call per patch grid), optional sliced inference per image."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.images import ImageReadError, header_size, image_problem, load_image, to_tensor_image
from ..data.transforms import resize_for_inference
from .slicing import SliceSettings, sliced_detect

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
    """(resized [3, h, w] tensor, or the original with ``resize=None``; (height, width) original; index);
    None for a file that fails to decode."""

    def __init__(self, paths: list[Path], resize):
        self.paths, self.resize = paths, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = to_tensor_image(load_image(self.paths[i]))
        except ImageReadError as err:
            return None, str(err), i
        size = tuple(image.shape[-2:])
        return (resize_for_inference(image, self.resize) if self.resize is not None else image), size, i


def readable_images(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split by a header check: (readable files sorted by size so that batches share a patch grid, problems)."""
    sizes = {p: header_size(p) for p in paths}
    problems = [(p, image_problem(p)) for p, size in sizes.items() if size is None]
    ok = [p for p, size in sizes.items() if size is not None]
    return sorted(ok, key=lambda p: (sizes[p][1], sizes[p][0], str(p))), problems


def predict_files(backend, paths: list[Path], *, batch_size: int = 4, threshold: float = 0.5, top_k: int = 100,
                  num_workers: int = 0, progress: bool = True, slicing: SliceSettings | None = None) -> PredictionRun:
    """Detections for every readable file of ``paths`` through ``backend`` (deploy/backends.py); the others
    are listed in ``skipped``. With ``slicing``, each image is detected tile by tile (deploy/slicing.py)."""
    files, skipped = readable_images(paths)
    for path, why in skipped:
        log.warning("skipped %s: %s", path, why)
    resize = None if slicing is not None else backend.resize
    loader = DataLoader(ImageFiles(files, resize), batch_size=1 if slicing else batch_size, num_workers=num_workers,
                        collate_fn=list)
    run = PredictionRun([], skipped)
    with tqdm(total=len(files), desc="predict", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for batch in loader:
            good = [item for item in batch if item[0] is not None]
            for _, why, i in (item for item in batch if item[0] is None):  # truncated after the header
                log.warning("skipped %s: %s", files[i], why)
                run.skipped.append((files[i], why))
            if good:
                start = time.perf_counter()
                if slicing is not None:
                    dets = [sliced_detect(backend, image, slicing, threshold=threshold, top_k=top_k)
                            for image, _, _ in good]
                else:
                    dets = backend.detect([image for image, _, _ in good], [size for _, size, _ in good],
                                          threshold=threshold, top_k=top_k)
                run.seconds += time.perf_counter() - start
                for (_, (h, w), i), det in zip(good, dets):
                    run.predictions.append(ImagePrediction(files[i], h, w, det["boxes"].tolist(),
                                                           det["scores"].tolist(), det["category_ids"].tolist()))
            bar.update(len(batch))
    return run
