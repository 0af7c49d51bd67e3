"""Pascal-VOC and YOLO folders read into the same COCO dictionary a COCO JSON file holds, so training,
evaluation (pycocotools) and result files work unchanged for every format.

VOC: ``ROOT/Annotations/*.xml``, ``ROOT/JPEGImages/``, splits ``ROOT/ImageSets/Main/<split>.txt``. Pass the
root (the split is ``train`` or ``val`` by role) or a split file. Boxes become COCO ``[xmin, ymin, xmax - xmin,
ymax - ymin]`` in pixels; ``difficult`` objects become ``iscrowd`` (ignored by training and by COCOeval, as
VOC's own evaluation ignores them). Categories: the class names found, sorted, with ids 1..C.

YOLO (Ultralytics layout): ``data.yaml`` with ``names`` (list or {index: name}) and ``train`` / ``val`` image
folders (relative to ``path`` or to the yaml); labels in the matching ``labels/`` folder, one
``class cx cy w h`` line per box (normalised). Category ids are the YOLO class indices.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image

from .images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)
FORMATS = ("auto", "coco", "voc", "yolo", "hf")


@dataclass
class Converted:
    """A dataset in COCO form: the image folder, the COCO dict, and what was dropped on the way."""
    images_dir: Path
    coco: dict
    problems: Counter = field(default_factory=Counter)


def detect_format(annotations: str | Path) -> str:
    """'coco' for a .json file, 'voc' for a VOC root or split file, 'yolo' for a data.yaml or its folder."""
    p = Path(annotations)
    if p.suffix.lower() == ".json":
        return "coco"
    if p.suffix.lower() in (".yaml", ".yml") or (p.is_dir() and (p / "data.yaml").is_file()):
        return "yolo"
    if (p.is_dir() and (p / "Annotations").is_dir()) or (p.suffix == ".txt" and p.parent.name == "Main"):
        return "voc"
    raise ValueError(f"{annotations}: cannot tell the annotation format (expected a COCO .json file, a VOC "
                     f"folder with Annotations/, or a YOLO folder with data.yaml); pass --data_format")


# ---------------------------------------------------------------------------------------------------- VOC
def voc_split(annotations: str | Path, role: str) -> tuple[Path, Path]:
    """(VOC root, split file) from a root folder (split named by ``role``) or a split file."""
    p = Path(annotations)
    if p.is_file():
        return p.parents[2], p
    split = p / "ImageSets" / "Main" / f"{role}.txt"
    if not split.is_file():
        raise FileNotFoundError(f"VOC split list not found: {split}")
    return p, split


def read_voc(annotations: str | Path, role: str = "train", class_names: list[str] | None = None,
             images_dir: str | Path | None = None) -> Converted:
    root, split = voc_split(annotations, role)
    images = Path(images_dir) if images_dir else root / "JPEGImages"
    stems = [s for s in split.read_text().split() if s]
    if not stems:
        raise ValueError(f"{split} lists no images")
    problems: Counter = Counter()
    records = []
    for stem in stems:
        xml_path = root / "Annotations" / f"{stem}.xml"
        if not xml_path.is_file():
            raise FileNotFoundError(f"VOC annotation missing: {xml_path}")
        try:
            node = ET.parse(xml_path).getroot()
        except ET.ParseError as err:
            raise ValueError(f"{xml_path}: not valid XML ({err})") from None
        size = node.find("size")
        width, height = (int(float(size.findtext(k))) for k in ("width", "height"))
        file_name = node.findtext("filename") or f"{stem}.jpg"
        objects = []
        for obj in node.iter("object"):
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((obj.findtext("name").strip(), (x0, y0, x1, y1),
                            (obj.findtext("difficult") or "0").strip() not in ("0", "")))
        records.append((file_name, width, height, objects))
    names = class_names or sorted({name for *_, objects in records for name, _, _ in objects})
    coco = coco_skeleton(names, list(range(1, len(names) + 1)))
    for file_name, width, height, objects in records:
        image_id = add_image(coco, file_name, width, height)
        for name, box, difficult in objects:
            if name not in names:
                problems["unknown category"] += 1
                continue
            add_box(coco, image_id, names.index(name) + 1, box, width, height, difficult, problems)
    return Converted(images, coco, problems)


# --------------------------------------------------------------------------------------------------- YOLO
def _yolo_config(annotations: str | Path) -> tuple[dict, Path]:
    p = Path(annotations)
    cfg_path = p if p.is_file() else p / "data.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"YOLO data.yaml not found: {cfg_path}")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    if "names" not in cfg:
        raise ValueError(f"{cfg_path} has no 'names' list")
    base = Path(cfg.get("path") or cfg_path.parent)
    return cfg, base if base.is_absolute() else cfg_path.parent / base


def read_yolo(annotations: str | Path, role: str = "train", images_dir: str | Path | None = None) -> Converted:
    cfg, base = _yolo_config(annotations)
    names = cfg["names"]
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    if images_dir is None:
        if role not in cfg:
            raise ValueError(f"data.yaml has no '{role}' entry naming its image folder")
        images_dir = base / cfg[role]
    images = Path(images_dir)
    if not images.is_dir():
        raise FileNotFoundError(f"YOLO image folder not found: {images}")
    # Ultralytics: the label folder mirrors the image folder with the last 'images' path part -> 'labels'
    parts = list(images.parts)
    at = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    labels = Path(*parts[:at], "labels", *parts[at + 1:]) if at is not None else images
    problems: Counter = Counter()
    coco = coco_skeleton(names, list(range(len(names))))
    files = sorted(f for f in images.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images found in {images}")
    for image_path in files:
        try:
            with Image.open(image_path) as im:
                width, height = im.size  # header only; EXIF rotation is applied when the image is read
        except OSError:
            problems["unreadable image"] += 1
            continue
        image_id = add_image(coco, str(image_path.relative_to(images)), width, height)
        label_file = labels / image_path.relative_to(images).with_suffix(".txt")
        if not label_file.is_file():
            continue  # an image without a label file is background
        for line in label_file.read_text().splitlines():
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 5:
                problems["malformed label line"] += 1
                continue
            cls, (cx, cy, w, h) = int(float(fields[0])), (float(v) for v in fields[1:5])
            if not 0 <= cls < len(names):
                problems["unknown category"] += 1
                continue
            box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
            add_box(coco, image_id, cls, box, width, height, False, problems)
    return Converted(images, coco, problems)


# ------------------------------------------------------------------------------------------------ helpers
def coco_skeleton(names: list[str], ids: list[int]) -> dict:
    return {"images": [], "annotations": [],
            "categories": [{"id": i, "name": n, "supercategory": "none"} for i, n in zip(ids, names)]}


def add_image(coco: dict, file_name: str, width: int, height: int) -> int:
    image_id = len(coco["images"]) + 1
    coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    return image_id


def add_box(coco: dict, image_id: int, category_id: int, box, width: int, height: int, crowd: bool,
             problems: Counter) -> None:
    """xyxy pixels, clipped to the image; zero-area boxes are dropped and counted."""
    x0, y0, x1, y1 = box
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
