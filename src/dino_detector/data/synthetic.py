"""Generated shapes: the offline default dataset (coloured circles, squares and triangles on textured
backgrounds), written as JPEG images plus a COCO JSON, deterministic by seed.

Category ids are deliberately sparse (1, 3, 7) so the demo exercises the id <-> label mapping too.
"""
from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torchvision.ops import box_iou

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 7, "name": "triangle"}]
SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003}  # disjoint random streams per split
MAX_OVERLAP_IOU = 0.2
SIDE_FRACTION = (0.2, 0.5)  # object side as a fraction of the shorter image side


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth colour gradient + blurred noise + a few faint stripes: texture the model must ignore."""
    # muted, low-saturation colours, so the saturated shapes stand out as they would in a clean demo
    grey0, grey1 = rng.uniform(60, 190), rng.uniform(60, 190)
    c0, c1 = grey0 + rng.uniform(-25, 25, 3), grey1 + rng.uniform(-25, 25, 3)
    t = np.linspace(0, 1, w)[None, :, None] * np.ones((h, 1, 1))
    if rng.random() < 0.5:
        t = np.linspace(0, 1, h)[:, None, None] * np.ones((1, w, 1))
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 18, (h, w, 3))
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(2, 6)):
        colour = tuple(int(v) for v in rng.uniform(60, 190, 3))
        x = int(rng.integers(0, w))
        draw.line([(x, 0), (x + int(rng.integers(-w // 2, w // 2)), h)], fill=colour, width=int(rng.integers(1, 4)))
    return im


def _saturated_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box, colour) -> list[float]:
    """Draws the shape inside box (x0, y0, x1, y1); returns its tight box."""
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    return [float(x0), float(y0), float(x1), float(y1)]


def _render(rng: np.random.Generator, size_range: tuple[int, int], max_objects: int):
    w, h = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    im = _background(rng, w, h)
    draw = ImageDraw.Draw(im)
    placed: list[tuple[list[float], int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            side = int(rng.uniform(*SIDE_FRACTION) * min(w, h))
            x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            box = [x0, y0, x0 + side, y0 + side]
            if not placed or box_iou(torch.tensor([box], dtype=torch.float32),
                                     torch.tensor([p for p, _ in placed])).max() < MAX_OVERLAP_IOU:
                break
        else:
            continue
        k = int(rng.integers(0, len(CATEGORIES)))
        colour = _saturated_colour(rng)
        placed.append((_draw_shape(draw, CATEGORIES[k]["name"], box, colour), CATEGORIES[k]["id"]))
    return im, placed


def generate_shapes(root: str | Path, split: str, num_images: int, seed: int = 0,
                    size_range: tuple[int, int] = (192, 288), max_objects: int = 3) -> tuple[Path, Path]:
    """Writes ``root/split/*.jpg`` and ``root/instances_split.json``; reuses them when already generated
    with the same parameters. Returns (images folder, annotation file)."""
    root = Path(root)
    images_dir, ann_file = root / split, root / f"instances_{split}.json"
    params = {"split": split, "num_images": num_images, "seed": seed, "size_range": list(size_range),
              "max_objects": max_objects, "side_fraction": list(SIDE_FRACTION), "version": 3}
    if ann_file.is_file() and json.loads(ann_file.read_text()).get("info", {}).get("generator") == params:
        return images_dir, ann_file
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + SPLIT_SEED_OFFSET.get(split, 7))
    images, annotations = [], []
    for i in range(num_images):
        im, placed = _render(rng, size_range, max_objects)
        name = f"{split}_{i:05d}.jpg"
        im.save(images_dir / name, quality=92)
        images.append({"id": i + 1, "file_name": name, "width": im.width, "height": im.height})
        for (x0, y0, x1, y1), cid in placed:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cid,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    ann_file.write_text(json.dumps({"info": {"generator": params}, "images": images,
                                    "annotations": annotations, "categories": CATEGORIES}))
    return images_dir, ann_file
