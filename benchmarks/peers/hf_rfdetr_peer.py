"""RF-DETR as ported to Hugging Face transformers (``RfDetrForObjectDetection``), trained from scratch on CPU.

What is measured (interface in ``benchmarks/peers/__init__.py``):

- the model is ``RfDetrForObjectDetection(RfDetrConfig(num_labels=3))``: the default config is RF-DETR Base
  (windowed DINOv2-S/14, 4 x 4 windows, 3 decoder layers, 300 queries x 13 groups in training), randomly
  initialised. Its input side must be a multiple of patch 14 x 4 windows = 56; the default backbone
  ``image_size`` 518 is not, so we use 504 (9 x 56, the nearest below 518 and the nearest to the other
  peers' 512). A ``side`` that is not a multiple of 56 is rounded to the nearest one (512 -> 504).
- ``train_step``: ``model(pixel_values, labels=[{"class_labels", "boxes" (cxcywh, normalised)}]).loss`` (its own
  LW-DETR loss: Hungarian matcher, IA-BCE, L1 + GIoU, aux + encoder losses), AdamW lr 1e-4, weight decay 1e-4,
  gradient-norm clip 1.0 (the transformers ``Trainer`` default); one step.
- ``inference``: eval-mode forward + ``RfDetrImageProcessor.post_process_object_detection`` (sigmoid, top-k over
  queries x classes), batch 1.
- ``train_for_budget``: transformers has no detection training loop besides ``Trainer``, so a plain loop with the
  same settings: batch 4, images and boxes prepared by ``RfDetrImageProcessor`` at 504 x 504, random horizontal
  flip, constant lr (a schedule needs a step count the budget does not give), stopped after ``minutes`` of
  wall clock. Then top-100 detections per val image; the curve is one point scored at the end (source "final").
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import random
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random init only; nothing below should reach the hub
# torch threads: the core count (2 here), or BENCH_THREADS as benchmarks.measure reads it
THREADS = int(os.environ.get("BENCH_THREADS") or os.cpu_count() or 2)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import torch  # noqa: E402

from . import BccdData, BudgetRun  # noqa: E402

NUM_CLASSES = 3
MULTIPLE = 56  # patch 14 x 4 windows
VARIANTS = {"hf-rfdetr": {"side": 504, "batch": 4, "lr": 1e-4, "weight_decay": 1e-4, "max_grad_norm": 1.0}}


def _side(side: int) -> int:
    return max(MULTIPLE, round(side / MULTIPLE) * MULTIPLE)


def _model(seed: int = 0):
    from transformers import RfDetrConfig, RfDetrForObjectDetection

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    return RfDetrForObjectDetection(RfDetrConfig(num_labels=NUM_CLASSES))


def _optimizer(model, v: dict):
    return torch.optim.AdamW(model.parameters(), lr=v["lr"], weight_decay=v["weight_decay"])


def train_step(variant: str, side: int, batch: int, device: str = "cpu") -> Callable[[], None]:
    v, side = VARIANTS[variant], _side(side)
    model = _model().to(device).train()
    optimizer = _optimizer(model, v)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, side, side, generator=g)
    labels = [{"class_labels": torch.randint(0, NUM_CLASSES, (3,), generator=g),
               "boxes": torch.cat([torch.rand(3, 2, generator=g) * 0.6 + 0.2,
                                   torch.rand(3, 2, generator=g) * 0.2 + 0.05], 1)} for _ in range(batch)]
    pixels, labels = pixels.to(device), [{k: x.to(device) for k, x in t.items()} for t in labels]

    def step() -> None:
        loss = model(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), v["max_grad_norm"])
        optimizer.step()
        step.loss = float(loss.detach())

    return step


def inference(variant: str, side: int, device: str = "cpu") -> Callable[[], None]:
    from transformers import RfDetrImageProcessor

    side = _side(side)
    model = _model().to(device).eval()
    processor = RfDetrImageProcessor()
    pixels = torch.randn(1, 3, side, side, device=device)

    def run() -> None:
        with torch.inference_mode():
            run.out = processor.post_process_object_detection(model(pixel_values=pixels), threshold=0.0,
                                                              target_sizes=[(side, side)], top_k=100)

    return run


# ------------------------------------------------------------------ budgeted training on BCCD
def _load(data: BccdData, json_path: Path):
    """(PIL image, COCO annotations with category ids turned into 0-based labels, image record) per image."""
    from PIL import Image

    coco = json.loads(Path(json_path).read_text())
    label = {c: i for i, c in enumerate(sorted(c["id"] for c in coco["categories"]))}
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append({**a, "category_id": label[a["category_id"]]})
    return [(Image.open(Path(data.images) / im["file_name"]).convert("RGB"), anns.get(im["id"], []), im)
            for im in coco["images"]], sorted(label)


def _flip(image, anns):
    from PIL import Image

    w = image.width
    flipped = [{**a, "bbox": [w - a["bbox"][0] - a["bbox"][2], *a["bbox"][1:]]} for a in anns]
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flipped


def _score(gt_json: Path, results: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return float(ev.stats[0])


def train_for_budget(variant: str, data: BccdData, minutes: float, out_dir, seed: int) -> BudgetRun:
    from transformers import RfDetrImageProcessor

    v = VARIANTS[variant]
    side = v["side"]
    random.seed(seed)
    model = _model(seed).train()
    optimizer = _optimizer(model, v)
    # square resize like the RF-DETR recipe (boxes stay normalised, so no padding or mask is needed)
    processor = RfDetrImageProcessor(size={"height": side, "width": side}, do_pad=False)
    train, cat_ids = _load(data, data.train_json)

    steps = images_seen = 0
    start = time.perf_counter()
    deadline = start + minutes * 60
    while time.perf_counter() < deadline:
        order = list(range(len(train)))
        random.shuffle(order)
        for i in range(0, len(order) - v["batch"] + 1, v["batch"]):  # drop the last partial batch
            images, targets = [], []
            for j in order[i:i + v["batch"]]:
                image, anns, im = train[j]
                if random.random() < 0.5:
                    image, anns = _flip(image, anns)
                images.append(image)
                targets.append({"image_id": im["id"], "annotations": anns})
            batch = processor(images=images, annotations=targets, return_tensors="pt")
            loss = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), v["max_grad_norm"])
            optimizer.step()
            steps += 1
            images_seen += len(images)
            if time.perf_counter() >= deadline:
                break
    trained_s = time.perf_counter() - start

    model.eval()
    val, _ = _load(data, data.val_json)
    results = []
    with torch.inference_mode():
        for image, _, im in val:
            pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
            det = processor.post_process_object_detection(model(pixel_values=pixels), threshold=0.0,
                                                          target_sizes=[(im["height"], im["width"])], top_k=100)[0]
            # its post-processing does not clip; rfdetr's and ultralytics' do, so clip to the image here too
            boxes = det["boxes"].clamp(min=0).minimum(torch.tensor([im["width"], im["height"]] * 2))
            for score, label, box in zip(det["scores"].tolist(), det["labels"].tolist(), boxes.tolist()):
                x0, y0, x1, y1 = box
                results.append({"image_id": im["id"], "category_id": cat_ids[label],
                                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                "score": round(score, 5)})
    curve = [(trained_s, _score(data.val_json, results), "final")]
    return BudgetRun(results=results, curve=curve, steps=steps, images_seen=images_seen,
                     notes=f"transformers RfDetrForObjectDetection (default RfDetrConfig, num_labels=3) from scratch, "
                           f"{side}px, plain AdamW loop lr {v['lr']}, clip {v['max_grad_norm']}, hflip")
