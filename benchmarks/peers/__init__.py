"""Detectors measured by ``python -m benchmarks.run``: ours and the peers, behind one small interface.

Every module in this package (``ours``, ``rfdetr_peer``, ``hf_rfdetr_peer``, ``yolo_peer``) exposes:

    VARIANTS: dict[str, dict]    # variant name -> its settings, e.g. {"rfdetr-small": {...}}
    def train_step(variant, side, batch) -> Callable[[], None]
        # model + the peer's own loss + AdamW at its default lr, in train mode; the callable runs one full
        # step (forward, loss, backward, optimizer step) on a fixed synthetic batch of `batch` images of
        # side x side with a few boxes per image.
    def inference(variant, side) -> Callable[[], None]
        # eval-mode model; the callable runs one batch-1 side x side forward under torch.inference_mode,
        # post-processing to boxes included. Optional keyword `compile=True`: the package's own optimised
        # inference path (ours: `predict --compile`; rfdetr: what `RFDETR.inference()` does by default),
        # measured beside the eager one by the `latency_pair` task.
    def train_for_budget(variant, data: BccdData, minutes, out_dir, seed) -> BudgetRun
        # the peer's own training loop and defaults (batch 4, 512 px unless the variant says otherwise),
        # stopped after `minutes` of wall-clock training; returns top-100 detections per BCCD val image in
        # COCO results format (original pixels, BCCD category ids 1..3) and the AP-vs-time curve it logged.

``train_step`` and ``inference`` may also take ``device`` ("cpu" / "cuda") and ``dtype`` ("fp32" / "bf16");
``benchmarks.measure`` passes them where the signature has them (the GPU suite needs ``device``).

Each measurement runs in its own subprocess (``benchmarks.measure``) so that peak RSS, thread settings and
imports of one detector never leak into another.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "bccd"


@dataclass
class BccdData:
    """BCCD as shipped in ../shared: 205 train / 87 val JPEGs (640 x 480), category ids 1=Platelets 2=RBC 3=WBC."""
    images: Path = SHARED / "JPEGImages"
    train_json: Path = SHARED / "coco" / "instances_train.json"
    val_json: Path = SHARED / "coco" / "instances_val.json"


@dataclass
class BudgetRun:
    """results: COCO detections on BCCD val; curve: (training seconds, AP, who scored it) points."""
    results: list[dict]
    curve: list[tuple[float, float, str]] = field(default_factory=list)
    steps: int = 0
    images_seen: int = 0
    notes: str = ""
