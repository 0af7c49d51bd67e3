"""YOLO (Ultralytics layout) read into COCO form.

``data.yaml`` holds ``names`` (a list or {index: name}) and, per split (``train``, ``val``, ``test``), an image
folder, a ``.txt`` list of images, or a list of either. Paths are relative to ``path`` (itself relative to
the yaml) or to the yaml's folder; as Ultralytics does, a path starting with ``../`` that does not exist is
tried without it (Roboflow writes ``train: ../train/images`` for a yaml beside ``train/``). Labels are in
the matching ``labels/`` folder: one line per object, ``class cx cy w h`` (a box, normalised) or
``class x1 y1 x2 y2 ...`` (a segmentation polygon, read as its bounding box). Category ids are the class
indices (``1.0`` reads as 1). Counted and left out, never a crash: malformed lines (a fractional class, a
wrong number of values, NaN), unknown classes, unreadable images and label files, an image listed twice, and
label files in a split folder's ``labels/`` that no image of the split has (named in a warning).
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path

from ..config.settings import read_yaml_mapping
from .coco_form import Converted, add_box, add_image, coco_skeleton
from .images import header_size, scan_images, shown

log = logging.getLogger(__name__)
NOT_LABELS = ("classes.txt",)  # written beside the labels by LabelImg's YOLO export

YOLO_SPLIT_KEYS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def yolo_config(annotations: str | Path) -> tuple[dict, Path, Path]:
    """(data.yaml contents, the base its paths are relative to, the yaml's path)."""
    p = Path(annotations)
    cfg_path = p if p.is_file() else p / "data.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"YOLO data.yaml not found: {cfg_path}")
    cfg = read_yaml_mapping(cfg_path, ValueError, what="a mapping with a 'names' list")
    if "names" not in cfg:
        raise ValueError(f"{cfg_path} has no 'names' list")
    base = Path(cfg["path"]) if cfg.get("path") else None
    if base is None:
        base = cfg_path.parent
    elif not base.is_absolute():
        base = cfg_path.parent / base
    return cfg, base, cfg_path


def class_names(cfg: dict, where: Path) -> list[str]:
    names = cfg["names"]
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{where}: 'names' must be a non-empty list or {{index: name}} mapping")
    return [str(n) for n in names]


def split_entries(cfg: dict, role: str) -> list | None:
    """The yaml's entries for ``role`` (its own key or an alias: val / valid / validation), as a list."""
    for key in YOLO_SPLIT_KEYS.get(role, (role,)):
        if cfg.get(key):
            value = cfg[key]
            return list(value) if isinstance(value, (list, tuple)) else [value]
    return None


def resolve_entry(base: Path, entry) -> Path:
    """An entry's path as Ultralytics resolves it: base / entry, else without a leading '../'."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"a data.yaml split entry must be a path, got {entry!r}")
    path = Path(entry) if Path(entry).is_absolute() else base / entry
    if not path.exists() and entry.startswith("../"):
        path = base / entry[3:]
    return path


def list_entry(folder: Path, line: str) -> Path:
    """An image named in a ``.txt`` list: relative to the list's folder (``./x.jpg`` too), else as written
    (Ultralytics reads lines without ``./`` relative to the working directory)."""
    path = Path(line)
    if path.is_absolute():
        return path
    beside = folder / line
    return beside if beside.exists() or not path.exists() else path


def split_images(base: Path, entries: list, folders: list[Path] | None = None) -> list[Path]:
    """Every image of a split's folders and ``.txt`` lists; ``folders`` collects the folder entries."""
    files: list[Path] = []
    for entry in entries:
        path = resolve_entry(base, entry)
        if path.is_dir():
            files += scan_images(path, recursive=True)[0]
            if folders is not None:
                folders.append(path)
        elif path.is_file() and path.suffix == ".txt":
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            files += [list_entry(path.parent, ln) for ln in lines]
        else:
            raise FileNotFoundError(f"YOLO image folder not found: {path} (from '{entry}')")
    return files


def label_path(image: Path) -> Path:
    """Ultralytics: the label file mirrors the image with the last 'images' path part -> 'labels'."""
    parts = list(image.parts)
    if "images" in parts:
        at = len(parts) - 1 - parts[::-1].index("images")
        parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def parse_label_line(fields: list[str], num_classes: int, problems: Counter):
    """(class, (x0, y0, x1, y1) normalised) of one label line, or None (counted in ``problems``)."""
    try:
        number = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        problems["malformed label line"] += 1
        return None
    polygon = len(values) > 4 and len(values) % 2 == 0 and len(values) >= 6
    if not number.is_integer() or not (len(values) == 4 or polygon) or not all(math.isfinite(v) for v in values):
        problems["malformed label line"] += 1
        return None
    cls = int(number)
    if not 0 <= cls < num_classes:
        problems["unknown category"] += 1
        return None
    if len(values) == 4:
        cx, cy, w, h = values
        return cls, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    problems["segmentation polygon read as its box"] += 1
    xs, ys = values[0::2], values[1::2]
    return cls, (min(xs), min(ys), max(xs), max(ys))


def orphan_labels(folders: list[Path], files: list[Path]) -> list[Path]:
    """Label files under the ``labels/`` mirror of the split's image folders that no image of the split has
    (labels beside the images are not searched: that folder holds other text files too)."""
    expected = {os.path.abspath(label_path(f)) for f in files}
    orphans: set[Path] = set()
    for folder in folders:
        labels = label_path(folder / "x.jpg").parent
        if labels != folder and labels.is_dir():
            orphans |= {t for t in labels.rglob("*.txt")
                        if os.path.abspath(t) not in expected and t.name not in NOT_LABELS}
    return sorted(orphans)


def read_label_lines(label_file: Path, problems: Counter) -> list[str]:
    """The lines of a label file; none (and counted) when it is not text."""
    try:
        return label_file.read_text().splitlines()
    except (UnicodeDecodeError, OSError):
        problems["unreadable label file"] += 1
        return []


def read_yolo(annotations: str | Path, role: str = "train", images_dir: str | Path | None = None) -> Converted:
    cfg, base, cfg_path = yolo_config(annotations)
    names = class_names(cfg, cfg_path)
    folders: list[Path] = []
    if images_dir is not None:
        files = split_images(Path(images_dir), ["."], folders)
    else:
        entries = split_entries(cfg, role)
        if entries is None:
            raise ValueError(f"{cfg_path} has no '{role}' entry naming its images")
        files = split_images(base, entries, folders)
    if not files:
        raise ValueError(f"no images found for the '{role}' split of {cfg_path}")
    problems: Counter = Counter()
    unique = list(dict.fromkeys(Path(os.path.abspath(f)) for f in files))
    if len(unique) < len(files):
        problems["image listed twice"] += len(files) - len(unique)
    files = unique
    orphans = orphan_labels(folders, files)
    if orphans:
        problems["label file without an image"] += len(orphans)
        log.warning("%s (%s): %d label file(s) without an image, left out: %s%s", cfg_path, role, len(orphans),
                    ", ".join(shown(p.name) for p in orphans[:5]), " ..." if len(orphans) > 5 else "")
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    coco = coco_skeleton(names, list(range(len(names))))
    for image_path in files:
        size = header_size(image_path)  # header only; EXIF rotation is applied when the image is read
        if size is None:
            problems["unreadable image"] += 1
            continue
        width, height = size
        image_id = add_image(coco, str(image_path.relative_to(root)), width, height)
        label_file = label_path(image_path)
        if not label_file.is_file():
            continue  # an image without a label file is background
        for line in read_label_lines(label_file, problems):
            fields = line.split()
            parsed = parse_label_line(fields, len(names), problems) if fields else None
            if parsed is None:
                continue
            cls, (x0, y0, x1, y1) = parsed
            add_box(coco, image_id, cls, (x0 * width, y0 * height, x1 * width, y1 * height), width, height, False,
                    problems)
    return Converted(root, coco, problems)
