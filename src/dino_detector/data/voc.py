"""Pascal-VOC XML (VOC itself, LabelImg, Roboflow's VOC export) read into COCO form.

Where the XML files are, in this order (folder names in any letter case):
- a split file ``ROOT/ImageSets/Main/<split>.txt``, or a root with one for the role (``train`` / ``val``):
  its stems, XML in ``ROOT/Annotations/``, images in ``ROOT/JPEGImages/``;
- a root with ``Annotations/`` (or ``annotations/``) and no split list: every XML in it, images in
  ``JPEGImages/`` or ``images/``;
- a folder of XML files (LabelImg): images beside them.
Boxes become COCO ``[xmin, ymin, xmax - xmin, ymax - ymin]`` in pixels; ``difficult`` objects become
``iscrowd`` (ignored by training and by COCOeval, as VOC's own evaluation ignores them). Categories: the class
names found, sorted, with ids 1..C (or the training split's names, passed for the validation split). A file
without ``<size>`` (or with a zero size) takes the size from its image's header. Counted and left out: objects
without a name or without finite box coordinates, a second XML file for the same image, an XML file whose
image and size cannot be found; a file that is not XML is a ``DatasetError`` naming it.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from .coco_form import Converted, DatasetError, add_box, add_image, coco_skeleton
from .images import IMAGE_SUFFIXES, header_size

ANNOTATION_DIRS = ("Annotations", "annotations")
IMAGE_DIRS = ("JPEGImages", "images", "Images")


def child_dir(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The sub-folder of ``folder`` named like one of ``names``, letter case ignored."""
    if not folder.is_dir():
        return None
    wanted = [n.lower() for n in names]
    found = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    return next((found[n] for n in wanted if n in found), None)


def split_file(root: Path, role: str) -> Path | None:
    sets = child_dir(root, ("ImageSets",))
    main = child_dir(sets, ("Main",)) if sets else None
    path = main / f"{role}.txt" if main else None
    return path if path is not None and path.is_file() else None


def has_xml(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() == ".xml" for p in folder.iterdir())


def is_voc(path: str | Path) -> bool:
    """A VOC root (an annotations folder of any letter case), a split file, or a folder of XML files."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".txt" and p.parent.name.lower() == "main"
    return child_dir(p, ANNOTATION_DIRS) is not None or has_xml(p)


def voc_files(annotations: str | Path, role: str, images_dir: str | Path | None) -> tuple[list[Path], Path]:
    """(XML files of the split, image folder)."""
    p = Path(annotations)
    if p.is_file():  # a split list
        root = p.parents[2]
        stems, xml_dir = [s for s in p.read_text().split() if s], child_dir(root, ANNOTATION_DIRS) or root
        listed = p
    else:
        root, listed = p, split_file(p, role)
        xml_dir = child_dir(p, ANNOTATION_DIRS) or p
        stems = [s for s in listed.read_text().split() if s] if listed else None
        if stems is None and child_dir(p, ("ImageSets",)) is not None:
            raise FileNotFoundError(f"VOC split list not found: {p}/ImageSets/Main/{role}.txt")
    images = Path(images_dir) if images_dir else (child_dir(root, IMAGE_DIRS) if xml_dir != root else root) or root
    if stems is None:
        files = sorted(f for f in xml_dir.iterdir() if f.suffix.lower() == ".xml")
    else:
        if not stems:
            raise ValueError(f"{listed} lists no images")
        files = [xml_dir / f"{s}.xml" for s in stems]
        missing = next((f for f in files if not f.is_file()), None)
        if missing is not None:
            raise FileNotFoundError(f"VOC annotation missing: {missing}")
    if not files:
        raise ValueError(f"{xml_dir}: no VOC XML files")
    return files, images


def image_file(images: Path, xml_path: Path, named: str | None) -> str | None:
    """The image an XML file describes: its ``<filename>`` when that exists, else the XML's stem with any
    image suffix (LabelImg and some exports write names without, or with another, suffix)."""
    if named and (images / named).is_file():
        return named
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        if (images / f"{xml_path.stem}{suffix}").is_file():
            return f"{xml_path.stem}{suffix}"
    return named


def _size(node, images: Path, file_name: str | None) -> tuple[int, int] | None:
    size = node.find("size")
    try:
        width, height = (int(float(size.findtext(k))) for k in ("width", "height"))
        if width > 0 and height > 0:
            return width, height
    except (AttributeError, TypeError, ValueError):
        pass  # no <size>, or an unreadable one: the image header below says
    return header_size(images / file_name) if file_name else None  # (width, height)


def read_voc(annotations: str | Path, role: str = "train", class_names: list[str] | None = None,
             images_dir: str | Path | None = None) -> Converted:
    files, images = voc_files(annotations, role, images_dir)
    problems: Counter = Counter()
    records = []
    seen: set[str] = set()
    for xml_path in files:
        try:
            node = ET.parse(xml_path).getroot()
        except ET.ParseError as err:
            raise DatasetError(f"{xml_path}: not valid XML ({err})") from None
        file_name = image_file(images, xml_path, (node.findtext("filename") or "").strip() or None)
        size = _size(node, images, file_name)
        if file_name is None or size is None:
            problems["XML without a readable image or size"] += 1
            continue
        if file_name in seen:
            problems["second XML for the same image left out"] += 1
            continue
        seen.add(file_name)
        objects = []
        for obj in node.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if not name:
                problems["object without a name"] += 1
                continue
            box = obj.find("bndbox")
            try:
                coords = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                coords = None
            if coords is None or not all(math.isfinite(v) for v in coords):
                problems["object without box coordinates"] += 1
                continue
            objects.append((name, coords, (obj.findtext("difficult") or "0").strip() not in ("0", "")))
        records.append((file_name, *size, objects))
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
