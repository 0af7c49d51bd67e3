"""Which annotation format a path holds, and the readers that convert VOC and YOLO to COCO form
(voc.py, yolo.py; Hugging Face datasets: hf.py). Whole dataset folders are layout.py's business."""
from __future__ import annotations

from pathlib import Path

from .coco_form import Converted, add_box, add_image, coco_skeleton
from .voc import is_voc, read_voc
from .yolo import read_yolo

FORMATS = ("auto", "coco", "voc", "yolo", "hf")

__all__ = ["FORMATS", "Converted", "add_box", "add_image", "coco_skeleton", "detect_format", "read_voc",
           "read_yolo"]


def detect_format(annotations: str | Path) -> str:
    """'coco' for a .json file, 'yolo' for a data.yaml or its folder, 'voc' for a VOC root (an annotations
    folder in any letter case), a split file or a folder of XML files."""
    p = Path(annotations)
    if p.suffix.lower() == ".json":
        return "coco"
    if p.suffix.lower() in (".yaml", ".yml") or (p.is_dir() and (p / "data.yaml").is_file()):
        return "yolo"
    if is_voc(p):
        return "voc"
    raise ValueError(f"{annotations}: cannot tell the annotation format (expected a COCO .json file, a VOC "
                     f"folder with Annotations/ or XML files, or a YOLO folder with data.yaml); pass "
                     f"--data_format, or --data with the dataset's folder")
