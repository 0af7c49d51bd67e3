"""Building the COCO dictionary that every annotation format is converted to (VOC, YOLO, Hugging Face), so
training, evaluation (pycocotools) and result files work unchanged for all of them."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class DatasetError(ValueError):
    """An annotation file (COCO JSON, VOC XML, YOLO data.yaml) cannot be used as it is; the message names the
    file and the problem."""


@dataclass
class Converted:
    """A dataset in COCO form: the image folder, the COCO dict, and what was dropped on the way."""
    images_dir: Path
    coco: dict
    problems: Counter = field(default_factory=Counter)


def coco_skeleton(names: list[str], ids: list[int]) -> dict:
    return {"images": [], "annotations": [],
            "categories": [{"id": i, "name": n, "supercategory": "none"} for i, n in zip(ids, names)]}


def add_image(coco: dict, file_name: str, width: int, height: int) -> int:
    image_id = len(coco["images"]) + 1
    coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    return image_id


def add_box(coco: dict, image_id: int, category_id: int, box, width: int, height: int, crowd: bool,
            problems: Counter) -> None:
    """xyxy pixels, clipped to the image; zero-area boxes and boxes with NaN / infinite corners are dropped
    and counted."""
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        problems["box with non-finite coordinates dropped"] += 1
        return
    clipped = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
    if clipped != (x0, y0, x1, y1):
        problems["box clipped to the image"] += 1
    x0, y0, x1, y1 = clipped
    if x1 <= x0 or y1 <= y0:
        problems["zero-area box dropped"] += 1
        return
    w, h = x1 - x0, y1 - y0
    coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                "category_id": category_id, "bbox": [x0, y0, w, h], "area": w * h,
                                "iscrowd": int(crowd)})


def subset(coco: dict, image_ids: set[int]) -> dict:
    """The images of ``image_ids`` with their annotations; categories and the rest kept as they are."""
    return {**coco, "images": [im for im in coco["images"] if im["id"] in image_ids],
            "annotations": [a for a in coco.get("annotations", []) if a["image_id"] in image_ids]}


def drop_empty_parent_categories(coco: dict) -> tuple[dict, list[str]]:
    """Roboflow's exports add a parent category (often id 0) that no box uses and that the real categories
    name as their ``supercategory``: it is not a class. Returns (the dict without such categories, their
    names). A category is dropped only when both hold."""
    used = {a["category_id"] for a in coco.get("annotations", [])}
    parents = {c.get("supercategory") for c in coco.get("categories", [])}
    dropped = [c for c in coco.get("categories", []) if c["id"] not in used and c["name"] in parents
               and any(o.get("supercategory") == c["name"] and o is not c for o in coco["categories"])]
    if not dropped:
        return coco, []
    keep = [c for c in coco["categories"] if c not in dropped]
    return {**coco, "categories": keep}, [c["name"] for c in dropped]
