"""Settings of self-supervised pretraining (``python -m dino_detector.pretrain``), in sections, through the
same loader and flag generator as detection (config/settings.py, cli.py). The run writes them resolved to
``pretrain_config.yaml``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .settings import Settings


@dataclass(frozen=True)
class PretrainDataConfig(Settings):
    """Unlabeled images."""
    images: list[str] = field(default_factory=list)  # folders of unlabeled images (searched recursively)
    cache_images: bool = True  # keep decoded images in memory (uint8, per worker process)
    num_workers: int = -1  # data-loading processes; -1: 0 on small CPU-only machines, else up to 8


@dataclass(frozen=True)
class EncoderConfig(Settings):
    """The encoder to pretrain."""
    arch: str = "flexible-tiny"  # encoder: flexible-tiny|small|base|lite, or a DINOv2 / DINOv3 name, hub id or folder
    pretrained: bool = False  # start a DINOv2 / DINOv3 arch from its published weights (continued pretraining)


@dataclass(frozen=True)
class PretrainOptimConfig(Settings):
    """Optimisation and its schedule."""
    epochs: int = 100  # passes over the images (a time budget may end pretraining sooner)
    time_budget_min: float = 0.0  # >0: stop after this many minutes and save the encoder
    batch_size: int = 32  # images per step and process
    lr: float = 2e-4  # peak learning rate (after the warm-up), cosine down to min_lr
    min_lr: float = 1e-6  # learning rate at the end of the run
    warmup_epochs: int = 5  # linear lr warm-up over this many epochs' share of the run
    weight_decay: float = 0.04  # AdamW weight decay (at the start, with weight_decay_end)
    weight_decay_end: Optional[float] = None  # cosine schedule of the weight decay to this value; unset: constant
    grad_clip: float = 3.0  # gradient norm clipping; 0 disables it
    max_bad_steps: int = 5  # steps with a NaN / inf loss or gradient are skipped (counted, warned); this many in a row stop the run


@dataclass(frozen=True)
class CropConfig(Settings):
    """Multi-crop views and their augmentation."""
    global_size: int = 96  # side of the global crops, pixels
    local_size: int = 48  # side of the local crops, pixels
    n_local: int = 4  # local crops per image
    # fractions of the image area. Detection images hold many small objects, and two views of one image
    # share content only where they overlap: the global crops of an image cover nearly one window (12-20 %
    # of the image inside a 20 % region), the local ones a third to a half of it. With crops anywhere in
    # the image the DINO target of one view could not be predicted from another and the loss stayed at
    # ln K (BENCHMARKS.md, issue 23)
    global_scale: list[float] = field(default_factory=lambda: [0.12, 0.2])  # area range of the global crops (fractions of the image)
    local_scale: list[float] = field(default_factory=lambda: [0.04, 0.1])  # area range of the local crops (fractions of the image)
    view_region: float = 0.2  # share of the image area all views of an image are drawn from (overlapping views); 1: anywhere
    object_views: bool = False  # draw each image's views from a window around one of its unsupervised box proposals (object-centric views) instead of a random --view_region; --global_scale / --local_scale are then fractions of that window
    object_context: float = 2.0  # --object_views: the window's side, as a multiple of the box's longer side
    object_boxes: int = 40  # --object_views: proposals per image the windows are drawn around
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])  # brightness, contrast, saturation, hue jitter
    grayscale_p: float = 0.2  # probability of a greyscale view (lower it, and the hue jitter, where colour carries classes)


@dataclass(frozen=True)
class MethodConfig(Settings):
    """Heads, losses and the teacher."""
    out_dim: int = 256  # prototypes of the projection head (fit it to the data: a few hundred images, a few hundred prototypes)
    head_hidden_dim: int = 1024  # hidden width of the projection head
    head_bottleneck_dim: int = 64  # bottleneck width before the prototypes (random prototypes' cosines spread as 1/sqrt of it)
    head_norm: Literal["none", "center", "batch"] = "batch"  # what the head removes of what a batch shares: nothing, the bottleneck mean, or every hidden layer standardised (DINO use_bn_in_head)
    separate_heads: bool = False  # a projection head of its own for the iBOT patch loss (else shared with DINO's)
    dino_weight: float = 1.0  # weight of the DINO loss on the CLS token (0 switches it off)
    ibot_weight: float = 1.0  # weight of the iBOT loss on masked patch tokens (0 switches it off)
    mim_weight: float = 0.0  # weight of masked-pixel reconstruction (SimMIM pixel head, MAE per-patch normalised targets) on the masked global views (0 switches it off)
    koleo_weight: float = 0.1  # weight of the KoLeo spreading regulariser (0 switches it off)
    vicreg_weight: float = 0.04  # weight of VICReg on the global views' CLS embeddings (0 switches it off)
    centering: Literal["centering", "sinkhorn"] = "centering"  # teacher targets: centring, or Sinkhorn-Knopp
    student_temp: float = 0.1  # temperature of the student's softmax
    teacher_temp: float = 0.04  # temperature of the teacher's softmax after its warm-up
    warmup_teacher_temp: float = 0.04  # teacher temperature at the start of its warm-up (equal: constant)
    warmup_teacher_temp_epochs: int = 10  # epochs of the teacher temperature's linear warm-up
    momentum_teacher: float = 0.992  # teacher EMA momentum at the start; cosine schedule to 1.0
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])  # iBOT: range of the masked share of a global view
    mask_probability: float = 0.5  # iBOT: probability that a global view is masked at all


@dataclass(frozen=True)
class PretrainRunConfig(Settings):
    """Output, resume, device and logging."""
    output_dir: str = "outputs/pretrain"  # folder for encoder_final.pth, checkpoints and the resolved settings
    resume: Optional[str] = None  # continue from this pretrain_last.pth
    seed: int = 0  # seed of every random source (processes add their rank)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where to train; auto: CUDA when available
    checkpoint_every: int = 10  # pretrain_last.pth every N epochs (and at the end)
    log_frequency: int = 10  # steps between TensorBoard scalar points
    log_dir: Optional[str] = None  # TensorBoard folder; default: <output_dir>/tensorboard


@dataclass(frozen=True)
class KnnConfig(Settings):
    """K-NN evaluation of object crops (--eval_knn)."""
    eval_knn: bool = False  # instead of pretraining: k-NN accuracy of annotated object crops
    data: Optional[str] = None  # a dataset folder (as train --data): its training and validation splits' crops
    encoder: Optional[str] = None  # encoder_final.pth to evaluate (unset: --arch at random initialisation)
    annotations: Optional[str] = None  # COCO JSON of the k-NN training crops (images in --images[0])
    val_images: Optional[str] = None  # images of the validation crops (default: --images[0])
    val_annotations: Optional[str] = None  # COCO JSON of the validation crops
    knn_k: int = 20  # neighbours that vote
    knn_crop_size: int = 64  # side the object crops are resized to, pixels


@dataclass(frozen=True)
class PretrainConfig(Settings):
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    run: PretrainRunConfig = field(default_factory=PretrainRunConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
