"""COCO-format detection dataset (pycocotools).

Category ids in COCO files are sparse (1..90 for COCO itself): they are mapped to contiguous labels
0..C-1 sorted by id, and back with ``category_ids[label]``. Crowd objects are kept in the annotation file
for evaluation but never become training targets. Boxes are clipped to the image; boxes of zero area and
annotations of unknown categories are dropped with a logged count. A file that cannot be used as it is (not
JSON, a list missing, a malformed ``bbox``, an id or file listed twice) is a ``DatasetError`` naming the file
and the problem, raised before anything is built (``check_coco``).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.ops import box_convert
from torchvision.transforms import v2
from tqdm import tqdm

from ..config import DataConfig
from .coco_form import DatasetError
from .images import ImageReadError, image_problem, load_image, shown, to_tensor_image
from .mosaic import MosaicPart, compose_mosaic
from .transforms import DetectionTransform

log = logging.getLogger(__name__)


def load_coco(annotation_file, name: str | None = None, report: bool = True):
    """A pycocotools COCO object from a file, an in-memory COCO dict or a COCO object (returned as it is).

    Files and dicts are checked first (``check_coco``): what makes them unusable is a ``DatasetError`` naming
    the file (``name`` for a dict) and the problem; annotations of images the file does not list are counted
    (``coco.problems``) and, with ``report``, logged. A missing ``area`` / ``iscrowd`` is filled in
    (w x h / 0), as COCOeval needs both."""
    from pycocotools.coco import COCO

    if isinstance(annotation_file, COCO):
        return annotation_file
    if isinstance(annotation_file, dict):
        data, name = annotation_file, name or "the COCO dict"
    else:
        path = Path(annotation_file)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path}")
        data, name = read_json(path), name or str(path)
    problems = check_coco(data, name)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    coco.problems = problems
    if report and problems:
        log.warning("%s: %s", name, ", ".join(f"{n} {what}" for what, n in sorted(problems.items())))
    return coco


def read_json(path: Path):
    try:
        text = path.read_bytes()
        if not text.strip():
            raise DatasetError(f"{path}: not valid JSON (the file is empty)")
        return json.loads(text)
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None


ORPHAN = "annotation(s) of an image id not in 'images', left out"


def _is_id(value, text_ok: bool = True) -> bool:
    """An integer id (a non-empty string too, with ``text_ok``: some tools write image ids as text)."""
    if isinstance(value, str):
        return text_ok and value != ""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def check_coco(data, name: str) -> Counter:
    """Raise a ``DatasetError`` (naming ``name``) for what makes a COCO detection dict unusable: not an object,
    a missing or non-list ``images`` / ``annotations`` / ``categories``, no category, records without their
    ids or file name, an id or a file name listed twice, a ``bbox`` that is not 4 finite numbers. Returns the
    counts of what is only left out: annotations of images the file does not list."""
    def fail(problem: str):
        raise DatasetError(f"{name}: {problem}")

    if not isinstance(data, dict):
        hint = " (a results file? those are lists of detections)" if isinstance(data, list) else ""
        fail(f"expected a COCO object with 'images', 'annotations' and 'categories', got a "
             f"{type(data).__name__}{hint}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            fail(f"has no '{key}' list" + (" ([] when no image has a box)" if key == "annotations" else ""))
        if not isinstance(data[key], list):
            fail(f"'{key}' must be a list, got a {type(data[key]).__name__}")
    if not data["categories"]:
        fail("lists no categories (its 'categories' list is empty)")
    categories: set = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_id(cat.get("id"), text_ok=False) or "name" not in cat:
            fail(f"category #{i} {_short(cat)} needs an integer 'id' and a 'name'")
        if cat["id"] in categories:
            fail(f"category id {cat['id']} is listed twice")
        categories.add(cat["id"])
    files: dict = {}
    image_ids: set = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_id(image.get("id")):
            fail(f"image #{i} {_short(image)} has no 'id'")
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            fail(f"image {image['id']} has no 'file_name'")
        if image["id"] in image_ids:
            fail(f"image id {image['id']} is listed twice (the second time for {file_name})")
        if file_name in files:
            fail(f"file {file_name} is listed twice (image ids {files[file_name]} and {image['id']}): merge the "
                 "two records into one")
        files[file_name] = image["id"]
        image_ids.add(image["id"])
    annotations: set = set()
    problems: Counter = Counter()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            fail(f"annotation #{i} is a {type(ann).__name__}, not an object")
        where = f"annotation {ann['id']}" if _is_id(ann.get("id")) else f"annotation #{i}"
        for key in ("id", "image_id", "category_id"):
            if not _is_id(ann.get(key), text_ok=key != "category_id"):
                fail(f"{where} has no {'integer ' if key == 'category_id' else ''}'{key}' (got "
                     f"{_short(ann.get(key))})")
        if ann["id"] in annotations:
            fail(f"annotation id {ann['id']} is listed twice")
        annotations.add(ann["id"])
        box = ann.get("bbox")
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
            fail(f"{where} has bbox {_short(box)}: expected 4 finite numbers [x, y, width, height]")
        if ann["image_id"] not in image_ids:
            problems[ORPHAN] += 1
        ann.setdefault("area", box[2] * box[3])
        ann.setdefault("iscrowd", 0)
    return problems


UNREADABLE = {"missing": "are missing", "not an image": "are not readable images",
              "too large": "are too large to decode (over Pillow's decompression-bomb limit, "
                           "PIL.Image.MAX_IMAGE_PIXELS)"}


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
        self.coco = load_coco(annotation_file, None if isinstance(annotation_file, (str, Path)) else self.name)
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
        bad: dict[str, list[str]] = {kind: [] for kind in UNREADABLE}
        keep = []
        for i in tqdm(ids, desc=f"check images ({Path(self.name).name})", leave=False, dynamic_ncols=True,
                      disable=len(ids) < 2000):
            name = self.coco.imgs[i]["file_name"]
            problem = image_problem(self.images_dir / name)
            if problem:
                bad[problem.split(":")[0]].append(shown(name))
            else:
                keep.append(i)
        for kind, names in bad.items():
            if names:
                log.warning("%s: %d of %d images %s and left out: %s%s", self.name, len(names), len(ids),
                            UNREADABLE[kind], ", ".join(names[:5]), " ..." if len(names) > 5 else "")
        if not keep:
            first = next(names[0] for names in bad.values() if names)
            raise ValueError(f"{self.name}: none of its {len(ids)} images in {self.images_dir} can be read "
                             f"(e.g. {first})")
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

    def __getitem__(self, index: int | tuple):
        """``index``, or ``(index, strong[, size_factor])`` from the training sampler: ``strong`` False turns
        mosaic, crop, rotation and size changes off (``strong_aug_start_epoch``, ``strong_aug_off_fraction``);
        ``size_factor`` is the size of the image's batch (else drawn per image)."""
        index, strong, size_factor = (*index, None)[:3] if isinstance(index, tuple) else (index, True, None)
        for step in range(len(self)):
            try:
                return self._item((index + step) % len(self), strong, size_factor)
            except ImageReadError as err:  # the message names the file
                if not self.train:
                    raise  # evaluating a substitute would score the wrong image
                # broken past its header (a truncated file): warn, and the next image takes its place
                log.warning("%s; training uses the next image instead", err)
        raise ValueError(f"{self.name}: none of its images could be decoded")

    def _part(self, index: int) -> MosaicPart:
        """An image (untransformed) with its training boxes (xyxy pixels) and labels. Training images stay
        uint8 until resized (``DetectionTransform``): resizing a 640 x 480 image took 0.4 ms in uint8 and
        2.6 ms in float (2026-12-05); loading runs between the training steps, in the main process."""
        pil = load_image(self.image_path(index))
        image = v2.functional.pil_to_tensor(pil) if self.train else to_tensor_image(pil)
        return MosaicPart(image, *self.targets[self.ids[index]])

    def _item(self, index: int, strong: bool = True, size_factor: float | None = None):
        image_id = self.ids[index]
        cfg = self.transform.cfg
        if self.train and strong and cfg.mosaic_prob > 0 and torch.rand(()).item() < cfg.mosaic_prob:
            others = torch.randint(len(self), (3,)).tolist()
            part = compose_mosaic([self._part(i) for i in [index, *others]],
                                  side=cfg.image_size if cfg.image_size > 0 else cfg.min_size,
                                  zoom_range=(cfg.mosaic_window, cfg.mosaic_window))
        else:
            part = self._part(index)
        image, labels = part.image, part.labels
        orig_size = tuple(image.shape[-2:])
        image, boxes = self.transform(image, part.boxes, strong, size_factor)
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
