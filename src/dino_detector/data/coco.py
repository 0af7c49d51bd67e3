"""COCO-format detection dataset (pycocotools).

Category ids in COCO files are sparse (1..90 for COCO itself): they are mapped to contiguous labels
0..C-1 sorted by id, and back with ``category_ids[label]``. Crowd objects are kept in the annotation file
for evaluation but never become training targets. Boxes are clipped to the image; boxes of zero area and
annotations of unknown categories are dropped with a logged count.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.ops import box_convert
from tqdm import tqdm

from ..config import DataConfig
from .images import ImageReadError, image_problem, load_image, to_tensor_image
from .transforms import DetectionTransform

log = logging.getLogger(__name__)


def load_coco(annotation_file):
    """A pycocotools COCO object from a file, an in-memory COCO dict or a COCO object (returned as it is),
    with a clear error for a missing or malformed file."""
    from pycocotools.coco import COCO

    if isinstance(annotation_file, COCO):
        return annotation_file
    if isinstance(annotation_file, dict):
        coco = COCO()
        coco.dataset = annotation_file
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco = COCO(str(path))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid COCO detection file: {err}") from None
    if "categories" not in coco.dataset or not coco.dataset["categories"]:
        raise ValueError(f"{path} has no 'categories'")
    return coco


class CocoDetection(Dataset):
    """Items: (image [3, h, w] float 0..1, target) with target boxes (cx, cy, w, h) relative to the
    transformed image, labels (contiguous), image_id and orig_size (h, w)."""

    def __init__(self, images_dir: str | Path, annotation_file, cfg: DataConfig, train: bool,
                 image_ids: list[int] | None = None, limit: int = 0, name: str | None = None):
        """``annotation_file``: a COCO JSON path, a COCO dict (VOC / YOLO / HF sources are converted to one) or
        an already loaded pycocotools COCO; ``cfg``: the data section (sizes, augmentation); ``name`` labels
        the dataset in messages."""
        self.name = name or (str(annotation_file) if isinstance(annotation_file, (str, Path)) else "dataset")
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.images_dir}")
        self.coco = load_coco(annotation_file)
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in cats]
        self.class_names = [c["name"] for c in cats]
        self.label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        ids = sorted(self.coco.getImgIds()) if image_ids is None else list(image_ids)
        unknown = [i for i in ids if i not in self.coco.imgs]
        if unknown:
            raise ValueError(f"{len(unknown)} requested image ids are not in {self.name}, e.g. {unknown[0]} "
                             f"(a subset or indices file made for another annotation file?)")
        ids = ids[:limit] if limit > 0 else ids
        if not ids:
            raise ValueError(f"{self.name} lists no images: nothing to train or evaluate on")
        self.ids = self._readable(ids)
        self.train = train
        self.transform = DetectionTransform(cfg, train)
        self.skipped = {"crowd": 0, "degenerate": 0, "unknown_category": 0}
        self.targets = {i: self._clean_annotations(i) for i in ids}
        if any(self.skipped.values()):
            log.warning("%s: annotations left out of training targets: %s", self.name, self.skipped)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def _readable(self, ids: list[int]) -> list[int]:
        """The ids whose image file exists and has a readable header; the others are reported (counts and
        names) and left out, before any training starts. Raises when none is left."""
        bad: dict[str, list[str]] = {"missing": [], "not an image": []}
        keep = []
        for i in tqdm(ids, desc=f"check images ({Path(self.name).name})", leave=False, dynamic_ncols=True,
                      disable=len(ids) < 2000):
            name = self.coco.imgs[i]["file_name"]
            problem = image_problem(self.images_dir / name)
            if problem:
                bad[problem].append(name)
            else:
                keep.append(i)
        for problem, names in bad.items():
            if names:
                log.warning("%s: %d of %d images %s and left out: %s%s", self.name, len(names), len(ids),
                            "are missing" if problem == "missing" else "are not readable images",
                            ", ".join(names[:5]), " ..." if len(names) > 5 else "")
        if not keep:
            raise ValueError(f"{self.name}: none of its {len(ids)} images in {self.images_dir} can be read "
                             f"(e.g. {(bad['missing'] or bad['not an image'])[0]})")
        return keep

    def _clean_annotations(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        info = self.coco.imgs[image_id]
        w, h = info.get("width"), info.get("height")
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                self.skipped["crowd"] += 1
                continue
            if ann["category_id"] not in self.label_of:
                self.skipped["unknown_category"] += 1
                continue
            x, y, bw, bh = ann["bbox"]
            x0, y0, x1, y1 = max(x, 0), max(y, 0), x + bw, y + bh
            if w and h:
                x1, y1 = min(x1, w), min(y1, h)
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                self.skipped["degenerate"] += 1
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(self.label_of[ann["category_id"]])
        return (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                torch.tensor(labels, dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def __getitem__(self, index: int):
        for step in range(len(self)):
            try:
                return self._item((index + step) % len(self))
            except ImageReadError as err:  # the message names the file
                if not self.train:
                    raise  # evaluating a substitute would score the wrong image
                # broken past its header (a truncated file): warn, and the next image takes its place
                log.warning("%s; training uses the next image instead", err)
        raise ValueError(f"{self.name}: none of its images could be decoded")

    def _item(self, index: int):
        image = to_tensor_image(load_image(self.image_path(index)))
        image_id = self.ids[index]
        boxes, labels = self.targets[image_id]
        orig_size = tuple(image.shape[-2:])
        image, boxes = self.transform(image, boxes)
        h, w = image.shape[-2:]
        # flips / resizes can leave slivers: drop boxes that lost their area
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], labels[keep]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        cxcywh = box_convert(boxes, "xyxy", "cxcywh") / scale
        target = {"boxes": cxcywh, "labels": labels, "image_id": image_id, "orig_size": orig_size}
        return image, target


def collate(batch):
    """Keeps images as a list: the model pads them itself, with masks, so sizes may differ."""
    images, targets = zip(*batch)
    return list(images), list(targets)
