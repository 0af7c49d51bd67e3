"""dino_detector in the benchmark: its presets from random weights, trained by its own trainer.

Variants (every one from random initialisation, nothing pretrained):
- ``lightweight``: the preset as-is on the DINOv2-S architecture (12 blocks x 384, windowed attention and
  16-px patches, as the preset resolves them for random weights; the whole backbone is trained).
- ``lightweight-lora``: the same preset as it trains on pretrained DINOv2-S weights: 14-px patches, full
  attention, LoRA on the last 4 blocks, the rest frozen (speed only: random weights make the accuracy moot;
  opt-in: measured only when ``--models`` names it).
- ``standard``: the default preset on the DINOv2-S architecture (speed only).
- ``tiny``: the CPU recipe on the ``tiny`` DINOv2 architecture (6 blocks x 192): the standard preset with a
  4-level pyramid from 3 ViT blocks, one deformable encoder layer and two-stage proposals (speed only).
- ``flexible``: our best CPU recipe, the ``two-stage`` preset: the same detector on our flexible encoder
  (``flexible-tiny``: a convolutional stem and 6 blocks x 192) with a 128-wide head and denoising queries in
  training, at the preset's batch 4 and lr 3.5e-4, 384 px, with 50 queries.

``train_step`` and ``inference`` build the model the trainer builds (the detector of the variant's resolved
run specification, BCCD's classes) with its criterion and AdamW groups; ``train_for_budget`` runs
``dino_detector.train`` itself with ``--time_budget_min`` (``train_argv`` is its command line).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from . import BccdData, BudgetRun

BCCD_CATEGORIES = ([1, 2, 3], ["Platelets", "RBC", "WBC"])  # (category ids, names) of BCCD's COCO files
BCCD_CLASSES = len(BCCD_CATEGORIES[0])
# accuracy runs: the budget ends training (epochs is only a ceiling); val AP every few epochs draws the
# AP-vs-time curve. The DINOv2-S variants take 4 images per step (more updates in the budget), the tiny
# ones keep the 8 of their measured recipe (BENCHMARKS.md, issue 3).
_COMMON = {"epochs": 1000, "checkpoint_every": 0}
_SMALL_STEPS = {"batch_size": 4, "image_size": 384, "lr": 2e-4}
# the CPU recipe (BENCHMARKS.md, issue 3): a 4-level pyramid from 3 ViT blocks, one deformable encoder
# layer, two-stage proposals
_CPU_RECIPE = {"batch_size": 8, "image_size": 384, "lr": 5e-4, "num_feature_levels": 4,
               "backbone_feature_layers": 3, "decoder_shared_values": True, "encoder_layers": 1,
               "two_stage": True}
VARIANTS: dict[str, dict] = {
    "lightweight": {"preset": "lightweight", "dinov2_arch": True,
                    "overrides": {**_SMALL_STEPS, "num_queries": 50}, "eval_every": 4},
    # opt-in: the suite must stay under 100 minutes on 2 cores (about 3.5 more minutes with it)
    "lightweight-lora": {"preset": "lightweight", "dinov2_arch": True, "speed_only": True, "opt_in": True,
                         "overrides": {"backbone_mode": "lora", "backbone_attention": "full",
                                       "backbone_patch_size": 0}},
    # speed only by default: its 12-minute accuracy run is a second DINOv2-S-from-scratch run beside
    # lightweight's, and the suite must stay under 100 minutes on 2 cores
    # (remove the flag to add it: about 13 more minutes)
    "standard": {"preset": "standard", "dinov2_arch": True, "speed_only": True,
                 "overrides": {**_SMALL_STEPS, "dino_model": "facebook/dinov2-small"},
                 "eval_every": 4},
    # the tiny DINOv2 architecture with the CPU recipe; speed only by default since `flexible` took its
    # place as the best CPU recipe (remove the flag for its accuracy run: about 13 more minutes)
    "tiny": {"preset": "standard", "dinov2_arch": True, "speed_only": True,
             "overrides": {**_CPU_RECIPE, "dino_model": "tiny"}, "eval_every": 8},
    # the `two-stage` preset: the CPU recipe on our flexible encoder (convolutional stem + 6 ViT blocks x 192,
    # random weights) with a 128-wide head (feed-forward 512), here with 50 queries (BCCD has at most 28
    # boxes per image): 122 GFLOP per training step against 189 with the 256-wide head, 276 steps and AP
    # 0.305 in 12 minutes against 180 and 0.264; and up to 100 denoising queries in training: AP 0.345 after
    # 248 steps against 0.314 after 255 (BENCHMARKS.md, issue 9)
    "flexible": {"preset": "two-stage",
                 "overrides": {"image_size": 384, "num_queries": 50}, "eval_every": 8},
    # the `two-stage-lite` preset (the two-stage recipe on the flexible-lite encoder): 3.5 GFLOP at 512²
    # against 14.3, for CPU deployment (BENCHMARKS.md, issue 24); opt-in, speed only (its accuracy:
    # benchmarks/lite_bccd.sh)
    "flexible-lite": {"preset": "two-stage-lite", "speed_only": True, "opt_in": True,
                      "overrides": {"image_size": 384, "num_queries": 50}},
}


def run_spec(variant: str, **extra):
    """The resolved run specification of ``variant`` with BCCD's classes (what the trainer would build)."""
    from dino_detector.config import build_config
    from dino_detector.spec import resolve_run

    v = VARIANTS[variant]
    return resolve_run(build_config(v["preset"], pretrained=False, **{**v["overrides"], **extra}),
                       classes=BCCD_CATEGORIES)


def _model(variant: str, device: str = "cpu"):
    from dino_detector.models.detector import ObjectDetector

    torch.manual_seed(0)
    spec = run_spec(variant)
    return ObjectDetector(config=spec.model, resize=spec.data).to(device), spec


def _synthetic_targets(batch: int, device: str) -> list[dict]:
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.1, 0.2], [0.5, 0.2, 0.3, 0.1]], device=device)
    return [{"labels": torch.tensor([0, 1, 2], device=device), "boxes": boxes} for _ in range(batch)]


def train_step(variant: str, side: int, batch: int, device: str = "cpu", dtype: str = "fp32") -> Callable[[], None]:
    """One step as the trainer takes it: forward, weighted criterion, backward, AdamW (its lr groups)."""
    from dino_detector.engine.epoch import to_float
    from dino_detector.engine.optim import build_optimizer
    from dino_detector.losses.criterion import build_criterion

    model, spec = _model(variant, device)
    model.train()
    criterion = build_criterion(BCCD_CLASSES, spec.loss, model.softmax)
    t = spec.train
    optimizer = build_optimizer(model, lr=t.lr, backbone_lr=t.lr_backbone, layer_decay=t.layer_decay,
                                weight_decay=t.weight_decay)
    images = torch.rand(batch, 3, side, side, device=device)
    targets = _synthetic_targets(batch, device)
    autocast = torch.autocast(device, torch.bfloat16, enabled=dtype == "bf16")

    def step() -> None:
        with autocast:
            outputs = model(images, targets)
        outputs = to_float(outputs)
        loss = criterion.total(criterion(outputs, targets), outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def inference(variant: str, side: int, device: str = "cpu", dtype: str = "fp32",
              compile: bool = False) -> Callable[[], None]:
    """Batch-1 forward and post-processing to the top-100 boxes, as ``predict`` runs it (LoRA merged;
    ``compile``: as ``predict --compile``, torch.compile with frozen weights)."""
    from dino_detector.engine.inference import prepare_model
    from dino_detector.models.postprocess import postprocess

    model, _ = _model(variant, device)
    model = prepare_model(model, torch.device(device), compile)
    image = torch.rand(1, 3, side, side, device=device)
    sizes = [(side, side)]
    autocast = torch.autocast(device, torch.bfloat16, enabled=dtype == "bf16")

    def run() -> None:
        with torch.inference_mode(), autocast:
            postprocess(model(image), sizes, model.category_ids, softmax=model.softmax)
    return run


def parameters(variant: str) -> int:
    return sum(p.numel() for p in _model(variant)[0].parameters())


def train_argv(variant: str, data: BccdData, minutes: float, out_dir: Path, seed: int = 42,
               extra: dict | None = None) -> list[str]:
    """The ``dino_detector.train`` command line of ``variant``'s accuracy run: its preset, its overrides and
    the budget settings, on BCCD train, validated on val; ``extra``: settings over all of those."""
    v = VARIANTS[variant]
    settings = {**_COMMON, **v["overrides"], "eval_every": v.get("eval_every", 4), "seed": seed,
                "time_budget_min": minutes, "device": "cpu", "output_dir": str(out_dir), **(extra or {})}
    argv = ["--preset", v["preset"], "--no_pretrained",
            "--train_images", str(data.images), "--train_annotations", str(data.train_json),
            "--val_images", str(data.images), "--val_annotations", str(data.val_json)]
    for key, value in settings.items():
        if isinstance(value, bool):
            argv.append(f"--{key}" if value else f"--no_{key}")
        else:
            argv += [f"--{key}", str(value)]
    return argv


def train_for_budget(variant: str, data: BccdData, minutes: float, out_dir: Path, seed: int = 42,
                     extra: dict | None = None) -> BudgetRun:
    """``python -m dino_detector.train`` on BCCD train for ``minutes`` of wall-clock, evaluated on val."""
    from dino_detector.train import main as train_main

    argv = train_argv(variant, data, minutes, out_dir, seed, extra)
    started = time.time()
    if train_main(argv) != 0:
        raise RuntimeError(f"dino_detector.train failed for {variant}: {' '.join(argv)}")
    out = Path(out_dir)
    # with --ema the averaged weights are the run's result (as YOLO's are); the raw weights' AP goes in the notes
    ema = out / "val_predictions_ema_final.json"
    results = json.loads((ema if ema.exists() else out / "val_predictions_final.json").read_text())
    raw = (f"; raw weights AP {json.loads((out / 'val_metrics_final.json').read_text())['AP']:.4f}"
           if ema.exists() else "")
    curve = []
    for path in sorted(out.glob("val_metrics_*.json")):
        metrics = json.loads(path.read_text())
        if "train_seconds" in metrics:
            curve.append((metrics["train_seconds"], metrics["AP"], "dino_detector"))
    steps, epochs = _progress(out)
    return BudgetRun(results=results, curve=sorted(curve), steps=steps,
                     notes=f"{' '.join(argv)}; {epochs} epochs, {time.time() - started:.0f} s with evaluation{raw}")


def _progress(out: Path) -> tuple[int, int]:
    """(optimizer steps, epochs) the run trained, from its final validation record."""
    final = out / "val_metrics_final.json"
    record = json.loads(final.read_text()) if final.exists() else {}
    return int(record.get("step", 0)), int(record.get("epoch", 0))
