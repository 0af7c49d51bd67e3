"""COCO-mini: deterministic training subsets (1k / 5k / 10k images) with a matching smaller validation
subset, saved as ``coco_mini_<size>_seed<N>_indices.json`` so a run can be reproduced exactly."""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

log = logging.getLogger(__name__)

MINI_SIZES = {"1k": 1000, "5k": 5000, "10k": 10000}
VAL_FRACTION = 0.2  # validation subset: a fifth of the training subset (1k -> 200 images)


def sample_ids(ids: list[int], count: int, seed: int) -> list[int]:
    """``count`` of ``ids`` (all when fewer), chosen by ``seed`` alone, returned sorted."""
    pool = sorted(ids)
    if count >= len(pool):
        return pool
    return sorted(random.Random(seed).sample(pool, count))


def make_indices(size: str, seed: int, train_ids: list[int], val_ids: list[int] | None) -> dict:
    if size not in MINI_SIZES:
        raise ValueError(f"coco_mini_size must be one of {sorted(MINI_SIZES)}, got '{size}'")
    n = MINI_SIZES[size]
    if len(train_ids) < n:
        log.warning("COCO-mini %s: the training set has only %d images; all are used", size, len(train_ids))
    indices = {"size": size, "seed": seed, "train_image_ids": sample_ids(train_ids, n, seed)}
    if val_ids is not None:
        indices["val_image_ids"] = sample_ids(val_ids, round(n * VAL_FRACTION), seed + 1)
    return indices


def indices_path(output_dir: str | Path, size: str, seed: int) -> Path:
    return Path(output_dir) / f"coco_mini_{size}_seed{seed}_indices.json"


def save_indices(indices: dict, output_dir: str | Path) -> Path:
    path = indices_path(output_dir, indices["size"], indices["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(indices))
    return path


def load_indices(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO-mini indices file not found: {path}")
    indices = json.loads(path.read_text())
    if not isinstance(indices, dict) or not isinstance(indices.get("train_image_ids"), list):
        raise ValueError(f"{path} is not a COCO-mini indices file (no 'train_image_ids' list)")
    return indices
