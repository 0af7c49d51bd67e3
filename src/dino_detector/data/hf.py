"""Hugging Face ``datasets`` object-detection data, converted to COCO form.

``--data_format hf --train_annotations NAME_OR_FOLDER --hf_train_split "train[:5000]"``: a hub dataset name
(``load_dataset``) or a ``save_to_disk`` folder (``load_from_disk``). Rows hold an ``image`` and a COCO-style
``objects`` column: ``bbox`` as [x, y, w, h] pixels and ``category`` (a ClassLabel, whose names are kept).
The images are written once, as their original encoded bytes, to the split's image folder (``--train_images``
/ ``--val_images``, or a cache folder), so every later step reads files like any other format.
"""
from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .coco_form import Converted, add_box, add_image, coco_skeleton

CACHE = Path.home() / ".cache" / "dino_detector" / "hf"
SLICE = re.compile(r"^(?P<split>[\w.-]+)(\[(?P<start>-?\d*)(?P<pct1>%?):(?P<stop>-?\d*)(?P<pct2>%?)\])?$")


def parse_split(spec: str) -> tuple[str, slice | None, bool]:
    """'train[:5000]' -> ('train', slice(None, 5000), False); 'val[10%:]' -> ('val', slice(10, None), True)."""
    m = SLICE.match(spec.replace(" ", ""))
    if not m:
        raise ValueError(f"split '{spec}' is not of the form name, name[a:b] or name[a%:b%]")
    if m.group("start") is None:
        return m.group("split"), None, False
    start, stop = (int(v) if v not in ("", "-") else None for v in (m.group("start"), m.group("stop")))
    return m.group("split"), slice(start, stop), bool(m.group("pct1") or m.group("pct2"))


def load_split(source: str, spec: str):
    """A ``datasets.Dataset`` for ``spec`` from a save_to_disk folder or the hub."""
    try:
        import datasets
    except ImportError:
        raise ImportError("--data_format hf needs the 'datasets' package: pip install 'dino_detector[hf]'") from None
    if not Path(source).exists():
        return datasets.load_dataset(source, split=spec)
    loaded = datasets.load_from_disk(source)
    split, part, percent = parse_split(spec)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{source} has no split '{split}'; it has {sorted(loaded)}")
        loaded = loaded[split]
    if part is not None:
        n = len(loaded)
        if percent:
            part = slice(None if part.start is None else part.start * n // 100,
                         None if part.stop is None else part.stop * n // 100)
        loaded = loaded.select(range(n)[part])
    return loaded


def category_names(features) -> list[str] | None:
    """The ClassLabel names of ``objects.category``, whichever way the feature nests them."""
    objects = features.get("objects")
    inner = getattr(objects, "feature", objects)  # Sequence({...}) or {"category": Sequence(ClassLabel)}
    category = inner.get("category") if isinstance(inner, dict) else None
    category = getattr(category, "feature", category)
    return list(category.names) if hasattr(category, "names") else None


def read_hf(source: str, role: str, images_dir: str | Path | None = None, split: str | None = None) -> Converted:
    split = split or role
    dataset = load_split(source, split)
    if "image" not in dataset.column_names or "objects" not in dataset.column_names:
        raise ValueError(f"{source} [{split}] needs 'image' and 'objects' columns, has {dataset.column_names}")
    names = category_names(dataset.features)
    from datasets import Image as ImageFeature

    raw = dataset.cast_column("image", ImageFeature(decode=False))  # the original encoded bytes
    key = hashlib.sha1(f"{Path(source).resolve() if Path(source).exists() else source}|{split}".encode())
    folder = Path(images_dir) if images_dir else CACHE / key.hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    ids = sorted({c for row in raw["objects"] for c in row["category"]}) if names is None else None
    names = names or [str(c) for c in ids]
    coco = coco_skeleton(names, list(range(len(names))))
    problems: Counter = Counter()
    for index, row in enumerate(tqdm(raw, desc=f"hf {split}", unit="image", leave=False, dynamic_ncols=True)):
        data = row["image"]["bytes"] or Path(row["image"]["path"]).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            width, height, fmt = im.width, im.height, (im.format or "PNG").lower()
        file_name = f"{index:07d}.{'jpg' if fmt == 'jpeg' else fmt}"
        path = folder / file_name
        if not path.is_file() or path.stat().st_size != len(data):
            path.write_bytes(data)
        image_id = add_image(coco, file_name, width, height)
        for (x, y, w, h), category in zip(row["objects"]["bbox"], row["objects"]["category"]):
            label = category if ids is None else ids.index(category)
            if not 0 <= label < len(names):
                problems["unknown category"] += 1
                continue
            add_box(coco, image_id, label, (x, y, x + w, y + h), width, height, False, problems)
    return Converted(folder, coco, problems)
