"""Datasets and loaders for a run, built from the config (debug subsets included)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..config import Config
from ..engine.distributed import ShardSampler
from .coco import CocoDetection, collate, load_coco
from .coco_mini import load_indices, make_indices, save_indices
from .formats import FORMATS, detect_format, read_voc, read_yolo
from .images import folder_image_id, list_images, load_image, to_tensor_image
from .transforms import resize_for_inference

log = logging.getLogger(__name__)


def resolve_num_workers(requested: int, device: torch.device) -> int:
    """-1 (auto): no worker processes on small CPU-only machines, where workers take cores from the model."""
    if requested >= 0:
        return requested
    cpus = os.cpu_count() or 1
    return 0 if device.type == "cpu" and cpus <= 4 else min(8, cpus // 2)


@dataclass
class Source:
    """Where a split's images are and its annotations in COCO form (a JSON path or a converted dict)."""
    images: Path
    annotations: str | Path | dict
    name: str


def open_source(images: str | None, annotations: str, data_format: str, role: str,
                class_names: list[str] | None = None, hf_split: str | None = None) -> Source:
    """Read COCO JSON as is; convert a VOC folder, a YOLO folder or a Hugging Face dataset (``role`` picks
    the split: train / val) to COCO. For VOC, ``class_names`` fixes the label order (the training split's)."""
    if data_format not in FORMATS:
        raise ValueError(f"data_format must be one of {FORMATS}, got '{data_format}'")
    fmt = detect_format(annotations) if data_format == "auto" else data_format
    if fmt == "coco":
        if images is None:
            raise ValueError(f"COCO annotations {annotations} need their image folder (--{role}_images)")
        return Source(Path(images), annotations, str(annotations))
    if fmt == "voc":
        converted = read_voc(annotations, role, class_names, images)
    elif fmt == "yolo":
        converted = read_yolo(annotations, role, images)
    else:
        from .hf import read_hf
        converted = read_hf(annotations, role, images, hf_split)
    name = f"{annotations} ({fmt}, {role})"
    if converted.problems:
        log.warning("%s: %s", name, ", ".join(f"{n} {what}" for what, n in sorted(converted.problems.items())))
    return Source(converted.images_dir, converted.coco, name)


def coco_mini_indices(cfg: Config, train_source: Source) -> dict:
    """The COCO-mini subset: reloaded from --coco_mini_indices_file, or drawn and saved in the output folder."""
    d = cfg.data
    if d.coco_mini_indices_file:
        indices = load_indices(d.coco_mini_indices_file)
        log.info("COCO-mini: %d training images from %s", len(indices["train_image_ids"]), d.coco_mini_indices_file)
        return indices
    train_ids = load_coco(train_source.annotations).getImgIds()
    val_ids = None
    if d.val_annotations:
        val_source = open_source(d.val_images, d.val_annotations, d.data_format, "val", hf_split=d.hf_val_split)
        val_ids = load_coco(val_source.annotations).getImgIds()
    indices = make_indices(d.coco_mini_size, d.coco_mini_seed, train_ids, val_ids)
    path = save_indices(indices, cfg.train.output_dir)
    log.info("COCO-mini %s (seed %d): %d training, %s validation images; indices saved to %s",
             d.coco_mini_size, d.coco_mini_seed, len(indices["train_image_ids"]),
             len(indices.get("val_image_ids", [])) or "no", path)
    return indices


def fetch_requested_data(cfg: Config) -> None:
    """--download_{train,val,test}_data: fetch COCO 2017 (resumable, verified) and use it for every split
    whose paths were not given."""
    d = cfg.data
    if not (d.download_train_data or d.download_val_data or d.download_test_data):
        return
    from .download import download_coco
    download_coco(d.data_dir, d.download_train_data, d.download_val_data, d.download_test_data,
                  d.download_base_url)
    root = Path(d.data_dir)
    for split, wanted in (("train", d.download_train_data), ("val", d.download_val_data)):
        if wanted:
            setattr(d, f"{split}_images", getattr(d, f"{split}_images") or str(root / f"{split}2017"))
            setattr(d, f"{split}_annotations", getattr(d, f"{split}_annotations")
                    or str(root / "annotations" / f"instances_{split}2017.json"))
    if d.download_test_data:
        d.testdev_images = d.testdev_images or str(root / "test2017")


def build_datasets(cfg: Config) -> tuple[CocoDetection | None, CocoDetection | None]:
    """(train, val) datasets. Debug mode: the first ``debug_samples`` training images, validated on themselves."""
    d = cfg.data
    train = val = mini = None
    if d.train_annotations and not cfg.train.only_evaluate:
        src = open_source(d.train_images, d.train_annotations, d.data_format, "train", hf_split=d.hf_train_split)
        limit = d.debug_samples if cfg.train.debug else 0
        mini = coco_mini_indices(cfg, src) if d.use_coco_mini else None
        train = CocoDetection(src.images, src.annotations, d, train=True, limit=limit, name=src.name,
                              image_ids=mini["train_image_ids"] if mini else None)
        if cfg.train.debug:
            val = CocoDetection(src.images, src.annotations, d, train=False, image_ids=train.ids, name=src.name)
            log.info("debug mode: %d training images, validated on the same images", len(train.ids))
            return train, val
    if d.val_annotations:
        src = open_source(d.val_images, d.val_annotations, d.data_format, "val",
                          train.class_names if train is not None else None, d.hf_val_split)
        val_ids = mini.get("val_image_ids") if mini else None
        val = CocoDetection(src.images, src.annotations, d, train=False, name=src.name, image_ids=val_ids)
    if train is not None and val is not None and val.category_ids != train.category_ids:
        raise ValueError(f"validation categories {val.category_ids} differ from training categories "
                         f"{train.category_ids}; both files must list the same categories")
    return train, val


def make_loader(dataset: Dataset, cfg: Config, device: torch.device, shuffle: bool, rank: int = 0,
                world: int = 1) -> DataLoader:
    """Training (``shuffle``): a DistributedSampler, also for one process, so the order of an epoch is a
    function of (seed, epoch) alone and process r of W takes every W-th image of it: W processes with
    batch b see the same images per step as one process with batch W x b. Evaluation:
    strided shards without padding (every image predicted once). The trainer calls ``sampler.set_epoch``."""
    workers = resolve_num_workers(cfg.data.num_workers, device)
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    generator = torch.Generator().manual_seed(cfg.train.seed)  # worker seeds; reseeded every epoch
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=collate,
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
        image_id = folder_image_id(path, i)
        target = {"image_id": image_id, "orig_size": tuple(image.shape[-2:]), "file_name": path.name}
        return resize_for_inference(image, self.cfg.data), target
