"""The data of a run: its sources (annotation files read once, before anything is built), its classes,
its datasets (debug and COCO-mini subsets included) and loaders. Every builder takes its values by keyword
from the resolved run specification (spec.py)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..config import DataConfig
from ..runtime.device import resolve_num_workers
from ..runtime.distributed import ShardSampler
from .coco import CocoDetection, collate, load_coco
from .coco_mini import load_indices, make_indices, save_indices
from .formats import FORMATS, detect_format, read_voc, read_yolo
from .images import folder_image_id, list_images, load_image, to_tensor_image
from .transforms import Resize, resize_for_inference

log = logging.getLogger(__name__)
COCO_SPLITS = ("train", "val")


@dataclass
class Source:
    """Where a split's images are, and its annotations in COCO form (parsed once, shared by the datasets)."""
    images: Path
    coco: object  # pycocotools COCO
    name: str

    def classes(self) -> tuple[list[int], list[str]]:
        """(category ids, names), sorted by id: label i is category_ids[i]."""
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        return [c["id"] for c in cats], [c["name"] for c in cats]


@dataclass
class DataSources:
    train: Source | None = None
    val: Source | None = None


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
        return Source(Path(images), load_coco(annotations), str(annotations))
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
    return Source(converted.images_dir, load_coco(converted.coco), name)


def open_sources(data: DataConfig, *, train: bool) -> DataSources:
    """The annotation files of a run, read once: the training split (when ``train``) and the validation split."""
    sources = DataSources()
    if train and data.train_annotations:
        sources.train = open_source(data.train_images, data.train_annotations, data.data_format, "train",
                                    hf_split=data.hf_train_split)
    if data.val_annotations:
        names = sources.train.classes()[1] if sources.train is not None else None
        sources.val = open_source(data.val_images, data.val_annotations, data.data_format, "val", names,
                                  data.hf_val_split)
    return sources


def coco_download_paths(data: DataConfig) -> dict:
    """The image and annotation paths the ``--download_*_data`` flags point unset paths at."""
    root, paths = Path(data.data_dir), {}
    for split in COCO_SPLITS:
        if getattr(data, f"download_{split}_data"):
            paths[f"{split}_images"] = getattr(data, f"{split}_images") or str(root / f"{split}2017")
            paths[f"{split}_annotations"] = (getattr(data, f"{split}_annotations")
                                             or str(root / "annotations" / f"instances_{split}2017.json"))
    if data.download_test_data:
        paths["testdev_images"] = data.testdev_images or str(root / "test2017")
    return paths


def fetch_requested_data(data: DataConfig) -> None:
    """--download_{train,val,test}_data: fetch COCO 2017 (resumable, verified) into data_dir."""
    if not (data.download_train_data or data.download_val_data or data.download_test_data):
        return
    from .download import download_coco
    download_coco(data.data_dir, train=data.download_train_data, val=data.download_val_data,
                  test=data.download_test_data, base_url=data.download_base_url)


def coco_mini_indices(data: DataConfig, sources: DataSources, output_dir: str) -> dict:
    """The COCO-mini subset: reloaded from --coco_mini_indices_file, or drawn and saved in the output folder."""
    if data.coco_mini_indices_file:
        indices = load_indices(data.coco_mini_indices_file)
        log.info("COCO-mini: %d training images from %s", len(indices["train_image_ids"]),
                 data.coco_mini_indices_file)
        return indices
    val_ids = sources.val.coco.getImgIds() if sources.val is not None else None
    indices = make_indices(data.coco_mini_size, data.coco_mini_seed, sources.train.coco.getImgIds(), val_ids)
    path = save_indices(indices, output_dir)
    log.info("COCO-mini %s (seed %d): %d training, %s validation images; indices saved to %s",
             data.coco_mini_size, data.coco_mini_seed, len(indices["train_image_ids"]),
             len(indices.get("val_image_ids", [])) or "no", path)
    return indices


def build_datasets(spec, sources: DataSources) -> tuple[CocoDetection | None, CocoDetection | None]:
    """(train, val) datasets of a resolved run specification. Debug mode: the first ``debug_samples``
    training images, validated on themselves."""
    d, t = spec.data, spec.train
    train = val = mini = None
    if sources.train is not None:
        src = sources.train
        mini = coco_mini_indices(d, sources, t.output_dir) if d.use_coco_mini else None
        train = CocoDetection(src.images, src.coco, d, train=True, limit=d.debug_samples if t.debug else 0,
                              name=src.name, image_ids=mini["train_image_ids"] if mini else None)
        if t.debug:
            val = CocoDetection(src.images, src.coco, d, train=False, image_ids=train.ids, name=src.name)
            log.info("debug mode: %d training images, validated on the same images", len(train.ids))
            return train, val
    if sources.val is not None:
        src = sources.val
        val = CocoDetection(src.images, src.coco, d, train=False, name=src.name,
                            image_ids=mini.get("val_image_ids") if mini else None)
        if val.category_ids != list(spec.model.category_ids):
            raise ValueError(f"validation categories {val.category_ids} ({src.name}) differ from the model's "
                             f"{list(spec.model.category_ids)}; both must list the same categories")
    return train, val


def make_loader(dataset: Dataset, *, batch_size: int, num_workers: int, device: torch.device, shuffle: bool,
                seed: int, rank: int = 0, world: int = 1) -> DataLoader:
    """Training (``shuffle``): a DistributedSampler, also for one process, so the order of an epoch is a
    function of (seed, epoch) alone and process r of W takes every W-th image of it: W processes with
    batch b see the same images per step as one process with batch W x b. Evaluation:
    strided shards without padding (every image predicted once). The trainer calls ``sampler.set_epoch``."""
    workers = resolve_num_workers(num_workers, device)
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    generator = torch.Generator().manual_seed(seed)  # worker seeds; reseeded every epoch
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=workers, generator=generator, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda")


class ImageFolderDataset(Dataset):
    """Unannotated images (test-dev, predict): image ids are numeric file stems (COCO style) or positions."""

    def __init__(self, folder: str | Path, resize: Resize, limit: int = 0):
        self.paths = list_images(folder)
        if limit:
            self.paths = self.paths[:limit]
        if not self.paths:
            raise ValueError(f"no images found in {folder}")
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        image = to_tensor_image(load_image(path))
        image_id = folder_image_id(path, i)
        target = {"image_id": image_id, "orig_size": tuple(image.shape[-2:]), "file_name": path.name}
        return resize_for_inference(image, self.resize), target
