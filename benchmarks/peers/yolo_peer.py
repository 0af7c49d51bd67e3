"""Ultralytics YOLOv8n as a peer, built from ``yolov8n.yaml`` (no weights) and trained from scratch on CPU.

What is measured (interface in ``benchmarks/peers/__init__.py``):

- ``train_step``: its ``DetectionModel`` (3 classes) + ``v8DetectionLoss`` via ``model.loss(batch)`` (TAL assigner,
  CIoU + DFL + BCE with its default gains), AdamW with the trainer's three parameter groups (decayed weights,
  norm weights, biases), the lr its ``optimizer=auto`` picks for a short run (0.002 * 5 / (4 + nc)) and its 10.0
  gradient-norm clip; one full step on a fixed synthetic batch (the trainer itself would accumulate 16 such
  batches per optimizer step: nbs 64 / batch 4).
- ``inference``: the fused eval-mode model (as its predictor runs it) + ``non_max_suppression`` (conf 0.001,
  IoU 0.7, max_det 100), batch 1.
- ``train_for_budget``: ``YOLO("yolov8n.yaml").train(...)`` with its own defaults (mosaic and the rest of its
  augmentation, warmup, EMA, optimizer=auto -> AdamW for a run this short, per-epoch validation on BCCD val) and
  ``time=minutes/60`` (its own wall clock, which re-fits the epoch count and lr schedule to the budget and counts
  validation); plots and AMP off (plots download a font, the AMP check downloads weights). Predictions come from
  the final EMA weights (``last.pt``; its ``best.pt`` is picked on the same val set we score) with
  ``predict(conf=0.001, max_det=100, imgsz=512)``.
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

# before ultralytics is imported: it pins OMP_NUM_THREADS=1 when unset, and writes its settings file on import
# torch threads: the core count (2 here), or BENCH_THREADS as benchmarks.measure reads it
THREADS = int(os.environ.get("BENCH_THREADS") or os.cpu_count() or 2)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("YOLO_OFFLINE", "1")  # is_online() -> False: no analytics, no hub checks
os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "yolo_peer_config"))

import torch  # noqa: E402

from . import BccdData, BudgetRun  # noqa: E402

NUM_CLASSES = 3
VARIANTS = {"yolov8n": {"cfg": "yolov8n.yaml", "side": 512, "batch": 4}}


def _patch() -> None:
    """Ultralytics sets torch threads to NUM_THREADS = min(8, cpu_count - 1), i.e. 1 on a 2-core machine, every
    time it selects the CPU; make that THREADS. Its dataset check also looks for a plotting font online: skip
    (plots are off)."""
    import importlib

    import ultralytics.data.utils as data_utils

    for name in ("ultralytics.utils", "ultralytics.utils.torch_utils", "ultralytics.data.base",
                 "ultralytics.data.dataset", "ultralytics.data.loaders"):
        module = importlib.import_module(name)
        if hasattr(module, "NUM_THREADS"):
            module.NUM_THREADS = THREADS
    data_utils.check_font = lambda *args, **kwargs: None
    torch.set_num_threads(THREADS)


def _model(variant: str):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    _patch()
    torch.manual_seed(0)
    model = DetectionModel(VARIANTS[variant]["cfg"], nc=NUM_CLASSES, verbose=False)
    model.args = get_cfg()  # default hyperparameters: the loss reads its box / cls / dfl gains from here
    return model


def train_step(variant: str, side: int, batch: int) -> Callable[[], None]:
    model = _model(variant).train()
    nc, args = NUM_CLASSES, model.args
    # BaseTrainer.build_optimizer for optimizer=auto on a short run: AdamW, betas (0.9, 0.999), weight decay on
    # conv / linear weights only, scaled by batch * accumulate / nbs (= 1 at batch 4, accumulate 16, nbs 64)
    norm = tuple(v for k, v in torch.nn.__dict__.items() if "Norm" in k)
    decay, no_decay, bias = [], [], []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            (bias if "bias" in pname else no_decay if isinstance(module, norm) else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}, {"params": bias, "weight_decay": 0.0}],
                                  lr=round(0.002 * 5 / (4 + nc), 6), betas=(0.9, 0.999))
    g = torch.Generator().manual_seed(0)
    n = 3 * batch
    data = {"img": torch.rand(batch, 3, side, side, generator=g),  # the trainer feeds 0..1 floats
            "batch_idx": torch.arange(batch).repeat_interleave(3).float(),
            "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
            "bboxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2,
                                 torch.rand(n, 2, generator=g) * 0.2 + 0.05], 1)}  # normalised xywh

    def step() -> None:
        loss, _ = model.loss(data)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)  # BaseTrainer.optimizer_step
        optimizer.step()
        step.loss = float(loss.detach().sum())

    return step


def inference(variant: str, side: int) -> Callable[[], None]:
    from ultralytics.utils.nms import non_max_suppression

    model = _model(variant).fuse(verbose=False).eval()  # its predictor's AutoBackend fuses Conv + BN
    image = torch.rand(1, 3, side, side)

    def run() -> None:
        with torch.inference_mode():
            preds = model(image)
            run.out = non_max_suppression(preds, conf_thres=0.001, iou_thres=0.7, max_det=100)

    return run


# ------------------------------------------------------------------ budgeted training on BCCD
def _yolo_folder(data: BccdData, root: Path) -> tuple[Path, list[int]]:
    """images/{train,val} (symlinks to the shared JPEGs) + labels/{train,val} txt + data.yaml; class index i is
    the i-th BCCD category id in sorted order."""
    cat_ids = sorted(c["id"] for c in json.loads(Path(data.train_json).read_text())["categories"])
    names = {c["id"]: c["name"] for c in json.loads(Path(data.train_json).read_text())["categories"]}
    for split, src in (("train", data.train_json), ("val", data.val_json)):
        coco = json.loads(Path(src).read_text())
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        lines: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
        sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        for a in coco["annotations"]:
            w, h = sizes[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            lines[a["image_id"]].append(f"{cat_ids.index(a['category_id'])} {(x + bw / 2) / w:.6f} "
                                        f"{(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        for im in coco["images"]:
            link = root / "images" / split / im["file_name"]
            if not link.exists():
                link.symlink_to(Path(data.images).resolve() / im["file_name"])
            (root / "labels" / split / (Path(im["file_name"]).stem + ".txt")).write_text("\n".join(lines[im["id"]]))
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n"
                    + "".join(f"  {i}: {names[c]}\n" for i, c in enumerate(cat_ids)))
    return yaml, cat_ids


def _curve(results_csv: Path) -> list[tuple[float, float, str]]:
    if not results_csv.exists():
        return []
    with open(results_csv) as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    return [(float(r["time"]), float(r["metrics/mAP50-95(B)"]), "ultralytics") for r in rows]


def train_for_budget(variant: str, data: BccdData, minutes: float, out_dir, seed: int, val: bool = True) -> BudgetRun:
    """Its own trainer for ``minutes`` (``val`` False: no per-epoch validation, so the whole budget trains;
    it still validates after its last epoch)."""
    _patch()
    from ultralytics import YOLO

    v = VARIANTS[variant]
    out_dir = Path(out_dir)
    yaml, cat_ids = _yolo_folder(data, out_dir / "yolo_dataset")
    model = YOLO(v["cfg"])
    counters = {"images": 0, "batches": 0}

    def count(trainer) -> None:
        counters["batches"] += 1
        counters["images"] += trainer.batch_size  # the last batch of an epoch may be smaller: approximate

    model.add_callback("on_train_batch_end", count)
    model.add_callback("on_train_start", lambda trainer: counters.update(threads=torch.get_num_threads()))
    # epochs=100 is its default; with time= set it re-estimates epochs after the first one. workers is forced
    # to 0 on CPU by its trainer; val=True (default) gives the per-epoch curve.
    model.train(data=str(yaml), imgsz=v["side"], batch=v["batch"], time=minutes / 60, epochs=100, device="cpu", val=val,
                workers=2, pretrained=False, plots=False, amp=False, seed=seed, project=str(out_dir),
                name="yolo_run", exist_ok=True, verbose=False)
    run_dir = Path(model.trainer.save_dir)
    final = YOLO(str(run_dir / "weights" / "last.pt"))  # final EMA weights

    val = json.loads(Path(data.val_json).read_text())
    by_name = {im["file_name"]: im["id"] for im in val["images"]}
    results = []
    sources = [str(Path(data.images) / im["file_name"]) for im in val["images"]]
    for r in final.predict(sources, conf=0.001, max_det=100, imgsz=v["side"], device="cpu", stream=True,
                           verbose=False):
        image_id = by_name[Path(r.path).name]
        for (x0, y0, x1, y1), score, cls in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist()):
            results.append({"image_id": image_id, "category_id": cat_ids[int(cls)],
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "score": round(score, 5)})
    return BudgetRun(results=results, curve=_curve(run_dir / "results.csv"), steps=counters["batches"],
                     images_seen=counters["images"],
                     notes=f"ultralytics YOLOv8n from yolov8n.yaml, time={minutes} min, optimizer "
                           f"{model.trainer.args.optimizer} lr0 {model.trainer.args.lr0}, nbs 64 (steps = "
                           f"forward/backward batches; it steps the optimizer every 64 images after warmup), last.pt, "
                           f"{counters.get('threads')} torch threads")
