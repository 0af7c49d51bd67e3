"""One typed configuration object behind the CLI, YAML files and the Python API.

``Config`` holds four sections (model, data, train, loss). Every field name is unique across the
sections, so a command-line flag ``--lr`` or a flat override ``{"lr": 1e-4}`` names exactly one field.
Precedence, lowest first: dataclass defaults < preset < YAML file (``--config``) < command-line flags.
The resolved configuration is written to ``config.yaml`` in every run's output folder.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


@dataclass
class ModelConfig:
    dino_model: str = "facebook/dinov2-base"  # hub id, local folder (save_pretrained layout) or "tiny"
    pretrained: bool = True  # False builds the architecture offline with random weights
    dino_weights: str = ""  # an official DINOv2 checkpoint file (dinov2_vits14_pretrain.pth ...), no hub needed
    backbone_mode: str = "auto"  # auto | frozen | lora | full ("auto": lora if pretrained, else full)
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_last_n_blocks: int = 0  # 0: adapters on every block
    backbone_feature_layers: int = 1  # n > 1: outputs of n evenly spaced ViT blocks, concatenated
    backbone_attention: str = "full"  # full | windowed | auto (windowed for random DINOv2 weights, else full)
    backbone_windows: int = 2  # windowed: the patch grid is cut into n x n tiles that attend within themselves
    backbone_global_blocks: int = 4  # windowed: evenly spaced blocks that still attend over the whole image
    backbone_patch_size: int = 0  # >0: patch size of a randomly initialised ViT (pretrained weights keep theirs)
    num_classes: int = 0  # 0: taken from the training annotations
    hidden_dim: int = 256
    num_queries: int = 100
    num_feature_levels: int = 1  # 1: the ViT map alone; 2-4 add a simple feature pyramid (x1/2, x2, x1/4)
    encoder_layers: int = 1
    encode_upsampled_level: bool = False  # False: the x2 level's tokens are attended to but not encoded (cost)
    decoder_layers: int = 6
    num_heads: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.0
    attention: str = "deformable"  # deformable | standard
    num_points: int = 4  # sampling points per head and level (deformable)
    decoder_shared_values: bool = False  # deformable decoder layers share one value projection of the memory
    box_refine: bool = True
    two_stage: bool = False  # encoder tokens propose boxes; the top num_queries become the decoder's references
    hybrid_queries: int = 0  # training only: a second query branch (H-DETR) matched one_to_many times per box
    dn_queries: int = 0  # training only: up to this many denoising queries (DN-DETR / DINO) from noised boxes
    dn_box_noise: float = 1.0  # positives' corners move by up to this x half the box size, negatives' 1-2 x
    dn_label_noise: float = 0.5  # a denoising query's class is replaced by a random one with half this chance
    aux_loss: bool = True
    classifier: str = "sigmoid"  # sigmoid (per-class scores, focal loss) | softmax (+ no-object class, CE)
    class_mlp_layers: int = 1  # 1: linear classifier
    box_mlp_layers: int = 3
    head_dropout: float = 0.0  # dropout between the layers of the class and box MLPs


@dataclass
class DataConfig:
    train_images: Optional[str] = None
    train_annotations: Optional[str] = None
    val_images: Optional[str] = None
    val_annotations: Optional[str] = None
    testdev_images: Optional[str] = None
    download_train_data: bool = False  # fetch COCO 2017 into data_dir first; unset image / annotation paths
    download_val_data: bool = False    # then point at it
    download_test_data: bool = False
    data_dir: str = "data/coco"
    download_base_url: str = "http://images.cocodataset.org"
    data_format: str = "auto"  # auto | coco | voc | yolo | hf (annotation paths: JSON, VOC / YOLO folder, HF name)
    hf_train_split: str = "train"  # --data_format hf: split of --train_annotations, slicing allowed: train[:5000]
    hf_val_split: str = "validation"
    image_size: int = 0  # >0: longer side resized to this, aspect kept (overrides min/max size)
    min_size: int = 800  # shorter side (DETR recipe) when image_size is 0
    max_size: int = 1333
    flip: bool = True  # --no_flip: for data where mirroring changes the meaning (text, left/right classes)
    hflip_prob: float = 0.5
    color_jitter: float = 0.2  # brightness / contrast / saturation strength; 0 disables
    multi_scale: bool = False  # training sizes 60-100 % of the evaluation size (DETR: shorter side 480-800)
    crop_prob: float = 0.0  # probability of a random crop before resizing
    crop_min_fraction: float = 0.5  # smallest crop side, as a fraction of the image side
    rotation_degrees: float = 0.0  # random rotation in [-d, d]; boxes re-fitted around the rotated corners
    num_workers: int = -1  # -1: 0 on small CPU-only machines, else up to 8
    debug_samples: int = 32
    use_coco_mini: bool = False  # deterministic training subset (and a validation subset a fifth its size)
    coco_mini_size: str = "1k"  # 1k | 5k | 10k
    coco_mini_seed: int = 42
    coco_mini_indices_file: Optional[str] = None  # reuse the subset saved by an earlier run
    test_mini: bool = False
    test_mini_size: int = 30


@dataclass
class TrainConfig:
    output_dir: str = "outputs"
    checkpoint: Optional[str] = None
    skip_checkpoint_load: bool = False
    only_evaluate: bool = False
    debug: bool = False
    debug_lr: float = 5e-4
    debug_epochs: int = 100
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    lr_backbone: float = 0.0  # backbone / LoRA lr; 0: lr for random-init backbones, lr/10 for pretrained
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    unfreeze_at_epoch: int = 0  # >0: backbone frozen for this many epochs, then trained with lr_backbone
    unfreeze_lr: float = 0.0  # >0: the head's lr after unfreezing (staged fine-tuning); 0 keeps lr
    lr_drop_epoch: int = 0  # 0: after lr_drop_fraction of the epochs
    lr_drop_fraction: float = 0.67  # also of the time budget, when one is set (DETR: 200 of 300 epochs)
    lr_drop_factor: float = 0.1
    lr_schedule: str = "step"  # step (drop by lr_drop_factor) | cosine (down to lr * lr_min_factor)
    lr_min_factor: float = 0.01
    warmup_steps: int = 0  # linear lr warm-up over this many optimizer steps
    layer_decay: float = 1.0  # <1: layer-wise lr decay over the blocks of a tuned backbone
    grad_accum_steps: int = 1  # optimizer step every N batches; equals an N x larger batch
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # autocast: bf16 (CUDA, or CPUs with bf16 units) or fp16 with a gradient scaler (CUDA)
    amp_dtype: str = "bf16"  # bf16 | fp16
    ema: bool = False  # exponential moving average of the weights, evaluated and saved beside them
    ema_decay: float = 0.9998
    find_unused_parameters: bool = False  # DDP: only for models with parameters a step may not use
    time_budget_min: float = 0.0  # >0: stop training after this many minutes, then evaluate
    checkpoint_every: int = 10  # dino_detector_epoch_N.pth every N epochs; dino_detector_last.pth every epoch
    keep_checkpoints: int = 0  # >0: keep only the newest K epoch checkpoints
    eval_every: int = 5
    score_threshold: float = 0.5  # for precision / recall style metrics
    log_frequency: int = 10  # optimizer steps between TensorBoard scalar points
    log_dir: Optional[str] = None  # default: <output_dir>/tensorboard[/<experiment_name>]
    experiment_name: Optional[str] = None
    log_images: bool = False  # training images with true (green) and predicted (red) boxes
    log_images_frequency: int = 50  # optimizer steps between logged images


@dataclass
class LossConfig:
    cls_loss_coef: float = 2.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    set_cost_class: float = 2.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    no_object_weight: float = 0.1  # softmax classifier: cross-entropy weight of the "no object" class
    box_loss: str = "l1"  # l1 | smooth_l1
    smooth_l1_beta: float = 0.1  # boxes are in 0..1, so the quadratic zone is 10 % of the image
    iou_aware: bool = False  # sigmoid classifier: matched queries learn their box's IoU as the class target
    vfl_alpha: float = 0.75  # --iou_aware (varifocal loss): weight of the unmatched queries' p^gamma term
    one_to_many: int = 1  # k > 1: each box is matched k times: in the hybrid_queries branch when the model has
    # one (the main queries stay one-to-one), else in the proposals and all decoder layers but the last two


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "loss": LossConfig}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    preset: str = "standard"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        cfg.update(d)
        return cfg

    def update(self, overrides: dict) -> "Config":
        """Apply nested ({"train": {"lr": ..}}) or flat ({"lr": ..}) overrides; unknown keys raise."""
        for key, value in overrides.items():
            if key == "preset":
                self.preset = value
            elif key in SECTIONS and isinstance(value, dict):
                for k, v in value.items():
                    self._set(key, k, v)
            else:
                self._set(field_section(key), key, value)
        return self

    def _set(self, section: str, name: str, value: Any) -> None:
        sec = getattr(self, section)
        hints = typing.get_type_hints(type(sec))
        if name not in hints:
            raise KeyError(f"unknown setting '{section}.{name}'")
        setattr(sec, name, coerce(value, hints[name], f"{section}.{name}"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        return cls.from_dict(data)


def coerce(value: Any, annotation, where: str) -> Any:
    """Check and convert a value to its field's type (YAML reads '3e-4' as a string, for one)."""
    if value is None and typing.get_origin(annotation) is typing.Union:
        return None
    if typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    try:
        if annotation is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if annotation is list:
            return list(value) if isinstance(value, (list, tuple)) else [value]
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise TypeError
        return annotation(value)
    except (TypeError, ValueError):
        raise ValueError(f"setting '{where}' expects {annotation.__name__}, got {value!r}") from None


def field_section(name: str) -> str:
    """The section that owns a flat field name."""
    for section, klass in SECTIONS.items():
        if name in {f.name for f in dataclasses.fields(klass)}:
            return section
    raise KeyError(f"unknown setting '{name}'")


# Presets: overrides on top of the defaults. DESIGN.md §1 lists their origin.
PRESETS: dict[str, dict] = {
    "standard": {},
    "lightweight": {
        "dino_model": "facebook/dinov2-small", "decoder_layers": 2, "num_queries": 25,
        "hidden_dim": 128, "dim_feedforward": 512, "box_mlp_layers": 2, "num_points": 2,
        "lora_last_n_blocks": 4, "num_heads": 4,
        # from random weights, RF-DETR's layout: 16-px patches and 2 x 2 attention windows (pretrained
        # weights keep their 14-px patches and full attention)
        "backbone_attention": "auto", "backbone_patch_size": 16,
    },
    "detr-dinov3": {
        "dino_model": "facebook/dinov3-vitl16-pretrain-lvd1689m", "attention": "standard",
        "encoder_layers": 6, "decoder_layers": 6, "num_queries": 100, "hidden_dim": 256,
        "box_refine": False, "backbone_mode": "frozen", "epochs": 300, "checkpoint_every": 50,
        "dim_feedforward": 2048, "dropout": 0.1, "unfreeze_at_epoch": 100, "lr_backbone": 1e-5,
        "multi_scale": True, "rotation_degrees": 5.0,  # its README: flip, colour jitter, rotation
    },
    # DINOv2 fine-tuning with a YOLO comparison: linear heads, original DETR losses (softmax + no-object weight)
    "simple": {
        "classifier": "softmax", "class_mlp_layers": 1, "box_mlp_layers": 1, "cls_loss_coef": 1.0,
        "set_cost_class": 1.0, "no_object_weight": 0.1,
    },
    # ... and its improved model: MLP heads with dropout, focal + smooth-L1 (bbox weight 2.0), and two stages:
    # backbone frozen, lr 1e-3 for 10 epochs; then everything trained at lr 1e-5 for 5 epochs.
    "improved": {
        "class_mlp_layers": 2, "box_mlp_layers": 3, "head_dropout": 0.1, "box_loss": "smooth_l1",
        "bbox_loss_coef": 2.0, "backbone_mode": "frozen", "lr": 1e-3, "epochs": 15, "unfreeze_at_epoch": 10,
        "unfreeze_lr": 1e-5, "lr_backbone": 1e-5, "lr_drop_factor": 1.0,
    },
    # the two-stage encoder-detection model on our flexible encoder (random, or pretrained with
    # `dino_detector.pretrain` and passed as `--dino_model encoder_final.pth`): a 4-level pyramid (stride 8
    # from the convolutional stem, 16, 32, 64), one deformable encoder layer, two-stage query selection, a
    # 128-wide decoder and 100 denoising queries in training. The best CPU recipe of issue 9 (BCCD AP 0.35
    # after 12 CPU minutes, YOLOv8n 0.28) with its batch 8, 384 px and lr 5e-4.
    "two-stage": {
        "dino_model": "flexible-tiny", "num_feature_levels": 4, "backbone_feature_layers": 3,
        "decoder_shared_values": True, "encoder_layers": 1, "two_stage": True, "hidden_dim": 128,
        "dim_feedforward": 512, "dn_queries": 100,
    },
}


def build_config(preset: str = "standard", yaml_file: str | None = None, **overrides) -> Config:
    """Defaults < preset < YAML < keyword overrides (flat field names)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}")
    cfg = Config(preset=preset)
    cfg.update(PRESETS[preset])
    if yaml_file:
        cfg.update(yaml.safe_load(Path(yaml_file).read_text()) or {})
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg
