"""``--data DIR``: which dataset layout a folder holds, and where each split's annotations and images are.

Recognised, in this order (folder names in any letter case):
- YOLO: ``data.yaml`` (Ultralytics, Roboflow's YOLO export), or the yaml file itself;
- Roboflow COCO export: ``train/_annotations.coco.json`` with the images beside it, ``valid/``, ``test/``;
- COCO root: ``annotations/instances_<split>*.json`` and image folders named like them (``train2017/``), or
  ``images/<name>``, ``<split>/``, ``images/``;
- Pascal VOC: ``Annotations/`` with XML files (split lists ``ImageSets/Main/{train,val,test}.txt`` when present);
- split folders (``train/``, ``valid/``, ``test/``) of XML files beside their images (Roboflow's VOC export);
- a flat LabelImg folder: XML files beside their images, or ``annotations/`` + ``images/``.
A split that is not there is simply absent: training without a validation split validates on a seeded
share of the training images (data/splits.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .voc import ANNOTATION_DIRS, child_dir, has_xml, split_file
from .yolo import split_entries, yolo_config

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
SPLITS = ("train", "val", "test")
ROBOFLOW_COCO_FILE = "_annotations.coco.json"
NOT_DETECTION = ("captions", "person_keypoints", "panoptic", "stuff", "image_info")  # COCO files without boxes


@dataclass(frozen=True)
class SplitFiles:
    annotations: str  # a COCO JSON, a VOC root / split file / XML folder, or a data.yaml
    images: str | None = None  # None: the format names its own image folder


@dataclass(frozen=True)
class DatasetLayout:
    root: Path
    kind: str  # what was recognised, in words
    format: str  # coco | voc | yolo
    splits: dict[str, SplitFiles] = field(default_factory=dict)


def split_of(name: str) -> str | None:
    """'train' / 'val' / 'test' for a folder or file name that names one ('instances_val2017.json': 'val')."""
    tokens = re.split(r"[^a-z]+", name.lower())
    return next((SPLIT_NAMES[t] for t in tokens if t in SPLIT_NAMES), None)


def split_dirs(root: Path) -> dict[str, Path]:
    """The split-named sub-folders of ``root`` ({'train': root/train, 'val': root/valid, ...})."""
    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name.lower() in SPLIT_NAMES:
            out.setdefault(SPLIT_NAMES[p.name.lower()], p)
    return out


def _yolo(yaml_path: Path) -> DatasetLayout:
    cfg, _, cfg_path = yolo_config(yaml_path)
    splits = {s: SplitFiles(str(cfg_path)) for s in SPLITS if split_entries(cfg, s) is not None}
    if not splits:
        raise ValueError(f"{cfg_path} has no 'train', 'val' or 'test' entry naming its images (a folder, a .txt "
                         "list, or a list of them)")
    return DatasetLayout(cfg_path.parent, "YOLO (data.yaml)", "yolo", splits)


def _roboflow_coco(root: Path) -> DatasetLayout | None:
    splits = {s: SplitFiles(str(d / ROBOFLOW_COCO_FILE), str(d)) for s, d in split_dirs(root).items()
              if (d / ROBOFLOW_COCO_FILE).is_file()}
    return DatasetLayout(root, "Roboflow COCO export", "coco", splits) if splits else None


def _coco_images(root: Path, stem: str, split: str) -> Path | None:
    for candidate in (root / stem, root / "images" / stem, root / split, root / "images" / split, root / "images"):
        if candidate.is_dir():
            return candidate
    return next((d for d in (child_dir(root, (stem,)), child_dir(root, (split,)), child_dir(root, ("images",)))
                 if d is not None), None)


def _coco_root(root: Path) -> DatasetLayout | None:
    folder = child_dir(root, ANNOTATION_DIRS)
    jsons = sorted(folder.glob("*.json")) if folder else []
    splits: dict[str, SplitFiles] = {}
    for path in sorted(jsons, key=lambda p: not p.name.startswith("instances_")):  # instances_* first
        split = split_of(path.stem)
        if split is None or split in splits or path.name.startswith(NOT_DETECTION):
            continue
        stem = path.stem.removeprefix("instances_")
        images = _coco_images(root, stem, split)
        if images is not None:
            splits[split] = SplitFiles(str(path), str(images))
    return DatasetLayout(root, "COCO root", "coco", splits) if splits else None


def _voc_root(root: Path) -> DatasetLayout | None:
    folder = child_dir(root, ANNOTATION_DIRS)
    if folder is None or not has_xml(folder):
        return None
    listed = {s: SplitFiles(str(f)) for s in SPLITS if (f := split_file(root, s)) is not None}
    return DatasetLayout(root, "Pascal VOC", "voc", listed or {"train": SplitFiles(str(root))})


def _xml_folders(root: Path) -> DatasetLayout | None:
    by_split = {s: SplitFiles(str(d)) for s, d in split_dirs(root).items() if has_xml(d)}
    if by_split:
        return DatasetLayout(root, "split folders of VOC XML files (Roboflow's VOC export)", "voc", by_split)
    if has_xml(root):
        return DatasetLayout(root, "LabelImg folder (XML beside the images)", "voc", {"train": SplitFiles(str(root))})
    return None


def detect_layout(path: str | Path) -> DatasetLayout:
    """The layout of a dataset folder (or a YOLO yaml); a ValueError says what was looked for."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        return _yolo(p)
    if not p.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {p}")
    if (p / "data.yaml").is_file():
        return _yolo(p / "data.yaml")
    for detector in (_roboflow_coco, _coco_root, _voc_root, _xml_folders):
        layout = detector(p)
        if layout is not None:
            if "train" not in layout.splits:
                raise ValueError(f"{p}: a {layout.kind} without a training split (found "
                                 f"{', '.join(layout.splits)})")
            return layout
    raise ValueError(f"{p}: cannot tell the dataset layout. Expected a YOLO data.yaml, a Roboflow COCO export "
                     f"(train/{ROBOFLOW_COCO_FILE}), a COCO root (annotations/instances_*.json + image folders), "
                     "a VOC folder (Annotations/ with XML) or XML files beside their images; or pass "
                     "--train_images / --train_annotations")
