"""RF-DETR (Roboflow's ``rfdetr`` package) as a peer: ``RFDETRSmall`` trained from scratch on CPU.

What is measured (interface in ``benchmarks/peers/__init__.py``):

- ``train_step``: rfdetr's own LWDETR model (windowed DINOv2-S backbone, patch 16, random init), its own
  ``SetCriterion`` (Hungarian matcher, IA-BCE class loss, L1 + GIoU, aux + two-stage encoder losses, 13 query
  groups as in training) weighted by its weight dict, AdamW with its lr / lr_encoder / layer-decay parameter
  groups and its 0.1 gradient-norm clip; one full step on a fixed synthetic batch.
- ``inference``: the same model in eval mode (one query group, 300 queries) + its ``PostProcess`` (top-300 over
  queries x classes), batch 1.
- ``train_for_budget``: ``RFDETRSmall.train()`` -- its own Lightning loop and recipe (lr 1e-4 / 1.5e-4,
  multi-scale 352..672 px, its augmentation, EMA, per-epoch COCO validation on BCCD val) -- cut off by Lightning's
  ``max_time`` after ``minutes`` (validation passes count against the clock, as they do for ours); then
  ``predict`` on the 87 val images with the final EMA weights (rfdetr loads them into the model at train end).

Needs ``rfdetr[train]`` (pytorch-lightning, torchmetrics, the COCO eval backends). Everything runs offline:
``pretrain_weights=None`` skips the weight download and Small's patch-16 backbone never asks the hub for
DINOv2 weights (only patch-14 variants like Base do).
"""
from __future__ import annotations

import json
import os
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing below should reach a hub
# torch threads: the core count (2 here), or BENCH_THREADS as benchmarks.measure reads it
THREADS = int(os.environ.get("BENCH_THREADS") or os.cpu_count() or 2)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import torch  # noqa: E402

from . import BccdData, BudgetRun  # noqa: E402

NUM_CLASSES = 3  # BCCD: rfdetr maps category ids 1..3 (sorted) to labels 0..2; its head has num_classes + 1
VARIANTS = {"rfdetr-small": {"config": "RFDETRSmallConfig", "model": "RFDETRSmall", "side": 512, "batch": 4}}


def _threads() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)  # the same random init every time


def _configs(variant: str, side: int, device: str = "cpu"):
    """rfdetr's ModelConfig / TrainConfig with its defaults, random init, 3 classes, ``side`` px."""
    import rfdetr.config as rc

    mc = getattr(rc, VARIANTS[variant]["config"])(
        pretrain_weights=None, num_classes=NUM_CLASSES, device=device, resolution=side,
        positional_encoding_size=side // 16)  # Small derives PE = resolution // patch_size (32 at 512)
    tc = rc.TrainConfig(dataset_dir=".", output_dir=".")
    return mc, tc


def _synthetic(batch: int, side: int, device: str = "cpu", boxes: int = 3):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, side, side, generator=g)  # stands in for ImageNet-normalised pixels
    targets = [{"labels": torch.randint(0, NUM_CLASSES, (boxes,), generator=g),
                "boxes": torch.cat([torch.rand(boxes, 2, generator=g) * 0.6 + 0.2,
                                    torch.rand(boxes, 2, generator=g) * 0.2 + 0.05], 1)}  # cxcywh, normalised
               for _ in range(batch)]
    return images.to(device), [{k: v.to(device) for k, v in t.items()} for t in targets]


def train_step(variant: str, side: int, batch: int, device: str = "cpu") -> Callable[[], None]:
    from rfdetr._namespace import _namespace_from_configs
    from rfdetr.models.lwdetr import build_criterion_from_config, build_model_from_config
    from rfdetr.training.param_groups import get_param_dict

    _threads()
    mc, tc = _configs(variant, side, device)
    model = build_model_from_config(mc, tc).to(device)  # what RFDETRModelModule builds
    criterion, _ = build_criterion_from_config(mc, tc)
    criterion.to(device)
    weights = criterion.weight_dict
    # RFDETRModelModule.configure_optimizers: layer-decayed groups, lr / lr_encoder, weight decay (not fused on CPU)
    optimizer = torch.optim.AdamW(get_param_dict(_namespace_from_configs(mc, tc), model), lr=tc.lr,
                                  weight_decay=tc.weight_decay)
    model.train()
    images, targets = _synthetic(batch, side, device)

    def step() -> None:
        losses = criterion(model(images, targets), targets)
        loss = torch.stack([losses[k] * weights[k] for k in losses if k in weights]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_max_norm)  # Lightning's gradient_clip_val
        optimizer.step()
        step.loss = float(loss)

    return step


def inference(variant: str, side: int, device: str = "cpu", compile: bool = False) -> Callable[[], None]:
    """Batch-1 forward + rfdetr's post-processing; ``compile``: the path of rfdetr's own
    ``RFDETR.inference()`` at its defaults (``export()``, then a TorchScript trace of the exported model)."""
    from rfdetr.models.lwdetr import build_criterion_from_config, build_model_from_config

    _threads()
    mc, tc = _configs(variant, side, device)
    model = build_model_from_config(mc, tc).to(device).eval()
    _, postprocess = build_criterion_from_config(mc, tc)
    image = torch.randn(1, 3, side, side, device=device)
    sizes = torch.tensor([[side, side]], device=device)
    if compile:
        model.export()
        traced = torch.jit.trace(model, image)

        def forward(x):  # the exported graph returns (boxes, logits), as RFDETR.predict unpacks it
            boxes, logits = traced(x)[:2]
            return {"pred_logits": logits, "pred_boxes": boxes}
    else:
        forward = model

    def run() -> None:
        with torch.inference_mode():
            run.out = postprocess(forward(image), target_sizes=sizes)

    run.model = model
    return run


# ------------------------------------------------------------------ budgeted training on BCCD
def _roboflow_folder(data: BccdData, root: Path) -> Path:
    """train/ valid/ test/ with ``_annotations.coco.json`` beside symlinked JPEGs (test = valid, never used)."""
    for split, src in (("train", data.train_json), ("valid", data.val_json), ("test", data.val_json)):
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        coco = json.loads(Path(src).read_text())
        for im in coco["images"]:
            link = d / im["file_name"]
            if not link.exists():
                link.symlink_to(Path(data.images).resolve() / im["file_name"])
        (d / "_annotations.coco.json").write_text(json.dumps(coco))
    return root


def _patch_build_trainer(minutes: float, curve: list, counters: dict):
    """rfdetr has no wall-clock limit: add Lightning's ``max_time`` to the Trainer it builds, record the val AP it
    logs after every validation, and drop its checkpoint writers (seconds per epoch, nothing we read back)."""
    import rfdetr.training as rt
    from pytorch_lightning import Callback
    from pytorch_lightning.callbacks import ModelCheckpoint

    class Curve(Callback):
        def on_train_start(self, trainer, module):
            counters["t0"] = time.perf_counter()
            counters["threads"] = torch.get_num_threads()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            counters["images"] += len(batch[1])
            counters["steps"] = trainer.global_step  # optimizer steps (grad_accum_steps = 1)

        def on_validation_end(self, trainer, module):
            ap = trainer.callback_metrics.get("val/mAP_50_95")  # the EMA model's AP while EMA is on
            if "t0" in counters and ap is not None:
                curve.append((time.perf_counter() - counters["t0"], float(ap), "rfdetr"))

    original = rt.build_trainer

    def build_trainer(train_config, model_config, **kwargs):
        trainer = original(train_config, model_config, max_time={"seconds": minutes * 60}, **kwargs)
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)] + [Curve()]
        return trainer

    rt.build_trainer = build_trainer
    return lambda: setattr(rt, "build_trainer", original)


def train_for_budget(variant: str, data: BccdData, minutes: float, out_dir, seed: int) -> BudgetRun:
    import rfdetr
    from PIL import Image

    _threads()
    torch.manual_seed(seed)  # the model's random init (its own seeding happens later, in on_fit_start)
    out_dir = Path(out_dir)
    dataset = _roboflow_folder(data, out_dir / "rfdetr_dataset")
    v = VARIANTS[variant]
    detector = getattr(rfdetr, v["model"])(pretrain_weights=None, num_classes=NUM_CLASSES, device="cpu")
    curve: list = []
    counters = {"images": 0, "steps": 0}
    restore = _patch_build_trainer(minutes, curve, counters)
    try:
        # its defaults otherwise (epochs=100 is never reached on CPU; the 100-epoch lr drop never fires)
        detector.train(dataset_dir=str(dataset), output_dir=str(out_dir / "rfdetr_run"), batch_size=v["batch"],
                       resolution=v["side"], device="cpu", seed=seed, tensorboard=False, early_stopping=False,
                       run_test=False, progress_bar=None)
    finally:
        restore()

    # category ids: rfdetr's labels index the sorted train categories
    train_cats = sorted(c["id"] for c in json.loads(Path(data.train_json).read_text())["categories"])
    val = json.loads(Path(data.val_json).read_text())
    results = []
    for im in val["images"]:
        image = Image.open(Path(data.images) / im["file_name"]).convert("RGB")
        det = detector.predict(image, threshold=0.0, include_source_image=False)  # all 300 selected boxes
        keep = [i for i in det.confidence.argsort()[::-1] if 0 <= det.class_id[i] < NUM_CLASSES][:100]
        for i in keep:  # top-100 by score, minus the extra logit (never a target, only ever pushed down)
            x0, y0, x1, y1 = (float(c) for c in det.xyxy[i])
            results.append({"image_id": im["id"], "category_id": train_cats[int(det.class_id[i])],
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(float(det.confidence[i]), 5)})
    return BudgetRun(results=results, curve=curve, steps=counters["steps"], images_seen=counters["images"],
                     notes=f"rfdetr {version('rfdetr')} {variant} from scratch, {v['side']}px multi-scale, "
                           f"Lightning max_time={minutes} min (validation included), final EMA weights, "
                           f"{counters.get('threads')} torch threads")
