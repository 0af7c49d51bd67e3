"""k-NN accuracy of object crops: a feature-quality metric for self-supervised encoders on detection data.

Every annotated box becomes a small image crop labelled with its category; an encoder embeds the crops, and
each validation crop is classified by a temperature-weighted vote of its nearest training crops (the protocol
of DINO's k-NN evaluation). No training is involved, so the score reflects the features alone.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from ..data.coco import load_coco
from ..data.images import load_image

# Queries are scored in chunks so the [chunk, N] similarity matrix stays small even for large train sets.
_QUERY_CHUNK = 1024


def object_crops(images_dir, annotations_json, size: int = 64, min_side: float = 4,
                 context: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Crop every usable annotated box out of its image.

    A box is usable when it is not crowd and both sides are >= ``min_side`` pixels. Each box is grown by
    ``context`` times its width/height on every side, clipped to the image, and resized to size x size
    (aspect not kept, antialiased).

    Returns:
        crops: float [N, 3, size, size] in 0..1.
        labels: int64 [N], contiguous indices 0..C-1 following the sorted category ids.
        class_names: list of C names in that order.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if isinstance(annotations_json, (str, Path)) and not Path(annotations_json).is_file():
        raise ValueError(f"annotation file not found: {annotations_json}")
    coco = load_coco(annotations_json)  # a COCO JSON path, or annotations already read (data/build.py Source.coco)

    cat_ids = sorted(coco.getCatIds())
    cat_index = {cid: i for i, cid in enumerate(cat_ids)}
    class_names = [coco.loadCats(cid)[0]["name"] for cid in cat_ids]

    crops, labels = [], []
    for img_id in sorted(coco.getImgIds()):
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))
                if not a.get("iscrowd", 0) and a["bbox"][2] >= min_side and a["bbox"][3] >= min_side
                and a["category_id"] in cat_index]
        if not anns:
            continue  # skip the decode: images without usable boxes contribute nothing
        path = Path(images_dir) / coco.loadImgs(img_id)[0]["file_name"]
        image = load_image(path)  # EXIF-upright, so boxes (drawn on the upright image) line up with pixels
        w_img, h_img = image.size
        for a in anns:
            x, y, w, h = a["bbox"]
            x0, y0 = max(0.0, x - context * w), max(0.0, y - context * h)
            x1, y1 = min(float(w_img), x + w + context * w), min(float(h_img), y + h + context * h)
            # Integer pixel box, at least one pixel wide, so boxes touching the border still give a crop.
            left, top = int(math.floor(x0)), int(math.floor(y0))
            right, bottom = max(left + 1, int(math.ceil(x1))), max(top + 1, int(math.ceil(y1)))
            if left >= w_img or top >= h_img:
                continue  # box lies entirely outside the image: a broken annotation, not a crop
            crop = image.crop((left, top, right, bottom)).resize((size, size), Image.Resampling.BICUBIC,
                                                                 reducing_gap=None)
            crops.append(pil_to_tensor(crop))
            labels.append(cat_index[a["category_id"]])

    if not crops:
        raise ValueError(f"no usable boxes (non-crowd, both sides >= {min_side} px) in {annotations_json}")
    crops_t = torch.stack(crops).float().div_(255.0)
    return crops_t, torch.tensor(labels, dtype=torch.int64), class_names


@torch.no_grad()
def embed(encoder_fn: Callable[[torch.Tensor], torch.Tensor], crops: torch.Tensor,
          batch_size: int = 64) -> torch.Tensor:
    """Embed crops [N, 3, S, S] in batches with ``encoder_fn(batch) -> [B, D]``; returns float [N, D], L2-normalised."""
    if crops.dim() != 4 or crops.shape[0] == 0:
        raise ValueError(f"crops must be a non-empty [N, 3, S, S] tensor, got shape {tuple(crops.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for start in range(0, crops.shape[0], batch_size):
        batch = crops[start:start + batch_size]
        feats = encoder_fn(batch)
        if feats.dim() != 2 or feats.shape[0] != batch.shape[0]:
            raise ValueError(f"encoder_fn must return [B, D] with B={batch.shape[0]}, got {tuple(feats.shape)}")
        # Normalised rows make the dot product a cosine similarity in knn_predict.
        out.append(F.normalize(feats.float(), dim=1))
    return torch.cat(out)


def knn_predict(train_emb: torch.Tensor, train_labels: torch.Tensor, query_emb: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Weighted k-NN labels for queries.

    Args:
        train_emb: [N, D] L2-normalised; train_labels: int [N] in 0..num_classes-1; query_emb: [M, D] L2-normalised.
        k: neighbours per query, capped at N. temperature: each neighbour votes exp(sim / temperature).
    Returns:
        int64 [M] predicted labels.
    """
    if train_emb.dim() != 2 or query_emb.dim() != 2 or train_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(f"embeddings must be [N, D] and [M, D], got {tuple(train_emb.shape)} "
                         f"and {tuple(query_emb.shape)}")
    if train_emb.shape[0] == 0:
        raise ValueError("train_emb is empty")
    if train_labels.shape != (train_emb.shape[0],):
        raise ValueError(f"train_labels must be [{train_emb.shape[0]}], got {tuple(train_labels.shape)}")
    if k < 1 or temperature <= 0 or num_classes < 1:
        raise ValueError(f"need k >= 1, temperature > 0, num_classes >= 1; got {k}, {temperature}, {num_classes}")
    train_labels = train_labels.long()
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(f"train_labels must lie in 0..{num_classes - 1}")
    k = min(k, train_emb.shape[0])
    train_emb, query_emb = train_emb.float(), query_emb.float()

    preds = []
    for start in range(0, query_emb.shape[0], _QUERY_CHUNK):
        sim = query_emb[start:start + _QUERY_CHUNK] @ train_emb.T          # [m, N] cosine similarity
        top_sim, top_idx = sim.topk(k, dim=1)                              # [m, k]
        # Subtracting the row max leaves the argmax unchanged and keeps exp() finite for tiny temperatures.
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()          # [m, k]
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)              # [m, C]
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)


def balanced_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    """Mean per-class recall of pred [M] vs target [M].

    Returns (mean over classes present in target, per-class recall list of length num_classes with
    float('nan') for classes absent from target). Balanced, so a dominant class cannot hide a failed rare one.
    """
    if pred.shape != target.shape or pred.dim() != 1:
        raise ValueError(f"pred and target must both be [M], got {tuple(pred.shape)} and {tuple(target.shape)}")
    if target.numel() == 0:
        raise ValueError("target is empty")
    recalls = []
    for c in range(num_classes):
        mask = target == c
        n = int(mask.sum())
        recalls.append(float((pred[mask] == c).sum()) / n if n else float("nan"))
    present = [r for r in recalls if not math.isnan(r)]
    if not present:
        raise ValueError(f"target has no labels in 0..{num_classes - 1}")
    return sum(present) / len(present), recalls


def knn_report(encoder_fn: Callable[[torch.Tensor], torch.Tensor], train: tuple[torch.Tensor, torch.Tensor],
               val: tuple[torch.Tensor, torch.Tensor], class_names: list[str], k: int = 20,
               temperature: float = 0.07) -> dict:
    """Embed train/val crops with ``encoder_fn``, classify val by weighted k-NN and summarise.

    ``train`` and ``val`` are (crops [N, 3, S, S], labels int64 [N]) as returned by :func:`object_crops`.
    Returns {"balanced_accuracy", "accuracy", "per_class_recall": {name: recall}, "k", "num_train", "num_val"}.
    """
    (train_crops, train_labels), (val_crops, val_labels) = train, val
    if train_crops.shape[0] != train_labels.shape[0] or val_crops.shape[0] != val_labels.shape[0]:
        raise ValueError("crops and labels must have the same length")
    num_classes = len(class_names)
    train_emb, val_emb = embed(encoder_fn, train_crops), embed(encoder_fn, val_crops)
    pred = knn_predict(train_emb, train_labels, val_emb, num_classes, k=k, temperature=temperature)
    bal, recalls = balanced_accuracy(pred, val_labels.long(), num_classes)
    return {
        "balanced_accuracy": bal,
        "accuracy": float((pred == val_labels).float().mean()),
        "per_class_recall": dict(zip(class_names, recalls)),
        "k": k,
        "num_train": int(train_crops.shape[0]),
        "num_val": int(val_crops.shape[0]),
    }
