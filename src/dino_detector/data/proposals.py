"""Unsupervised box proposals: class-agnostic boxes of unlabelled images, for detection pretraining
(``train --proposals``, DETReg's idea: a detector first learns to find what stands out in the user's own
images, then fine-tunes on the labelled ones with ``--init_from``).

The boxes come from Felzenszwalb's graph segmentation (scikit-image) at a few scales, the first stage of
selective search: each segment's bounding box is a proposal, kept if its size and shape are plausible and
ranked by how much the segment's colour (CIE Lab) differs from a ring around its box, times the share of the
box it fills. Compact segments that contrast with their surroundings (cells on a smear, parts on a belt,
vehicles on a road) rank first; background texture ranks last. Near-duplicates across scales are removed
with non-maximum suppression. On BCCD the 40 best boxes per image find 41 % of the annotated cells at IoU
0.5 (white cells 74 %, platelets 53 %, the touching red cells 37 %; BENCHMARKS.md, issue 23): noisy, as
DETReg's selective-search boxes are, and what the detector learns from them is where things stand out.

A self-training round (CutLER's) replaces the colour segments with a trained detector's own confident boxes
(``--proposals_from RUN``, a ``BoxFinder`` made in models/detector_proposals.py): a detector trained on the
noisy segments finds more of the objects than the segments did, and a second round learns from those.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torchvision.ops import nms
from tqdm import tqdm

from ..runtime.distributed import barrier, is_main_process, world_size
from ..runtime.logging import write_json
from .images import list_images, load_image

log = logging.getLogger(__name__)
PROPOSAL_CLASS = "object"
PROPOSALS_FILE = "proposals.json"  # in the run folder
METHOD = "felzenszwalb-lab-contrast/1"  # stored in the file: a cached file of another method is rebuilt
SEGMENT_SCALES = (50, 150, 400)  # Felzenszwalb scales: larger merges more, so objects of several sizes appear
SEGMENT_SIGMA = 0.8  # pre-smoothing of the segmentation (scikit-image's default)
MIN_AREA, MAX_AREA = 2e-4, 0.25  # box area range, fractions of the image: specks and background left out
MAX_ASPECT = 4.0  # longest / shortest box side
RING = 0.25  # the ring a segment is compared with reaches this share of the box's side beyond it
NMS_IOU = 0.6  # boxes of one object at several scales overlap more than this
POLL_S = 2.0  # seconds between looks for the proposals file, under torchrun, in the processes that wait


class BoxFinder(Protocol):
    """Another source of boxes than the colour segments: ``finder(files, max_boxes)`` -> one ((width,
    height), boxes [K <= max_boxes, 4] xyxy pixels, best first) per file; ``settings``: what the boxes depend
    on (stored in the proposals file, so a cached file of another source or setting is made again)."""
    settings: dict

    def __call__(self, files: list[Path], max_boxes: int) -> list[tuple[tuple[int, int], np.ndarray]]: ...


def unsupervised_boxes(rgb: np.ndarray, max_boxes: int = 40) -> np.ndarray:
    """rgb [H, W, 3] uint8 -> boxes [K <= max_boxes, 4] (x0, y0, x1, y1 pixels, float32), best first."""
    try:
        from skimage.color import rgb2lab
        from skimage.measure import regionprops
        from skimage.segmentation import felzenszwalb
    except ImportError:
        raise ImportError("--proposals needs scikit-image: pip install 'dino_detector[proposals]'") from None
    height, width = rgb.shape[:2]
    lab = rgb2lab(rgb)
    boxes, scores = [], []
    for scale in SEGMENT_SCALES:
        segments = felzenszwalb(rgb, scale=scale, sigma=SEGMENT_SIGMA, min_size=scale // 4 + 10)
        for region in regionprops(segments + 1):  # regionprops skips label 0
            y0, x0, y1, x1 = region.bbox
            box_area = (y1 - y0) * (x1 - x0)
            aspect = (x1 - x0) / (y1 - y0)
            if not MIN_AREA * height * width <= box_area <= MAX_AREA * height * width:
                continue
            if not 1 / MAX_ASPECT <= aspect <= MAX_ASPECT:
                continue
            inside = lab[y0:y1, x0:x1][segments[y0:y1, x0:x1] == region.label - 1].mean(0)
            pad_y, pad_x = max(2, int((y1 - y0) * RING)), max(2, int((x1 - x0) * RING))
            top, left = max(0, y0 - pad_y), max(0, x0 - pad_x)
            bottom, right = min(height, y1 + pad_y), min(width, x1 + pad_x)
            ring = np.ones((bottom - top, right - left), bool)
            ring[y0 - top:y1 - top, x0 - left:x1 - left] = False
            around = lab[top:bottom, left:right][ring].mean(0) if ring.any() else inside
            boxes.append([x0, y0, x1, y1])
            scores.append(float(np.linalg.norm(inside - around)) * region.area / box_area)
    if not boxes:
        return np.zeros((0, 4), np.float32)
    boxes_t = torch.tensor(boxes, dtype=torch.float32)
    keep = nms(boxes_t, torch.tensor(scores, dtype=torch.float32), NMS_IOU)[:max_boxes]
    return boxes_t[keep].numpy()


def _image_boxes(path: Path, max_boxes: int) -> tuple[tuple[int, int], np.ndarray]:
    image = load_image(path)
    return image.size, unsupervised_boxes(np.asarray(image.convert("RGB")), max_boxes)


def proposal_coco(images_dir: str | Path, max_boxes: int = 40, workers: int | None = None,
                  finder: BoxFinder | None = None) -> dict:
    """A COCO dict of every image under ``images_dir`` (searched recursively) with its unsupervised boxes as
    annotations of one class, ``object``. ``workers``: processes (default: the CPU count, at most 8).
    ``finder``: where the boxes come from instead of the colour segments (a trained detector)."""
    if max_boxes < 1:
        raise ValueError(f"proposals_per_image must be at least 1, got {max_boxes}")
    root = Path(images_dir)
    files = list_images(root, recursive=True)
    if not files:
        raise ValueError(f"--proposals: no images in {root}")
    found = finder(files, max_boxes) if finder is not None else _segment_boxes(files, max_boxes, workers)
    images, annotations = [], []
    for image_id, (path, ((width, height), boxes)) in enumerate(zip(files, found), start=1):
        images.append({"id": image_id, "file_name": path.relative_to(root).as_posix(), "width": width,
                       "height": height})
        for x0, y0, x1, y1 in boxes.tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    return {"info": {"proposals": _settings(root, max_boxes, finder)},
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": PROPOSAL_CLASS}]}


def _segment_boxes(files: list[Path], max_boxes: int, workers: int | None) -> list:
    """The colour-segment boxes of ``files``, in ``workers`` processes."""
    workers = workers or min(os.cpu_count() or 1, 8)
    find: Callable = partial(_image_boxes, max_boxes=max_boxes)
    progress = dict(total=len(files), desc="unsupervised box proposals", unit="image", dynamic_ncols=True)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(tqdm(pool.map(find, files, chunksize=4), **progress))
    return list(tqdm(map(find, files), **progress))


def cached_proposals(images_dir: str | Path, path: str | Path, max_boxes: int = 40,
                     finder: BoxFinder | None = None) -> Path:
    """``path``, holding the proposals of ``images_dir`` (made now unless a file of the same images, method and
    box count is there already: a resumed run trains on the same boxes). Under torchrun the first process
    makes them and the others wait for the file, then every process reads it. The others poll the file
    rather than wait in a collective: making boxes for a large folder can outlast a process group's timeout
    (10 minutes for NCCL), and a stale file of other settings is not taken for the new one. ``finder``: the
    boxes' source instead of the colour segments (``BoxFinder``)."""
    path = Path(path)
    wanted = _settings(images_dir, max_boxes, finder)
    if world_size() > 1 and not is_main_process():
        _wait_for(path, wanted)
    else:
        _made_or_reused(images_dir, path, wanted, finder)
    barrier()
    return path


def _settings(images_dir: str | Path, max_boxes: int, finder: BoxFinder | None = None) -> dict:
    """What a proposals file is made from, stored in it: a cached file of other settings is made again."""
    source = {"method": METHOD} if finder is None else dict(finder.settings)
    return {**source, "max_boxes": max_boxes, "images": str(Path(images_dir).resolve())}


def _holds(path: Path, wanted: dict) -> bool:
    """Whether ``path`` is a complete proposals file of these settings (files are written atomically)."""
    try:
        return json.loads(path.read_text()).get("info", {}).get("proposals") == wanted
    except (OSError, ValueError):
        return False  # missing or unreadable: made again


def _wait_for(path: Path, wanted: dict) -> None:
    """Block until the first process has written ``path`` (torchrun stops every process if that one fails)."""
    if not _holds(path, wanted):
        log.info("unsupervised box proposals: waiting for the first process to write %s", path)
    while not _holds(path, wanted):
        time.sleep(POLL_S)


def _made_or_reused(images_dir: str | Path, path: Path, wanted: dict, finder: BoxFinder | None) -> None:
    """``path`` made by this process, unless it holds these settings' proposals already."""
    if _holds(path, wanted):
        log.info("unsupervised box proposals: reusing %s", path)
        return
    coco = proposal_coco(images_dir, wanted["max_boxes"], finder=finder)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(coco, path, indent=None)
    boxes = len(coco["annotations"])
    log.info("unsupervised box proposals: %d boxes in %d images (%.1f per image) -> %s", boxes,
             len(coco["images"]), boxes / len(coco["images"]), path)
