"""Sliced (tiled) inference for small objects in large images, through ``supervision.InferenceSlicer``.

The image is cut into ``slice_size`` squares overlapping by ``slice_overlap`` of a side (tiles at the right
and bottom edges are shifted inwards, so every tile is full size); each tile is resized to the model's
sizes like any image, so a platelet of 20 px in a 4000 x 3000 picture is seen at the scale training saw.
Tiles run through the backend in batches and their boxes are merged per class by supervision: non-maximum
suppression (``nms``) or non-maximum merging (``nmm``, boxes of one object fused into their enclosing box,
score of the best). The whole image runs once more (for the objects larger than a tile) and its boxes join
the merge. With ``prefer_whole`` an object the whole image already shows is taken from it instead, and the
tiles only add the objects it lacks.

Slicing pays when the model knows objects at the tiles' scale, i.e. was trained on crops as large as the
tiles (SAHI's slicing-aided fine-tuning; here ``--crop_prob``): on BCCD, a 384-px two-stage model fine-tuned
8 minutes with crops gains APs 0.277 -> 0.349 from 480-px tiles merged by NMS, while preferring the whole
image's boxes keeps its weaker small-object boxes (0.233). A model that never saw crops finds tile-scale
objects poorly, and there preferring the whole image loses less (BENCHMARKS.md, issue 24).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

MergeMode = Literal["nms", "nmm"]
MatchMetric = Literal["ios", "iou"]


@dataclass(frozen=True)
class SliceSettings:
    size: int  # tile side in original pixels
    overlap: float = 0.2  # fraction of a side that neighbouring tiles share
    merge: MergeMode = "nms"
    match_threshold: float = 0.5  # boxes of one class overlapping more than this (by `match`) are one object
    # iou, or ios (intersection over the smaller box, SAHI's default, which merges a cut part into the whole
    # object's box). With cut boxes dropped (drop_cut) iou measured better on BCCD (BENCHMARKS.md)
    match: MatchMetric = "iou"
    full_image: bool = True  # also detect on the whole image (objects larger than a tile)
    batch_size: int = 8  # tiles per backend call
    # a tile's boxes that touch its border are objects the tile cuts: left to the neighbouring tile that
    # holds them whole, or to the whole-image pass (needs full_image for objects larger than a tile)
    drop_cut: bool = True
    # with full_image: keep the whole image's detections and add a tile's only where none of the same class
    # overlaps it by more than match_threshold (see the module docstring); False: merge all boxes alike
    prefer_whole: bool = False

    def __post_init__(self):
        if self.size < 32:
            raise ValueError(f"slice size must be at least 32 pixels, got {self.size}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"slice overlap must be in [0, 1), got {self.overlap}")
        if self.merge not in ("nms", "nmm"):
            raise ValueError(f"slice merge must be nms or nmm, got {self.merge!r}")
        if self.match not in ("ios", "iou"):
            raise ValueError(f"slice match must be ios or iou, got {self.match!r}")
        if not 0 < self.match_threshold <= 1:
            raise ValueError(f"slice match_threshold must be in (0, 1], got {self.match_threshold}")
        if self.batch_size < 1:
            raise ValueError(f"slice batch_size must be at least 1, got {self.batch_size}")


def slicing_from_flags(args, batch_size: int = 8) -> SliceSettings | None:
    """The ``--slice*`` flags of predict / analyze as settings; None when ``--slice`` is 0 (off)."""
    if args.slice < 0:
        raise ValueError(f"slice must be 0 (off) or a tile size in pixels, got {args.slice}")
    if not args.slice:
        return None
    return SliceSettings(args.slice, args.slice_overlap, args.slice_merge, match=args.slice_match,
                         prefer_whole=args.slice_prefer_whole, batch_size=batch_size)


def _supervision():
    try:
        import supervision as sv
    except ImportError:
        raise RuntimeError("sliced inference needs supervision: pip install 'dino_detector[supervision]'") from None
    return sv


def _as_detections(sv, det: dict):
    return sv.Detections(xyxy=det["boxes"].numpy().reshape(-1, 4).astype(np.float32),
                         confidence=det["scores"].numpy().astype(np.float32),
                         class_id=det["category_ids"].numpy().astype(int))


CUT_MARGIN = 0.01  # a box within this fraction of the tile side from its border touches it


def _inside(det: dict, tile_hw, size: int) -> dict:
    """The detections of a tile whose boxes keep clear of its border."""
    h, w = tile_hw
    margin = CUT_MARGIN * size
    b = det["boxes"]
    keep = (b[:, 0] > margin) & (b[:, 1] > margin) & (b[:, 2] < w - margin) & (b[:, 3] < h - margin)
    return {k: v[keep] for k, v in det.items()}


def _not_in(sv, tiles, whole, metric, threshold: float):
    """The detections of ``tiles`` that no detection of ``whole`` of the same class overlaps (by ``metric``)
    by more than ``threshold``."""
    if len(tiles) == 0 or len(whole) == 0:
        return tiles
    overlap = sv.box_iou_batch(tiles.xyxy, whole.xyxy, overlap_metric=metric)
    overlap[tiles.class_id[:, None] != whole.class_id[None, :]] = 0.0
    return tiles[overlap.max(1) <= threshold]


def sliced_detect(backend, image: torch.Tensor, settings: SliceSettings, *, threshold: float = 0.5,
                  top_k: int = 100) -> dict:
    """Detections of one original-size image [3, H, W] (floats 0..1): boxes [N, 4] xyxy pixels, scores [N]
    (best first, at most ``top_k``), category_ids [N]."""
    from ..data.transforms import resize_for_inference
    sv = _supervision()

    def run(tiles: list[np.ndarray], whole: bool = False) -> list:
        tensors = [torch.from_numpy(np.ascontiguousarray(t)).permute(2, 0, 1) for t in tiles]
        resized = [resize_for_inference(t, backend.resize) for t in tensors]
        dets = backend.detect(resized, [tuple(t.shape[-2:]) for t in tensors], threshold=threshold, top_k=top_k)
        if settings.drop_cut and not whole:
            dets = [_inside(d, t.shape[-2:], settings.size) for d, t in zip(dets, tensors)]
        return [_as_detections(sv, d) for d in dets]

    overlap = int(round(settings.size * settings.overlap))
    filt = sv.OverlapFilter.NON_MAX_SUPPRESSION if settings.merge == "nms" else sv.OverlapFilter.NON_MAX_MERGE
    metric = sv.OverlapMetric.IOS if settings.match == "ios" else sv.OverlapMetric.IOU
    slicer = sv.InferenceSlicer(callback=run, slice_wh=settings.size, overlap_wh=overlap, overlap_filter=filt,
                                iou_threshold=settings.match_threshold, overlap_metric=metric,
                                batch_size=settings.batch_size)
    hwc = image.permute(1, 2, 0).float().numpy()
    found = slicer(hwc)
    if settings.full_image:
        whole = run([hwc], whole=True)[0]
        if settings.prefer_whole:
            found = sv.Detections.merge([whole, _not_in(sv, found, whole, metric, settings.match_threshold)])
        else:
            found = sv.Detections.merge([found, whole])
            merge = found.with_nms if settings.merge == "nms" else found.with_nmm
            found = merge(threshold=settings.match_threshold, overlap_metric=metric)
    order = np.argsort(-found.confidence, kind="stable")[:top_k] if len(found) else np.zeros(0, dtype=int)
    return {"boxes": torch.as_tensor(found.xyxy[order], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.as_tensor(found.confidence[order], dtype=torch.float32),
            "category_ids": torch.as_tensor(found.class_id[order], dtype=torch.int64)}
