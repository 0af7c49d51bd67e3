"""A validation split for a dataset that has none: a seeded share of the training images, written to the run
folder (``val_split.json``) so that a resumed run validates on the same images."""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from ..runtime.logging import write_json
from .coco_form import subset

log = logging.getLogger(__name__)
VAL_SPLIT_FILE = "val_split.json"


def choose_val_files(files: list[str], fraction: float, seed: int) -> list[str]:
    """``fraction`` of ``files`` (at least one, and at least one left to train on), chosen by ``seed`` alone."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {fraction}")
    if len(files) < 2:
        raise ValueError(f"{len(files)} training image(s) cannot be split into training and validation; give a "
                         "validation split (--val_annotations) or more images")
    pool = sorted(files)
    count = min(len(pool) - 1, max(1, round(len(pool) * fraction)))
    return sorted(random.Random(seed).sample(pool, count))


def split_off_validation(coco: dict, *, fraction: float, seed: int, folder: Path | None = None,
                         reuse: bool = False) -> tuple[dict, dict, list[str]]:
    """(training COCO dict, validation COCO dict, the validation file names). With ``reuse`` and a
    ``val_split.json`` in ``folder`` (an earlier run's), its file names are the validation set again."""
    files = {im["file_name"]: im["id"] for im in coco["images"]}
    saved = folder / VAL_SPLIT_FILE if folder is not None else None
    if reuse and saved is not None and saved.is_file():
        names = json.loads(saved.read_text())["val_files"]
        unknown = [n for n in names if n not in files]
        if unknown:
            raise ValueError(f"{saved} names {len(unknown)} image(s) the training annotations do not have, e.g. "
                             f"{unknown[0]}: it was written for other data")
        log.info("validation split reused from %s: %d images", saved, len(names))
    else:
        names = choose_val_files(list(files), fraction, seed)
        if saved is not None:  # every process of a run writes the same list: atomically
            saved.parent.mkdir(parents=True, exist_ok=True)
            write_json({"fraction": fraction, "seed": seed, "val_files": names}, saved, indent=1)
        log.info("no validation split given: %d of %d training images (val_fraction %.2f, seed %d) validate "
                 "instead%s", len(names), len(files), fraction, seed, f"; listed in {saved}" if saved else "")
    val_ids = {files[n] for n in names}
    return subset(coco, set(files.values()) - val_ids), subset(coco, val_ids), names
