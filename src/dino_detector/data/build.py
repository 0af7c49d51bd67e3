"""Datasets and loaders for a run, built from the config (debug subsets included)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import Config
from .coco import CocoDetection, collate
from .images import list_images, load_image, to_tensor_image
from .transforms import resize_for_inference

log = logging.getLogger(__name__)


def resolve_num_workers(requested: int, device: torch.device) -> int:
    """-1 (auto): no worker processes on small CPU-only machines, where workers take cores from the model."""
    if requested >= 0:
        return requested
    cpus = os.cpu_count() or 1
    return 0 if device.type == "cpu" and cpus <= 4 else min(8, cpus // 2)


def check_annotation_format(path: str | None, data_format: str) -> None:
    if path is None:
        return
    p = Path(path)
    if data_format not in ("auto", "coco"):
        raise ValueError(f"data_format '{data_format}' is not supported yet; convert to COCO JSON")
    if p.is_dir() or p.suffix.lower() != ".json":
        raise ValueError(f"{path}: annotations must be a COCO JSON file (VOC / YOLO folders are not yet read)")


def build_datasets(cfg: Config) -> tuple[CocoDetection | None, CocoDetection | None]:
    """(train, val) datasets. Debug mode: the first ``debug_samples`` training images, validated on themselves."""
    d = cfg.data
    for path in (d.train_annotations, d.val_annotations):
        check_annotation_format(path, d.data_format)
    train = val = None
    if d.train_images and d.train_annotations and not cfg.train.only_evaluate:
        limit = d.debug_samples if cfg.train.debug else 0
        train = CocoDetection(d.train_images, d.train_annotations, d, train=True, limit=limit)
        if cfg.train.debug:
            val = CocoDetection(d.train_images, d.train_annotations, d, train=False, image_ids=train.ids)
            log.info("debug mode: %d training images, validated on the same images", len(train.ids))
            return train, val
    if d.val_images and d.val_annotations:
        val = CocoDetection(d.val_images, d.val_annotations, d, train=False)
    if train is not None and val is not None and val.category_ids != train.category_ids:
        raise ValueError(f"validation categories {val.category_ids} differ from training categories "
                         f"{train.category_ids}; both files must list the same categories")
    return train, val


def make_loader(dataset: Dataset, cfg: Config, device: torch.device, shuffle: bool) -> DataLoader:
    workers = resolve_num_workers(cfg.data.num_workers, device)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=shuffle, collate_fn=collate,
                      num_workers=workers, generator=generator, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda")


class ImageFolderDataset(Dataset):
    """Unannotated images (test-dev, predict): image ids are numeric file stems (COCO style) or positions."""

    def __init__(self, folder: str | Path, cfg: Config, limit: int = 0):
        self.paths = list_images(folder)
        if limit:
            self.paths = self.paths[:limit]
        if not self.paths:
            raise ValueError(f"no images found in {folder}")
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        image = to_tensor_image(load_image(path))
        image_id = int(path.stem) if path.stem.isdigit() else i
        target = {"image_id": image_id, "orig_size": tuple(image.shape[-2:]), "file_name": path.name}
        return resize_for_inference(image, self.cfg.data), target
