"""Presets: overrides on top of the defaults, by flat setting name. The README's preset table lists their
origin; ARCHITECTURE.md says where they enter a run (defaults < preset < YAML < flags)."""
from __future__ import annotations

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
    # `dino_detector.pretrain` and passed as `--dino_model encoder_final.pth`): a 4-level pyramid (strides 8
    # upsampled, 16, 32, 64), one deformable encoder layer, two-stage query selection, a
    # 128-wide decoder and 100 denoising queries in training. The best CPU recipe of issue 9 (BCCD AP 0.35
    # after 12 CPU minutes, YOLOv8n 0.28), at 384 px. Soft-NMS (sigma 0.5) on its
    # detections: after minutes of training its queries still return near-copies of one box (issue 25).
    # DEIM's matchability-aware loss (scores learn IoU^1.5) and, from epoch 11 to the last 15 % of training,
    # YOLO-style mosaic and scale jitter: the recipe keeps learning on long budgets instead of plateauing
    # (BCCD 24 CPU minutes), while budgets of under ~10 epochs, which augmentation only slows, train on plain
    # images (BENCHMARKS.md, issue 25). Batch 4 at lr 3.5e-4 (sqrt-scaled from batch 8's 5e-4): twice the
    # updates in the same minutes, BCCD AP 0.565 after 12 CPU minutes against 0.540 (issue 25); on GPUs,
    # raise both with the memory at hand.
    "two-stage": {
        "dino_model": "flexible-tiny", "num_feature_levels": 4, "backbone_feature_layers": 3,
        "decoder_shared_values": True, "encoder_layers": 1, "two_stage": True, "hidden_dim": 128,
        "dim_feedforward": 512, "dn_queries": 100, "soft_nms_sigma": 0.5,
        "iou_aware": True, "iou_aware_loss": "mal",
        "mosaic_prob": 0.5, "scale_jitter": 0.25, "strong_aug_start_epoch": 10, "strong_aug_off_fraction": 0.15,
        "batch_size": 4, "lr": 3.5e-4,
    },
}
# the two-stage recipe on the flexible-lite encoder, for CPU deployment: its blocks attend on the stride-32
# grid (a quarter of the tokens) behind a patchify stem, the stem's stride-8 map is the finest level and
# one feature layer feeds the pyramid: 3.5 GFLOP at 512² against 14.3, about half the OpenVINO latency;
# BCCD AP after 12 CPU minutes within a seed's spread of two-stage's (BENCHMARKS.md, issue 24)
PRESETS["two-stage-lite"] = {**PRESETS["two-stage"], "dino_model": "flexible-lite", "fine_level": "stem",
                             "backbone_feature_layers": 1}
