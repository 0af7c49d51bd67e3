"""Mosaic composition (YOLO's, DEIM's dense one-to-one variant): four training images on one canvas, boxes
carried with them, so that a step sees more objects, at more scales and in more contexts, than one image
gives it.

The four images are resized to the training size ``side`` (their longer side), placed around a random
centre of a ``2 side`` square canvas (top-left, top-right, bottom-left, bottom-right: each one's corner
touches the centre), and a window that contains the centre is cut out: its longer side ``zoom x 2 side``
(``zoom`` drawn from ``zoom_range``), its shape the first image's, so that a batch of mosaics and plain images
of one shape needs no padding (a square mosaic among 4:3 images made the whole batch square, 1.33x the
pixels). The usual pipeline then resizes that window to ``side``: at zoom 0.5 the
objects keep their scale (YOLO's mosaic), at 1 they are halved and four images' objects share one step
(DEIM's). Boxes are clipped to what stays visible of their image; a box keeps its object only when at least
``min_visible`` of its area does and it is at least 2 px wide and high, so every box lies on its own object.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from .transforms import uniform

FILL = 0.5  # canvas outside the four images: mid-grey, as YOLO's 114 / 255
MIN_SIDE_PX = 2.0  # boxes thinner than this after clipping are slivers, not objects


@dataclass(frozen=True)
class MosaicPart:
    """One image of a mosaic: image [3, H, W] (uint8 0..255, or float 0..1), boxes [N, 4] xyxy pixels,
    labels [N]."""
    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor


def _resized(part: MosaicPart, side: int) -> MosaicPart:
    h, w = part.image.shape[-2:]
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    image = v2.functional.resize(part.image, [nh, nw], antialias=True)
    boxes = part.boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    return MosaicPart(image, boxes, part.labels)


def compose_mosaic(parts: list[MosaicPart], side: int, zoom_range: tuple[float, float] = (0.5, 1.0),
                   min_visible: float = 0.25) -> MosaicPart:
    """Four parts -> one mosaic (image [3, h, w] with max(h, w) = round(zoom x 2 side) and the first part's
    aspect ratio, boxes xyxy on it, labels). Random draws use torch's generator (a seeded run repeats exactly)."""
    if len(parts) != 4:
        raise ValueError(f"a mosaic takes 4 images, got {len(parts)}")
    if not 0 < zoom_range[0] <= zoom_range[1] <= 1:
        raise ValueError(f"mosaic zoom range must satisfy 0 < low <= high <= 1, got {zoom_range}")
    if not 0 <= min_visible <= 1:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    canvas_side = 2 * side
    dtype = parts[0].image.dtype
    if any(p.image.dtype != dtype for p in parts):
        raise ValueError(f"mosaic images must share one dtype, got {sorted({str(p.image.dtype) for p in parts})}")
    fill = FILL if dtype.is_floating_point else round(FILL * 255)
    canvas = torch.full((3, canvas_side, canvas_side), fill, dtype=dtype)
    cx, cy = round(uniform(0.5, 1.5) * side), round(uniform(0.5, 1.5) * side)
    boxes, labels = [], []
    for quadrant, part in enumerate(_resized(p, side) for p in parts):
        h, w = part.image.shape[-2:]
        right, below = quadrant % 2 == 1, quadrant >= 2
        # where the image's corner at the centre lands: its placed region on the canvas, clipped to it
        x0, y0 = (cx if right else cx - w), (cy if below else cy - h)
        px0, py0 = max(x0, 0), max(y0, 0)
        px1, py1 = min(x0 + w, canvas_side), min(y0 + h, canvas_side)
        if px1 <= px0 or py1 <= py0:
            continue
        canvas[:, py0:py1, px0:px1] = part.image[:, py0 - y0:py1 - y0, px0 - x0:px1 - x0]
        shifted = part.boxes + torch.tensor([x0, y0, x0, y0], dtype=part.boxes.dtype)
        boxes.append(_clip(shifted, (px0, py0, px1, py1)))
        labels.append(part.labels)
    longer = round(uniform(*zoom_range) * canvas_side)
    first_h, first_w = parts[0].image.shape[-2:]
    shorter = max(1, round(longer * min(first_h, first_w) / max(first_h, first_w)))
    window_w, window_h = (longer, shorter) if first_w >= first_h else (shorter, longer)
    # the window holds the centre (all four images show) and stays on the canvas
    left = int(torch.randint(max(0, cx - window_w), min(cx, canvas_side - window_w) + 1, ()))
    top = int(torch.randint(max(0, cy - window_h), min(cy, canvas_side - window_h) + 1, ()))
    image = canvas[:, top:top + window_h, left:left + window_w]
    all_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    before = _area(all_boxes)
    offset = torch.tensor([left, top, left, top], dtype=all_boxes.dtype)
    clipped = _clip(all_boxes, (left, top, left + window_w, top + window_h)) - offset
    keep = ((_area(clipped) >= min_visible * before) & (clipped[:, 2] - clipped[:, 0] >= MIN_SIDE_PX)
            & (clipped[:, 3] - clipped[:, 1] >= MIN_SIDE_PX))
    # the area test compares with the box as placed on the canvas, so an image half outside the canvas
    # keeps only the boxes of its visible half; the placed clip above already dropped the rest to zero area
    return MosaicPart(image, clipped[keep], all_labels[keep])


def _clip(boxes: torch.Tensor, region: tuple[int, int, int, int]) -> torch.Tensor:
    x0, y0, x1, y1 = region
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(x0, x1)
    out[:, 1::2] = out[:, 1::2].clamp(y0, y1)
    return out


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
