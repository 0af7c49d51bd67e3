"""The data of a run: its sources (annotation files read once, before anything is built), its classes,
its datasets (debug and COCO-mini subsets included) and loaders. Every builder takes its values by keyword
from the resolved run specification (spec.py)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..config import DataConfig
from ..runtime.device import resolve_num_workers
from ..runtime.distributed import ShardSampler
from .coco import CocoDetection, collate, load_coco
from .coco_form import drop_empty_parent_categories
from .coco_mini import load_indices, make_indices, save_indices
from .formats import FORMATS, detect_format, read_voc, read_yolo
from .images import folder_image_id, list_images, load_image, to_tensor_image
from .layout import SPLITS, detect_layout
from .splits import split_off_validation
from .transforms import Resize, resize_for_inference, size_factors

log = logging.getLogger(__name__)
COCO_SPLITS = ("train", "val")
SIZE_SEED_OFFSET = 7919  # the batch sizes' random stream starts apart from the shuffle's (seed + epoch)


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


    def counts(self) -> tuple[int, int]:
        """(images, boxes that are not crowd)."""
        anns = self.coco.dataset.get("annotations", [])
        return len(self.coco.dataset["images"]), sum(1 for a in anns if not a.get("iscrowd", 0))


@dataclass
class DataSources:
    train: Source | None = None
    val: Source | None = None
    test: Source | None = None
    val_from_train: bool = False  # the validation images were split off the training split

    def summary(self, title: str) -> str:
        """What the run found, in a few lines: per split its images and boxes, then the classes."""
        lines = [title]
        for role in SPLITS:
            source = getattr(self, role)
            if source is not None:
                images, boxes = source.counts()
                origin = " (split off the training images)" if role == "val" and self.val_from_train else ""
                lines.append(f"  {role:5s} {images:6d} images {boxes:7d} boxes  {source.name}{origin}")
        reference = self.train or self.val or self.test
        if reference is not None:
            lines.append(f"  classes ({len(reference.classes()[1])}): {', '.join(reference.classes()[1])}")
        return "\n".join(lines)


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
        coco = load_coco(annotations)
        cleaned, dropped = drop_empty_parent_categories(coco.dataset)
        if dropped:
            log.info("%s: category %s left out: it has no boxes and names the other categories' supercategory "
                     "(an export's parent category, not a class)", annotations, ", ".join(dropped))
            coco = load_coco(cleaned, str(annotations), report=False)
        return Source(Path(images), coco, str(annotations))
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
    return Source(converted.images_dir, load_coco(converted.coco, name), name)


def open_sources(data: DataConfig, *, train: bool, seed: int = 0, run_folder: str | Path | None = None,
                 resume: bool = False, split_validation: bool = True, finder=None) -> DataSources:
    """The annotation files of a run, read once: the training split (when ``train``), the validation split
    (or, without one and with ``split_validation``, a seeded ``val_fraction`` of the training images, listed in
    ``run_folder`` and reused on ``resume``) and the test split. ``finder``: with ``--proposals``, the source of
    the boxes other than colour segments (``data.proposals.BoxFinder``: ``--proposals_from``'s detector)."""
    sources = DataSources()
    if train and data.proposals:
        return _proposal_sources(data, run_folder, finder)
    if train and data.train_annotations:
        sources.train = open_source(data.train_images, data.train_annotations, data.data_format, "train",
                                    hf_split=data.hf_train_split)
    names = sources.train.classes()[1] if sources.train is not None else None
    if data.val_annotations:
        sources.val = open_source(data.val_images, data.val_annotations, data.data_format, "val", names,
                                  data.hf_val_split)
    elif sources.train is not None and split_validation and data.val_fraction > 0:
        src = sources.train
        kept, held_out, _ = split_off_validation(src.coco.dataset, fraction=data.val_fraction, seed=seed,
                                                 folder=Path(run_folder) if run_folder else None, reuse=resume)
        sources.train = Source(src.images, load_coco(kept), src.name)
        sources.val = Source(src.images, load_coco(held_out), f"{src.name}, validation share")
        sources.val_from_train = True
    if data.test_annotations:
        sources.test = open_source(data.test_images, data.test_annotations, data.data_format, "test", names)
    return sources


def _proposal_sources(data: DataConfig, run_folder: str | Path | None, finder=None) -> DataSources:
    """``--proposals``: the unlabelled training images with their unsupervised boxes (one class, ``object``;
    data/proposals.py, or ``finder``'s), made once into the run folder's ``proposals.json``; no validation
    split."""
    from .proposals import PROPOSALS_FILE, cached_proposals

    if not data.train_images:
        raise ValueError("--proposals needs --train_images: the folder of unlabelled images")
    given = [f"--{name}" for name in ("data", "train_annotations", "val_annotations", "test_annotations")
             if getattr(data, name)]
    if given:
        raise ValueError(f"--proposals trains on unlabelled images only (one class, 'object'); drop {', '.join(given)} "
                         "and fine-tune on the labelled data afterwards with --init_from")
    path = cached_proposals(data.train_images, Path(run_folder or ".") / PROPOSALS_FILE, data.proposals_per_image,
                            finder)
    return DataSources(train=open_source(data.train_images, str(path), "coco", "train"))


def layout_paths(data: DataConfig) -> dict:
    """The split paths ``--data DIR`` points at, for the splits whose paths were not given."""
    if not data.data:
        return {}
    layout = detect_layout(data.data)
    paths = {}
    for role, files in layout.splits.items():
        if not getattr(data, f"{role}_annotations"):
            paths[f"{role}_annotations"] = files.annotations
            paths[f"{role}_images"] = getattr(data, f"{role}_images") or files.images
    return paths


def resolve_paths(data: DataConfig) -> DataConfig:
    """``data`` with the paths that ``--data`` and ``--download_*_data`` point at filled in (given paths win)."""
    data = dataclasses.replace(data, **coco_download_paths(data))
    return dataclasses.replace(data, **layout_paths(data))


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
        val = evaluation_dataset(sources.val, spec, mini.get("val_image_ids") if mini else None)
    return train, val


def evaluation_dataset(src: Source, spec, image_ids: list[int] | None = None) -> CocoDetection:
    """A validation or test split, checked to have the model's categories."""
    dataset = CocoDetection(src.images, src.coco, spec.data, train=False, name=src.name, image_ids=image_ids)
    if dataset.category_ids != list(spec.model.category_ids):
        raise ValueError(f"categories {dataset.category_ids} of {src.name} differ from the model's "
                         f"{list(spec.model.category_ids)}; every split must list the same categories")
    return dataset


class ResumableSampler(DistributedSampler):
    """A DistributedSampler whose next epoch can start after its first ``skip`` indices: a run resumed from a
    checkpoint written mid-epoch continues with the batches it had not trained on, without reading (and
    augmenting) the ones it had. The skip applies to one epoch, then resets. With ``strong`` set (True /
    False, by the trainer at each epoch) it yields ``(index, strong)``: the sampler runs in the main process,
    so the augmentation schedule reaches worker processes with each index. With ``sizes`` (the data settings)
    and ``strong`` True it yields ``(index, True, size_factor)``, one factor per ``batch_size`` indices, drawn
    from (seed, epoch): all images of a step share one training size, on every process, and a resumed epoch
    draws the sizes the uninterrupted one did."""

    def __init__(self, *args, batch_size: int = 1, sizes: DataConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0
        self.strong: bool | None = None
        self.batch_size, self.sizes = batch_size, sizes

    def __iter__(self):
        indices = list(super().__iter__())
        if self.strong and self.sizes is not None:
            generator = torch.Generator().manual_seed(SIZE_SEED_OFFSET + self.seed + self.epoch)
            factors = size_factors(self.sizes, -(-len(indices) // self.batch_size), generator)
            items = [(i, True, factors[k // self.batch_size]) for k, i in enumerate(indices)]
        elif self.strong is not None:
            items = [(i, self.strong) for i in indices]
        else:
            items = indices
        items, self.skip = items[self.skip:], 0
        return iter(items)

    def __len__(self) -> int:
        return super().__len__() - self.skip

    def resume_within(self, saved: dict | None, epoch: int, done: str, samples_per_unit: int) -> dict | None:
        """The running totals a checkpoint written mid-epoch saved (``saved``), when they belong to ``epoch``;
        the next pass then skips the ``saved[done] * samples_per_unit`` samples already trained on. Else None."""
        if not saved or saved.get("epoch") != epoch:
            return None
        self.skip = saved[done] * samples_per_unit
        return saved


def make_loader(dataset: Dataset, *, batch_size: int, num_workers: int, device: torch.device, shuffle: bool,
                seed: int, rank: int = 0, world: int = 1, sizes: DataConfig | None = None) -> DataLoader:
    """Training (``shuffle``): a DistributedSampler, also for one process, so the order of an epoch is a
    function of (seed, epoch) alone and process r of W takes every W-th image of it: W processes with
    batch b see the same images per step as one process with batch W x b. Evaluation:
    strided shards without padding (every image predicted once). The trainer calls ``sampler.set_epoch``.
    ``sizes``: the data settings whose multi-scale / scale jitter the training sampler draws per batch."""
    workers = resolve_num_workers(num_workers, device)
    if shuffle:
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                   batch_size=batch_size, sizes=sizes)
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
