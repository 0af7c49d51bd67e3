"""The settings of a detection run, in four sections. Every field name is unique across the sections, so a
flag ``--lr`` or a flat YAML key ``lr:`` names exactly one field.

The comment after a field is its description: ``--help`` prints it (config/describe.py reads it from this
file), and a test fails on a field without one. ``Literal`` types are choice fields: any other value stops
the command line at once. Fields marked ``RESOLVED`` are not flags: the resolved run specification
(spec.py) fills them in, ``config.yaml`` records them, and a YAML file that sets them is checked against
what the run resolves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .settings import RESOLVED, Settings


@dataclass(frozen=True)
class ModelConfig(Settings):
    """Backbone, transformer, queries and prediction heads."""
    dino_model: str = "facebook/dinov2-base"  # backbone: hub id, local model folder, tiny, flexible-tiny|small|base|lite, or a pretrain encoder file
    pretrained: bool = True  # load the backbone's pretrained weights (--no_pretrained: its architecture, random weights)
    dino_weights: str = ""  # official DINOv2 checkpoint file (dinov2_vits14_pretrain.pth ...) for --dino_model, no hub needed
    backbone_weights: str = field(default="auto", metadata=RESOLVED)  # where the backbone weights come from: random, hub, folder, official or encoder
    backbone_arch: str = field(default="", metadata=RESOLVED)  # an encoder file's architecture, so that a checkpoint rebuilds without the file
    backbone_mode: Literal["auto", "frozen", "lora", "full"] = "auto"  # how the backbone trains; auto: lora for published weights, else full
    lora_rank: int = 8  # rank of the LoRA adapters (backbone_mode lora)
    lora_alpha: int = 16  # LoRA scale numerator: adapter updates are scaled by alpha / rank
    lora_dropout: float = 0.0  # dropout on the LoRA adapters' inputs
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # backbone linear layers that get adapters
    lora_last_n_blocks: int = 0  # adapters only in the last n backbone blocks; 0: in every block
    backbone_feature_layers: int = 1  # n > 1: outputs of n evenly spaced ViT blocks, concatenated, feed the detector
    backbone_attention: Literal["full", "windowed", "auto"] = "full"  # ViT self-attention; auto: windowed for random DINOv2 weights
    backbone_windows: int = 2  # windowed: the patch grid is cut into n x n tiles that attend within themselves
    backbone_global_blocks: int = 4  # windowed: evenly spaced blocks that still attend over the whole image
    backbone_patch_size: int = 0  # >0: patch size of a randomly initialised ViT; 0: the architecture's own
    num_classes: int = 0  # number of object classes; 0: from the training annotations (a given value must match them)
    class_names: list[str] = field(default_factory=list, metadata=RESOLVED)  # class names in label order, from the training annotations
    category_ids: list[int] = field(default_factory=list, metadata=RESOLVED)  # the dataset's category id of each label, from the training annotations
    hidden_dim: int = 256  # width of the transformer encoder and decoder
    num_queries: int = 100  # object queries: the most objects one image can yield
    num_feature_levels: int = 1  # 1: the ViT map alone; 2-4 add a simple feature pyramid (x1/2, x2, x1/4)
    encoder_layers: int = 1  # transformer encoder layers over the backbone features
    # the x2 (stride-8) pyramid level: the patch map upsampled (ViTDet), or a flexible encoder's own stem map
    fine_level: Literal["upsample", "stem"] = "upsample"
    encode_upsampled_level: bool = False  # encode the x2 pyramid level too (costly); off: it is only attended to
    decoder_layers: int = 6  # transformer decoder layers (each refines the boxes)
    num_heads: int = 8  # attention heads in the encoder and decoder
    dim_feedforward: int = 1024  # hidden width of the transformer feed-forward blocks
    dropout: float = 0.0  # dropout inside the transformer layers
    attention: Literal["deformable", "standard"] = "deformable"  # decoder / encoder attention over the feature maps
    num_points: int = 4  # deformable attention: sampling points per head and feature level
    decoder_shared_values: bool = False  # deformable decoder layers share one value projection of the memory
    box_refine: bool = True  # every decoder layer refines the previous layer's boxes (iterative refinement)
    two_stage: bool = False  # encoder tokens propose boxes; the top num_queries become the decoder's references
    hybrid_queries: int = 0  # training only: a second query branch (H-DETR) matched one_to_many times per box
    dn_queries: int = 0  # training only: up to this many denoising queries (DN-DETR / DINO) from noised boxes
    dn_box_noise: float = 1.0  # denoising positives' corners move by up to this x half the box size, negatives' 1-2 x
    dn_label_noise: float = 0.5  # a denoising query's class is replaced by a random one with half this chance
    aux_loss: bool = True  # losses on every decoder layer, not only the last
    classifier: Literal["sigmoid", "softmax"] = "sigmoid"  # sigmoid: per-class scores, focal loss; softmax: + no-object class, CE
    class_mlp_layers: int = 1  # layers of the class head; 1: linear
    box_mlp_layers: int = 3  # layers of the box head MLP
    head_dropout: float = 0.0  # dropout between the layers of the class and box heads
    soft_nms_sigma: float = 0.0  # >0: near-duplicate detections' scores times exp(-IoU^2 / sigma) (Gaussian Soft-NMS); 0: off


@dataclass(frozen=True)
class DataConfig(Settings):
    """Datasets, formats, image sizes and augmentation."""
    data: Optional[str] = None  # a dataset folder (COCO root, Roboflow COCO / YOLO export, data.yaml, VOC, LabelImg): layout detected
    train_images: Optional[str] = None  # folder of the training images (COCO JSON); VOC / YOLO folders name their own
    train_annotations: Optional[str] = None  # training annotations: COCO JSON, VOC folder, YOLO folder / data.yaml, HF dataset
    val_images: Optional[str] = None  # folder of the validation images
    val_annotations: Optional[str] = None  # validation annotations, in any format of --train_annotations
    test_images: Optional[str] = None  # folder of the test images, evaluated after training (test_metrics_final.json)
    test_annotations: Optional[str] = None  # test annotations, in any format of --train_annotations
    proposals: bool = False  # --train_images are unlabelled: train class-agnostically on unsupervised box proposals (detection pretraining); then --init_from <run>/dino_detector_final.pth or --dino_model <run>
    proposals_per_image: int = 40  # --proposals: the boxes kept per image, highest colour contrast (or score) first
    proposals_from: Optional[str] = None  # --proposals: boxes from this trained detector (a run folder, e.g. an earlier --proposals run, or a checkpoint) instead of colour segments: a self-training round
    proposals_min_score: float = 0.3  # --proposals_from: the detector's boxes scoring at least this are kept
    val_fraction: float = 0.2  # without a validation split: this share of the training images validates (by --seed); 0: train on all, no validation
    testdev_images: Optional[str] = None  # unannotated images predicted after training (testdev_predictions_final.json)
    download_train_data: bool = False  # fetch COCO 2017 train into data_dir and train on it (unless paths are given)
    download_val_data: bool = False  # fetch COCO 2017 val into data_dir and validate on it (unless paths are given)
    download_test_data: bool = False  # fetch COCO 2017 test images into data_dir and predict them after training
    data_dir: str = "data/coco"  # where the --download_* data goes
    download_base_url: str = "http://images.cocodataset.org"  # mirror of images.cocodataset.org for the downloads
    data_format: Literal["auto", "coco", "voc", "yolo", "hf"] = "auto"  # annotation format; auto: told apart by the path
    hf_train_split: str = "train"  # --data_format hf: split of --train_annotations, slicing allowed: train[:5000]
    hf_val_split: str = "validation"  # --data_format hf: split of --val_annotations
    image_size: int = 0  # >0: the longer image side is resized to this, aspect kept (overrides min / max size)
    min_size: int = 800  # shorter image side (DETR recipe) when image_size is 0
    max_size: int = 1333  # cap on the longer side when image_size is 0
    flip: bool = True  # random horizontal flips (--no_flip where mirroring changes the meaning: text, left / right)
    hflip_prob: float = 0.5  # probability of a horizontal flip
    color_jitter: float = 0.2  # brightness / contrast / saturation jitter strength; 0 disables it
    multi_scale: bool = False  # training sizes 60-100 % of the evaluation size (DETR: shorter side 480-800)
    crop_prob: float = 0.0  # probability of a random crop before resizing
    crop_min_fraction: float = 0.5  # smallest crop side, as a fraction of the image side
    rotation_degrees: float = 0.0  # random rotation in [-d, d]; boxes re-fitted around the rotated corners
    scale_jitter: float = 0.0  # j > 0: training sizes x U[1 - j, 1 + j] around the evaluation size (not with multi_scale)
    mosaic_prob: float = 0.0  # probability that a training item is a mosaic of 4 images (YOLO / DEIM), boxes carried
    mosaic_window: float = 0.5  # side of the window cut from the 2x canvas, as a fraction of it: 0.5 keeps object sizes and counts (YOLO), 1 halves sizes and packs 4 images' objects (DEIM)
    strong_aug_off_fraction: float = 0.0  # last share of training (epochs or time budget) without mosaic, crop, rotation, scale changes
    strong_aug_start_epoch: int = 0  # epochs (from the start) without mosaic, crop, rotation, scale changes: a model learns the plain images first; a run that ends sooner never uses them
    num_workers: int = -1  # data-loading processes; -1: 0 on small CPU-only machines, else up to 8
    debug_samples: int = 32  # --debug: train (and validate) on this many training images
    use_coco_mini: bool = False  # a deterministic training subset (and a validation subset a fifth its size)
    coco_mini_size: Literal["1k", "5k", "10k"] = "1k"  # size of the COCO-mini training subset
    coco_mini_seed: int = 42  # seed of the COCO-mini draw
    coco_mini_indices_file: Optional[str] = None  # reuse the COCO-mini subset saved by an earlier run
    test_mini: bool = False  # predict only the first test_mini_size --testdev_images
    test_mini_size: int = 30  # images predicted with --test_mini


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Optimisation, schedule, checkpoints, evaluation and logging."""
    output_dir: str = "outputs"  # folder for config.yaml, checkpoints, metrics and predictions
    checkpoint: Optional[str] = None  # resume from this checkpoint (or evaluate it with --only_evaluate)
    init_from: Optional[str] = None  # fine-tune a trained detector (checkpoint, save_pretrained or run folder): matching tensors, fresh run
    weights: Literal["auto", "raw", "ema"] = "auto"  # --only_evaluate / --init_from: which weights; auto: EMA if kept
    skip_checkpoint_load: bool = False  # ignore --checkpoint and start fresh
    only_evaluate: bool = False  # evaluate --checkpoint on the validation set, no training
    debug: bool = False  # overfit check: debug_samples images for debug_epochs at debug_lr, validated on themselves
    debug_lr: float = 5e-4  # --debug: the learning rate
    debug_epochs: int = 100  # --debug: the number of epochs
    epochs: int = 50  # training epochs (a time budget may end training sooner)
    batch_size: int = 8  # images per step and process
    lr: float = 1e-4  # learning rate of the detector head (and of a randomly initialised backbone)
    lr_backbone: float = 0.0  # backbone / LoRA lr; 0: lr for random backbone weights, lr x 0.1 for pretrained ones
    weight_decay: float = 1e-4  # AdamW weight decay
    grad_clip: float = 0.1  # gradient norm clipping; 0 disables it
    max_bad_steps: int = 5  # steps with a NaN / inf loss or gradient are skipped (counted, warned); this many in a row stop the run
    unfreeze_at_epoch: int = 0  # >0: backbone frozen for this many epochs, then trained with lr_backbone
    unfreeze_lr: float = 0.0  # head lr after unfreezing (staged fine-tuning); 0: lr
    lr_drop_epoch: int = 0  # step schedule: first epoch at the dropped lr; 0: after lr_drop_fraction of the epochs
    lr_drop_fraction: float = 0.67  # step schedule: drop after this fraction of the epochs or of the time budget
    lr_drop_factor: float = 0.1  # step schedule: the lr is multiplied by this at the drop
    lr_schedule: Literal["step", "cosine"] = "step"  # step: drop by lr_drop_factor; cosine: down to lr x lr_min_factor
    lr_min_factor: float = 0.01  # cosine schedule: the final lr as a fraction of the initial one
    warmup_steps: int = 0  # linear lr warm-up over this many optimizer steps
    layer_decay: float = 1.0  # <1: layer-wise lr decay over the blocks of a trained backbone
    grad_accum_steps: int = 1  # optimizer step every N batches; equals an N x larger batch
    seed: int = 42  # seed of every random source (processes add their rank)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where to train; auto: CUDA when available
    amp: bool = False  # autocast: bf16 (CUDA, or CPUs with bf16 units) or fp16 with a gradient scaler (CUDA)
    amp_dtype: Literal["bf16", "fp16"] = "bf16"  # autocast dtype of --amp
    ema: bool = False  # exponential moving average of the weights, evaluated and saved beside them
    ema_decay: float = 0.9998  # --ema: decay per optimizer step
    find_unused_parameters: bool = False  # DDP: only for models with parameters a step may not use
    time_budget_min: float = 0.0  # >0: stop training after this many minutes, then evaluate and save final
    checkpoint_every: int = 10  # dino_detector_epoch_N.pth every N epochs (dino_detector_last.pth every epoch)
    keep_checkpoints: int = 0  # >0: keep only the newest K epoch checkpoints
    eval_every: int = 5  # validate every N epochs (and after the last); 0: only after the last
    best_metric: Literal["AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "f1"] = "AP"  # picks dino_detector_best.pth
    patience: int = 0  # >0: stop after this many evaluations without a better best_metric (early stopping)
    score_threshold: float = 0.5  # score cut-off of the precision / recall / F1 style metrics
    log_frequency: int = 10  # optimizer steps between TensorBoard scalar points
    log_dir: Optional[str] = None  # TensorBoard folder; default: <output_dir>/tensorboard[/<experiment_name>]
    experiment_name: Optional[str] = None  # sub-folder of log_dir for this run
    log_images: bool = False  # log training images with true (green) and predicted (red) boxes
    log_images_frequency: int = 50  # optimizer steps between logged images


@dataclass(frozen=True)
class LossConfig(Settings):
    """Losses and Hungarian matching costs."""
    cls_loss_coef: float = 2.0  # weight of the classification loss
    bbox_loss_coef: float = 5.0  # weight of the L1 / smooth-L1 box loss
    giou_loss_coef: float = 2.0  # weight of the GIoU box loss
    set_cost_class: float = 2.0  # Hungarian matching: weight of the class cost
    set_cost_bbox: float = 5.0  # Hungarian matching: weight of the L1 box cost
    set_cost_giou: float = 2.0  # Hungarian matching: weight of the GIoU cost
    focal_alpha: float = 0.25  # focal loss: weight of the positive class
    focal_gamma: float = 2.0  # focal loss: focusing exponent
    no_object_weight: float = 0.1  # softmax classifier: cross-entropy weight of the "no object" class
    box_loss: Literal["l1", "smooth_l1"] = "l1"  # regression loss on matched boxes
    smooth_l1_beta: float = 0.1  # smooth-L1 quadratic zone (boxes are in 0..1: 10 % of the image)
    iou_aware: bool = False  # sigmoid classifier: matched queries learn their box's IoU as the class target
    vfl_alpha: float = 0.75  # --iou_aware (varifocal loss): weight of the unmatched queries' p^gamma term
    iou_aware_loss: Literal["varifocal", "mal"] = "varifocal"  # --iou_aware: varifocal, or DEIM's matchability-aware loss (target IoU^mal_gamma, positives weighted 1)
    mal_gamma: float = 1.5  # --iou_aware_loss mal: exponent of the IoU target and of the unmatched queries' p^gamma weight
    # (the main queries stay one-to-one when the model has a hybrid branch; without one, the last two decoder
    # layers stay one-to-one and learn to keep one box per object)
    one_to_many: int = 1  # k > 1: each box is matched k times, in the hybrid_queries branch if any, else in early layers
