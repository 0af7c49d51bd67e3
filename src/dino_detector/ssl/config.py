"""Settings of self-supervised pretraining (``python -m dino_detector.pretrain``): one dataclass behind the
command line, ``--config`` YAML files and the Python API; the resolved settings are saved with the run."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..config import coerce


@dataclass
class PretrainConfig:
    images: list = field(default_factory=list)  # folders of unlabeled images (searched recursively)
    output_dir: str = "outputs/pretrain"
    arch: str = "flexible-tiny"  # flexible-* | a DINOv2/DINOv3 name, hub id or folder (continued pretraining)
    pretrained: bool = False  # start a DINOv2/DINOv3 arch from its published weights
    resume: Optional[str] = None  # pretrain_last.pth of an earlier run
    epochs: int = 100
    time_budget_min: float = 0.0  # >0: stop after this many minutes and save the encoder
    batch_size: int = 32
    lr: float = 2e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 5
    weight_decay: float = 0.04
    grad_clip: float = 3.0
    # multi-crop
    global_size: int = 96
    local_size: int = 48
    n_local: int = 4
    # fractions of the image area. Detection images hold many small objects: crops about one object in
    # size taught BCCD's cells, wider ones (0.1-0.6 / 0.01-0.1) did not (BENCHMARKS.md)
    global_scale: list = field(default_factory=lambda: [0.02, 0.2])
    local_scale: list = field(default_factory=lambda: [0.002, 0.02])
    color_jitter: list = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])  # brightness contrast saturation hue
    grayscale_p: float = 0.2  # lower both where colour carries the classes (stains, for one)
    # heads and losses (a weight of 0 switches a loss off)
    out_dim: int = 2048  # prototypes
    head_hidden_dim: int = 1024
    head_bottleneck_dim: int = 256
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    vicreg_weight: float = 0.04  # on the backbone's CLS embeddings of the two global views
    centering: str = "centering"  # centering | sinkhorn
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 10
    momentum_teacher: float = 0.992  # cosine schedule from this to 1.0
    mask_ratio: list = field(default_factory=lambda: [0.1, 0.5])  # iBOT block masking of global views
    mask_probability: float = 0.5
    # run
    seed: int = 0
    device: str = "auto"
    num_workers: int = -1
    cache_images: bool = True  # decoded images kept in memory (uint8; per worker process)
    checkpoint_every: int = 10
    log_frequency: int = 10
    log_dir: Optional[str] = None
    # k-NN evaluation of object crops (--eval_knn)
    eval_knn: bool = False
    encoder: Optional[str] = None  # encoder_final.pth to evaluate (absent: --arch at random initialisation)
    annotations: Optional[str] = None  # COCO JSON of the k-NN training crops (images in --images[0])
    val_images: Optional[str] = None
    val_annotations: Optional[str] = None
    knn_k: int = 20
    knn_crop_size: int = 64

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))

    def update(self, values: dict) -> "PretrainConfig":
        hints = typing.get_type_hints(PretrainConfig)
        for k, v in values.items():
            if k not in hints:
                raise KeyError(f"unknown pretraining setting '{k}'")
            setattr(self, k, coerce(v, hints[k], k))
        return self
